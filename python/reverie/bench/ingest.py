"""Ingestion from worker processes, the third part of the concurrency section.

2 worker processes (spawn) send W1 transitions, one at a time (an actor's step) or in chunks
of 256, either (a) straight into a ``storage="shared"`` buffer, or (b) through a
``multiprocessing.Queue`` that this process drains into a ``storage="memory"`` reverie
buffer (what people do today), and, for reference, into a numpy buffer; and one worker alone
into shared memory (Python writers with a GIL each: 1 vs 2). Rows/s from the start signal
until the consumer holds all N rows (shared: until the buffer's committed count has grown by
N). Workers are started once and reused, and build their data before the start barrier:
neither process start-up nor data generation is timed. Target: shared >= 5x the Queue
pipeline. ``concurrency.py`` runs it and reports it with the other two parts.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from functools import partial
from typing import Any, Dict, List, Optional

from . import baselines as bl
from .harness import Cell, Progress, interleave, summary
from .workloads import W1_SPEC, Columns, Settings, batches, committed, filled_buffer, transitions

CAPACITY = 1_000_000
PROCESS_TARGET = 5.0  # shared memory / multiprocessing.Queue, 2 worker processes
CHUNK = 256  # rows per message in the batched ingestion pipelines
GRANULARITIES = ("step", "batch")  # one transition per call / message, or CHUNK of them
# "shm-1": one worker writes all rows into the shared buffer, the other idles: with "shm" it
# shows how Python writers scale when each has its own GIL (compare 1 vs 2 threads).
MODES = ("shm", "shm-1", "queue", "queue-numpy")
MODE_LABELS = {"shm": "shared memory", "shm-1": "shared memory, 1 process",
               "queue": "Queue -> reverie", "queue-numpy": "Queue -> numpy"}
_POOL_ROWS = 1024  # distinct pre-made transitions per worker (cycled)
_POOL_BATCHES = 8  # distinct pre-made batches per writer (cycled)


def _worker(index: int, shared: Any, queue: Any, conn: Any, barrier: Any, seed: int) -> None:
    """A worker process: on each command (mode, granularity, rows) it prepares its data,
    waits at the start barrier, then sends its rows; it answers with its finishing time."""
    rows_pool: Optional[List[Dict[str, Any]]] = None
    batch_pool: Optional[List[Columns]] = None
    try:
        while True:
            cmd = conn.recv()
            if cmd is None:
                break
            mode, granularity, n = cmd
            if granularity == "step":
                if rows_pool is None:
                    rows_pool = transitions(_POOL_ROWS, seed + index)
                items: List[Any] = rows_pool
                calls = n
            else:
                if batch_pool is None:
                    batch_pool = batches(CHUNK, _POOL_BATCHES, seed + index)
                items = batch_pool
                calls = n // CHUNK
            mask = len(items) - 1
            barrier.wait(timeout=300)
            if mode == "shm":
                write = shared.add if granularity == "step" else shared.extend
                for i in range(calls):
                    write(**items[i & mask])
            else:
                put = queue.put
                for i in range(calls):
                    put(items[i & mask])
            conn.send(time.perf_counter())
    finally:
        shared.close()


class IngestPool:
    """Two (by default) spawned worker processes kept for many timed rounds.

    The workers get a shared reverie buffer and one ``multiprocessing.Queue`` when they
    start; each round tells them which to feed. This process is the consumer: it drains the
    Queue into a ``storage="memory"`` reverie buffer (or a numpy buffer), or, for the shared
    buffer, watches its committed count.
    """

    def __init__(self, workers: int = 2, capacity: int = CAPACITY, seed: int = 0,
                 consumer: Any = None) -> None:
        ctx = mp.get_context("spawn")
        self.workers = workers
        self.shared = filled_buffer(False, seed, storage="shared", capacity=capacity)
        self.consumer = consumer if consumer is not None else filled_buffer(False, seed,
                                                                            capacity=capacity)
        self.numpy = bl.NumpyReplay(capacity, W1_SPEC, seed)
        block = batches(min(capacity, 65536), 1, seed)[0]
        for start in range(0, capacity, 65536):
            k = min(65536, capacity - start)
            self.numpy.extend(*[c[:k] for c in block.values()])
        self.names = list(W1_SPEC)
        self.queue = ctx.Queue()
        self.barrier = ctx.Barrier(workers + 1)
        self.conns = []
        self.procs = []
        for i in range(workers):
            here, there = ctx.Pipe()
            p = ctx.Process(target=_worker, args=(i, self.shared, self.queue, there,
                                                  self.barrier, seed + 100 * (i + 1)),
                            daemon=True)
            p.start()
            there.close()
            self.conns.append(here)
            self.procs.append(p)

    def round(self, mode: str, granularity: str, rows: int) -> float:
        """One timed round: the workers send ``rows`` rows in all (mode "shm-1": the first
        worker alone); returns the seconds from the start barrier until this process has
        them all (shared memory: until committed)."""
        senders = 1 if mode == "shm-1" else self.workers
        per_worker = rows // senders
        if granularity == "batch":
            per_worker -= per_worker % CHUNK
        per_worker = max(per_worker, CHUNK if granularity == "batch" else 1)
        total = per_worker * senders
        for i, c in enumerate(self.conns):
            c.send(("shm" if mode.startswith("shm") else "queue", granularity,
                    per_worker if i < senders else 0))
        shared = self.shared
        target = committed(shared) + total
        self.barrier.wait(timeout=300)
        start = time.perf_counter()
        if mode.startswith("shm"):
            deadline = start + 300
            while committed(shared) < target:
                time.sleep(0.0005)
                if time.perf_counter() > deadline:
                    raise TimeoutError("the workers did not finish writing in 300 s")
        elif mode == "queue":
            self._drain_reverie(granularity, total)
        elif mode == "queue-numpy":
            self._drain_numpy(granularity, total)
        else:
            raise ValueError(f"unknown mode {mode!r}")
        elapsed = time.perf_counter() - start
        for c in self.conns:  # the workers' finishing times (also: they are ready again)
            if not c.poll(300):
                raise TimeoutError("a worker did not answer in 300 s")
            c.recv()
        if mode.startswith("shm") and committed(shared) != target:
            raise RuntimeError(f"shared buffer holds {committed(shared) - target + total} new "
                               f"rows, expected {total}")
        self.last_rows = total
        return elapsed

    def _drain_reverie(self, granularity: str, total: int) -> None:
        get = self.queue.get
        got = 0
        if granularity == "step":
            add = self.consumer.add
            while got < total:
                add(**get(timeout=300))
                got += 1
        else:
            extend = self.consumer.extend
            while got < total:
                chunk = get(timeout=300)
                extend(**chunk)
                got += len(chunk["obs"])

    def _drain_numpy(self, granularity: str, total: int) -> None:
        get = self.queue.get
        names = self.names
        got = 0
        if granularity == "step":
            add = self.numpy.add
            while got < total:
                t = get(timeout=300)
                add(*[t[k] for k in names])
                got += 1
        else:
            extend = self.numpy.extend
            while got < total:
                chunk = get(timeout=300)
                extend(*[chunk[k] for k in names])
                got += len(chunk["obs"])

    def close(self) -> None:
        for c in self.conns:
            try:
                c.send(None)
            except OSError:
                pass
        for p in self.procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
                p.join()
        for c in self.conns:
            c.close()
        self.queue.close()
        self.queue.join_thread()
        self.shared.close()

    def __enter__(self) -> "IngestPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def rows_for(pool: IngestPool, mode: str, granularity: str, seconds: float) -> int:
    """Rows that make a round of about ``seconds`` (from a short calibration round)."""
    probe = 4096 if granularity == "step" else 64 * CHUNK
    rate = probe * pool.workers / pool.round(mode, granularity, probe * pool.workers)
    return int(min(max(rate * seconds, probe * pool.workers), 200_000_000))


def _round_rate(pool: IngestPool, mode: str, granularity: str, rows: int) -> float:
    seconds = pool.round(mode, granularity, rows)
    return pool.last_rows / seconds


def _note(prog: Progress, label: str, repeats: int, mode: str, r: int) -> None:
    prog.note(f"concurrency: processes, {label}, {MODE_LABELS[mode]} ({r + 1}/{repeats})")


def run_processes(pool: IngestPool, s: Settings, prog: Progress) -> List[Cell]:
    """Part 3: rows/s into shared memory vs through a Queue, per granularity (the modes in
    turns, each round sized by a calibration round to about one slice of the budget)."""
    out: List[Cell] = []
    slice_s = max(s.budget_s / s.repeats, 0.2)
    for gran in GRANULARITIES:
        label = "per transition" if gran == "step" else f"chunks of {CHUNK}"
        cell = Cell("processes", label, "rows/s")
        sizes: Dict[str, int] = {}
        for mode in MODES:
            prog.note(f"concurrency: processes, {label}, calibrating {MODE_LABELS[mode]}")
            sizes[mode] = rows_for(pool, mode, gran, slice_s)
        rates = interleave({m: partial(_round_rate, pool, m, gran, sizes[m]) for m in MODES},
                           s.repeats, before=partial(_note, prog, label, s.repeats))
        cell.values = {m: summary(r) for m, r in rates.items()}
        cell.extra = {"ratio": cell.ratio("shm", "queue"),
                      "ratio_vs_numpy": cell.ratio("shm", "queue-numpy"),
                      "ratio_2_vs_1_process": cell.ratio("shm", "shm-1"),
                      "target": PROCESS_TARGET, "rows_per_round": sizes,
                      "workers": pool.workers}
        out.append(cell)
        prog.advance(len(MODES))
    return out


