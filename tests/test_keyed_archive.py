"""The keyed archive (``writer=rv.KeyedArchive(key=, score=, tiebreak=)``): decision by
decision against the plain-Python model (tests/memory_reference.py), the lexicographic best
per key over a whole stream, worse inserts as no-ops, eviction of the worst keys, lookup by
user key, 100k keys, and refusals that leave the buffer unchanged."""

from __future__ import annotations

from typing import Dict

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from memory_reference import ArchiveModel

import reverie as rv

SPEC = {"cell": ("int64", ()), "ret": ("float32", ()), "len": ("int32", ()), "id": ("int64", ())}


def make(capacity: int, tiebreak: str = "len", order: str = "min", seed: int = 0) -> rv.ReplayBuffer:
    return rv.ReplayBuffer(capacity, SPEC, writer=rv.KeyedArchive("cell", "ret", tiebreak=tiebreak,
                                                                  tiebreak_order=order), seed=seed)


def items(cells, rets, lens, first: int = 0) -> Dict[str, np.ndarray]:
    n = len(cells)
    return {"cell": np.asarray(cells, np.int64), "ret": np.asarray(rets, np.float32),
            "len": np.asarray(lens, np.int32), "id": np.arange(first, first + n, dtype=np.int64)}


def held(buf: rv.ReplayBuffer) -> Dict[int, int]:
    keys = buf._table.stored_keys()
    return dict(zip(buf._table.slots_of(keys).tolist(), buf.get(keys)["id"].tolist()))


@settings(max_examples=80, deadline=None)
@given(stream=st.lists(st.tuples(st.integers(-3, 6), st.sampled_from([0.0, 0.5, 0.5, 1.0, 2.0]),
                                 st.integers(0, 3)), min_size=1, max_size=80),
       capacity=st.integers(1, 8), order=st.sampled_from(["min", "max"]),
       cuts=st.lists(st.integers(1, 7), min_size=1, max_size=20))
def test_every_decision_matches_the_model(stream, capacity, order, cuts):
    buf, model = make(capacity, order=order), ArchiveModel(capacity, order == "min")
    start, k = 0, 0
    while start < len(stream):
        chunk = stream[start:start + cuts[k % len(cuts)]]
        k += 1
        want = sum(model.offer(c, r, t, start + j) for j, (c, r, t) in enumerate(chunk))
        got = buf.extend(**items(*zip(*chunk), first=start))
        assert got == want
        start += len(chunk)
        assert held(buf) == model.slots()
        cells = sorted(model.entries)
        keys = buf.writer.lookup(cells + [99])
        assert keys[-1].item() == -1
        assert buf.get(keys[:-1])["id"].tolist() == [model.entries[c][3] for c in cells]


def test_it_holds_the_lexicographic_best_per_key_over_the_stream():
    rng = np.random.default_rng(5)
    n, keys = 50_000, 2_000
    cells = rng.integers(0, keys, n)
    rets = rng.integers(0, 20, n).astype(np.float32)  # many ties on the score
    lens = rng.integers(1, 6, n)
    buf = make(keys)
    for at in range(0, n, 256):
        buf.extend(**items(cells[at:at + 256], rets[at:at + 256], lens[at:at + 256], at))
    best: Dict[int, tuple] = {}
    for i in range(n):  # the rule: higher return, then shorter, then newer
        rank = (rets[i], -lens[i], i)
        if cells[i] not in best or rank > best[cells[i]]:
            best[cells[i]] = rank
    got = buf.get(buf.writer.lookup(np.array(sorted(best))))
    assert got["id"].tolist() == [best[c][2] for c in sorted(best)]
    assert len(buf) == len(best)


def test_a_worse_insert_changes_nothing_held():
    buf = make(4)
    buf.extend(**items([1, 2], [1.0, 1.0], [3, 3]))
    keys_before, rows_before = buf._table.stored_keys(), buf.get(buf._table.stored_keys())
    assert buf.extend(**items([1, 2, 2], [0.5, 1.0, 1.0], [1, 4, 9], first=10)) == 0  # lower, longer
    assert np.array_equal(buf._table.stored_keys(), keys_before)
    after = buf.get(keys_before)
    assert all(torch.equal(after[f], rows_before[f]) for f in SPEC)
    assert buf.stats()["keyed_archive.rejected"] == 3


