"""Pinned items (issue 14, item 4): a pinned item is never evicted and leaves the others'
turnover alone; unpinning releases it. Checked against a plain-Python model of the rule
(memory_reference.PinnedFifoModel) under hypothesis interleavings, for the reservoir by its
inclusion probabilities, for partitions (a pinned anchor partition next to a turning one),
across threads and a second process, and on every error path (nothing changes)."""

from __future__ import annotations

import multiprocessing as mp
import threading

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from memory_reference import PinnedFifoModel
from scipy import stats

import reverie as rv

SPEC = {"id": ("int64", ()), "obs": ("float32", (2,))}


def rows(ids):
    ids = np.asarray(ids, dtype=np.int64)
    return {"id": ids, "obs": np.stack([ids, -ids], 1).astype(np.float32)}


def held_ids(buf):
    """The ids held, oldest first (keys() is in insertion order)."""
    return buf.get(buf.keys())["id"].tolist()


def id_keys(buf, ids):
    keys = buf.keys()
    by_id = dict(zip(buf.get(keys)["id"].tolist(), keys.tolist()))
    return [by_id[i] for i in ids if i in by_id]


OPS = st.lists(st.one_of(
    st.tuples(st.just("extend"), st.integers(0, 7)),
    st.tuples(st.just("pin"), st.lists(st.integers(0, 40), max_size=5)),
    st.tuples(st.just("unpin"), st.lists(st.integers(0, 40), max_size=5)),
    st.tuples(st.just("pin_all"), st.booleans()),
), max_size=40)


@settings(max_examples=120, deadline=None)
@given(capacity=st.integers(1, 9), ops=OPS)
def test_fifo_with_pins_matches_the_model(capacity, ops):
    buf = rv.ReplayBuffer(capacity, SPEC, writer=rv.Fifo(pins=True))
    model = PinnedFifoModel(capacity)
    next_id = 0
    for op, arg in ops:
        if op == "extend":
            ids = list(range(next_id, next_id + arg))
            before = held_ids(buf)
            if model.extend(ids):
                assert buf.extend(**rows(ids)) == len(ids)
                next_id += arg
            else:
                with pytest.raises(ValueError, match="pinned"):
                    buf.extend(**rows(ids))
                assert held_ids(buf) == before  # refused whole
        elif op in ("pin", "unpin"):
            ids = [i for i in arg if i < next_id]  # ids ever written (evicted ones: stale keys)
            stale_before = buf.stats()["table.stale_updates"]
            keys = [k for k in id_keys(buf, ids)]
            changed = (buf.pin if op == "pin" else buf.unpin)(keys)
            assert changed == model.pin(ids, op == "pin")
            assert buf.stats()["table.stale_updates"] == stale_before
        else:
            assert buf.pin_all(arg) == model.pin_all(arg)
        assert held_ids(buf) == model.items
        assert buf.pinned == len(model.pinned)
        assert len(buf) == len(model.items)


def test_pinned_items_outlive_heavy_turnover_and_the_rest_is_fifo():
    buf = rv.ReplayBuffer(64, SPEC, writer=rv.Fifo(pins=True), seed=3)
    buf.extend(**rows(range(64)))
    anchors = list(range(0, 64, 4))
    assert buf.pin(id_keys(buf, anchors)) == 16
    for first in range(64, 10_064, 37):
        buf.extend(**rows(range(first, first + 37)))
    ids = held_ids(buf)
    last = 10_064 + (37 - 10_000 % 37) % 37  # the next id that would be written
    assert sorted(ids) == anchors + list(range(last - 48, last))  # 16 anchors + newest 48
    drawn = set(buf.sample(20_000)["id"].tolist())
    assert drawn == set(ids)  # anchors are drawn as any other item
    # Released: the anchors are the oldest, so they go first, oldest first.
    assert buf.unpin(id_keys(buf, anchors[:8])) == 8
    buf.extend(**rows(range(100_000, 100_005)))
    assert set(anchors[:5]).isdisjoint(held_ids(buf)) and set(anchors[5:]) <= set(held_ids(buf))


