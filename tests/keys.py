"""The key encoding of cpp/include/reverie/key.h and the FIFO ring's keys (ring.h), written
out independently of the library for the tests' reference models.

A key is ``(shard << 55) | (generation << b) | slot`` with ``b = ceil(log2(capacity))``. The
FIFO ring gives insertion number n (from 0) slot ``n % capacity`` and generation
``n // capacity``; with S streams (an EpisodeBuffer of S envs, ``per = capacity // S`` rows
each) insertion n is row ``(n // S) % per`` of stream ``n % S``, at slot
``(n % S) * per + row``, generation ``(n // S) // per``. For a power-of-two capacity and one
stream the key of insertion n is n.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def slot_bits(capacity: int) -> int:
    return (int(capacity) - 1).bit_length()


def fifo_key(n: Any, capacity: int, num_envs: int = 1) -> Any:
    """The key of insertion number(s) n (an int or an int array)."""
    per = capacity // num_envs
    if isinstance(n, (int, np.integer)):
        stream, t = int(n) % num_envs, int(n) // num_envs
        return ((t // per) << slot_bits(capacity)) | (stream * per + t % per)
    n = np.asarray(n, dtype=np.int64)
    stream, t = n % num_envs, n // num_envs
    return ((t // per) << slot_bits(capacity)) | (stream * per + t % per)


def fifo_insertion(key: Any, capacity: int, num_envs: int = 1) -> Any:
    """The insertion number(s) of FIFO key(s): the inverse of fifo_key."""
    per = capacity // num_envs
    b = slot_bits(capacity)
    if isinstance(key, (int, np.integer)):
        slot, gen = int(key) & ((1 << b) - 1), int(key) >> b
        return (gen * per + slot % per) * num_envs + slot // per
    key = np.asarray(key, dtype=np.int64)
    slot, gen = key & ((1 << b) - 1), key >> b
    return (gen * per + slot % per) * num_envs + slot // per


def slot_of(key: Any, capacity: int) -> Any:
    """The slot of key(s): an int, an int array, or an int64 tensor (then a tensor)."""
    mask = (1 << slot_bits(capacity)) - 1
    if isinstance(key, (int, np.integer)):
        return int(key) & mask
    if hasattr(key, "numpy"):  # a torch tensor
        return key & mask
    return np.asarray(key, dtype=np.int64) & mask