def test_a_full_archive_evicts_its_worst_key():
    buf = make(3, tiebreak=None)
    buf.extend(**items([1, 2, 3], [3.0, 1.0, 2.0], [0, 0, 0]))
    assert buf.extend(**items([4], [0.5], [0], first=3)) == 0  # below the worst: dropped
    assert buf.extend(**items([5], [1.0], [0], first=4)) == 1  # equal to the worst: the newer wins
    assert buf.writer.lookup([1, 2, 3, 4, 5]).tolist()[1] == -1  # key 2 left
    assert sorted(buf.get(buf._table.stored_keys())["cell"].tolist()) == [1, 3, 5]


def test_a_replaced_entry_gets_a_new_key_and_old_keys_go_stale():
    buf = make(4)
    buf.extend(**items([7], [1.0], [5]))
    old = buf.writer.lookup([7])
    buf.extend(**items([7], [2.0], [5], first=1))
    new = buf.writer.lookup([7])
    assert old.item() != new.item() and buf.get(new)["id"].item() == 1
    with pytest.raises(IndexError, match="no longer stored"):
        buf.get(old)


def test_a_hundred_thousand_keys():
    rng = np.random.default_rng(2)
    n = 400_000
    cells = rng.integers(0, 100_000, n)
    rets = rng.random(n).astype(np.float32)
    buf = make(100_000, tiebreak=None)
    for at in range(0, n, 4096):
        c = cells[at:at + 4096]
        buf.extend(**items(c, rets[at:at + 4096], np.zeros(len(c)), at))
    best = np.full(100_000, -1.0)
    np.maximum.at(best, cells, rets)
    seen = np.flatnonzero(best >= 0)
    assert len(buf) == len(seen)
    got = buf.get(buf.writer.lookup(seen))
    assert np.array_equal(got["ret"].numpy(), best[seen].astype(np.float32))


def test_nan_is_refused_and_nothing_changes():
    buf = make(4)
    buf.extend(**items([1], [1.0], [1]))
    before = buf.stats()
    with pytest.raises(ValueError, match="NaN"):
        buf.extend(**items([2, 3], [1.0, float("nan")], [1, 1], first=1))
    assert buf.stats() == before and len(buf) == 1


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(key="ret", score="ret"), TypeError, "integer scalar"),
    (dict(key="cell", score="nope"), ValueError, "not in the spec"),
    (dict(key="cell", score="ret", tiebreak="nope"), ValueError, "not in the spec"),
])
def test_bad_settings_say_what_is_wrong(kwargs, error, match):
    with pytest.raises(error, match=match):
        rv.ReplayBuffer(8, SPEC, writer=rv.KeyedArchive(**kwargs))


def test_bad_part_arguments_and_refused_combinations():
    with pytest.raises(ValueError, match="tiebreak_order"):
        rv.KeyedArchive("cell", "ret", tiebreak_order="smallest")
    with pytest.raises(TypeError):
        rv.KeyedArchive("", "ret")
    with pytest.raises(ValueError, match="max_times_sampled"):
        rv.ReplayBuffer(8, SPEC, writer=rv.KeyedArchive("cell", "ret"), max_times_sampled=2)
    fifo = rv.ReplayBuffer(8, SPEC)
    fifo.extend(**items([1], [1.0], [1]))
    with pytest.raises(ValueError, match="no user keys"):
        fifo._core.lookup(np.array([1]))


def test_ranked_fields_cannot_be_updated_in_place():
    buf = make(4)
    buf.extend(**items([1, 2], [1.0, 2.0], [1, 1]))
    keys = buf._table.stored_keys()
    for name in ("cell", "ret", "len"):
        with pytest.raises(ValueError, match="keyed_archive writer ranks"):
            buf.update_fields(keys, **{name: np.zeros(2, SPEC[name][0])})
    assert buf.update_fields(keys, id=np.array([5, 6])) == 0


def test_a_checkpoint_of_an_archive_with_free_slots(tmp_path):
    buf = make(16)
    buf.extend(**items(np.arange(100) % 10, np.arange(100), np.zeros(100)))  # 10 keys, each rewritten
    buf.save(tmp_path / "a.rvr")
    again = rv.ReplayBuffer.load(tmp_path / "a.rvr")
    assert len(again) == 10
    assert sorted(again.get(again._table.stored_keys())["ret"].tolist()) == list(range(90, 100))
    assert again.extend(**items([3, 42], [1000.0, 1.0], [0, 0], first=200)) == 2
