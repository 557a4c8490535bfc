"""W1, MuJoCo-like transitions: single add, batched add of 256, uniform sample(256).

Run with ``python -m pytest bench/test_bench_w1.py`` (pytest-benchmark). Buffers are
filled to capacity once per (implementation, capacity) and shared by the three tests.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import pytest

from reverie.bench import workloads as W
from reverie.bench.harness import human_count

CASES = W.bench_cases((10_000, 1_000_000))
ADDS_PER_CALL = 100


@pytest.fixture(scope="module", params=CASES, ids=[f"{i}-{human_count(c)}" for i, c in CASES])
def w1(request: pytest.FixtureRequest) -> Iterator[W.Adapter]:
    yield W.filled_case(request.param, W.W1_SPEC, False)


@pytest.mark.benchmark(group="W1 add x100")
def test_w1_add_single(benchmark, w1: W.Adapter) -> None:
    """``ADDS_PER_CALL`` single-item ``add`` calls per round."""
    rows = w1.rows(W.make_columns(W.W1_SPEC, ADDS_PER_CALL, np.random.default_rng(1)))
    benchmark.extra_info["items_per_call"] = ADDS_PER_CALL
    benchmark(w1.add_loop, rows)


@pytest.mark.benchmark(group="W1 extend 256")
def test_w1_extend_256(benchmark, w1: W.Adapter) -> None:
    batch = w1.batch(W.make_columns(W.W1_SPEC, 256, np.random.default_rng(2)))
    benchmark.extra_info["items_per_call"] = 256
    benchmark(w1.extend, batch)


@pytest.mark.benchmark(group="W1 sample 256")
def test_w1_sample_256(benchmark, w1: W.Adapter) -> None:
    out = benchmark(w1.sample, 256)
    assert tuple(out["obs"].shape) == (256, 17)
