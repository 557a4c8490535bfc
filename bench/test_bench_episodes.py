"""Episodes (issue 4): reverie's EpisodeBuffer against the numpy episode buffer.

Run with ``python -m pytest bench/test_bench_episodes.py`` (pytest-benchmark). The figures
with repeats, ratios, targets and the memory comparison come from
``python -m reverie.bench --workloads episodes``. Buffers hold 8 env streams written
1.25 laps of random episodes (100-1000 steps); sizes are small here so the suite runs fast:
W1 fields at capacity 100k, W3 frames (u8[84,84], frame_stack=4) at capacity 10k.
"""

from __future__ import annotations

from typing import Any, Iterator

import pytest

from reverie.bench import episodes as E
from reverie.bench.harness import Cell, summary
from reverie.bench.workloads import Settings

W1_CAPACITY = 100_000
W3_CAPACITY = 10_000
IMPLS = ["numpy"] + (["reverie"] if E.unavailable() is None else [])
W3_KINDS = ["numpy"] + (["reverie", "naive"] if E.unavailable() is None else [])


@pytest.fixture(scope="module", params=IMPLS)
def w1(request: pytest.FixtureRequest) -> Iterator[Any]:
    yield E.filled_episode_buffer(request.param, W1_CAPACITY, E.W1E_SPEC, 1, 0)


@pytest.fixture(scope="module", params=W3_KINDS)
def w3(request: pytest.FixtureRequest) -> Iterator[Any]:
    yield E.filled_w3(request.param, W3_CAPACITY, 0)


@pytest.mark.benchmark(group=f"episodes W1 n-step sample 256 (n={E.N_STEP})")
def test_nstep_sample_256(benchmark, w1: Any) -> None:
    benchmark.extra_info["samples_per_call"] = 256
    out = benchmark(w1.sample, 256, n_step=E.N_STEP, gamma=E.GAMMA)
    assert tuple(out["obs"].shape) == (256, 17)
    assert tuple(out["return"].shape) == (256,)


@pytest.mark.benchmark(group=f"episodes W1 sequences {E.SEQ_BATCH} x {E.SEQ_LENGTH} (pad)")
def test_sequences_32x80(benchmark, w1: Any) -> None:
    benchmark.extra_info["sequences_per_call"] = E.SEQ_BATCH
    out = benchmark(w1.sample_sequences, E.SEQ_BATCH, E.SEQ_LENGTH)
    assert tuple(out["obs"].shape) == (E.SEQ_BATCH, E.SEQ_LENGTH, 17)
    assert tuple(out["mask"].shape) == (E.SEQ_BATCH, E.SEQ_LENGTH)


@pytest.mark.parametrize("batch_size", [32, 256])
def test_w3_dedup_sample(benchmark, w3: Any, batch_size: int) -> None:
    """obs + next_obs stacks u8[4,84,84]: rebuilt from single frames (EpisodeBuffer, numpy
    dedup) or stored whole (ReplayBuffer, "naive")."""
    benchmark.group = f"episodes W3 sample {batch_size} (frame_stack {E.FRAME_STACK})"
    benchmark.extra_info["bytes_per_call"] = batch_size * E.SAMPLE_BYTES
    out = benchmark(w3.sample, batch_size)
    shape = (batch_size, E.FRAME_STACK, *E.FRAME)
    assert tuple(out["obs"].shape) == shape and tuple(out["next_obs"].shape) == shape


def test_report_formats() -> None:
    """The section's tables render from cells (no timing)."""
    s = Settings.make(True, None, 0)
    v = summary([1.0, 2.0, 3.0])
    cells = [Cell("W1", "sequences 32 x 80 (pad)", "sequences/s", {"reverie": v, "numpy": v},
                  {"ratio": 1.0, "target": E.SEQUENCE_TARGET, "disagreements": []}),
             Cell("W3", "sample 32", "GB/s", {k: v for k in E.KINDS},
                  {"ratio": 1.0, "ratio_vs_naive": 1.0, "disagreements": ["return"]})]
    memory = {"reverie": {"rss_growth": 10, "stored": 10}, "numpy": {"error": "x"},
              "naive": {"rss_growth": 100, "stored": 100}}
    text = E.table(cells, memory, s)
    assert "misses >= 10x" in text and "meets <= 0.3x" in text and "DIFFER" in text
