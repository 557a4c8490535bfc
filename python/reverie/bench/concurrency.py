"""Concurrency benchmarks (issue 3): ``python -m reverie.bench --workloads concurrency``.

Three measurements on W1 transitions, each cell the median of several repeats with the
variants taken in turns (A B A B ...), as in the rest of ``reverie.bench``:

- threads: rows/s of 1 against 2 writer threads, each looping ``extend`` of pre-made
  batches (B = 256 and 1024) or ``add`` of single transitions, for a fixed wall time, into
  a 1M buffer filled one lap beforehand (so page faults are not timed). Target: 2 threads
  >= 1.6x one thread for batched adds. Beside it, the cost of one call that writes nothing
  (``extend`` of 0 rows: keyword dict, argument conversion): the part of every call that
  holds the GIL, which threads take in turns.
- sampling under writes: prioritized sample(256) + update_priorities(256) steps/s, and
  uniform sample(256) batches/s, alone and while one writer thread runs ``extend(256)``
  without pause; with the writer's rows/s during the run.
- processes: 2 worker processes (spawn) send W1 transitions, one at a time (an actor's
  step) or in chunks of 256, either (a) straight into a ``storage="shared"`` buffer, or
  (b) through a ``multiprocessing.Queue`` that this process drains into a ``storage="memory"``
  reverie buffer (what people do today), and, for reference, into a numpy buffer; and one
  worker alone into shared memory (Python writers with a GIL each: 1 vs 2). Rows/s
  from the start signal until the consumer holds all N rows (shared: until the buffer's
  committed count has grown by N). Workers are started once and reused, and build their
  data before the start barrier: neither process start-up nor data generation is timed.
  Target: shared >= 5x the Queue pipeline.

The CPU time other processes take meanwhile is reported per section: the 2-way figures need
both cores of a 2-core machine.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from . import baselines as bl
from . import runner as R

CAPACITY = 1_000_000
THREAD_TARGET = 1.6  # 2 writer threads / 1 writer thread, batched adds
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


def cells() -> int:
    """Progress steps this section reports."""
    return 4 + 2 + 2 * len(MODES)


# ---------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------


def transitions(n: int, seed: int) -> List[Dict[str, Any]]:
    """``n`` single W1 transitions as an environment loop hands them out: fresh arrays for
    obs/action/next_obs, Python numbers for reward and done."""
    cols = R.make_columns(R.W1_SPEC, n, np.random.default_rng(seed))
    return [{name: (c[i].copy() if c.ndim > 1 else c[i].item()) for name, c in cols.items()}
            for i in range(n)]


def batches(size: int, count: int, seed: int) -> List[R.Columns]:
    """``count`` distinct W1 batches of ``size`` rows (separate arrays per batch)."""
    rng = np.random.default_rng(seed)
    return [R.make_columns(R.W1_SPEC, size, rng) for _ in range(count)]


def filled_buffer(prioritized: bool, seed: int, storage: str = "memory",
                  capacity: int = CAPACITY) -> Any:
    """A W1 reverie buffer written one full lap, so its pages are resident."""
    import reverie as rv

    sampler = (rv.Prioritized(alpha=R.ALPHA, beta=R.BETA, eps=R.EPS) if prioritized
               else rv.Uniform())
    buf = rv.ReplayBuffer(capacity, spec=dict(R.W1_SPEC), sampler=sampler, seed=seed,
                          storage=storage)
    block = batches(min(capacity, 65536), 1, seed)[0]
    done = 0
    while done < capacity:
        k = min(65536, capacity - done)
        buf.extend(**{name: col[:k] for name, col in block.items()})
        done += k
    return buf


# ---------------------------------------------------------------------------------------
# Statistics and results
# ---------------------------------------------------------------------------------------


def stats(values: Sequence[float]) -> Dict[str, Any]:
    """Median, min, max and the repeats themselves."""
    return {"value": statistics.median(values), "min": min(values), "max": max(values),
            "repeats": list(values)}


@dataclass
class Cell:
    """One line of a section's table: variants measured in turns, and ratios between them."""

    section: str
    metric: str
    unit: str
    values: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    extra: Dict[str, Any] = field(default_factory=dict)

    def value(self, key: str) -> Optional[float]:
        v = self.values.get(key)
        return None if v is None else v["value"]

    def ratio(self, num: str, den: str) -> Optional[float]:
        a, b = self.value(num), self.value(den)
        return None if a is None or not b else a / b

    def as_dict(self) -> Dict[str, Any]:
        return {"section": self.section, "metric": self.metric, "unit": self.unit,
                "values": self.values, **self.extra}


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


