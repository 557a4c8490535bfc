"""The benchmark baselines are correct, so that comparing against them is fair."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reverie.bench.baselines import (
    DequeReplay,
    NumpyPER,
    NumpyReplay,
    PythonSumTreePER,
    tree_size,
)

SPEC = {
    "obs": (np.float32, (17,)),
    "action": (np.float32, (6,)),
    "reward": (np.float32, ()),
    "next_obs": (np.float32, (17,)),
    "done": (np.bool_, ()),
}


def columns(n: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [
        rng.standard_normal((n, 17), dtype=np.float32),
        rng.standard_normal((n, 6), dtype=np.float32),
        rng.standard_normal(n, dtype=np.float32),
        rng.standard_normal((n, 17), dtype=np.float32),
        rng.random(n) < 0.5,
    ]


def check_trees(sums: np.ndarray, mins: np.ndarray, leaves: int) -> None:
    for i in range(1, leaves):
        assert sums[i] == pytest.approx(sums[2 * i] + sums[2 * i + 1], rel=1e-12, abs=0)
        assert mins[i] == min(mins[2 * i], mins[2 * i + 1])


def test_tree_size() -> None:
    assert [tree_size(c) for c in (1, 2, 3, 1000, 1024, 1025)] == [1, 2, 4, 1024, 1024, 2048]
    with pytest.raises(ValueError):
        tree_size(0)


# ---- uniform ----------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [DequeReplay, NumpyReplay])
def test_uniform_shapes_and_dtypes(cls: type) -> None:
    buf = cls(100, SPEC, seed=0)
    cols = columns(150)
    buf.extend(*(c[:50] for c in cols))
    for i in range(50, 150):
        buf.add(*(c[i] if c.ndim > 1 else c[i].item() for c in cols))
    assert len(buf) == 100
    batch = buf.sample(32)
    assert list(batch) == list(SPEC)
    for name, (dtype, shape) in SPEC.items():
        t = batch[name]
        assert isinstance(t, torch.Tensor)
        assert tuple(t.shape) == (32, *shape)
        assert t.dtype == torch.from_numpy(np.zeros(0, dtype)).dtype


@pytest.mark.parametrize("cls", [DequeReplay, NumpyReplay])
def test_uniform_keeps_the_newest_items(cls: type) -> None:
    buf = cls(100, SPEC, seed=1)
    cols = columns(250, seed=1)
    buf.extend(*(c[:130] for c in cols))  # wraps once
    buf.extend(*(c[130:250] for c in cols))  # wraps again
    newest = {row.tobytes() for row in cols[0][150:]}
    batch = buf.sample(100)
    assert {row.numpy().tobytes() for row in batch["obs"]} <= newest
    # every field of a sampled row belongs to the same item
    where = {row.tobytes(): i for i, row in enumerate(cols[0])}
    for k in range(100):
        i = where[batch["obs"][k].numpy().tobytes()]
        assert np.array_equal(batch["action"][k].numpy(), cols[1][i])
        assert batch["done"][k].item() == cols[4][i]


def test_deque_samples_distinct_items() -> None:
    buf = DequeReplay(64, SPEC, seed=2)
    buf.load(*columns(64, seed=2))
    obs = buf.sample(64)["obs"]
    assert len({row.numpy().tobytes() for row in obs}) == 64


def test_numpy_extend_larger_than_capacity() -> None:
    buf = NumpyReplay(10, SPEC)
    cols = columns(25)
    buf.extend(*cols)
    assert len(buf) == 10 and buf.ptr == 25 % 10
    assert np.array_equal(np.roll(buf.columns[0], -buf.ptr, axis=0), cols[0][15:])


# ---- prioritized ------------------------------------------------------------------------


def filled_per(cls: type, capacity: int, n: int, seed: int = 0, **kw: float):
    buf = cls(capacity, SPEC, seed=seed, **kw)
    buf.extend(*columns(n, seed))
    return buf


def brute_force(leaves: np.ndarray, u: np.ndarray) -> np.ndarray:
    """The slot whose prefix-sum interval [c_{i-1}, c_i) holds each u."""
    return np.searchsorted(np.cumsum(leaves), u, side="right")


def test_numpy_descent_matches_cumulative_sum_search_exactly() -> None:
    # alpha=1, eps=0 and integer priorities: every tree sum is exact in float64.
    buf = filled_per(NumpyPER, 1000, 1000, alpha=1.0, eps=0.0)
    rng = np.random.default_rng(3)
    buf.update_priorities(np.arange(1000), rng.integers(1, 10, 1000).astype(float))
    leaves = buf.sum_tree[buf.leaves:buf.leaves + 1000]
    total = buf.sum_tree[1]
    assert total == leaves.sum()
    edges = np.cumsum(leaves)[:-1]
    u = np.concatenate([[0.0], edges, edges - 0.5, rng.uniform(0, total, 500), [total - 1e-9]])
    assert np.array_equal(buf.find_prefix(u), brute_force(leaves, u))


def test_numpy_descent_matches_cumulative_sum_search_float() -> None:
    buf = filled_per(NumpyPER, 3000, 2500, seed=4)
    rng = np.random.default_rng(4)
    for _ in range(20):  # batched updates with repeated slots
        buf.update_priorities(rng.integers(0, 2500, 256), rng.exponential(size=256))
    leaves = buf.sum_tree[buf.leaves:buf.leaves + 2500]
    u = rng.uniform(0, buf.sum_tree[1], 4000)
    cum = np.cumsum(leaves)
    away = np.min(np.abs(u[:, None] - cum[None, :]), axis=1) > 1e-9 * cum[-1]
    assert away.sum() > 3900
    assert np.array_equal(buf.find_prefix(u[away]), brute_force(leaves, u[away]))


def test_numpy_batched_update_keeps_both_trees_consistent() -> None:
    buf = filled_per(NumpyPER, 700, 700, seed=5)
    rng = np.random.default_rng(5)
    expected = np.full(700, 1.0)  # new items: the initial max priority
    running_max = 1.0
    for size in (1, 3, 256, 700, 2000):
        slots = rng.integers(0, 700, size)
        prios = rng.exponential(size=size)
        buf.update_priorities(slots, prios)
        for s, p in zip(slots, prios):  # a repeated slot keeps its last value
            expected[s] = (p + buf.eps) ** buf.alpha
            running_max = max(running_max, expected[s])
        check_trees(buf.sum_tree, buf.min_tree, buf.leaves)
        assert np.allclose(buf.sum_tree[buf.leaves:buf.leaves + 700], expected, rtol=1e-15)
        assert buf.min_tree[1] == pytest.approx(expected.min(), rel=1e-15)
        assert buf.max_priority == pytest.approx(running_max)  # the largest ever stored


def test_numpy_weights_match_the_per_formula() -> None:
    beta = 0.4
    buf = filled_per(NumpyPER, 500, 300, seed=6, beta=beta)
    rng = np.random.default_rng(6)
    buf.update_priorities(np.arange(300), rng.exponential(size=300))
    batch = buf.sample(64)
    q = buf.sum_tree[buf.leaves:buf.leaves + 300]
    p = q / q.sum()
    w_all = (300 * p) ** (-beta)
    expected = w_all[batch["indices"]] / w_all.max()
    assert batch["weights"].dtype == torch.float32
    assert np.allclose(batch["weights"].numpy(), expected, rtol=1e-6)
    assert batch["weights"].max().item() <= 1.0 + 1e-6


def test_numpy_sampling_is_stratified_and_rows_match() -> None:
    buf = filled_per(NumpyPER, 256, 200, seed=7)
    buf.update_priorities(np.arange(200), np.linspace(0.1, 3.0, 200))
    cols = columns(200, seed=7)
    batch = buf.sample(50)
    idx = batch["indices"]
    assert np.all(np.diff(idx) >= 0)  # one draw per equal segment, in order
    assert np.all((idx >= 0) & (idx < 200))
    assert np.array_equal(batch["obs"].numpy(), cols[0][idx])
    assert np.array_equal(batch["done"].numpy(), cols[4][idx])


def test_numpy_sampling_frequencies_follow_priorities() -> None:
    buf = filled_per(NumpyPER, 8, 8, seed=8, alpha=1.0, eps=0.0)
    prios = np.arange(1.0, 9.0)
    buf.update_priorities(np.arange(8), prios)
    counts = np.zeros(8)
    for _ in range(400):
        counts += np.bincount(buf.sample(64)["indices"], minlength=8)
    assert np.allclose(counts / counts.sum(), prios / prios.sum(), atol=0.01)


def test_new_items_get_the_max_priority() -> None:
    for cls in (NumpyPER, PythonSumTreePER):
        buf = filled_per(cls, 16, 4, alpha=0.5, eps=0.0)
        buf.update_priorities([1], [9.0])  # q = 3
        cols = columns(1, seed=9)
        buf.add(*(c[0] for c in cols))
        assert buf.sum_tree[buf.leaves + 4] == pytest.approx(3.0)


def test_python_per_matches_numpy_per() -> None:
    rng = np.random.default_rng(10)
    py = filled_per(PythonSumTreePER, 300, 300, seed=10)
    npy = filled_per(NumpyPER, 300, 300, seed=10)
    for _ in range(5):
        slots, prios = rng.integers(0, 300, 64), rng.exponential(size=64)
        py.update_priorities(slots, prios)
        npy.update_priorities(slots, prios)
    # numpy's vectorised pow and Python's may differ in the last bit
    assert np.allclose(py.sum_tree, npy.sum_tree, rtol=1e-12)
    assert np.allclose(py.min_tree, npy.min_tree, rtol=1e-15)
    u = rng.uniform(0, npy.sum_tree[1], 200)
    assert [py._retrieve(x) for x in u] == npy.find_prefix(u).tolist()

    batch = py.sample(32)
    q = np.array(py.sum_tree[py.leaves:py.leaves + 300])
    w_all = (300 * q / q.sum()) ** (-py.beta)
    assert np.allclose(batch["weights"].numpy(), w_all[batch["indices"]] / w_all.max(), rtol=1e-6)
    assert tuple(batch["obs"].shape) == (32, 17) and batch["obs"].dtype == torch.float32
    assert tuple(batch["done"].shape) == (32,) and batch["done"].dtype == torch.bool


def test_load_equals_extend() -> None:
    cols = columns(90, seed=11)
    for cls in (PythonSumTreePER, NumpyPER):
        a, b = cls(100, SPEC, seed=0), cls(100, SPEC, seed=0)
        a.extend(*cols)
        b.load(*cols)
        assert len(a) == len(b) == 90 and a.ptr == b.ptr
        assert np.array_equal(np.asarray(a.sum_tree), np.asarray(b.sum_tree))
        assert np.array_equal(np.asarray(a.min_tree), np.asarray(b.min_tree))
    d1, d2 = DequeReplay(50, SPEC), DequeReplay(50, SPEC)
    d1.extend(*cols)
    d2.load(*cols)
    assert len(d1) == len(d2) == 50
    assert all(np.array_equal(x[0], y[0]) and x[4] == y[4] for x, y in zip(d1.buffer, d2.buffer))
