"""Side-by-side benchmark of reverie against the baselines: ``python -m reverie.bench``.

Every cell is measured in this one process on this machine: warm up, then call the
operation repeatedly for a fixed wall-clock budget split into several repeats; a cell's
figure is the **median** rate over its repeats. The machine's memory-copy bandwidth (the
ceiling for gathering) is the best of several ``np.copyto`` runs.

Workloads (see DESIGN.md, "Performance: how it is judged"):

- W1: MuJoCo-like transitions, single add, batched add of 256, uniform sample(256).
- W2: prioritized, one step = sample(256) with weights + update_priorities(256).
- W3: Atari-like frames u8[4,84,84], sample(32) and sample(256) in gathered GB/s.
- memory: resident-set growth of a filled W1 buffer against the bytes it stores.
- concurrency: reverie alone: 1 vs 2 writer threads, sampling while a writer runs, and
  ingestion from 2 worker processes into shared memory vs a multiprocessing.Queue (see
  ``concurrency.py``).
- episodes: reverie's EpisodeBuffer against a vectorized numpy episode buffer: n-step
  sample(256), sequences 32 x 80, and W3 frames stored once with frame_stack=4 (memory and
  sample throughput against full obs/next_obs stacks) (see ``episodes.py``).
- gpu: where a CUDA GPU exists, the device buffer against torch-native prioritized replay
  and the host buffer + pinned copy, and the device gather against the device's copy
  bandwidth (``gpu.py``, also ``python -m reverie.bench.gpu``); skipped with a line otherwise.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from . import baselines as bl

Columns = Dict[str, np.ndarray]

W1_SPEC: bl.Spec = {
    "obs": (np.float32, (17,)),
    "action": (np.float32, (6,)),
    "reward": (np.float32, ()),
    "next_obs": (np.float32, (17,)),
    "done": (np.bool_, ()),
}
W3_SPEC: bl.Spec = {"obs": (np.uint8, (4, 84, 84))}
ALPHA, BETA, EPS = 0.6, 0.4, 1e-6

IMPLS = ("reverie", "numpy", "python", "cpprb")
LABELS = {"reverie": "reverie", "numpy": "numpy", "python": "pure-python", "cpprb": "cpprb"}


def human_count(n: int) -> str:
    """1_000_000 -> '1M', 50_000 -> '50k'."""
    for scale, suffix in ((1_000_000, "M"), (1_000, "k")):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{suffix}"
    return f"{n:,}"


def item_bytes(spec: bl.Spec) -> int:
    """Bytes one item occupies in columnar storage."""
    return sum(np.dtype(dt).itemsize * int(np.prod(shape, dtype=np.int64))
               for dt, shape in spec.values())


def make_columns(spec: bl.Spec, n: int, rng: np.random.Generator) -> Columns:
    """``n`` random items as one array per field."""
    cols: Columns = {}
    for name, (dt, shape) in spec.items():
        dt = np.dtype(dt)
        size = (n, *shape)
        if dt == np.bool_:
            cols[name] = rng.random(size) < 0.01
        elif dt.kind == "f":
            cols[name] = rng.standard_normal(size, dtype=np.float32).astype(dt, copy=False)
        else:
            cols[name] = rng.integers(0, 256, size, dtype=dt)
    return cols


def fill_blocks(spec: bl.Spec, capacity: int, rng: np.random.Generator,
                block: int = 2048) -> List[Columns]:
    """Random data that fill ``capacity`` items, as blocks to load one after another.

    Small items come as one block of distinct items. Large ones (W3 frames) repeat one
    random block of ``block`` items: repeated data do not change copying speed and save
    generating gigabytes of random numbers.
    """
    if item_bytes(spec) <= 4096 or capacity <= block:
        return [make_columns(spec, capacity, rng)]
    cols = make_columns(spec, block, rng)
    out, done = [], 0
    while done < capacity:
        k = min(block, capacity - done)
        out.append({name: c[:k] for name, c in cols.items()})
        done += k
    return out


# ---------------------------------------------------------------------------------------
# Adapters: one object per library, the same methods for all
# ---------------------------------------------------------------------------------------


class Adapter:
    """A buffer of one library behind the benchmark's common interface.

    ``rows``/``batch`` convert prepared data into the library's own calling convention
    once, outside the timed loops, so timing sees only the library's calls.
    """

    key = ""
    buf: Any

    def __init__(self, capacity: int, spec: bl.Spec, prioritized: bool, seed: int) -> None:
        self.capacity, self.spec, self.prioritized = capacity, spec, prioritized
        self.names = list(spec)

    def load(self, blocks: Sequence[Columns]) -> None:
        """Fills the buffer with the given blocks as fast as the library allows."""
        raise NotImplementedError

    def rows(self, cols: Columns) -> List[Any]:
        """Single items in the form ``add_loop`` takes."""
        n = len(cols[self.names[0]])
        return [tuple(_item(cols[name], i) for name in self.names) for i in range(n)]

    def add_loop(self, rows: List[Any]) -> None:
        """Adds the items one ``add`` call each."""
        add = self.buf.add
        for row in rows:
            add(*row)

    def batch(self, cols: Columns) -> Any:
        """A batch in the form ``extend`` takes."""
        return [cols[name] for name in self.names]

    def extend(self, batch: Any) -> None:
        self.buf.extend(*batch)

    def sample(self, n: int) -> Any:
        return self.buf.sample(n)

    def step(self, n: int, priorities: Any) -> None:
        """One prioritized step: sample with weights, then update the sampled priorities."""
        b = self.buf.sample(n)
        self.buf.update_priorities(b["indices"], priorities)

    def __len__(self) -> int:
        return len(self.buf)


def _item(col: np.ndarray, i: int) -> Any:
    """Item ``i`` of a column as an environment hands it out: arrays, or Python scalars."""
    return col[i].copy() if col.ndim > 1 else col[i].item()


class KeywordAdapter(Adapter):
    """For libraries whose add/extend take the fields as keyword arguments."""

    def rows(self, cols: Columns) -> List[Any]:
        return [dict(zip(self.names, row)) for row in super().rows(cols)]

    def add_loop(self, rows: List[Any]) -> None:
        add = self.buf.add
        for row in rows:
            add(**row)

    def batch(self, cols: Columns) -> Any:
        return dict(cols)


class ReverieAdapter(KeywordAdapter):
    key = "reverie"

    def __init__(self, capacity: int, spec: bl.Spec, prioritized: bool, seed: int) -> None:
        super().__init__(capacity, spec, prioritized, seed)
        import reverie as rv

        sampler = rv.Prioritized(alpha=ALPHA, beta=BETA, eps=EPS) if prioritized else rv.Uniform()
        self.buf = rv.ReplayBuffer(capacity, spec=dict(spec), sampler=sampler, seed=seed)

    def load(self, blocks: Sequence[Columns]) -> None:
        for cols in blocks:
            self.buf.extend(**cols)

    def extend(self, batch: Any) -> None:
        self.buf.extend(**batch)

    def step(self, n: int, priorities: Any) -> None:
        b = self.buf.sample(n)
        self.buf.update_priorities(b.indices, priorities)


class NumpyAdapter(Adapter):
    key = "numpy"

    def __init__(self, capacity: int, spec: bl.Spec, prioritized: bool, seed: int) -> None:
        super().__init__(capacity, spec, prioritized, seed)
        self.buf: Any = (bl.NumpyPER(capacity, spec, ALPHA, BETA, EPS, seed) if prioritized
                         else bl.NumpyReplay(capacity, spec, seed))

    def load(self, blocks: Sequence[Columns]) -> None:
        if self.prioritized and len(blocks) == 1:
            self.buf.load(*self.batch(blocks[0]))
            return
        for cols in blocks:
            self.buf.extend(*self.batch(cols))


class PythonAdapter(Adapter):
    key = "python"

    def __init__(self, capacity: int, spec: bl.Spec, prioritized: bool, seed: int) -> None:
        super().__init__(capacity, spec, prioritized, seed)
        self.buf: Any = (bl.PythonSumTreePER(capacity, spec, ALPHA, BETA, EPS, seed)
                         if prioritized else bl.DequeReplay(capacity, spec, seed))

    def load(self, blocks: Sequence[Columns]) -> None:
        if len(blocks) != 1:
            raise ValueError("the pure-Python buffers are loaded from one block")
        self.buf.load(*self.batch(blocks[0]))


class CpprbAdapter(KeywordAdapter):
    """cpprb's ReplayBuffer / PrioritizedReplayBuffer; batches converted with torch.from_numpy."""

    key = "cpprb"

    def __init__(self, capacity: int, spec: bl.Spec, prioritized: bool, seed: int) -> None:
        super().__init__(capacity, spec, prioritized, seed)
        import cpprb

        env = {name: {"shape": tuple(shape) or 1, "dtype": np.dtype(dt)}
               for name, (dt, shape) in spec.items()}
        if prioritized:
            self.buf = cpprb.PrioritizedReplayBuffer(capacity, env, alpha=ALPHA, eps=EPS)
        else:
            self.buf = cpprb.ReplayBuffer(capacity, env)
        np.random.seed(seed)  # cpprb draws from numpy's global generator

    def load(self, blocks: Sequence[Columns]) -> None:
        for cols in blocks:
            for start in range(0, len(cols[self.names[0]]), 65536):
                self.buf.add(**{k: v[start:start + 65536] for k, v in cols.items()})

    def extend(self, batch: Any) -> None:
        self.buf.add(**batch)

    def _to_torch(self, s: Dict[str, np.ndarray]) -> Dict[str, torch.Tensor]:
        return {k: torch.from_numpy(v) for k, v in s.items() if k != "indexes"}

    def sample(self, n: int) -> Any:
        if self.prioritized:
            return self._to_torch(self.buf.sample(n, beta=BETA))
        return self._to_torch(self.buf.sample(n))

    def step(self, n: int, priorities: Any) -> None:
        s = self.buf.sample(n, beta=BETA)
        self._to_torch(s)
        self.buf.update_priorities(s["indexes"], priorities)

    def __len__(self) -> int:
        return int(self.buf.get_stored_size())


