"""Property tests: random call sequences on small buffers, checked against tests/reference.py.

After every call: the stored rows (via `columns` and len), eviction order, stored priorities,
stale-update counts. For every sample: the keys are stored items, the rows are those items'
rows, distinctness without replacement, and for prioritized sampling the stratification, q > 0
and the importance weights.

Tolerances. The priority tree is 64-bit fixed point: one unit is 2^-scale_exp, and the scale
keeps the largest q seen (the running max) between 2^-5 and 1 of the per-leaf budget
2^62 / capacity, so one unit is at most max_q * capacity * 2^-57; a stored q is within about
1.5 units of the exact one (round to nearest, then at most a floor per rescale). The tests
allow 16 units (`unit_bound`). Weights come out as float32: relative 1e-6, plus what the
fixed-point rounding of the two q's involved can move them.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import ReferenceBuffer, assert_batches_equal, assert_tensor_equal

import reverie as rv

SPEC = {
    "k": rv.Field("int64"),
    "v": rv.Field("float32", (2,)),
    "b": rv.Field("bool", (3,)),
    "h": rv.Field("float16", (2, 2)),
    "u": rv.Field("uint8"),
}
NP_DTYPES = {"k": np.int64, "v": np.float32, "b": np.bool_, "h": np.float16, "u": np.uint8}


def items(first: int, n: int) -> dict:
    """n items with ids first..first+n-1; every field is a function of the id, so a misplaced
    or torn row is visible in any field."""
    i = np.arange(first, first + n)
    return {
        "k": i.astype(np.int64),
        "v": np.stack([i * 0.5, -i], axis=1).astype(np.float32),
        "b": np.stack([(i >> j) & 1 for j in range(3)], axis=1).astype(bool),
        "h": np.stack([i % 7, i % 11, i % 13, -(i % 5)], axis=1).astype(np.float16).reshape(n, 2, 2),
        "u": (i % 251).astype(np.uint8),
    }


def unit_bound(ref: ReferenceBuffer) -> float:
    return 16 * ref.max_q * ref.capacity * 2.0**-57


def check_storage(buf: rv.ReplayBuffer, ref: ReferenceBuffer) -> None:
    assert len(buf) == len(ref)
    n = len(ref)
    cols = buf.columns
    for name, field in SPEC.items():
        want = ref.column(name, NP_DTYPES[name], field.shape)
        assert_tensor_equal(cols[name][:n], torch.from_numpy(want), f"column {name}")
    assert buf.stale_updates == ref.stale_updates
    if ref.prioritized:
        got = buf.priorities().numpy()
        want = ref.stored_q()
        assert got.shape == (ref.capacity,)
        np.testing.assert_array_equal(got == 0, want == 0, err_msg=f"zero slots: {got} vs {want}")
        tol = 1e-12 * want + unit_bound(ref)
        assert (np.abs(got - want) <= tol).all(), f"priorities {got} != {want} (tol {tol})"


def check_sample(buf: rv.ReplayBuffer, ref: ReferenceBuffer, batch_size: int, replacement: bool) -> list:
    if not ref.can_sample() or (not replacement and batch_size > len(ref)):
        with pytest.raises(ValueError):
            buf.sample(batch_size)
        return []
    b = buf.sample(batch_size)
    keys = b.indices.tolist()
    assert len(keys) == batch_size
    for j, key in enumerate(keys):
        assert ref.is_stored(key), f"key {key} is not stored (written {ref.written})"
        row = ref.row(key)
        for name in SPEC:
            assert_tensor_equal(b[name][j], torch.from_numpy(np.asarray(row[name])), f"{name} of key {key}")
    if not replacement:
        assert len(set(keys)) == batch_size
    if not ref.prioritized:
        assert b.weights is None
        return keys
    slots = [ref.slot_of(k) for k in keys]
    q = ref.stored_q()
    assert all(q[s] > 0 for s in slots), "an item with priority 0 was sampled"
    assert slots == sorted(slots), f"stratified draws must come in slot order: {slots}"
    rtol = ref.capacity * unit_bound(ref) / q.sum() + 1e-12
    for i, s in enumerate(slots):
        assert ref.in_stratum(s, i, batch_size, rtol), f"draw {i} of {batch_size} in slot {s}: q={q}"
    want = ref.weights(keys)
    got = b.weights.numpy().astype(np.float64)
    q_min = q[q > 0].min()
    fixed = ref.beta * unit_bound(ref) * (1 / q_min + 1 / q[slots]) * 1.5
    assert (np.abs(got - want) <= (1e-6 + fixed) * want).all(), f"weights {got} != {want}"
    return keys


samplers = st.one_of(
    st.builds(lambda r: ("uniform", {"replacement": r}), st.booleans()),
    st.builds(lambda a, b, e: ("prioritized", {"alpha": a, "beta": b, "eps": e}),
              st.sampled_from([0.0, 0.5, 0.6, 1.0, 1.7]),
              st.sampled_from([0.0, 0.4, 1.0, 2.0]),
              st.sampled_from([0.0, 1e-6, 0.01, 1.0])),
)
priorities = st.one_of(st.just(0.0), st.floats(1e-3, 1e3), st.integers(0, 50).map(float))


def run_sequence(data, capacity: int, kind: str, config: dict, seed: int) -> None:
    sampler = rv.Uniform(**config) if kind == "uniform" else rv.Prioritized(**config)
    replacement = config.get("replacement", True)
    buf = rv.ReplayBuffer(capacity, spec=SPEC, sampler=sampler, seed=seed)
    ref = ReferenceBuffer(capacity, prioritized=kind == "prioritized", **(config if kind != "uniform" else {}))
    next_id = 0
    sampled: list = []
    ops = ["add", "extend", "sample", "bad_update"]
    if kind == "prioritized":
        ops += ["update", "update", "beta"]
    for _ in range(data.draw(st.integers(1, 30), label="n_ops")):
        op = data.draw(st.sampled_from(ops), label="op")
        if op == "add":
            one = {name: v[0] for name, v in items(next_id, 1).items()}
            buf.add(**one)
            ref.add(one)
            next_id += 1
        elif op == "extend":
            n = data.draw(st.integers(0, 2 * capacity + 2), label="extend n")
            batch = items(next_id, n)
            buf.extend(**batch)
            ref.extend(batch)
            next_id += n
        elif op == "sample":
            b = data.draw(st.integers(1, 2 * capacity + 3), label="batch")
            sampled = check_sample(buf, ref, b, replacement) or sampled
        elif op == "update":
            if ref.written == 0:
                continue
            written_keys = st.integers(0, ref.written - 1).map(ref.key_of)  # stored or stale
            pool = st.sampled_from(sampled) if sampled else written_keys
            key_st = st.one_of(pool, written_keys)
            keys = data.draw(st.lists(key_st, max_size=8), label="keys")
            values = data.draw(st.lists(priorities, min_size=len(keys), max_size=len(keys)),
                               label="priorities")
            stale = buf.update_priorities(torch.tensor(keys, dtype=torch.int64),
                                          torch.tensor(values, dtype=torch.float64))
            assert stale == ref.update_priorities(keys, values)
        elif op == "bad_update":
            # Never written (the next keys), negative, another shard's, or a slot beyond the
            # capacity (when the capacity is no power of two).
            bads = [-1, ref.key_of(ref.written), ref.key_of(ref.written + 5), (1 << 55) | 0]
            slot_room = 1 << (capacity - 1).bit_length()
            if slot_room > capacity:
                bads.append(slot_room - 1)
            bad = data.draw(st.sampled_from(bads), label="bad key")
            expected = IndexError if kind == "prioritized" else ValueError
            with pytest.raises(expected):
                buf.update_priorities([bad], [1.0])
        elif op == "beta":
            beta = data.draw(st.sampled_from([0.0, 0.3, 1.0]), label="beta")
            buf.sampler.beta = beta
            ref.beta = beta
        check_storage(buf, ref)
    # the whole state moves to a fresh buffer and continues identically
    fresh = rv.ReplayBuffer(capacity, sampler=sampler, seed=seed + 1)
    fresh.load_state_dict(buf.state_dict())
    check_storage(fresh, ref)
    if ref.can_sample():
        size = capacity if replacement else len(ref)
        for _ in range(2):
            assert_batches_equal(buf.sample(size), fresh.sample(size))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), capacity=st.integers(1, 20), sampler=samplers,
       seed=st.integers(0, 2**63 - 2))
def test_random_sequences_match_reference(data, capacity, sampler, seed):
    kind, config = sampler
    run_sequence(data, capacity, kind, config, seed)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), capacity=st.integers(1, 20),
       alpha=st.sampled_from([0.0, 0.6, 1.0]), beta=st.sampled_from([0.4, 1.0]),
       eps=st.sampled_from([0.0, 1e-6]), seed=st.integers(0, 2**63 - 2))
def test_prioritized_sequences_match_reference(data, capacity, alpha, beta, eps, seed):
    run_sequence(data, capacity, "prioritized", {"alpha": alpha, "beta": beta, "eps": eps}, seed)


@settings(max_examples=60, deadline=None)
@given(capacity=st.integers(1, 20), chunks=st.lists(st.integers(0, 45), min_size=1, max_size=8))
def test_eviction_order_matches_reference(capacity, chunks):
    """Any mix of extends (0 items, fewer, exactly, more than the capacity) and adds keeps
    exactly the newest `capacity` items, item n in slot n % capacity (the `k` field holds n)."""
    buf = rv.ReplayBuffer(capacity, spec=SPEC, seed=0)
    ref = ReferenceBuffer(capacity)
    first = 0
    for n in chunks:
        batch = items(first, n)
        if n == 1:
            one = {name: v[0] for name, v in batch.items()}
            buf.add(**one)
            ref.add(one)
        else:
            buf.extend(**batch)
            ref.extend(batch)
        first += n
        check_storage(buf, ref)
        stored = buf.columns["k"][: len(buf)].tolist()
        assert sorted(stored) == sorted(ref.insertion_of(k) for k in ref.stored_keys())
        for slot in range(len(ref)):
            assert ref.key_of(buf.columns["k"][slot].item()) == ref.key_of_slot(slot)


def test_reference_self_check():
    """The model itself: slot arithmetic, stale counting, last-wins, weights definition."""
    ref = ReferenceBuffer(3, prioritized=True, alpha=1.0, beta=1.0, eps=0.0)
    ref.extend({"x": np.arange(5)})
    # capacity 3: two slot bits; insertion n has key (n // 3) << 2 | n % 3
    assert [ref.key_of(n) for n in range(5)] == [0, 1, 2, 4, 5]
    assert list(ref.stored_keys()) == [2, 4, 5]
    assert [ref.key_of_slot(s) for s in range(3)] == [4, 5, 2]
    assert ref.insertion_of(3) == -1  # slot 3 of a capacity-3 buffer: not a key
    assert ref.update_priorities([0, 2, 4, 4], [9.0, 1.0, 5.0, 2.0]) == 1
    assert ref.stored_q().tolist() == [2.0, 1.0, 1.0]
    with pytest.raises(IndexError):
        ref.update_priorities([ref.key_of(5)], [1.0])
    with pytest.raises(IndexError):
        ref.update_priorities([3], [1.0])
    with pytest.raises(ValueError):
        ref.update_priorities([2], [math.nan])
    p = ref.probabilities()
    assert p.tolist() == [0.5, 0.25, 0.25]
    # w_i = (N P_i)^-1 / max_j (N P_j)^-1 = P_min / P_i
    assert ref.weights([4, 5, 2]).tolist() == [0.5, 1.0, 1.0]
