"""Concurrency benchmarks (issue 3): ``python -m reverie.bench --workloads concurrency``.

Three measurements on W1 transitions, each cell the median of several rounds with the
variants taken in turns (A B A B ...), through the shared harness (``harness.py``):

- threads: rows/s of 1 against 2 writer threads, each looping ``extend`` of pre-made
  batches (B = 256 and 1024) or ``add`` of single transitions, for a fixed wall time, into
  a 1M buffer filled one lap beforehand (so page faults are not timed). Target: 2 threads
  >= 1.6x one thread for batched adds. Beside it, the cost of one call that writes nothing
  (``extend`` of 0 rows: keyword dict, argument conversion): the part of every call that
  holds the GIL, which threads take in turns.
- sampling under writes: prioritized sample(256) + update_priorities(256) steps/s, and
  uniform sample(256) batches/s, alone and while one writer thread runs ``extend(256)``
  without pause; with the writer's rows/s during the run.
- processes: 2 worker processes into a ``storage="shared"`` buffer against a
  ``multiprocessing.Queue`` pipeline (``ingest.py``, which has the details). Target: shared
  >= 5x the Queue pipeline.

The CPU time other processes take meanwhile is reported per part: the 2-way figures need
both cores of a 2-core machine.
"""

from __future__ import annotations

import os
import threading
import time
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .harness import (
    Cell,
    Progress,
    fmt_stats,
    human_count,
    interleave,
    measure_rates,
    ratio_column,
    summary,
    tabulate,
    timed,
    value_column,
)
from .ingest import CAPACITY, CHUNK, MODE_LABELS, MODES, PROCESS_TARGET, IngestPool, run_processes
from .workloads import Columns, Settings, batches, committed, filled_buffer, transitions

__all__ = ["CAPACITY", "CHUNK", "MODES", "PROCESS_TARGET", "THREAD_TARGET", "IngestPool", "Rounds",
           "Writers", "add_loop", "batches", "cells", "committed", "extend_loop", "filled_buffer",
           "run", "stepper", "table", "transitions"]

THREAD_TARGET = 1.6  # 2 writer threads / 1 writer thread, batched adds
_POOL_ROWS = 1024  # distinct pre-made transitions per writer (cycled)
_POOL_BATCHES = 8  # distinct pre-made batches per writer (cycled)


def cells() -> int:
    """Progress steps this section reports."""
    return 4 + 2 + 2 * len(MODES)


class OtherLoad:
    """CPU time used by other processes while a section runs (Linux; None elsewhere): on a
    shared 2-core machine a busy neighbour takes the second core the 2-way figures need.

    Other = all CPUs' busy time (/proc/stat) - this process's - the given child processes'.
    """

    def __init__(self, children: Sequence[int] = ()) -> None:
        self.children = list(children)
        self._start = self._sample()
        self._wall = time.perf_counter()

    @staticmethod
    def _busy() -> float:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
        return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")

    def _own(self) -> float:
        t = os.times()
        total = t.user + t.system
        for pid in self.children:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            except (OSError, IndexError, ValueError):
                pass
        return total

    def _sample(self) -> Optional[Tuple[float, float]]:
        try:
            return self._busy(), self._own()
        except (OSError, ValueError, IndexError):
            return None

    def cores(self) -> Optional[float]:
        """Average number of cores other processes kept busy since construction."""
        end = self._sample()
        if self._start is None or end is None:
            return None
        other = (end[0] - self._start[0]) - (end[1] - self._start[1])
        return max(other, 0.0) / (time.perf_counter() - self._wall)


# ---------------------------------------------------------------------------------------
# Threads
# ---------------------------------------------------------------------------------------


def extend_loop(buf: Any, pool: Sequence[Columns], running: List[bool]) -> int:
    """Calls ``buf.extend`` with the pool's batches in turn while ``running[0]``; rows written."""
    extend = buf.extend
    mask = len(pool) - 1
    rows = len(pool[0]["obs"])
    calls = 0
    while running[0]:
        extend(**pool[calls & mask])
        calls += 1
    return calls * rows


def add_loop(buf: Any, pool: Sequence[Dict[str, Any]], running: List[bool]) -> int:
    """Calls ``buf.add`` with the pool's transitions in turn while ``running[0]``."""
    add = buf.add
    mask = len(pool) - 1
    calls = 0
    while running[0]:
        add(**pool[calls & mask])
        calls += 1
    return calls