def _extend_loop(buf: Any, pool: Sequence[R.Columns], running: List[bool]) -> int:
    """Calls ``buf.extend`` with the pool's batches in turn while ``running[0]``; rows written."""
    extend = buf.extend
    mask = len(pool) - 1
    rows = len(pool[0]["obs"])
    calls = 0
    while running[0]:
        extend(**pool[calls & mask])
        calls += 1
    return calls * rows


def _add_loop(buf: Any, pool: Sequence[Dict[str, Any]], running: List[bool]) -> int:
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
                    pools: Sequence[Any], settings: R.Settings) -> Dict[str, Dict[str, Any]]:
    """Rows/s with 1 and 2 writer threads (thread i uses ``pools[i]``), in turns."""
    loops = [partial(make_loop, buf, p) for p in pools]
    variants = {"1 thread": loops[:1], "2 threads": loops[:2]}
    for v in variants.values():
        writer_rate(v, settings.warmup_s)
    slice_s = settings.budget_s / settings.repeats
    rates: Dict[str, List[float]] = {k: [] for k in variants}
    for _ in range(settings.repeats):
        for key, v in variants.items():
            rates[key].append(writer_rate(v, slice_s))
    return {k: stats(r) for k, r in rates.items()}


def call_cost_us(op: Callable[[], Any], settings: R.Settings) -> Dict[str, Any]:
    """Microseconds per call of ``op`` in one thread (median of repeats)."""
    res = R.measure({"op": op}, 1.0, settings)["op"]
    per_call = [1e6 / r for r in res["repeats"]]
    return stats(per_call)


def run_threads(buf: Any, s: R.Settings, prog: R.Progress) -> List[Cell]:
    """Section 1: 1 vs 2 writer threads; and the GIL-held cost per call."""
    out: List[Cell] = []
    for size in (256, 1024):
        prog.note(f"concurrency: extend {size}, 1 vs 2 threads")
        cell = Cell("threads", f"extend {size}", "rows/s")
        pools = [batches(size, _POOL_BATCHES, s.seed + 10 + i) for i in range(2)]
        cell.values = measure_threads(buf, _extend_loop, pools, s)
        cell.extra = {"ratio": cell.ratio("2 threads", "1 thread"), "target": THREAD_TARGET}
        out.append(cell)
        prog.advance()
    prog.note("concurrency: add 1, 1 vs 2 threads")
    cell = Cell("threads", "add 1", "rows/s")
    pools = [transitions(_POOL_ROWS, s.seed + 20 + i) for i in range(2)]
    cell.values = measure_threads(buf, _add_loop, pools, s)
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
        calls, elapsed = R._timed(op, seconds)
        return calls / elapsed, None
    with Writers([writer]) as w:
        calls, elapsed = R._timed(op, seconds)
    return calls / elapsed, w.rate


def measure_with_writer(op: Callable[[], Any], writer: Callable[[List[bool]], int],
                        settings: R.Settings) -> Tuple[Dict[str, Dict[str, Any]], Dict[str, Any]]:
    """``op`` rate alone and with a writer thread (in turns); and the writer's rows/s."""
    _sampling_rate(op, None, settings.warmup_s)
    _sampling_rate(op, writer, settings.warmup_s)
    slice_s = settings.budget_s / settings.repeats
    alone: List[float] = []
    shared: List[float] = []
    written: List[float] = []
    for _ in range(settings.repeats):
        alone.append(_sampling_rate(op, None, slice_s)[0])
        rate, rows = _sampling_rate(op, writer, slice_s)
        shared.append(rate)
        written.append(rows or 0.0)
    return {"alone": stats(alone), "with 1 writer": stats(shared)}, stats(written)


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