ADAPTERS: Dict[str, type] = {
    "reverie": ReverieAdapter,
    "numpy": NumpyAdapter,
    "python": PythonAdapter,
    "cpprb": CpprbAdapter,
}


def available() -> Dict[str, Optional[str]]:
    """{impl: None if usable, else why not}."""
    why: Dict[str, Optional[str]] = {"numpy": None, "python": None}
    for key, module in (("reverie", "reverie"), ("cpprb", "cpprb")):
        try:
            __import__(module)
            why[key] = None
        except Exception as exc:  # ImportError, or a broken build raising something else
            why[key] = f"not importable ({type(exc).__name__}: {exc})".splitlines()[0]
    return why


# ---------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------


@dataclass
class Settings:
    quick: bool
    w1_capacity: int
    w2_capacities: Tuple[int, ...]
    w3_capacity: int
    budget_s: float  # timed seconds per cell, split over the repeats
    repeats: int
    warmup_s: float
    seed: int = 0

    @classmethod
    def make(cls, quick: bool, budget_s: Optional[float], seed: int) -> "Settings":
        if quick:
            return cls(True, 100_000, (100_000, 1_000_000), 10_000,
                       budget_s or 0.6, 3, 0.1, seed)
        return cls(False, 1_000_000, (100_000, 1_000_000), 50_000,
                   budget_s or 3.0, 5, 0.3, seed)