class Writers:
    """Background writer threads started together behind a barrier.

    ``loops[i](running)`` runs in thread i until ``running[0]`` turns False and returns the
    rows it wrote. Use as a context manager: the clock starts when every thread is released.
    """

    def __init__(self, loops: Sequence[Callable[[List[bool]], int]]) -> None:
        self.loops = list(loops)
        self.running = [True]
        self.rows = [0] * len(self.loops)
        self._barrier = threading.Barrier(len(self.loops) + 1)
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                         for i in range(len(self.loops))]
        self.start = self.elapsed = 0.0

    def _run(self, i: int) -> None:
        self._barrier.wait()
        self.rows[i] = self.loops[i](self.running)

    def __enter__(self) -> "Writers":
        for t in self._threads:
            t.start()
        self._barrier.wait()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.running[0] = False
        for t in self._threads:
            t.join()
        self.elapsed = time.perf_counter() - self.start

    @property
    def rate(self) -> float:
        """Rows/s of all threads together, over the whole run."""
        return sum(self.rows) / self.elapsed


class Rounds:
    """Threads kept for many rounds: each round, thread i runs ``jobs[i]()`` once; all start
    together behind a barrier and the round ends when the last one is done (for
    pytest-benchmark, which times one call per round)."""

    def __init__(self, jobs: Sequence[Callable[[], Any]]) -> None:
        self.jobs = list(jobs)
        self._stop = False
        self._start = threading.Barrier(len(self.jobs) + 1)
        self._done = threading.Barrier(len(self.jobs) + 1)
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                         for i in range(len(self.jobs))]
        for t in self._threads:
            t.start()

    def _run(self, i: int) -> None:
        while True:
            self._start.wait()
            if self._stop:
                return
            self.jobs[i]()
            self._done.wait()

    def __call__(self) -> None:
        self._start.wait(timeout=300)
        self._done.wait(timeout=300)

    def close(self) -> None:
        self._stop = True
        self._start.wait()
        for t in self._threads:
            t.join()


def writer_rate(loops: Sequence[Callable[[List[bool]], int]], seconds: float) -> float:
    """Rows/s of ``len(loops)`` writer threads running together for ``seconds``."""
    with Writers(loops) as w:
        time.sleep(seconds)
    return w.rate


def measure_threads(buf: Any, make_loop: Callable[[Any, Any, List[bool]], int],
                    pools: Sequence[Any], settings: Settings) -> Dict[str, Dict[str, Any]]:
    """Rows/s with 1 and 2 writer threads (thread i uses ``pools[i]``), in turns."""
    loops = [partial(make_loop, buf, p) for p in pools]
    variants = {"1 thread": loops[:1], "2 threads": loops[:2]}
    slice_s = settings.budget_s / settings.repeats
    rates = interleave({k: partial(writer_rate, v, slice_s) for k, v in variants.items()},
                       settings.repeats,
                       warmup={k: partial(writer_rate, v, settings.warmup_s)
                               for k, v in variants.items()})
    return {k: summary(r) for k, r in rates.items()}


def call_cost_us(op: Callable[[], Any], settings: Settings) -> Dict[str, Any]:
    """Microseconds per call of ``op`` in one thread (median of the rounds)."""
    res = measure_rates({"op": op}, 1.0, settings)["op"]
    return summary([1e6 / r for r in res["repeats"]])


def run_threads(buf: Any, s: Settings, prog: Progress) -> List[Cell]:
    """Part 1: 1 vs 2 writer threads; and the GIL-held cost per call."""
    out: List[Cell] = []
    for size in (256, 1024):
        prog.note(f"concurrency: extend {size}, 1 vs 2 threads")
        cell = Cell("threads", f"extend {size}", "rows/s")
        pools = [batches(size, _POOL_BATCHES, s.seed + 10 + i) for i in range(2)]
        cell.values = measure_threads(buf, extend_loop, pools, s)
        cell.extra = {"ratio": cell.ratio("2 threads", "1 thread"), "target": THREAD_TARGET}
        out.append(cell)
        prog.advance()
    prog.note("concurrency: add 1, 1 vs 2 threads")
    cell = Cell("threads", "add 1", "rows/s")
    pools = [transitions(_POOL_ROWS, s.seed + 20 + i) for i in range(2)]
    cell.values = measure_threads(buf, add_loop, pools, s)
    cell.extra = {"ratio": cell.ratio("2 threads", "1 thread"), "target": None}
    out.append(cell)
    prog.advance()

    # What each call costs in one thread, and the part of it that writes nothing.
    prog.note("concurrency: cost per call")
    empty = {name: col[:0] for name, col in batches(1, 1, s.seed)[0].items()}
    b256 = batches(256, 1, s.seed + 1)[0]
    b1024 = batches(1024, 1, s.seed + 2)[0]
    one = transitions(1, s.seed + 3)[0]
    cost = Cell("threads", "cost per call (1 thread)", "us")
    cost.values = {
        "extend 0 rows": call_cost_us(lambda: buf.extend(**empty), s),
        "extend 256": call_cost_us(lambda: buf.extend(**b256), s),
        "extend 1024": call_cost_us(lambda: buf.extend(**b1024), s),
        "add 1": call_cost_us(lambda: buf.add(**one), s),
    }
    out.append(cost)
    prog.advance()
    return out


