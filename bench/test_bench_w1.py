"""W1, MuJoCo-like transitions: single add, batched add of 256, uniform sample(256).

Run with ``python -m pytest bench/test_bench_w1.py`` (pytest-benchmark). Buffers are
filled to capacity once per (implementation, capacity) and shared by the three tests.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import pytest

from reverie.bench import runner as R

CASES = R.bench_cases((10_000, 1_000_000))
ADDS_PER_CALL = 100


@pytest.fixture(scope="module", params=CASES, ids=[f"{i}-{R.human_count(c)}" for i, c in CASES])
def w1(request: pytest.FixtureRequest) -> Iterator[R.Adapter]:
    yield R.filled_case(request.param, R.W1_SPEC, False)


@pytest.mark.benchmark(group="W1 add x100")
def test_w1_add_single(benchmark, w1: R.Adapter) -> None:
    """``ADDS_PER_CALL`` single-item ``add`` calls per round."""
    rows = w1.rows(R.make_columns(R.W1_SPEC, ADDS_PER_CALL, np.random.default_rng(1)))
    benchmark.extra_info["items_per_call"] = ADDS_PER_CALL
    benchmark(w1.add_loop, rows)


@pytest.mark.benchmark(group="W1 extend 256")
def test_w1_extend_256(benchmark, w1: R.Adapter) -> None:
    batch = w1.batch(R.make_columns(R.W1_SPEC, 256, np.random.default_rng(2)))
    benchmark.extra_info["items_per_call"] = 256
    benchmark(w1.extend, batch)


@pytest.mark.benchmark(group="W1 sample 256")
def test_w1_sample_256(benchmark, w1: R.Adapter) -> None:
    out = benchmark(w1.sample, 256)
    assert tuple(out["obs"].shape) == (256, 17)