def test_repeated_and_stale_keys_change_nothing_twice():
    buf = rv.ReplayBuffer(4, SPEC, writer=rv.Fifo(pins=True))
    buf.extend(**rows(range(4)))
    k = buf.keys()
    assert buf.pin(torch.stack([k[0], k[0], k[1]])) == 2
    assert buf.pin(k[:2].numpy()) == 0  # already pinned
    buf.extend(**rows(range(4, 6)))  # evicts ids 2, 3
    stale = buf.stats()["table.stale_updates"]
    assert buf.pin(k[2:]) == 0
    assert buf.stats()["table.stale_updates"] == stale + 2  # counted, as for priorities
    pin = buf.pin  # an alias, as users hold them
    assert pin(buf.keys()[-1:]) == 1 and buf.pinned == 3


def test_error_paths_leave_the_buffer_unchanged():
    buf = rv.ReplayBuffer(4, SPEC, writer=rv.Fifo(pins=True))
    buf.extend(**rows(range(4)))
    keys = buf.keys()
    state = (held_ids(buf), buf.pinned, buf.stats())
    with pytest.raises(IndexError, match="never"):
        buf.pin(torch.tensor([int(keys[0]), 1 << 40]))  # one bad key: nothing pinned
    assert (held_ids(buf), buf.pinned, buf.stats()) == state
    buf.pin(keys)
    state = (held_ids(buf), buf.pinned, buf.stats())
    with pytest.raises(ValueError, match="all 4 items of this table are pinned"):
        buf.extend(**rows([9, 10]))
    with pytest.raises(ValueError, match="pinned"):
        buf.add(id=9, obs=np.zeros(2, np.float32))
    assert (held_ids(buf), buf.pinned, buf.stats()) == state
    with pytest.raises(ValueError, match="cannot pin items"):
        rv.ReplayBuffer(4, SPEC).pin(keys)  # the lock-free ring has no pins
    with pytest.raises(ValueError, match="cannot pin items"):
        rv.ReplayBuffer(4, SPEC, writer=rv.KeepTopK(score="id")).pin_all()
    with pytest.raises(TypeError, match="pins must be True or False"):
        rv.Fifo(pins=1)  # type: ignore[arg-type]


@pytest.mark.parametrize("kwargs, match", [
    (dict(writer=rv.Fifo(pins=True), max_times_sampled=1), "max_times_sampled"),
    (dict(writer=rv.Reservoir(pins=True), max_times_sampled=2), "max_times_sampled"),
    (dict(writer=rv.Fifo(pins=True), sampler=rv.Recency(1.0)), "needs the FIFO writer"),
])
def test_combinations_pins_cannot_keep_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        rv.ReplayBuffer(8, SPEC, **kwargs)


def test_pin_all_fills_then_refuses_and_release_turns_over_again():
    buf = rv.ReplayBuffer(10, SPEC, writer=rv.Fifo(pins=True))
    buf.extend(**rows(range(3)))
    assert buf.pin_all() == 3
    assert buf.extend(**rows(range(3, 10))) == 7 and buf.pinned == 10
    with pytest.raises(ValueError, match="pins every item"):
        buf.extend(**rows([10]))
    assert buf.pin_all(False) == 10 and buf.pinned == 0
    buf.extend(**rows([10, 11]))
    assert held_ids(buf) == list(range(2, 12))


def test_reservoir_with_pins_keeps_them_and_admits_later_offers_at_rate_k_minus_p_over_n():
    # k = 50 slots, 10 pinned after the first 50 offers; then 450 more offers: every later
    # offer is held at the end with probability (k - P) / n = 40 / 500, pinned ones always.
    k, pinned, n, runs = 50, 10, 500, 400
    hits = np.zeros(n, dtype=np.int64)
    for seed in range(runs):
        buf = rv.ReplayBuffer(k, SPEC, writer=rv.Reservoir(pins=True), seed=seed)
        buf.extend(**rows(range(k)))
        buf.pin(id_keys(buf, range(pinned)))
        buf.extend(**rows(range(k, n)))
        ids = np.asarray(held_ids(buf))
        assert set(range(pinned)) <= set(ids.tolist()) and len(ids) == k
        hits[ids] += 1
    later = hits[k:]
    p = (k - pinned) / n
    # Pooled over the 450 later offers (runs are independent, by seed): a two-sided binomial
    # test at 0.001 on the total, and a chi-square (0.001) of ten blocks of 45 offers against
    # equal shares: uniform over the stream, not only on average. (Within a run the 40
    # unpinned slots are shared, so counts are negatively correlated: both tests are
    # conservative.)
    total = int(later.sum())
    assert stats.binomtest(total, later.size * runs, p).pvalue > 1e-3, (total, later.size * runs * p)
    blocks = later.reshape(10, 45).sum(1)
    assert stats.chisquare(blocks).pvalue > 1e-3, blocks
    # The unpinned first items were held when the pins were set: they stay with k / n each.
    early = hits[pinned:k].sum()
    assert stats.binomtest(int(early), (k - pinned) * runs, k / n).pvalue > 1e-3


