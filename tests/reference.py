"""A small pure-Python model of reverie.ReplayBuffer, for checking the real one against.

It follows the documented semantics (docs/api-draft.md) with plain lists and exact float64
arithmetic, no fixed point and no sampling: the tests compare what the real buffer stores and
returns with what this model says must be stored and returned.

- Ring: item number n (0-based, over all items ever added) is stored in slot n % capacity
  until item n + capacity overwrites it; its key packs that slot and the generation
  n // capacity (tests/keys.py, the encoding of cpp/include/reverie/key.h).
- Prioritized: a slot holds q = (p + eps) ** alpha; a new item gets the running max of q
  (which starts at 1.0). P(i) = q_i / sum_k q_k over stored items. Importance weights are
  w_i = (N * P(i)) ** -beta / max_j (N * P(j)) ** -beta, the max over stored items with q > 0,
  N the number of stored items.
- update_priorities: every priority must be finite and >= 0 (ValueError), every key must have
  been written (IndexError); then keys whose slot has been overwritten since are ignored and
  counted as stale; for a repeated key the last value wins.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np
from keys import fifo_insertion, fifo_key


class ReferenceBuffer:
    """Model of a buffer of `capacity` items; `prioritized` selects the proportional sampler."""

    def __init__(self, capacity: int, prioritized: bool = False, alpha: float = 0.6,
                 beta: float = 0.4, eps: float = 1e-6) -> None:
        if capacity <= 0:
            raise ValueError("capacity must be > 0")
        self.capacity = capacity
        self.prioritized = prioritized
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.eps = float(eps)
        self.written = 0
        self.storage: List[Optional[Dict[str, np.ndarray]]] = [None] * capacity
        self.q: List[float] = [0.0] * capacity
        self.max_q = 1.0
        self.stale_updates = 0

    # ---- ring --------------------------------------------------------------------------

    def __len__(self) -> int:
        return min(self.written, self.capacity)

    def key_of(self, n: int) -> int:
        """The key of insertion number n."""
        return fifo_key(int(n), self.capacity)

    def insertion_of(self, key: int) -> int:
        """The insertion number of a key; -1 for a key that is no key of this buffer."""
        key = int(key)
        if key < 0 or key >= 1 << 55:  # shard 0 only
            return -1
        n = fifo_insertion(key, self.capacity)
        return n if self.key_of(n) == key else -1  # a slot beyond the capacity: not a key

    def slot_of(self, key: int) -> int:
        return self.insertion_of(key) % self.capacity

    def was_written(self, key: int) -> bool:
        return 0 <= self.insertion_of(key) < self.written

    def is_stored(self, key: int) -> bool:
        return self.was_written(key) and self.insertion_of(key) >= self.written - self.capacity

    def stored_keys(self) -> List[int]:
        """Keys of the items now stored, oldest first."""
        return [self.key_of(n) for n in range(max(0, self.written - self.capacity), self.written)]

    def key_of_slot(self, slot: int) -> int:
        """Key of the item now in `slot` (slot < len(self))."""
        if not 0 <= slot < len(self):
            raise IndexError(f"slot {slot} holds no item")
        newest = self.written - 1
        n = newest - ((newest - slot) % self.capacity)
        assert n % self.capacity == slot
        return self.key_of(n)

    def row(self, key: int) -> Dict[str, np.ndarray]:
        """The stored item with this key."""
        if not self.is_stored(key):
            raise KeyError(f"key {key} is not stored")
        item = self.storage[self.slot_of(key)]
        assert item is not None
        return item

    # ---- writing ------------------------------------------------------------------------

    def add(self, item: Mapping[str, Any]) -> int:
        """Stores one item (a dict of arrays); returns its key."""
        key = self.key_of(self.written)
        slot = self.written % self.capacity
        self.storage[slot] = {name: np.array(value, copy=True) for name, value in item.items()}
        if self.prioritized:
            self.q[slot] = self.max_q
        self.written += 1
        return key

    def extend(self, items: Mapping[str, Any]) -> List[int]:
        """Stores the items along the leading axis of every value; returns their keys."""
        arrays = {name: np.asarray(value) for name, value in items.items()}
        lengths = {len(a) for a in arrays.values()}
        if len(lengths) != 1:
            raise ValueError(f"fields have different leading lengths: {sorted(lengths)}")
        (n,) = lengths
        return [self.add({name: a[i] for name, a in arrays.items()}) for i in range(n)]

    # ---- priorities -----------------------------------------------------------------------

    def transform(self, priority: float) -> float:
        return (float(priority) + self.eps) ** self.alpha

    def update_priorities(self, keys: Sequence[int], priorities: Sequence[float]) -> int:
        """Applies an update (all or nothing); returns how many keys were stale."""
        if not self.prioritized:
            raise ValueError("update_priorities needs a prioritized sampler")
        keys = [int(k) for k in keys]
        priorities = [float(p) for p in priorities]
        if len(keys) != len(priorities):
            raise ValueError(f"got {len(keys)} indices but {len(priorities)} priorities")
        for p in priorities:
            if not math.isfinite(p) or p < 0:
                raise ValueError(f"priority {p} is not finite and >= 0")
        for k in keys:
            if not self.was_written(k):
                raise IndexError(f"index {k} was never written")
        stale = 0
        for k, p in zip(keys, priorities):
            if not self.is_stored(k):
                stale += 1
                continue
            q = self.transform(p)
            self.q[self.slot_of(k)] = q
            self.max_q = max(self.max_q, q)
        self.stale_updates += stale
        return stale

    def stored_q(self) -> np.ndarray:
        """q of every slot [capacity]; 0 for slots that hold no item."""
        out = np.zeros(self.capacity, dtype=np.float64)
        n = len(self)
        out[:n] = self.q[:n]
        return out

    def probabilities(self) -> np.ndarray:
        """P(slot) for every slot [capacity] (uniform over stored items for a uniform buffer)."""
        n = len(self)
        out = np.zeros(self.capacity, dtype=np.float64)
        if n == 0:
            return out
        if not self.prioritized:
            out[:n] = 1.0 / n
            return out
        q = self.stored_q()
        total = q.sum()
        if total <= 0:
            return out
        return q / total

    def can_sample(self) -> bool:
        if len(self) == 0:
            return False
        return not self.prioritized or self.stored_q().sum() > 0

    def weights(self, keys: Iterable[int]) -> np.ndarray:
        """Importance weights of the given (stored, q > 0) keys by the PER definition."""
        n = len(self)
        p = self.probabilities()
        positive = p[:n][p[:n] > 0]
        if positive.size == 0:
            raise ValueError("no item has a positive priority")
        if self.beta == 0:
            return np.ones(len(list(keys)), dtype=np.float64)
        w_max = (n * positive.min()) ** -self.beta
        out = []
        for k in keys:
            pk = p[self.slot_of(int(k))]
            if pk <= 0:
                raise ValueError(f"key {k} has probability 0 and cannot have been sampled")
            out.append((n * pk) ** -self.beta / w_max)
        return np.asarray(out, dtype=np.float64)

    def in_stratum(self, slot: int, i: int, batch: int, rtol: float = 1e-9) -> bool:
        """Stratified sampling: draw i of a batch of B falls in [T*i/B, T*(i+1)/B) of the
        total T, so the slot it lands on must have q > 0 and a cumulative interval that meets
        that segment (up to rtol * T for the fixed-point rounding of the real tree)."""
        q = self.stored_q()
        if q[slot] <= 0:
            return False
        cum = np.concatenate([[0.0], np.cumsum(q)])
        total = cum[-1]
        seg_lo, seg_hi = total * i / batch, total * (i + 1) / batch
        return cum[slot + 1] > seg_lo - rtol * total and cum[slot] < seg_hi + rtol * total

    # ---- inspection -----------------------------------------------------------------------

    def column(self, name: str, dtype: Any, shape: Sequence[int]) -> np.ndarray:
        """The stored rows [len, *shape] of one field, in slot order."""
        rows = [self.storage[s][name] for s in range(len(self))]  # type: ignore[index]
        if not rows:
            return np.zeros((0, *shape), dtype=dtype)
        return np.stack([np.asarray(r, dtype=dtype).reshape(shape) for r in rows])


# ---- helpers shared by the tests ---------------------------------------------------------


def as_tensor(value: Any):
    """A torch tensor of a stored value (numpy array or tensor), for exact comparisons."""
    import torch

    if isinstance(value, torch.Tensor):
        return value
    return torch.from_numpy(np.ascontiguousarray(value))


def bits(t):
    """A tensor's raw bits as an integer tensor, so that equality is exact for every dtype
    (bfloat16 and float16 included, -0.0 and NaN compared bit for bit)."""
    import torch

    t = t.contiguous()
    if t.dtype in (torch.float16, torch.bfloat16):
        return t.view(torch.int16)
    if t.dtype == torch.float32:
        return t.view(torch.int32)
    if t.dtype == torch.float64:
        return t.view(torch.int64)
    return t


def assert_tensor_equal(actual, expected, what: str = "") -> None:
    """Exact (bitwise) equality of dtype, shape and contents."""
    actual, expected = as_tensor(actual), as_tensor(expected)
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    assert tuple(actual.shape) == tuple(expected.shape), (
        f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}")
    assert bool((bits(actual) == bits(expected)).all()), f"{what}: {actual} != {expected}"


def assert_batches_equal(a, b) -> None:
    """Two Batches hold the same keys, rows and weights, exactly."""
    assert list(a) == list(b)
    assert_tensor_equal(a.indices, b.indices, "indices")
    for name in a:
        assert_tensor_equal(a[name], b[name], name)
    assert (a.weights is None) == (b.weights is None)
    if a.weights is not None:
        assert_tensor_equal(a.weights, b.weights, "weights")