# ---------------------------------------------------------------------------------------
# Sampling while a writer runs
# ---------------------------------------------------------------------------------------


def _sampling_rate(op: Callable[[], Any], writer: Optional[Callable[[List[bool]], int]],
                   seconds: float) -> Tuple[float, Optional[float]]:
    """(calls/s of ``op`` in this thread, rows/s of the writer thread or None)."""
    if writer is None:
        calls, elapsed = timed(op, seconds)
        return calls / elapsed, None
    with Writers([writer]) as w:
        calls, elapsed = timed(op, seconds)
    return calls / elapsed, w.rate


def measure_with_writer(op: Callable[[], Any], writer: Callable[[List[bool]], int],
                        settings: Settings) -> Tuple[Dict[str, Dict[str, Any]], Dict[str, Any]]:
    """``op`` rate alone and with a writer thread (in turns); and the writer's rows/s."""
    slice_s = settings.budget_s / settings.repeats
    variants = {"alone": None, "with 1 writer": writer}
    runs = interleave({k: partial(_sampling_rate, op, w, slice_s) for k, w in variants.items()},
                      settings.repeats,
                      warmup={k: partial(_sampling_rate, op, w, settings.warmup_s)
                              for k, w in variants.items()})
    values = {k: summary([rate for rate, _ in r]) for k, r in runs.items()}
    return values, summary([rows or 0.0 for _, rows in runs["with 1 writer"]])


def stepper(buf: Any, seed: int) -> Callable[[], None]:
    """One W2 step per call: sample(256) with weights, then update_priorities(256), cycling
    through a pool of |TD error|-like priority tensors."""
    rng = np.random.default_rng(seed)
    pool = torch.from_numpy(rng.random((64, 256), dtype=np.float32) + np.float32(1e-3))
    rows = [pool[i] for i in range(64)]
    counter = [0]

    def step() -> None:
        counter[0] += 1
        b = buf.sample(256)
        buf.update_priorities(b.indices, rows[counter[0] & 63])

    return step


def run_sampling(uniform: Any, s: Settings, prog: Progress) -> List[Cell]:
    """Part 2: sampling (and priority updates) alone and under one writer thread."""
    out: List[Cell] = []
    prog.note("concurrency: filling a prioritized 1M buffer")
    per = filled_buffer(True, s.seed + 1)
    pool = batches(256, _POOL_BATCHES, s.seed + 30)
    for buf, metric, unit, op in (
            (per, "prioritized sample 256 + update 256", "steps/s", stepper(per, s.seed)),
            (uniform, "uniform sample 256", "batches/s", lambda: uniform.sample(256))):
        prog.note(f"concurrency: {metric}, alone / with a writer")
        cell = Cell("sampling", metric, unit)
        writer = partial(extend_loop, buf, pool)
        cell.values, written = measure_with_writer(op, writer, s)
        cell.extra = {"ratio": cell.ratio("with 1 writer", "alone"),
                      "writer_rows_per_s": written}
        out.append(cell)
        prog.advance()
    per.close()
    return out


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------


def _extra_column(key: str, header: str, unit: str = "rows/s") -> Tuple[str, Callable[[Cell], str]]:
    return header, lambda c: fmt_stats(c.extra.get(key), unit)


def _target(c: Cell) -> Optional[float]:
    return c.extra.get("target")


