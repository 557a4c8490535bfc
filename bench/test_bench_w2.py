"""W2, prioritized replay: one step = sample(256) with weights + update_priorities(256).

Run with ``python -m pytest bench/test_bench_w2.py`` (pytest-benchmark).
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import pytest
import torch

from reverie.bench import runner as R

CASES = R.bench_cases((10_000, 1_000_000))


@pytest.fixture(scope="module", params=CASES, ids=[f"{i}-{R.human_count(c)}" for i, c in CASES])
def w2(request: pytest.FixtureRequest) -> Iterator[R.Adapter]:
    yield R.filled_case(request.param, R.W1_SPEC, True)


@pytest.mark.benchmark(group="W2 step 256")
def test_w2_step_256(benchmark, w2: R.Adapter) -> None:
    pool = np.random.default_rng(1).random((64, 256), dtype=np.float32) + np.float32(1e-3)
    prios: Any = torch.from_numpy(pool) if w2.key == "reverie" else pool
    counter = [0]

    def step() -> None:
        counter[0] += 1
        w2.step(256, prios[counter[0] & 63])

    benchmark(step)