def run_sampling(uniform: Any, s: R.Settings, prog: R.Progress) -> List[Cell]:
    """Section 2: sampling (and priority updates) alone and under one writer thread."""
    out: List[Cell] = []
    prog.note("concurrency: filling a prioritized 1M buffer")
    per = filled_buffer(True, s.seed + 1)
    pool = batches(256, _POOL_BATCHES, s.seed + 30)
    for buf, metric, unit, op in (
            (per, "prioritized sample 256 + update 256", "steps/s", stepper(per, s.seed)),
            (uniform, "uniform sample 256", "batches/s", lambda: uniform.sample(256))):
        prog.note(f"concurrency: {metric}, alone / with a writer")
        cell = Cell("sampling", metric, unit)
        writer = partial(_extend_loop, buf, pool)
        cell.values, written = measure_with_writer(op, writer, s)
        cell.extra = {"ratio": cell.ratio("with 1 writer", "alone"),
                      "writer_rows_per_s": written}
        out.append(cell)
        prog.advance()
    per.close()
    return out


# ---------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------


def _worker(index: int, shared: Any, queue: Any, conn: Any, barrier: Any, seed: int) -> None:
    """A worker process: on each command (mode, granularity, rows) it prepares its data,
    waits at the start barrier, then sends its rows; it answers with its finishing time."""
    rows_pool: Optional[List[Dict[str, Any]]] = None
    batch_pool: Optional[List[R.Columns]] = None
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
        self.numpy = bl.NumpyReplay(capacity, R.W1_SPEC, seed)
        block = batches(min(capacity, 65536), 1, seed)[0]
        for start in range(0, capacity, 65536):
            k = min(65536, capacity - start)
            self.numpy.extend(*[c[:k] for c in block.values()])
        self.names = list(R.W1_SPEC)
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
        core = self.shared._core
        target = core.written + total
        self.barrier.wait(timeout=300)
        start = time.perf_counter()
        if mode.startswith("shm"):
            deadline = start + 300
            while core.written < target:
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
        if mode.startswith("shm") and core.written != target:
            raise RuntimeError(f"shared buffer holds {core.written - target + total} new rows, "
                               f"expected {total}")
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


def run_processes(pool: IngestPool, s: R.Settings, prog: R.Progress) -> List[Cell]:
    """Section 3: rows/s into shared memory vs through a Queue, per granularity."""
    out: List[Cell] = []
    slice_s = max(s.budget_s / s.repeats, 0.2)
    for gran in GRANULARITIES:
        label = "per transition" if gran == "step" else f"chunks of {CHUNK}"
        cell = Cell("processes", label, "rows/s")
        sizes: Dict[str, int] = {}
        for mode in MODES:
            prog.note(f"concurrency: processes, {label}, calibrating {MODE_LABELS[mode]}")
            sizes[mode] = rows_for(pool, mode, gran, slice_s)
        rates: Dict[str, List[float]] = {m: [] for m in MODES}
        for r in range(s.repeats):
            for mode in MODES:
                prog.note(f"concurrency: processes, {label}, {MODE_LABELS[mode]} "
                          f"({r + 1}/{s.repeats})")
                seconds = pool.round(mode, gran, sizes[mode])
                rates[mode].append(pool.last_rows / seconds)
        cell.values = {m: stats(r) for m, r in rates.items()}
        cell.extra = {"ratio": cell.ratio("shm", "queue"),
                      "ratio_vs_numpy": cell.ratio("shm", "queue-numpy"),
                      "ratio_2_vs_1_process": cell.ratio("shm", "shm-1"),
                      "target": PROCESS_TARGET, "rows_per_round": sizes,
                      "workers": pool.workers}
        out.append(cell)
        prog.advance(len(MODES))
    return out


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------


