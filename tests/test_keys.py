"""Keys carry their slot (cpp/include/reverie/key.h): the encoding seen from Python, buf.get,
and stale keys, for plain and episode buffers.

The encoding is stated independently in tests/keys.py; these tests check the library against
it, and the behaviours that depend on it: a key's slot is where its item lives, a key whose
slot was written again is stale (skipped and counted by update_priorities, refused by get),
and a key that was never written or is no key of the buffer is an IndexError.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from keys import fifo_insertion, fifo_key, slot_of
from reference import assert_tensor_equal

import reverie as rv

SPEC = {"id": rv.Field("int64"), "obs": rv.Field("float32", (3,))}


def rows(first: int, n: int) -> dict:
    i = np.arange(first, first + n)
    return {"id": i, "obs": np.stack([i, -i, 0.5 * i], 1).astype(np.float32)}


@pytest.mark.parametrize("capacity", [1, 5, 8, 100, 1000])
def test_sampled_keys_pack_slot_and_generation(capacity):
    buf = rv.ReplayBuffer(capacity, SPEC, seed=1)
    written = 3 * capacity + 2
    buf.extend(**rows(0, written))
    b = buf.sample(256)
    ids = b["id"].numpy()
    assert b.indices.tolist() == fifo_key(ids, capacity).tolist()
    # the key's slot is where the item is stored
    assert_tensor_equal(buf.columns["id"][slot_of(b.indices, capacity)], b["id"])
    # generation: how often the slot was written before
    bits = (capacity - 1).bit_length()
    assert ((b.indices >> bits) == torch.from_numpy(ids // capacity)).all()


def test_a_power_of_two_capacity_keys_items_by_insertion_number():
    buf = rv.ReplayBuffer(16, SPEC, seed=0)
    buf.extend(**rows(0, 40))
    b = buf.sample(64)
    assert_tensor_equal(b.indices, b["id"])


@pytest.mark.parametrize("sampler", [rv.Uniform(), rv.Uniform(replacement=False), rv.Prioritized()])
def test_get_returns_the_sampled_items(sampler):
    buf = rv.ReplayBuffer(37, SPEC, sampler=sampler, seed=4)
    buf.extend(**rows(0, 90))
    b = buf.sample(20)
    g = buf.get(b.indices)
    assert set(g) == set(SPEC) and g.weights is None
    assert_tensor_equal(g.indices, b.indices)
    for name in SPEC:
        assert_tensor_equal(g[name], b[name], name)
    # keys as a list, a numpy array, a single int, and repeated keys
    k = int(b.indices[0])
    assert buf.get([k, k])["id"].tolist() == [b["id"][0].item()] * 2
    assert buf.get(np.array([k]))["id"].item() == b["id"][0].item()
    assert buf.get(k)["id"].tolist() == [b["id"][0].item()]
    assert len(buf.get([])["id"]) == 0


def test_get_refuses_stale_keys_naming_the_first_and_changes_nothing():
    cap = 10
    buf = rv.ReplayBuffer(cap, SPEC, seed=0)
    twin = rv.ReplayBuffer(cap, SPEC, seed=0)
    for b in (buf, twin):
        b.extend(**rows(0, 12))  # insertions 0, 1 overwritten by 10, 11
    live, stale = fifo_key(5, cap), fifo_key(1, cap)
    with pytest.raises(IndexError, match=rf"index {stale} at position 1 is no longer stored"):
        buf.get([live, stale, fifo_key(0, cap)])
    with pytest.raises(IndexError, match="never written"):
        buf.get([live, fifo_key(12, cap)])
    with pytest.raises(IndexError, match="beyond the capacity"):
        buf.get([11])  # slot 11 of a capacity-10 buffer
    with pytest.raises(IndexError, match="negative"):
        buf.get([-1])
    with pytest.raises(IndexError, match="shard"):
        buf.get([(1 << 55) | 3])
    with pytest.raises(TypeError, match="integers"):
        buf.get([1.5])
    # nothing changed: the same next draws as the twin, the same stored rows
    a, b = buf.sample(16), twin.sample(16)
    assert_tensor_equal(a.indices, b.indices)
    assert_tensor_equal(buf.columns["id"], twin.columns["id"])


def test_get_on_an_empty_or_closed_buffer():
    buf = rv.ReplayBuffer(10, seed=0)
    assert len(buf.get([])) == 0
    with pytest.raises(IndexError, match="empty"):
        buf.get([0])
    buf.add(x=1)
    buf.close()
    with pytest.raises(ValueError, match="closed"):
        buf.get([0])


def test_stale_updates_are_counted_for_overwritten_slots():
    """A key whose slot holds a newer generation is skipped and counted, never applied to the
    new occupant."""
    cap = 6
    buf = rv.ReplayBuffer(cap, SPEC, sampler=rv.Prioritized(alpha=1.0, eps=0.0), seed=0)
    buf.extend(**rows(0, cap))
    old = buf.sample(cap).indices
    buf.extend(**rows(cap, 2))  # slots 0 and 1 now hold generation 1
    stale = int(((old & 7) < 2).sum())
    assert buf.update_priorities(old, torch.full((cap,), 5.0)) == stale
    assert buf.stale_updates == stale
    p = buf.priorities()
    assert p[:2].tolist() == [1.0, 1.0]  # the new occupants kept their initial priority
    assert (p[2:] == 5.0).all()


def test_episode_keys_and_env_steps():
    """Stream-major slots: env e's rows are slots [e*per, (e+1)*per); env_steps decodes keys
    to (env, step), and get returns the stored rows."""
    n, cap = 3, 30
    buf = rv.EpisodeBuffer(cap, num_envs=n, seed=0)
    steps = 17  # wraps each env's 10-row stream
    for t in range(steps):
        buf.extend(obs=np.full((n, 2), t, np.float32) + np.arange(n)[:, None] * 100,
                   reward=np.zeros(n, np.float32), terminated=np.zeros(n, bool),
                   truncated=np.zeros(n, bool))
    b = buf.sample(64, n_step=1)
    env, step = buf.env_steps(b.indices)
    ids = fifo_insertion(b.indices.numpy(), cap, n)
    assert env.tolist() == (ids % n).tolist() and step.tolist() == (ids // n).tolist()
    assert (b.obs[:, 0] == env * 100 + step).all()
    per = cap // n
    assert (torch.from_numpy(slot_of(b.indices.numpy(), cap)) // per == env).all()
    g = buf.get(b.indices)
    assert_tensor_equal(g.obs, b.obs)
    with pytest.raises(IndexError, match="not a key"):
        buf.env_steps([31])


def test_get_while_a_writer_overwrites_never_returns_a_torn_or_wrong_row():
    """A writer laps a small buffer while get() reads keys sampled earlier: each get returns
    exactly the items named, or raises IndexError for the first one overwritten."""
    cap = 64
    buf = rv.ReplayBuffer(cap, SPEC, seed=2)
    buf.extend(**rows(0, cap))
    stop = threading.Event()
    written = [cap]

    def writer() -> None:
        while not stop.is_set():
            buf.extend(**rows(written[0], 7))
            written[0] += 7

    th = threading.Thread(target=writer)
    th.start()
    ok = refused = 0
    try:
        for _ in range(3000):
            b = buf.sample(8)
            try:
                g = buf.get(b.indices)
            except IndexError as e:
                assert "no longer stored" in str(e)
                refused += 1
                continue
            ids = g["id"].numpy()
            assert g.indices.tolist() == fifo_key(ids, cap).tolist()
            assert (g["obs"].numpy() == np.stack([ids, -ids, 0.5 * ids], 1)).all()
            ok += 1
    finally:
        stop.set()
        th.join()
    assert ok > 0
