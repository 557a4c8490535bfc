"""The class-balanced reservoir (``writer=rv.ClassBalanced(label=...)``, CBRS): decision by
decision against the plain-Python model (tests/memory_reference.py), held counts against the
water-filling min(n_c, tau) of the stream, uniform selection within a class (chi-square),
batched offers equal to one-by-one offers, 10,000 classes, per-class counts, and refusals
that leave the buffer unchanged."""

from __future__ import annotations

from typing import Dict

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from memory_reference import CBRSModel, held_by_slot, water_filling
from scipy import stats

import reverie as rv

SPEC = {"id": ("int64", ()), "y": ("int32", ()), "x": ("float32", (2,))}


def make(capacity: int, seed: int = 0, **kw) -> rv.ReplayBuffer:
    return rv.ReplayBuffer(capacity, SPEC, writer=rv.ClassBalanced(label="y", **kw), seed=seed)


def items(labels: np.ndarray, first: int = 0) -> Dict[str, np.ndarray]:
    i = np.arange(first, first + len(labels))
    return {"id": i.astype(np.int64), "y": np.asarray(labels, np.int32), "x": np.stack([i, -i], 1).astype(np.float32)}


@settings(max_examples=60, deadline=None)
@given(labels=st.lists(st.integers(0, 5), min_size=1, max_size=120), capacity=st.integers(1, 12),
       cuts=st.lists(st.integers(1, 9), min_size=1, max_size=30), seed=st.integers(0, 2**32))
def test_every_decision_matches_the_model(labels, capacity, cuts, seed):
    buf, model = make(capacity, seed), CBRSModel(capacity, seed)
    labels = np.asarray(labels)
    start, k = 0, 0
    while start < len(labels):
        n = cuts[k % len(cuts)]
        k += 1
        chunk = labels[start:start + n]
        want = sum(model.offer(start + j, int(y)) for j, y in enumerate(chunk))
        assert buf.extend(**items(chunk, start)) == want
        start += len(chunk)
        assert held_by_slot(buf) == {s: i for s, i in enumerate(model.slots) if i is not None}
        assert buf.writer.counts() == model.counts()
        if len(buf) and k % 3 == 0:
            buf.sample(3)  # sampling draws from its own stream: decisions do not move


@pytest.mark.parametrize("shape", ["uniform", "zipf"])
def test_held_counts_are_the_water_filling_of_the_stream(shape):
    rng = np.random.default_rng(7)
    classes, capacity = 100, 1000
    if shape == "uniform":
        labels = rng.integers(0, classes, 20_000)
    else:
        p = 1.0 / np.arange(1, classes + 1) ** 1.1
        labels = rng.choice(classes, 20_000, p=p / p.sum())
    buf = make(capacity)
    for at in range(0, len(labels), 256):
        buf.extend(**items(labels[at:at + 256], at))
        seen = labels[:at + 256]
        n = np.bincount(seen, minlength=classes)
        held = np.bincount(buf.get(buf._table.stored_keys())["y"].numpy(), minlength=classes)
        assert (np.abs(held - water_filling(n, capacity)) <= 1).all(), (at, held, water_filling(n, capacity))
        counts = buf.writer.counts()
        assert counts == {c: int(held[c]) for c in range(classes) if n[c]}
    assert buf.writer.offered() == {c: int(v) for c, v in enumerate(np.bincount(labels, minlength=classes)) if v}


def test_selection_within_a_class_is_uniform():
    """A fixed stream (class 0: 200 items, class 1: 20, shuffled once), capacity 40: class 0
    keeps 20 of its 200. Over 2,000 seeds each class-0 item is held 200 times in expectation;
    chi-square over the 200 items (199 dof) at p > 0.001; class 1 is always kept whole."""
    rng = np.random.default_rng(11)
    labels = rng.permutation(np.r_[np.zeros(200, int), np.ones(20, int)])
    ids0 = np.flatnonzero(labels == 0)
    hits = np.zeros(len(labels), int)
    runs = 2000
    for seed in range(runs):
        buf = make(40, seed)
        buf.extend(**items(labels))
        got = buf.get(buf._table.stored_keys())["id"].numpy()
        hits[got] += 1
    assert (hits[labels == 1] == runs).all()
    observed = hits[ids0]
    assert observed.sum() == 20 * runs
    p = stats.chisquare(observed).pvalue
    assert p > 1e-3, (p, observed.min(), observed.max())