def _rate(v: Optional[Dict[str, Any]], unit: str = "") -> str:
    """'32.8M/s [31.0M-33.5M]' (median [min-max]); plain numbers for microseconds."""
    if v is None:
        return "-"
    if unit == "us":
        return f"{v['value']:.3g} us [{v['min']:.3g}-{v['max']:.3g}]"

    def one(x: float) -> str:
        for scale, suffix in ((1e6, "M"), (1e3, "k")):
            if x >= scale:
                return f"{x / scale:.3g}{suffix}"
        return f"{x:.3g}"

    return f"{one(v['value'])}/s [{one(v['min'])}-{one(v['max'])}]"


def _ratio(r: Optional[float], target: Optional[float] = None) -> str:
    if r is None:
        return "-"
    text = f"{r:.2f}x"
    if target is not None:
        text += f" ({'meets' if r >= target else 'below'} {target:g}x)"
    return text


def _md(head: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def table(cells_: Sequence[Cell], s: R.Settings,
          load: Optional[Dict[str, Optional[float]]] = None) -> str:
    """The three sections as markdown tables, with notes."""
    lines: List[str] = []
    threads = [c for c in cells_ if c.section == "threads" and c.unit == "rows/s"]
    cost = next((c for c in cells_ if c.section == "threads" and c.unit == "us"), None)
    sampling = [c for c in cells_ if c.section == "sampling"]
    procs = [c for c in cells_ if c.section == "processes"]
    if threads:
        lines.append(f"Concurrent writer threads (W1, capacity {R.human_count(CAPACITY)}, "
                     "full before timing; rows/s, median [min-max])")
        lines += _md(["metric", "1 thread", "2 threads", "2 threads / 1 thread"],
                     [[c.metric, _rate(c.values.get("1 thread")),
                       _rate(c.values.get("2 threads")),
                       _ratio(c.extra.get("ratio"), c.extra.get("target"))] for c in threads])
    if cost is not None:
        v = cost.values
        lines.append("cost per call, 1 thread (us): " + "; ".join(
            f"{k} {_rate(x, 'us')}" for k, x in v.items()))
        e0 = v["extend 0 rows"]["value"]
        share = ", ".join(f"{e0 / v[k]['value']:.0%} of {k}" for k in ("extend 256", "extend 1024"))
        lines.append(f"  the part of a call that holds the GIL (keywords, argument conversion; "
                     f"an extend of 0 rows): {share}. Threads take turns at it, and a thread "
                     "that finds the GIL taken sleeps until woken (a futex wake-up)")
    if sampling:
        lines.append("")
        lines.append("Sampling while one writer thread runs extend(256) without pause "
                     "(median [min-max])")
        lines += _md(["metric", "alone", "with 1 writer", "with / alone",
                      "writer rows/s meanwhile"],
                     [[c.metric, _rate(c.values.get("alone")), _rate(c.values.get("with 1 writer")),
                       _ratio(c.extra.get("ratio")), _rate(c.extra.get("writer_rows_per_s"))]
                      for c in sampling])
        lines.append(f"  alone, sample and update_priorities spread over all {_cores()} cores "
                     "(reverie's thread pool): the writer thread takes one of them")
    if procs:
        lines.append("")
        workers = procs[0].extra.get("workers", 2)
        lines.append(f"Ingestion from {workers} worker processes (spawn), rows/s from the start "
                     "signal until the consumer holds every row (median [min-max])")
        lines += _md(["granularity"] + [MODE_LABELS[m] for m in MODES]
                     + ["shared / Queue->reverie", "shared / Queue->numpy",
                        "shared: 2 / 1 process"],
                     [[c.metric] + [_rate(c.values.get(m)) for m in MODES]
                      + [_ratio(c.extra.get("ratio"), c.extra.get("target")),
                         _ratio(c.extra.get("ratio_vs_numpy")),
                         _ratio(c.extra.get("ratio_2_vs_1_process"))] for c in procs])
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


def run(s: R.Settings, prog: R.Progress) -> Tuple[List[Cell], Dict[str, Any]]:
    """Runs the three sections; returns the cells and their JSON form."""
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