def test_threads_writing_while_others_pin_never_evict_a_pinned_item():
    buf = rv.ReplayBuffer(256, SPEC, writer=rv.Fifo(pins=True))
    buf.extend(**rows(range(256)))
    anchors = list(range(0, 256, 8))
    buf.pin(id_keys(buf, anchors))
    errors = []

    def write(first):
        try:
            for i in range(first, first + 20_000, 50):
                buf.extend(**rows(range(i, i + 50)))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    def flip():
        try:
            for _ in range(300):
                keys = buf.keys()[-4:]
                buf.pin(keys)
                buf.unpin(keys)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=write, args=(f,)) for f in (1_000_000, 2_000_000)]
    threads.append(threading.Thread(target=flip))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    ids = held_ids(buf)
    assert set(anchors) <= set(ids) and len(ids) == 256 and buf.pinned == len(anchors)
    got = buf.get(buf.keys())
    assert torch.equal(got["obs"][:, 0].long(), got["id"])  # no torn rows


def test_pinned_partition_of_anchors_next_to_a_turning_one():
    buf = rv.PartitionedBuffer(
        100, {**SPEC, "src": ("int8", ())}, key="src",
        declared={0: rv.Partition(100), 1: rv.Partition(20, writer=rv.Fifo(pins=True))})
    anchors = {**rows(range(1000, 1020)), "src": np.ones(20, np.int8)}
    buf.extend(**anchors)
    assert buf.pin_partition(1) == 20
    with pytest.raises(ValueError, match="pins every item"):
        buf.extend(**{**rows([5000]), "src": np.ones(1, np.int8)})  # full and pinned: refused
    for first in range(0, 5000, 100):
        buf.extend(**{**rows(range(first, first + 100)), "src": np.zeros(100, np.int8)})
    buf.mixture = {0: 0.75, 1: 0.25}
    b = buf.sample(256)
    assert (b.partition == 1).sum() == 64  # the anchors in every batch (exact mode)
    assert set(b["id"][b.partition == 1].tolist()) <= set(range(1000, 1020))
    assert buf.partition_sizes() == {0: 100, 1: 20} and buf.pinned == 20
    assert buf.unpin_partition(1) == 20
    buf.extend(**{**rows([7000]), "src": np.ones(1, np.int8)})
    assert 1000 not in buf.get(buf.keys())["id"].tolist()  # released: the oldest anchor went


def test_partition_pins_need_a_writer_with_pins():
    buf = rv.PartitionedBuffer(8, {**SPEC, "src": ("int8", ())}, key="src",
                               declared={0: rv.Partition(8), 1: rv.Partition(8, writer=rv.Fifo(pins=True))})
    buf.extend(**{**rows(range(4)), "src": np.array([0, 0, 1, 1], np.int8)})
    with pytest.raises(ValueError, match="partition 0's writer cannot pin"):
        buf.pin_partition(0)
    with pytest.raises(ValueError, match="no partition 7"):
        buf.pin_partition(7)
    keys = buf.keys()
    src = buf.get(keys)["src"]
    with pytest.raises(ValueError, match="partition 0's writer cannot pin items"):
        buf.pin(keys)  # one key of partition 0: nothing pinned anywhere
    assert buf.pinned == 0
    assert buf.pin(keys[src == 1]) == 2 and buf.pinned == 2
    with pytest.raises(ValueError, match="pin_partition"):
        buf.pin_all()


def _child_writes(buf, first, n):
    for i in range(first, first + n, 25):
        buf.extend(**rows(range(i, i + 25)))


def test_pins_set_in_one_process_hold_against_another_process_writing():
    buf = rv.ReplayBuffer(64, SPEC, writer=rv.Fifo(pins=True), storage="shared")
    try:
        buf.extend(**rows(range(64)))
        buf.pin(id_keys(buf, range(0, 64, 2)))
        p = mp.get_context("spawn").Process(target=_child_writes, args=(buf, 1000, 2000))
        p.start()
        p.join(120)
        assert p.exitcode == 0
        ids = held_ids(buf)
        assert sorted(ids) == list(range(0, 64, 2)) + list(range(3000 - 32, 3000))
        assert buf.pinned == 32
    finally:
        buf.close()
