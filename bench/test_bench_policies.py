"""Replay policies (issue 13): reservoir admission, top-k retention, max_times_sampled and
item metadata, each against its baseline.

Run with ``python -m pytest bench/test_bench_policies.py`` (pytest-benchmark). The figures
with repeats, ratios and targets come from ``python -m reverie.bench --workloads policies``
(``policies.py`` says what is timed). Sizes are small here so the suite runs fast: a stream
of 200k W1 items into capacity 20k (the section: 1M into 100k), W1 buffers of 100k (the
section: 1M). One round = one call; offers start once the table is full and a table that
reaches the stream's end starts again from the full table in the untimed setup.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

import numpy as np
import pytest

from reverie.bench import policies as P
from reverie.bench.harness import Cell, summary
from reverie.bench.workloads import W1_SPEC, Settings, batches, make_columns

STREAM, CAPACITY = 200_000, 20_000
W1_CAPACITY = 100_000
ROUNDS = {"reverie": 2000, "numpy": 200, "avalanche": 30, "heapq": 500}
AVAILABLE = P.unavailable() is None
needs_policies = pytest.mark.skipif(not AVAILABLE, reason=f"{P.unavailable()}")


@pytest.fixture(scope="module")
def stream() -> Dict[str, np.ndarray]:
    return P.stream_columns(STREAM, 0)


@pytest.fixture(scope="module")
def block() -> Dict[str, np.ndarray]:
    return batches(65536, 1, 3)[0]


def offer_rounds(benchmark: Any, offers: P.Offers, rounds: int) -> None:
    """One offer of BATCH items per round, the stream's window in order (setup untimed)."""
    offers.restart()
    pos = [0]

    def setup() -> Tuple[Tuple[int], Dict[str, Any]]:
        if pos[0] == len(offers.window):
            offers.restart()
            pos[0] = 0
        pos[0] += 1
        return (pos[0] - 1,), {}

    benchmark.extra_info["items_per_call"] = P.BATCH
    benchmark.pedantic(offers.call, setup=setup, rounds=rounds, warmup_rounds=1)
    offers.buf = None


@needs_policies
@pytest.mark.parametrize("impl", ["reverie", "numpy", "avalanche"])
@pytest.mark.benchmark(group=f"policies reservoir offer {P.BATCH} (full, {CAPACITY:,})")
def test_reservoir_offer_256(benchmark, stream: Any, impl: str) -> None:
    offers = P.reservoir_offers(stream, CAPACITY, 0)[impl]
    offer_rounds(benchmark, offers, ROUNDS[impl])
    assert 0 < offers.kept <= P.BATCH * (ROUNDS[impl] + 1)


@needs_policies
@pytest.mark.parametrize("impl", ["reverie", "heapq"])
@pytest.mark.benchmark(group=f"policies top-k offer {P.BATCH} (full, {CAPACITY:,})")
def test_top_k_offer_256(benchmark, stream: Any, impl: str) -> None:
    offers = P.top_k_offers(stream, CAPACITY, 0)[impl]
    offer_rounds(benchmark, offers, ROUNDS[impl])
    assert 0 < offers.kept <= P.BATCH * (ROUNDS[impl] + 1)


@needs_policies
@pytest.mark.parametrize("kind", ["max_times_sampled", "uniform"])
@pytest.mark.benchmark(group=f"policies sample {P.BATCH}, max_times_sampled={P.MTS_N} vs uniform")
def test_sample_max_times(benchmark, block: Any, kind: str) -> None:
    """The consume-once buffer is refilled (one lap, untimed setup) once it has drained from
    full to 3/4 full; the uniform one stays full."""
    parts = {"max_times_sampled": P.MTS_N} if kind == "max_times_sampled" else {}
    buf = P.w1_buffer(W1_CAPACITY, block, 0, **parts)
    low = W1_CAPACITY - W1_CAPACITY // P.MTS_DRAIN

    def setup() -> Tuple[Tuple[int], Dict[str, Any]]:
        if len(buf) < low + P.BATCH:
            P.fill_lap(buf, block, W1_CAPACITY)
        return (P.BATCH,), {}

    out = benchmark.pedantic(buf.sample, setup=setup, rounds=2000, warmup_rounds=10)
    assert tuple(out["obs"].shape) == (P.BATCH, 17)
    assert len(buf) >= (low if parts else W1_CAPACITY)


@needs_policies
@pytest.mark.parametrize("metadata", [True, False], ids=["metadata", "plain"])
@pytest.mark.benchmark(group=f"policies extend {P.BATCH}, metadata on vs off")
def test_extend_metadata(benchmark, block: Any, metadata: bool) -> None:
    buf = P.w1_buffer(W1_CAPACITY, block, 0, metadata=metadata)
    batch = make_columns(W1_SPEC, P.BATCH, np.random.default_rng(2))
    extend: Callable[..., int] = buf.extend
    benchmark.extra_info["items_per_call"] = P.BATCH
    assert benchmark(lambda: extend(**batch)) == P.BATCH


def test_report_formats() -> None:
    """The section's tables render from cells (no timing)."""
    s = Settings.make(True, None, 0)
    v = summary([1.0, 2.0, 3.0])
    stream_extra = {"kept_share": {"reverie": 0.25}, "windows_covered": {"reverie": 2.0},
                    "capacity": 10_000, "stream": 100_000}
    cells = [Cell("reservoir", "100k W1 items into 10k", "items/s",
                  {"reverie": summary([30.0]), "numpy": summary([1.0]), "avalanche": v},
                  {"targets": P.TARGETS["reservoir"], **stream_extra}),
             Cell("top-k", "100k W1 items into 10k", "items/s", {"reverie": v, "heapq": v},
                  {"targets": P.TARGETS["top-k"], **stream_extra}),
             Cell("max_times_sampled", "sample 256", "batches/s",
                  {"with": summary([1.0]), "without": summary([2.0])},
                  {"target": P.TARGETS["max_times_sampled"], "with": "x", "refills": 3,
                   "samples_per_epoch": 9}),
             Cell("metadata", "extend 256", "items/s", {"with": v, "without": v},
                  {"target": P.TARGETS["metadata"]})]
    text = P.table(cells, ["reservoir holds 1 of 2"], s)
    assert "30x (meets >= 20x)" in text and "15x (misses >= 100x)" in text
    assert "1x (misses >= 20x)" in text
    assert "2x (misses <= 1.3x)" in text and "1x (meets <= 1.2x)" in text
    assert "DIFFER: reservoir holds 1 of 2" in text
