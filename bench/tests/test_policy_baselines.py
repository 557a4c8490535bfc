"""The admission and retention baselines (reverie.bench.policy_baselines) do what they claim,
so that timing reverie's reservoir and top-k writers against them is fair.

Statistical tests use fixed seeds (one per stream) and state their tolerance: a count of S
Bernoulli(p) trials must lie within ``SIGMAS`` standard deviations, sqrt(S p (1 - p)), of
S p (a false alarm per count has probability below 1e-6 for an exact implementation; the
seeds are fixed, so a run is reproducible). The off-by-one variants named in each test fall
many standard deviations outside.
"""

from __future__ import annotations

import math
from typing import Any, Callable, List

import numpy as np
import pytest

from reverie.bench.policy_baselines import AvalancheReservoir, HeapqTopK, NumpyReservoir

SIGMAS = 5.0
ID_SPEC = {"id": (np.int64, ())}
ROW_SPEC = {"id": (np.int64, ()), "obs": (np.float32, (3,)), "score": (np.float32, ())}
RESERVOIRS = [NumpyReservoir, AvalancheReservoir]


def within(count: float, trials: int, p: float) -> bool:
    return abs(count - trials * p) <= SIGMAS * math.sqrt(trials * p * (1 - p))


def offer(buf: Any, ids: np.ndarray, batch: int) -> List[int]:
    """Offers ``ids`` in batches of ``batch``; the return of each extend."""
    return [buf.extend(ids[i:i + batch]) for i in range(0, len(ids), batch)]