def table(cells_: Sequence[Cell], s: Settings,
               load: Optional[Dict[str, Optional[float]]] = None) -> str:
    """The three parts as markdown tables, with notes."""
    lines: List[str] = []
    threads = [c for c in cells_ if c.section == "threads" and c.unit == "rows/s"]
    cost = next((c for c in cells_ if c.section == "threads" and c.unit == "us"), None)
    sampling = [c for c in cells_ if c.section == "sampling"]
    procs = [c for c in cells_ if c.section == "processes"]
    metric = ("metric", lambda c: c.metric)
    if threads:
        lines.append(f"Concurrent writer threads (W1, capacity {human_count(CAPACITY)}, "
                     "full before timing; rows/s, median [min-max])")
        lines += tabulate(threads, [metric, value_column("1 thread"), value_column("2 threads"),
                                 ratio_column("2 threads", "1 thread", "2 threads / 1 thread",
                                              target=_target)])
    if cost is not None:
        v = cost.values
        lines.append("cost per call, 1 thread (us): " + "; ".join(
            f"{k} {fmt_stats(x, 'us')}" for k, x in v.items()))
        e0 = v["extend 0 rows"]["value"]
        share = ", ".join(f"{e0 / v[k]['value']:.0%} of {k}" for k in ("extend 256", "extend 1024"))
        lines.append(f"  the part of a call that holds the GIL (keywords, argument conversion; "
                     f"an extend of 0 rows): {share}. Threads take turns at it, and a thread "
                     "that finds the GIL taken sleeps until woken (a futex wake-up)")
    if sampling:
        lines.append("")
        lines.append("Sampling while one writer thread runs extend(256) without pause "
                     "(median [min-max])")
        lines += tabulate(sampling, [metric, value_column("alone"), value_column("with 1 writer"),
                                  ratio_column("with 1 writer", "alone", "with / alone"),
                                  _extra_column("writer_rows_per_s", "writer rows/s meanwhile")])
        lines.append(f"  alone, sample and update_priorities spread over all {_cores()} cores "
                     "(reverie's thread pool): the writer thread takes one of them")
    if procs:
        lines.append("")
        workers = procs[0].extra.get("workers", 2)
        lines.append(f"Ingestion from {workers} worker processes (spawn), rows/s from the start "
                     "signal until the consumer holds every row (median [min-max])")
        lines += tabulate(procs, [("granularity", metric[1])]
                       + [value_column(m, MODE_LABELS[m]) for m in MODES]
                       + [ratio_column("shm", "queue", "shared / Queue->reverie", target=_target),
                          ratio_column("shm", "queue-numpy", "shared / Queue->numpy"),
                          ratio_column("shm", "shm-1", "shared: 2 / 1 process")])
        lines.append("  shared memory: each worker calls add/extend on a storage='shared' "
                     "buffer (1 process: one worker sends every row); Queue: each worker "
                     f"q.put()s a transition dict (or a dict of {CHUNK}-row arrays) and this "
                     "process q.get()s and adds it")
    lines.append(f"each figure: median of {s.repeats} repeats of "
                 f"{s.budget_s / s.repeats:.2g} s (processes: at least 0.2 s), variants in "
                 f"turns, after {s.warmup_s:g} s warm-up (processes: one calibration round)")
    if load:
        busy = ", ".join(f"{k} {v:.2f}" for k, v in load.items() if v is not None)
        if busy:
            lines.append(f"cores kept busy by other processes meanwhile (of {_cores()}): {busy}"
                         " (above ~0.1, the 2-thread and 2-process figures are understated)")
    return "\n".join(lines)


def _cores() -> int:
    return os.cpu_count() or 1


def run(s: Settings, prog: Progress) -> Tuple[List[Cell], Dict[str, Any]]:
    """Runs the three parts; returns the cells and their JSON form."""
    t0 = time.perf_counter()
    prog.note("concurrency: filling a 1M buffer")
    uniform = filled_buffer(False, s.seed)
    load: Dict[str, Optional[float]] = {}
    probe = OtherLoad()
    out = run_threads(uniform, s, prog)
    load["threads"] = probe.cores()
    probe = OtherLoad()
    out += run_sampling(uniform, s, prog)
    load["sampling"] = probe.cores()
    prog.note("concurrency: starting 2 worker processes (spawn)")
    with IngestPool(2, CAPACITY, s.seed, consumer=uniform) as pool:
        probe = OtherLoad([p.pid for p in pool.procs if p.pid is not None])
        out += run_processes(pool, s, prog)
        load["processes"] = probe.cores()
    uniform.close()
    text = table(out, s, load)
    result = {
        "settings": {"capacity": CAPACITY, "repeats": s.repeats, "budget_s": s.budget_s,
                     "warmup_s": s.warmup_s, "chunk": CHUNK, "start_method": "spawn",
                     "thread_target": THREAD_TARGET, "process_target": PROCESS_TARGET},
        "cells": [c.as_dict() for c in out],
        "other_processes_cores": load,
        "elapsed_s": time.perf_counter() - t0,
        "report": text,
    }
    return out, result
