"""W3, Atari-like frames u8[4,84,84]: sample(32) and sample(256), gathered bytes.

Run with ``python -m pytest bench/test_bench_w3.py`` (pytest-benchmark); each result's
``extra_info`` holds the bytes gathered per call (GB/s = bytes / mean time / 1e9).
"""

from __future__ import annotations

from typing import Iterator

import pytest

from reverie.bench import workloads as W
from reverie.bench.harness import human_count

CASES = W.bench_cases((10_000, 50_000), exclude=("python",))


@pytest.fixture(scope="module", params=CASES, ids=[f"{i}-{human_count(c)}" for i, c in CASES])
def w3(request: pytest.FixtureRequest) -> Iterator[W.Adapter]:
    yield W.filled_case(request.param, W.W3_SPEC, False)


@pytest.mark.parametrize("batch_size", [32, 256])
def test_w3_sample(benchmark, w3: W.Adapter, batch_size: int) -> None:
    benchmark.group = f"W3 sample {batch_size}"
    benchmark.extra_info["bytes_per_call"] = batch_size * W.item_bytes(W.W3_SPEC)
    out = benchmark(w3.sample, batch_size)
    assert tuple(out["obs"].shape) == (batch_size, 4, 84, 84)