def _timed(op: Callable[[], Any], seconds: float) -> Tuple[int, float]:
    """Calls ``op`` until ``seconds`` have passed (at least once): (calls, elapsed)."""
    calls = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        op()
        calls += 1
        now = time.perf_counter()
        if now >= deadline:
            return calls, now - start


def measure(ops: Dict[str, Callable[[], Any]], units_per_call: float,
            settings: Settings) -> Dict[str, Dict[str, Any]]:
    """Rates of each op in units/s: the median over repeats, each a slice of the budget.

    The implementations take turns slice by slice (A B C A B C ...), so a change in the
    machine's load during a cell hits all of them alike.
    """
    for op in ops.values():
        _timed(op, settings.warmup_s)
    rates: Dict[str, List[float]] = {k: [] for k in ops}
    slice_s = settings.budget_s / settings.repeats
    for _ in range(settings.repeats):
        for key, op in ops.items():
            calls, elapsed = _timed(op, slice_s)
            rates[key].append(calls * units_per_call / elapsed)
    return {k: {"value": statistics.median(r), "repeats": r} for k, r in rates.items()}


def memcpy_bandwidth(nbytes: int = 256 << 20, runs: int = 7) -> float:
    """This machine's single-threaded copy bandwidth in GB/s (bytes copied per second), best-of."""
    src = np.ones(nbytes, dtype=np.uint8)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # faults the pages in
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - start)
    return nbytes / best / 1e9


