"""Quotas (``writer=rv.Quotas(group=...)``): equal shares of one memory as groups arrive,
each group keeping its newest items. Decision by decision against the plain-Python model
(memory_reference.CBRSModel with fifo=True), held counts against the water-filling
min(n_g, tau) within 1 after every call, the newest items of each group held, a group never
left with 0 slots while groups <= capacity (the online case where Avalanche's
ExperienceBalancedBuffer freezes), small groups' slots redistributed, refusals that change
nothing, and every restore route deciding as the saved buffer."""

from __future__ import annotations

from typing import Dict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from memory_reference import CBRSModel, held_by_slot, water_filling

import reverie as rv

SPEC = {"id": ("int64", ()), "task": ("int16", ()), "x": ("float32", (2,))}


def make(capacity: int, seed: int = 0, **kw) -> rv.ReplayBuffer:
    return rv.ReplayBuffer(capacity, SPEC, writer=rv.Quotas(group="task", **kw), seed=seed)


def items(groups, first: int = 0) -> Dict[str, np.ndarray]:
    i = np.arange(first, first + len(groups))
    return {"id": i.astype(np.int64), "task": np.asarray(groups, np.int16),
            "x": np.stack([i, -i], 1).astype(np.float32)}


@settings(max_examples=80, deadline=None)
@given(groups=st.lists(st.integers(0, 6), min_size=1, max_size=150), capacity=st.integers(1, 12),
       cuts=st.lists(st.integers(1, 9), min_size=1, max_size=30), seed=st.integers(0, 2**32))
def test_every_decision_matches_the_model(groups, capacity, cuts, seed):
    buf, model = make(capacity, seed), CBRSModel(capacity, seed, fifo=True)
    start, k = 0, 0
    offered = np.zeros(7, np.int64)
    while start < len(groups):
        chunk = groups[start:start + cuts[k % len(cuts)]]
        k += 1
        for j, g in enumerate(chunk):
            assert model.offer(start + j, g)  # quotas store every item
        assert buf.extend(**items(chunk, start)) == len(chunk)
        start += len(chunk)
        np.add.at(offered, chunk, 1)
        assert held_by_slot(buf) == {s: i for s, i in enumerate(model.slots) if i is not None}
        counts = buf.writer.counts()
        assert counts == model.counts()
        want = water_filling(offered, capacity)
        got = np.array([counts.get(g, 0) for g in range(7)])
        assert (np.abs(got - want) <= 1).all(), (got, want)


def test_each_group_keeps_its_newest_items_in_equal_shares():
    buf = make(100, seed=1)
    for task in range(5):  # tasks arrive one after another, 1,000 items each
        groups = np.full(1000, task)
        buf.extend(**items(groups, task * 1000))
        share = 100 // (task + 1)
        counts = buf.writer.counts()
        assert sorted(counts) == list(range(task + 1))
        assert all(share <= c <= share + 1 for c in counts.values()), counts
    got = buf.get(buf._table.stored_keys())
    for task in range(5):
        ids = np.sort(got["id"][got["task"] == task].numpy())
        assert ids.tolist() == list(range(task * 1000 + 1000 - 20, task * 1000 + 1000))  # the newest 20


def test_online_stream_of_more_groups_than_slots_per_group_never_starves_a_group():
    # 50 slots, 50 groups arriving one item at a time, round-robin: every group gets its slot.
    buf = make(50, seed=2)
    for step in range(2000):
        buf.add(id=step, task=step % 50, x=np.zeros(2, np.float32))
        seen = min(step + 1, 50)
        counts = buf.writer.counts()
        assert len(counts) == seen and min(counts.values()) >= 1
    assert set(buf.writer.counts().values()) == {1}


def test_slots_a_small_group_cannot_fill_go_to_the_others():
    buf = make(30, seed=3)
    buf.extend(**items([0] * 4))  # a small group: 4 items ever
    buf.extend(**items([1] * 100, 10))
    buf.extend(**items([2] * 100, 200))
    counts = buf.writer.counts()
    assert counts[0] == 4 and counts[1] + counts[2] == 26 and abs(counts[1] - counts[2]) <= 1
    assert buf.writer.offered() == {0: 4, 1: 100, 2: 100}


def test_refusals_change_nothing():
    buf = make(8, max_groups=2)
    buf.extend(**items([0, 1, 0, 1]))
    before = (held_by_slot(buf), buf.writer.counts(), buf.stats())
    with pytest.raises(ValueError, match="group beyond max_groups = 2"):
        buf.extend(**items([0, 2], 100))
    with pytest.raises(ValueError, match="cannot be updated in place"):
        buf.update_fields(buf._table.stored_keys()[:1], task=np.array([1], np.int16))
    assert (held_by_slot(buf), buf.writer.counts(), buf.stats()) == before
    with pytest.raises(ValueError, match="max_times_sampled"):
        rv.ReplayBuffer(8, SPEC, writer=rv.Quotas(group="task"), max_times_sampled=1)
    with pytest.raises(TypeError, match="integer scalar field"):
        rv.ReplayBuffer(8, SPEC, writer=rv.Quotas(group="x"))
    with pytest.raises(ValueError, match="max_groups must be in"):
        rv.Quotas(group="task", max_groups=0)


@pytest.mark.parametrize("route", ["checkpoint", "state_dict"])
def test_a_restored_buffer_decides_as_the_saved_one(route, tmp_path):
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 9, 3000)
    a, twin = make(64, seed=5), make(64, seed=5)
    a.extend(**items(groups[:1500]))
    twin.extend(**items(groups[:1500]))
    if route == "checkpoint":
        a.save(tmp_path / "q.rvb")
        b = rv.ReplayBuffer.load(tmp_path / "q.rvb")
    else:
        b = make(64, seed=9)
        b.load_state_dict(a.state_dict())
    assert b.writer == rv.Quotas(group="task")
    for first in range(1500, 3000, 50):
        assert b.extend(**items(groups[first:first + 50], first)) == twin.extend(**items(groups[first:first + 50], first))
    assert held_by_slot(b) == held_by_slot(twin) and b.writer.counts() == twin.writer.counts()
