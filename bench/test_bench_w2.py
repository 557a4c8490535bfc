"""W2, prioritized replay: one step = sample(256) with weights + update_priorities(256).

Run with ``python -m pytest bench/test_bench_w2.py`` (pytest-benchmark).
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import pytest
import torch

from reverie.bench import workloads as W
from reverie.bench.harness import human_count

CASES = W.bench_cases((10_000, 1_000_000))


@pytest.fixture(scope="module", params=CASES, ids=[f"{i}-{human_count(c)}" for i, c in CASES])
def w2(request: pytest.FixtureRequest) -> Iterator[W.Adapter]:
    yield W.filled_case(request.param, W.W1_SPEC, True)


@pytest.mark.benchmark(group="W2 step 256")
def test_w2_step_256(benchmark, w2: W.Adapter) -> None:
    pool = np.random.default_rng(1).random((64, 256), dtype=np.float32) + np.float32(1e-3)
    prios: Any = torch.from_numpy(pool) if w2.key == "reverie" else pool
    counter = [0]

    def step() -> None:
        counter[0] += 1
        w2.step(256, prios[counter[0] & 63])

    benchmark(step)