# ---------------------------------------------------------------------------------------
# Results and progress
# ---------------------------------------------------------------------------------------


@dataclass
class Row:
    workload: str
    metric: str
    unit: str
    values: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    note: str = ""

    def value(self, impl: str) -> Optional[float]:
        v = self.values.get(impl)
        return None if v is None else v["value"]

    def ratio(self, impl: str) -> Optional[float]:
        a, b = self.value("reverie"), self.value(impl)
        return None if a is None or not b else a / b


class Progress:
    """tqdm when installed, else one line per step."""

    def __init__(self, total: int) -> None:
        try:
            from tqdm import tqdm

            self.bar: Any = tqdm(total=total, unit="cell", file=sys.stderr, dynamic_ncols=True)
        except ImportError:
            self.bar = None
        self.total, self.done = total, 0

    def note(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_description_str(text)
        else:
            print(f"[{self.done}/{self.total}] {text}", file=sys.stderr, flush=True)

    def advance(self, steps: int = 1) -> None:
        self.done += steps
        if self.bar is not None:
            self.bar.update(steps)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ---------------------------------------------------------------------------------------
# Workloads
# ---------------------------------------------------------------------------------------


def build_filled(impl: str, capacity: int, spec: bl.Spec, prioritized: bool,
                 blocks: Sequence[Columns], seed: int = 0) -> Adapter:
    """An adapter of ``impl`` filled to capacity with ``blocks`` (see ``fill_blocks``)."""
    gc.disable()  # millions of tuples in the pure-Python fills; not part of any timing
    try:
        adapter: Adapter = ADAPTERS[impl](capacity, spec, prioritized, seed)
        adapter.load(blocks)
    finally:
        gc.enable()
    gc.collect()
    if len(adapter) != capacity:
        raise RuntimeError(f"{impl}: filled {len(adapter)} of {capacity} items")
    return adapter


def bench_cases(capacities: Sequence[int], exclude: Sequence[str] = ()) -> List[Tuple[str, int]]:
    """(implementation, capacity) pairs for the pytest-benchmark suite in bench/."""
    impls = [i for i, why in available().items() if why is None and i not in exclude]
    return [(impl, cap) for cap in capacities for impl in impls]


def filled_case(case: Tuple[str, int], spec: bl.Spec, prioritized: bool) -> Adapter:
    """The buffer of one bench/ case, filled with seeded random items."""
    impl, cap = case
    return build_filled(impl, cap, spec, prioritized,
                        fill_blocks(spec, cap, np.random.default_rng(0)))


def _build_all(impls: Sequence[str], capacity: int, spec: bl.Spec, prioritized: bool,
               blocks: Sequence[Columns], seed: int, prog: Progress,
               what: str) -> Dict[str, Adapter]:
    out = {}
    for impl in impls:
        prog.note(f"{what} {impl}: filling {capacity:,}")
        out[impl] = build_filled(impl, capacity, spec, prioritized, blocks, seed)
    return out


def _cell(row: Row, ops: Dict[str, Callable[[], Any]], units: float, s: Settings,
          prog: Progress) -> None:
    prog.note(f"{row.workload} {row.metric}")
    row.values.update(measure(ops, units, s))
    prog.advance(len([k for k in ops if k in IMPLS]))


def run_w1(s: Settings, impls: Sequence[str], prog: Progress) -> List[Row]:
    cap = s.w1_capacity
    rng = np.random.default_rng(s.seed)
    fresh = make_columns(W1_SPEC, 1024, rng)
    batch = {k: v[:256] for k, v in fresh.items()}
    bufs = _build_all(impls, cap, W1_SPEC, False, fill_blocks(W1_SPEC, cap, rng), s.seed,
                      prog, "W1")
    note = "" if cap == 1_000_000 else f"cap {human_count(cap)}, quick"
    add = Row("W1", "add 1", "items/s", note=note)
    ext = Row("W1", "extend 256", "items/s", note=note)
    smp = Row("W1", "sample 256 -> torch", "batches/s", note=note)
    _cell(add, {k: partial(a.add_loop, a.rows(fresh)) for k, a in bufs.items()}, len(fresh["obs"]),
          s, prog)
    _cell(ext, {k: partial(a.extend, a.batch(batch)) for k, a in bufs.items()}, 256, s, prog)
    _cell(smp, {k: partial(a.sample, 256) for k, a in bufs.items()}, 1, s, prog)
    return [add, ext, smp]


def _stepper(a: Adapter, pool: Any) -> Callable[[], None]:
    """One W2 step per call, cycling through a pool of priority vectors (rows taken out of
    the pool up front, so no implementation pays for indexing it)."""
    counter = [0]
    rows = [pool[i] for i in range(len(pool))]

    def step() -> None:
        counter[0] += 1
        a.step(256, rows[counter[0] & 63])

    return step


def run_w2(s: Settings, impls: Sequence[str], prog: Progress) -> List[Row]:
    out = []
    rng = np.random.default_rng(s.seed + 1)
    pool = rng.random((64, 256), dtype=np.float32) + np.float32(1e-3)  # |TD error|-like
    pool_t = torch.from_numpy(pool)  # reverie takes the tensors a training loop has
    for cap in s.w2_capacities:
        bufs = _build_all(impls, cap, W1_SPEC, True, fill_blocks(W1_SPEC, cap, rng), s.seed,
                          prog, "W2")
        row = Row("W2", f"step 256 @ {human_count(cap)}", "steps/s")
        _cell(row, {k: _stepper(a, pool_t if k == "reverie" else pool) for k, a in bufs.items()},
              1, s, prog)
        out.append(row)
        del bufs
        gc.collect()
    return out


def _slice_copy(src: np.ndarray, n: int, rng: np.random.Generator) -> Callable[[], None]:
    """Copies ``n`` consecutive rows from a random offset into one reused destination: what a
    gather of ``n`` rows would cost with no scattering and no allocation (a floor)."""
    dst = np.empty((n, *src.shape[1:]), dtype=src.dtype)
    starts = rng.integers(0, len(src) - n, 1024)
    counter = [0]

    def copy() -> None:
        counter[0] += 1
        start = starts[counter[0] & 1023]
        np.copyto(dst, src[start:start + n])

    return copy


def run_w3(s: Settings, impls: Sequence[str],
           prog: Progress) -> Tuple[List[Row], Dict[str, Any]]:
    """W3 rows, and the copy references: memcpy GB/s and per-batch-size slice-copy GB/s."""
    cap = s.w3_capacity
    rng = np.random.default_rng(s.seed + 2)
    frame = item_bytes(W3_SPEC)
    note = "" if cap == 50_000 else f"cap {human_count(cap)}, quick"
    prog.note("W3: memcpy bandwidth")
    memcpy = memcpy_bandwidth()
    bufs = _build_all(impls, cap, W3_SPEC, False, fill_blocks(W3_SPEC, cap, rng), s.seed,
                      prog, "W3")
    rows: List[Row] = []
    slice_copy: Dict[int, Any] = {}
    for n in (32, 256):
        row = Row("W3", f"sample {n}", "GB/s", note=note)
        ops: Dict[str, Callable[[], Any]] = {k: partial(a.sample, n) for k, a in bufs.items()}
        if "numpy" in bufs:
            ops["slice-copy"] = _slice_copy(bufs["numpy"].buf.columns[0], n, rng)
        _cell(row, ops, n * frame / 1e9, s, prog)
        if "slice-copy" in row.values:
            slice_copy[n] = row.values.pop("slice-copy")
        rows.append(row)
    del bufs
    gc.collect()
    prog.note("W3: memcpy bandwidth")
    memcpy = max(memcpy, memcpy_bandwidth())  # best before and after
    return rows, {"memcpy_gbps": memcpy, "slice_copy": slice_copy}


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def memory_probe(impl: str, capacity: int, seed: int = 0) -> Dict[str, int]:
    """RSS growth from creating and filling a W1 buffer (run in a fresh process).

    The source data exist before the first reading; the pure-Python buffer stores copies
    (as an environment would hand out fresh arrays), not views of them.
    """
    fill = make_columns(W1_SPEC, capacity, np.random.default_rng(seed))
    gc.collect()
    before = _rss_bytes()
    buf: Any
    if impl == "python":
        buf = bl.DequeReplay(capacity, W1_SPEC)
        names = list(W1_SPEC)
        cols = [list(fill[n].copy()) if fill[n].ndim > 1 else fill[n].tolist() for n in names]
        buf.buffer.extend(zip(*cols))
        del cols
    else:
        buf = build_filled(impl, capacity, W1_SPEC, False, [fill], seed)
    gc.collect()
    after = _rss_bytes()
    assert len(buf) == capacity
    return {"rss_growth": after - before, "stored": capacity * item_bytes(W1_SPEC)}


def probe_in_subprocess(module: str, func: str, args: Tuple[Any, ...],
                        timeout: float) -> Dict[str, Any]:
    """``module.func(*args)`` (returning JSON-able data) in a fresh interpreter, so memory
    figures start from a clean process; {"error": ...} when it fails."""
    code = f"import json; from {module} import {func}; print(json.dumps({func}{args!r}))"
    try:
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=timeout, check=True)
        return json.loads(res.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError) as exc:
        err = getattr(exc, "stderr", "") or ""
        return {"error": f"{type(exc).__name__}: {err.strip()[-300:]}"}