def test_a_batch_of_offers_decides_as_the_same_offers_one_by_one():
    rng = np.random.default_rng(3)
    labels = rng.zipf(1.5, 3000) % 50
    a, b = make(200, 5), make(200, 5)
    a.extend(**items(labels))
    add = b.add
    stored = sum(add(**{k: v[j] for k, v in items(labels).items()}) for j in range(len(labels)))
    assert stored == a.stats()["table.written"]
    assert held_by_slot(a) == held_by_slot(b)
    assert a.writer.counts() == b.writer.counts()


def test_ten_thousand_classes_and_more_than_the_memory():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 10_000, 50_000)
    buf = make(5120, max_classes=10_000)
    for at in range(0, len(labels), 10):
        buf.extend(**items(labels[at:at + 10], at))
    n = np.bincount(labels, minlength=10_000)
    held = np.bincount(buf.get(buf._table.stored_keys())["y"].numpy(), minlength=10_000)
    assert len(buf) == 5120
    assert (np.abs(held - water_filling(n, 5120)) <= 1).all()
    assert len(buf.writer.counts()) == int((n > 0).sum())  # every class seen is counted


def snapshot(buf: rv.ReplayBuffer):
    return ({k: v.clone() for k, v in buf.columns.items()}, buf.stats(), buf.writer.counts(), buf.writer.offered())


def test_a_class_beyond_max_classes_is_refused_and_nothing_changes():
    buf = make(8, max_classes=3)
    buf.extend(**items(np.array([0, 1, 2, 0, 1])))
    before = snapshot(buf)
    with pytest.raises(ValueError, match="max_classes = 3"):
        buf.extend(**items(np.array([0, 1, 7, 2]), 5))
    after = snapshot(buf)
    assert all(torch.equal(after[0][k], before[0][k]) for k in before[0]) and after[1:] == before[1:]
    assert buf.extend(**items(np.array([2, 2]), 5)) == 2  # known classes still enter


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(writer=rv.ClassBalanced(label="x")), TypeError, "integer scalar"),
    (dict(writer=rv.ClassBalanced(label="nope")), ValueError, "not in the spec"),
    (dict(writer=rv.ClassBalanced(label="y"), max_times_sampled=1), ValueError, "max_times_sampled"),
])
def test_bad_settings_say_what_is_wrong(kwargs, error, match):
    with pytest.raises(error, match=match):
        rv.ReplayBuffer(8, SPEC, **kwargs)


@pytest.mark.parametrize("bad, error", [(dict(label=""), TypeError), (dict(label="y", max_classes=0), ValueError),
                                        (dict(label="y", max_classes=2**21), ValueError)])
def test_bad_part_arguments(bad, error):
    with pytest.raises(error):
        rv.ClassBalanced(**bad)


def test_the_label_cannot_be_updated_in_place_but_other_fields_can():
    buf = make(8)
    buf.extend(**items(np.array([0, 1, 1, 2])))
    keys = buf._table.stored_keys()
    with pytest.raises(ValueError, match="class_balanced writer counts"):
        buf.update_fields(keys, y=np.zeros(len(keys), np.int32))
    assert buf.update_fields(keys, x=np.ones((len(keys), 2), np.float32)) == 0


def test_config_round_trip_and_repr():
    part = rv.ClassBalanced(label="y", max_classes=100)
    assert rv.ClassBalanced(**part.settings()) == part
    assert "max_classes=100" in repr(part)
    buf = make(8, max_classes=100)
    assert buf.writer == part and buf.writer.counts() == {}
