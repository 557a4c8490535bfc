"""Concurrency (issue 3): 1 vs 2 writer threads, sampling while a writer runs, and ingestion
from 2 worker processes into shared memory vs a multiprocessing.Queue.

Run with ``python -m pytest bench/test_bench_concurrency.py`` (pytest-benchmark). The
figures with repeats, ratios and targets come from
``python -m reverie.bench --workloads concurrency``. Buffers hold W1 transitions, capacity
1M, written one full lap before timing.
"""

from __future__ import annotations

from typing import Any, Iterator

import pytest

from reverie.bench import concurrency as C
from reverie.bench.harness import Cell, summary
from reverie.bench.workloads import Settings

CALLS_PER_THREAD = 64  # extend(256) calls per thread per round


@pytest.fixture(scope="module")
def uniform() -> Iterator[Any]:
    buf = C.filled_buffer(False, 0)
    yield buf
    buf.close()


@pytest.fixture(scope="module")
def prioritized() -> Iterator[Any]:
    buf = C.filled_buffer(True, 1)
    yield buf
    buf.close()


@pytest.fixture(scope="module")
def pool(uniform: Any) -> Iterator[C.IngestPool]:
    with C.IngestPool(2, C.CAPACITY, 0, consumer=uniform) as p:
        yield p


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.benchmark(group="concurrency extend 256 x64 per thread")
def test_extend_256_threads(benchmark, uniform: Any, threads: int) -> None:
    """One round: each of ``threads`` threads calls extend(256) ``CALLS_PER_THREAD`` times;
    rows per second = rows_per_round / round time."""
    def job(pool_: Any) -> None:
        extend = uniform.extend
        for i in range(CALLS_PER_THREAD):
            extend(**pool_[i & 7])

    pools = [C.batches(256, 8, 10 + i) for i in range(threads)]
    rounds = C.Rounds([lambda p=p: job(p) for p in pools])
    before = C.committed(uniform)
    try:
        benchmark.extra_info["rows_per_round"] = threads * CALLS_PER_THREAD * 256
        benchmark(rounds)
    finally:
        rounds.close()
    assert (C.committed(uniform) - before) % (threads * CALLS_PER_THREAD * 256) == 0


@pytest.mark.parametrize("writer", ["alone", "with-writer"])
@pytest.mark.benchmark(group="concurrency prioritized sample 256 + update 256")
def test_step_with_writer(benchmark, prioritized: Any, writer: str) -> None:
    """A W2 step, alone or while one thread runs extend(256) without pause."""
    step = C.stepper(prioritized, 0)
    if writer == "alone":
        benchmark(step)
        return
    batches = C.batches(256, 8, 30)
    with C.Writers([lambda running: C.extend_loop(prioritized, batches, running)]) as w:
        benchmark(step)
    benchmark.extra_info["writer_rows_per_s"] = w.rate
    assert w.rate > 0


@pytest.mark.parametrize("mode", ["shm", "queue"])
@pytest.mark.parametrize("granularity", ["step", "batch"])
@pytest.mark.benchmark(group="concurrency 2 processes ingest")
def test_ingest_two_processes(benchmark, pool: C.IngestPool, mode: str,
                              granularity: str) -> None:
    """One round: 2 worker processes send their rows (per transition: 2 x 1024; chunks of
    256: 2 x 64 x 256) to a shared buffer or through a Queue to this process."""
    rows = 2 * 1024 if granularity == "step" else 2 * 64 * C.CHUNK
    benchmark.extra_info["rows_per_round"] = rows
    benchmark.pedantic(pool.round, args=(mode, granularity, rows), rounds=5, warmup_rounds=1)
    assert pool.last_rows == rows


def test_report_formats() -> None:
    """The section's table renders from cells (no timing)."""
    s = Settings.make(True, None, 0)
    v = summary([1.0, 2.0, 3.0])
    cells = [Cell("threads", "extend 256", "rows/s", {"1 thread": v, "2 threads": v},
                  {"ratio": 1.0, "target": C.THREAD_TARGET}),
             Cell("threads", "cost per call (1 thread)", "us",
                  {k: v for k in ("extend 0 rows", "extend 256", "extend 1024", "add 1")}),
             Cell("sampling", "uniform sample 256", "batches/s",
                  {"alone": v, "with 1 writer": v}, {"ratio": 1.0, "writer_rows_per_s": v}),
             Cell("processes", "chunks of 256", "rows/s", {m: v for m in C.MODES},
                  {"ratio": 1.0, "ratio_vs_numpy": 1.0, "target": C.PROCESS_TARGET})]
    text = C.table(cells, s)
    assert "misses >= 1.6x" in text and "misses >= 5x" in text