def run_memory(s: Settings, impls: Sequence[str], prog: Progress) -> Dict[str, Any]:
    """Runs ``memory_probe`` in a fresh interpreter per implementation."""
    out: Dict[str, Any] = {}
    for impl in impls:
        prog.note(f"memory: {impl}")
        out[impl] = probe_in_subprocess("reverie.bench.runner", "memory_probe",
                                        (impl, s.w1_capacity, s.seed), 300)
        prog.advance()
    return out


# ---------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------


def _fmt(v: Optional[float], unit: str) -> str:
    if v is None:
        return "-"
    if unit == "GB/s":
        return f"{v:.2f} GB/s"
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if v >= scale:
            return f"{v / scale:.3g}{suffix}/s"
    return f"{v:.3g}/s"


def _fmt_ratio(r: Optional[float]) -> str:
    return "-" if r is None else f"{r:.3g}x"


def table(rows: Sequence[Row], with_cpprb: bool) -> str:
    """The results as a markdown table."""
    head = ["workload", "metric", "reverie", "numpy", "pure-python"]
    if with_cpprb:
        head.append("cpprb")
    head += ["reverie/numpy", "reverie/python"]
    if with_cpprb:
        head.append("reverie/cpprb")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        impls = ["reverie", "numpy", "python"] + (["cpprb"] if with_cpprb else [])
        cells = [r.workload + (f" [{r.note}]" if r.note else ""), f"{r.metric} ({r.unit})"]
        cells += [_fmt(r.value(i), r.unit) for i in impls]
        cells += [_fmt_ratio(r.ratio("numpy")), _fmt_ratio(r.ratio("python"))]
        if with_cpprb:
            cells.append(_fmt_ratio(r.ratio("cpprb")))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: Sequence[Row], path: str) -> None:
    """Log-scale bars of reverie's speedup over each baseline, one panel per workload."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    workloads = [w for w in ("W1", "W2", "W3") if any(r.workload == w for r in rows)]
    colors = {"numpy": "tab:blue", "python": "tab:orange", "cpprb": "tab:green"}
    fig, axes = plt.subplots(1, len(workloads), figsize=(5 * len(workloads), 4.2), squeeze=False)
    for ax, w in zip(axes[0], workloads):
        sel = [r for r in rows if r.workload == w]
        others = [i for i in ("numpy", "python", "cpprb") if any(r.ratio(i) for r in sel)]
        width = 0.8 / max(len(others), 1)
        ratios = [0.5, 2.0]
        for k, impl in enumerate(others):
            xs = [i + (k - (len(others) - 1) / 2) * width for i in range(len(sel))]
            ys = [r.ratio(impl) or 0.0 for r in sel]
            ratios += [y for y in ys if y]
            bars = ax.bar(xs, ys, width, label=f"vs {LABELS[impl]}", color=colors[impl])
            for bar, y in zip(bars, ys):
                if y:
                    ax.annotate(f"{y:.3g}x", (bar.get_x() + bar.get_width() / 2, y),
                                ha="center", va="bottom", fontsize=7)
        ax.set_yscale("log")
        ax.set_ylim(min(ratios) / 1.5, max(ratios) * 2.5)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}x"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(sel)))
        ax.set_xticklabels([r.metric for r in sel], fontsize=8)
        title = f"{w}" + (f" [{sel[0].note}]" if sel[0].note else "")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8, loc="upper left", ncol=len(others))
    fig.suptitle("reverie speedup over each baseline (higher is better; 1x = same speed)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def machine_info() -> Dict[str, Any]:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info: Dict[str, Any] = {
        "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
        "numpy": np.__version__, "torch": torch.__version__, "platform": platform.platform(),
    }
    try:
        import reverie

        info["reverie"] = reverie.__version__
    except Exception:  # reported under "skipped" already
        pass
    return info


# ---------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------


def report(rows: Sequence[Row], w3_rows: Sequence[Row], copies: Dict[str, Any],
           memory: Dict[str, Any], skipped: Dict[str, str], s: Settings, with_cpprb: bool) -> str:
    """The table and the notes under it."""
    lines = [table(rows, with_cpprb), ""]
    lines.append("W1 add 1: the deque keeps a reference to the caller's objects; reverie and "
                 "numpy copy the values into columns.")
    memcpy = copies["memcpy_gbps"]
    lines.append(f"memcpy (np.copyto of 256 MB, DRAM to DRAM, best of 2x7): {memcpy:.2f} GB/s")
    for r in w3_rows:
        n = int(r.metric.split()[-1])
        sc = copies["slice_copy"].get(n)
        if sc is not None:
            lines.append(f"  W3 {r.metric}: contiguous copy of {n} frames into a reused buffer "
                         f"(no scatter, no allocation): {sc['value']:.2f} GB/s")
        for impl in ("reverie", "numpy", "cpprb"):
            v = r.value(impl)
            if v is not None:
                floor = f", {v / sc['value']:.0%} of that copy" if sc is not None else ""
                lines.append(f"  W3 {r.metric}: {LABELS[impl]} {v:.2f} GB/s = "
                             f"{v / memcpy:.0%} of memcpy{floor}")
    lines.append("  (a batch of 0.9 or 7.2 MB can land in cache, so a gather may beat "
                 "a 256 MB memcpy)")
    stored = s.w1_capacity * item_bytes(W1_SPEC)
    lines.append(f"memory, W1 buffer of {s.w1_capacity:,} items ({stored / 1e6:.0f} MB stored), "
                 "RSS growth when created and filled:")
    for impl, m in memory.items():
        if "error" in m:
            lines.append(f"  {LABELS[impl]}: failed ({m['error']})")
        else:
            lines.append(f"  {LABELS[impl]}: {m['rss_growth'] / 1e6:.0f} MB = "
                         f"{m['rss_growth'] / m['stored']:.2f}x stored bytes")
    for impl, reason in skipped.items():
        lines.append(f"{impl}: skipped, {reason}")
    lines.append(f"each cell: median of {s.repeats} repeats of {s.budget_s / s.repeats:.2g} s "
                 f"per implementation, taken in turns, after {s.warmup_s:g} s warm-up; "
                 f"buffers full before timing; {machine_info()['cpu']}, {os.cpu_count()} cores")
    return "\n".join(lines)


WORKLOADS = ("W1", "W2", "W3", "memory", "concurrency", "episodes")


def run(quick: bool = False, out_dir: str = "bench_results", budget_s: Optional[float] = None,
        seed: int = 0, only: Optional[Sequence[str]] = None,
        workloads: Sequence[str] = WORKLOADS) -> Dict[str, Any]:
    """Runs every workload, prints the table and writes results.json and speedup.png."""
    t0 = time.perf_counter()
    s = Settings.make(quick, budget_s, seed)
    why = available()
    impls = [i for i in IMPLS if why[i] is None and (only is None or i in only)]
    skipped = {i: why[i] or "not selected" for i in IMPLS if i not in impls}
    w3 = [i for i in impls if i != "python"] if "W3" in workloads else []  # frames as tuples: no
    mem = [i for i in ("reverie", "numpy", "python") if i in impls] if "memory" in workloads else []
    concurrent = "concurrency" in workloads and why["reverie"] is None
    if "concurrency" in workloads and not concurrent:
        skipped["concurrency"] = f"reverie {why['reverie']}"
    episodic = "episodes" in workloads and why["reverie"] is None
    if episodic:
        from . import episodes

        reason = episodes.unavailable()
        if reason is not None:
            episodic, skipped["episodes"] = False, reason
    elif "episodes" in workloads:
        skipped["episodes"] = f"reverie {why['reverie']}"
    total = (len(impls) * (3 * ("W1" in workloads) + len(s.w2_capacities) * ("W2" in workloads))
             + 2 * len(w3) + len(mem))
    if concurrent:
        from . import concurrency

        total += concurrency.cells()
    if episodic:
        total += episodes.cells()
    print(f"reverie.bench: {'quick' if quick else 'full'} run; "
          f"implementations: {', '.join(impls)}", file=sys.stderr)
    for impl, reason in skipped.items():
        print(f"  skipped {impl}: {reason}", file=sys.stderr)
    prog = Progress(total)
    try:
        memory = run_memory(s, mem, prog)
        rows = run_w1(s, impls, prog) if "W1" in workloads else []
        rows += run_w2(s, impls, prog) if "W2" in workloads else []
        w3_rows, copies = run_w3(s, w3, prog)
        w3_rows = [r for r in w3_rows if r.values]  # empty when W3 was not selected
        rows += w3_rows
        conc = concurrency.run(s, prog)[1] if concurrent else None
        epi = episodes.run(s, prog)[1] if episodic else None
    finally:
        prog.close()
    base = any(w not in ("concurrency", "episodes") for w in workloads)
    text = report(rows, w3_rows, copies, memory, skipped, s, "cpprb" in impls) if base else ""
    if conc is not None:
        text += ("\n\n" if text else "") + conc["report"]
    elif "concurrency" in skipped and not base:
        text += f"\nconcurrency: skipped, {skipped['concurrency']}"
    if epi is not None:
        text += ("\n\n" if text else "") + epi["report"]
    elif "episodes" in skipped and not base:
        text += f"\nepisodes: skipped, {skipped['episodes']}"
    elapsed = time.perf_counter() - t0
    text += f"\ntotal time {elapsed:.0f} s"
    print(text)

    os.makedirs(out_dir, exist_ok=True)
    result = {
        "settings": {**vars(s), "w2_capacities": list(s.w2_capacities),
                     "statistic": "median of repeats, implementations in turns"},
        "machine": machine_info(),
        "implementations": impls,
        "skipped": skipped,
        "rows": [{"workload": r.workload, "metric": r.metric, "unit": r.unit, "note": r.note,
                  "values": r.values,
                  "ratios": {i: r.ratio(i) for i in ("numpy", "python", "cpprb")}}
                 for r in rows],
        "memcpy_gbps": copies["memcpy_gbps"],
        "w3_slice_copy": copies["slice_copy"],
        "memory": memory,
        "item_bytes_w1": item_bytes(W1_SPEC),
        "elapsed_s": elapsed,
        "report": text,
    }
    if conc is not None:
        result["concurrency"] = conc
    if epi is not None:
        result["episodes"] = epi
    json_path = os.path.join(out_dir, "results.json")
    png_path = os.path.join(out_dir, "speedup.png")
    with open(json_path, "w") as f:
        json.dump(result, f, indent=2)
    if rows:
        plot(rows, png_path)
        print(f"wrote {json_path} and {png_path}")
    else:
        print(f"wrote {json_path}")
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reverie.bench", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="smaller W1/W3 capacities and shorter cells (under a minute)")
    p.add_argument("--out", default="bench_results", help="folder for results.json and speedup.png")
    p.add_argument("--budget", type=float, default=None, help="timed seconds per cell")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", nargs="+", choices=IMPLS, help="run only these implementations")
    p.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS),
                   help="run only these workloads")
    args = p.parse_args(argv)
    run(args.quick, args.out, args.budget, args.seed, args.only, args.workloads)
    # The GPU section runs where a GPU exists (else it prints why it was skipped).
    from . import gpu

    gpu_args = ["--json", os.path.join(args.out, "gpu.json"), "--seed", str(args.seed)]
    return gpu.main(gpu_args + (["--quick"] if args.quick else []))