def rows(n: int, seed: int = 0) -> List[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [np.arange(n, dtype=np.int64), rng.standard_normal((n, 3), dtype=np.float32),
            rng.permutation(n).astype(np.float32)]


def held_ids(buf: Any) -> List[int]:
    return sorted(buf.held()["id"].tolist())


# ---- both reservoirs --------------------------------------------------------------------


@pytest.mark.parametrize("cls", RESERVOIRS)
def test_holds_everything_until_full(cls: type) -> None:
    buf = cls(10, ID_SPEC, seed=0)
    assert offer(buf, np.arange(7), 3) == [3, 3, 1]
    assert len(buf) == 7 and held_ids(buf) == list(range(7))
    buf.extend(np.arange(7, 10))
    assert len(buf) == 10 and held_ids(buf) == list(range(10))


@pytest.mark.parametrize("cls", RESERVOIRS)
def test_inclusion_probability_is_k_over_n(cls: type) -> None:
    """After n offers every item is held with probability k/n (S = 4000 streams, k = 5,
    n = 40, batches of 7); and the count of the held pairs {i, j} matches
    k(k-1)/(n(n-1)) for every pair."""
    k, n, streams = 5, 40, 4000
    counts = np.zeros(n)
    pairs = np.zeros((n, n))
    for seed in range(streams):
        buf = cls(k, ID_SPEC, seed=seed)
        offer(buf, np.arange(n), 7)
        ids = np.array(held_ids(buf))
        assert len(ids) == k and len(set(ids.tolist())) == k
        counts[ids] += 1
        pairs[np.ix_(ids, ids)] += 1
    bad = [i for i in range(n) if not within(counts[i], streams, k / n)]
    assert not bad, f"items {bad}: counts {counts[bad]}, expected {streams * k / n:.0f}"
    p2 = k * (k - 1) / (n * (n - 1))
    off = ~np.eye(n, dtype=bool)
    bad_pairs = np.argwhere(off & ~np.vectorize(lambda c: within(c, streams, p2))(pairs))
    assert not len(bad_pairs), f"pairs {bad_pairs[:5].tolist()}, expected {streams * p2:.0f}"


@pytest.mark.parametrize("cls", RESERVOIRS)
@pytest.mark.parametrize("batch", [1, 4])
def test_first_item_after_full_is_kept_with_k_over_k_plus_1(cls: type, batch: int) -> None:
    """k = 3, offer k + 1 items: the last one is held with probability 3/4 over 6000 streams
    (tolerance 5 sigma = 168 of 4500; the off-by-ones give 3600 (k/(k+2)) or 6000 (always))."""
    k, streams = 3, 6000
    kept = 0
    for seed in range(streams):
        buf = cls(k, ID_SPEC, seed=seed)
        offer(buf, np.arange(k + 1), batch)
        kept += k in held_ids(buf)
    assert within(kept, streams, k / (k + 1)), kept


# ---- NumpyReservoir ---------------------------------------------------------------------


def algorithm_r(k: int, n: int, seed: int) -> List[int]:
    """Algorithm R straight from its definition, with the same generator's draws."""
    rng = np.random.default_rng(seed)
    held = list(range(min(k, n)))
    for offer_n in range(k + 1, n + 1):  # the n-th offer, 1-based: item n - 1
        j = int(rng.integers(0, offer_n))
        if j < k:
            held[j] = offer_n - 1
    return held


@pytest.mark.parametrize("batch", [1, 5, 64, 1000])
def test_numpy_reservoir_is_algorithm_r_exactly(batch: int) -> None:
    k, n = 17, 500
    buf = NumpyReservoir(k, ROW_SPEC, seed=3)
    cols = rows(n, seed=3)
    for i in range(0, n, batch):
        buf.extend(*(c[i:i + batch] for c in cols))
    assert buf.offered == n and len(buf) == k
    want = algorithm_r(k, n, 3)
    held = buf.held()
    assert held["id"].tolist() == want  # row by row: row j holds the item Algorithm R put there
    assert np.array_equal(held["obs"], cols[1][want])
    assert np.array_equal(held["score"], cols[2][want])


def test_numpy_reservoir_batched_offers_equal_sequential_offers() -> None:
    k, n = 13, 400
    cols = rows(n, seed=4)
    one, batched = NumpyReservoir(k, ROW_SPEC, seed=9), NumpyReservoir(k, ROW_SPEC, seed=9)
    kept_one = sum(one.extend(*(c[i:i + 1] for c in cols)) for i in range(n))
    sizes = np.random.default_rng(0).integers(1, 60, 100)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    kept_batched = sum(batched.extend(*(c[a:b] for c in cols))
                       for a, b in zip(starts[:-1], starts[1:]) if a < n)
    assert kept_one == kept_batched and one.offered == batched.offered == n
    for a, b in zip(one.columns, batched.columns):
        assert np.array_equal(a, b)


# ---- AvalancheReservoir -----------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 7, 100, 1000])
def test_avalanche_reservoir_keeps_the_k_largest_keys(batch: int) -> None:
    k, n, seed = 25, 700, 5
    buf = AvalancheReservoir(k, ROW_SPEC, seed=seed)
    cols = rows(n, seed=seed)
    stored = [buf.extend(*(c[i:i + batch] for c in cols)) for i in range(0, n, batch)]
    rng = np.random.default_rng(seed)  # the keys it drew: one random(b) per batch, in order
    keys = np.concatenate([rng.random(min(batch, n - i)) for i in range(0, n, batch)])
    top = np.argsort(-keys, kind="stable")[:k]
    held = buf.held()
    assert held["id"].tolist() == top.tolist()  # sorted by key, largest first
    assert np.array_equal(buf.keys, keys[top])
    assert np.array_equal(held["obs"], cols[1][top])
    last = (len(stored) - 1) * batch  # the first item of the last batch
    assert stored[-1] == int(np.count_nonzero(top >= last))  # its items now held


def test_avalanche_reservoir_reports_new_items_held() -> None:
    buf = AvalancheReservoir(4, ID_SPEC, seed=1)
    assert buf.extend(np.arange(4)) == 4
    got = buf.extend(np.arange(4, 12))
    assert got == sum(1 for i in held_ids(buf) if i >= 4)


# ---- HeapqTopK --------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 17, 256])
def test_topk_holds_exactly_the_k_best_scores(batch: int) -> None:
    k, n = 50, 3000
    cols = rows(n, seed=6)  # distinct scores: a permutation of 0 .. n - 1
    buf = HeapqTopK(k, ROW_SPEC, score="score")
    for i in range(0, n, batch):
        buf.extend(*(c[i:i + batch] for c in cols))
    held = buf.held()
    assert len(buf) == k and buf.offered == n
    assert sorted(held["score"].tolist()) == sorted(cols[2].tolist())[-k:]
    assert np.array_equal(cols[2][held["id"]], held["score"])  # every row belongs to its item
    assert np.array_equal(cols[1][held["id"]], held["obs"])
    assert sorted(buf.heap) == sorted((float(s), slot) for slot, s in enumerate(held["score"]))


def test_topk_tie_rule() -> None:
    """A score equal to the minimum of a full buffer is dropped; among held items sharing the
    minimum, the one in the lowest slot is replaced first."""
    spec = {"id": (np.int64, ()), "score": (np.float64, ())}
    buf = HeapqTopK(3, spec, score="score")

    def put(ids: List[int], scores: List[float]) -> int:
        return buf.extend(np.array(ids), np.array(scores))

    assert put([0, 1, 2], [5.0, 2.0, 2.0]) == 3
    assert put([3], [2.0]) == 0  # ties the minimum: dropped
    assert buf.held()["id"].tolist() == [0, 1, 2]
    assert put([4], [3.0]) == 1  # replaces the minimum in the lowest slot: slot 1
    assert buf.held()["id"].tolist() == [0, 4, 2]
    assert put([5], [4.0]) == 1  # now the only 2.0 is in slot 2
    assert buf.held()["id"].tolist() == [0, 4, 5]
    assert put([6], [1.0]) == 0
    assert buf.held()["score"].tolist() == [5.0, 3.0, 4.0]


def test_topk_batched_equals_sequential_and_a_slot_keeps_its_last_item() -> None:
    spec = {"id": (np.int64, ()), "score": (np.float64, ())}
    scores = np.random.default_rng(7).integers(0, 20, 500).astype(np.float64)  # many ties
    ids = np.arange(500)
    one, batched = HeapqTopK(11, spec), HeapqTopK(11, spec)
    n_one = sum(one.extend(ids[i:i + 1], scores[i:i + 1]) for i in range(500))
    n_batched = sum(batched.extend(ids[i:i + 64], scores[i:i + 64]) for i in range(0, 500, 64))
    assert n_one == n_batched
    assert one.heap == batched.heap
    for a, b in zip(one.columns, batched.columns):
        assert np.array_equal(a, b)
    single = HeapqTopK(1, spec)
    assert single.extend(np.arange(3), np.array([1.0, 2.0, 3.0])) == 3  # each beat the last
    assert single.held()["id"].tolist() == [2]


@pytest.mark.parametrize("make", [
    lambda: HeapqTopK(4, {"id": (np.int64, ())}, score="score"),
    lambda: HeapqTopK(4, {"score": (np.float32, (2,))}, score="score"),
    lambda: NumpyReservoir(0, ID_SPEC),
])
def test_bad_arguments_are_refused(make: Callable[[], Any]) -> None:
    with pytest.raises(ValueError):
        make()


@pytest.mark.parametrize("cls", [NumpyReservoir, AvalancheReservoir, HeapqTopK])
def test_extend_checks_its_columns(cls: type) -> None:
    buf = cls(4, ROW_SPEC)
    with pytest.raises(ValueError, match="one column per field"):
        buf.extend(np.arange(3))
    with pytest.raises(ValueError, match="different lengths"):
        buf.extend(np.arange(3), np.zeros((2, 3), np.float32), np.zeros(3, np.float32))
    assert len(buf) == 0 and buf.offered == 0
