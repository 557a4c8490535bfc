"""Side-by-side benchmark of reverie against the baselines: ``python -m reverie.bench``.

Every cell is measured in this one process on this machine with the shared harness
(``harness.py``): warm up, then the implementations take turns calling the operation for
a slice of a fixed wall-clock budget, several rounds; a cell's figure is the **median**
rate over its rounds. The machine's memory-copy bandwidth (the ceiling for gathering) is
the best of several ``np.copyto`` runs.

Workloads (specs, data and the per-library adapters in ``workloads.py``):

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
- policies: the parts of a table: reservoir admission against numpy's Algorithm R and
  Avalanche's update, top-k retention against a heapq writer, and the cost of
  max_times_sampled and of item metadata (see ``policies.py``).
- memories: continual-learning parts: the class-balanced reservoir against a Python CBRS
  loop and Avalanche's ClassBalancedBuffer update, the keyed archive against a dict, the
  mixture and reuse rules' overheads (see ``memories.py``).
- gpu: where a CUDA GPU exists, the device buffer against torch-native prioritized replay
  and the host buffer + pinned copy, and the device gather against the device's copy
  bandwidth (``gpu.py``, also ``python -m reverie.bench.gpu``); skipped with a line otherwise.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from . import baselines as bl
from .harness import (
    Cell,
    Panel,
    Progress,
    fmt_value,
    human_count,
    machine_info,
    measure_rates,
    plot_ratios,
    probe_in_subprocess,
    ratio_column,
    rss_bytes,
    tabulate,
)
from .workloads import (
    IMPLS,
    LABELS,
    W1_SPEC,
    W3_SPEC,
    Adapter,
    Settings,
    available,
    build_filled,
    fill_blocks,
    item_bytes,
    make_columns,
)

BASELINES = ("numpy", "python", "cpprb")  # the ratio columns: reverie over each
COLORS = {"numpy": "tab:blue", "python": "tab:orange", "cpprb": "tab:green"}


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
# Workloads
# ---------------------------------------------------------------------------------------


def _build_all(impls: Sequence[str], capacity: int, spec: bl.Spec, prioritized: bool,
               blocks: Sequence[Dict[str, np.ndarray]], seed: int, prog: Progress,
               what: str) -> Dict[str, Adapter]:
    out = {}
    for impl in impls:
        prog.note(f"{what} {impl}: filling {capacity:,}")
        out[impl] = build_filled(impl, capacity, spec, prioritized, blocks, seed)
    return out


def _cell(row: Cell, ops: Dict[str, Callable[[], Any]], units: float, s: Settings,
          prog: Progress) -> None:
    prog.note(f"{row.section} {row.metric}")
    row.values.update(measure_rates(ops, units, s))
    prog.advance(len([k for k in ops if k in IMPLS]))


def run_w1(s: Settings, impls: Sequence[str], prog: Progress) -> List[Cell]:
    cap = s.w1_capacity
    rng = np.random.default_rng(s.seed)
    fresh = make_columns(W1_SPEC, 1024, rng)
    batch = {k: v[:256] for k, v in fresh.items()}
    bufs = _build_all(impls, cap, W1_SPEC, False, fill_blocks(W1_SPEC, cap, rng), s.seed,
                      prog, "W1")
    note = "" if cap == 1_000_000 else f"cap {human_count(cap)}, quick"
    add = Cell("W1", "add 1", "items/s", note=note)
    ext = Cell("W1", "extend 256", "items/s", note=note)
    smp = Cell("W1", "sample 256 -> torch", "batches/s", note=note)
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


def run_w2(s: Settings, impls: Sequence[str], prog: Progress) -> List[Cell]:
    out = []
    rng = np.random.default_rng(s.seed + 1)
    pool = rng.random((64, 256), dtype=np.float32) + np.float32(1e-3)  # |TD error|-like
    pool_t = torch.from_numpy(pool)  # reverie takes the tensors a training loop has
    for cap in s.w2_capacities:
        bufs = _build_all(impls, cap, W1_SPEC, True, fill_blocks(W1_SPEC, cap, rng), s.seed,
                          prog, "W2")
        row = Cell("W2", f"step 256 @ {human_count(cap)}", "steps/s")
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
           prog: Progress) -> Tuple[List[Cell], Dict[str, Any]]:
    """W3 rows, and the copy references: memcpy GB/s and per-batch-size slice-copy GB/s."""
    cap = s.w3_capacity
    rng = np.random.default_rng(s.seed + 2)
    frame = item_bytes(W3_SPEC)
    note = "" if cap == 50_000 else f"cap {human_count(cap)}, quick"
    prog.note("W3: memcpy bandwidth")
    memcpy = memcpy_bandwidth()
    bufs = _build_all(impls, cap, W3_SPEC, False, fill_blocks(W3_SPEC, cap, rng), s.seed,
                      prog, "W3")
    rows: List[Cell] = []
    slice_copy: Dict[int, Any] = {}
    for n in (32, 256):
        row = Cell("W3", f"sample {n}", "GB/s", note=note)
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


def memory_probe(impl: str, capacity: int, seed: int = 0) -> Dict[str, int]:
    """RSS growth from creating and filling a W1 buffer (run in a fresh process).

    The source data exist before the first reading; the pure-Python buffer stores copies
    (as an environment would hand out fresh arrays), not views of them.
    """
    fill = make_columns(W1_SPEC, capacity, np.random.default_rng(seed))
    gc.collect()
    before = rss_bytes()
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
    after = rss_bytes()
    assert len(buf) == capacity
    return {"rss_growth": after - before, "stored": capacity * item_bytes(W1_SPEC)}


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


def _impl_column(impl: str) -> Tuple[str, Callable[[Cell], str]]:
    return LABELS[impl], lambda c: fmt_value(c.value(impl), c.unit)


def results_table(rows: Sequence[Cell], with_cpprb: bool) -> str:
    """The results as a markdown table: each implementation's median, then reverie's ratio
    over each baseline."""
    shown = ["numpy", "python"] + (["cpprb"] if with_cpprb else [])
    columns = [("workload", lambda c: c.section + (f" [{c.note}]" if c.note else "")),
               ("metric", lambda c: f"{c.metric} ({c.unit})"), _impl_column("reverie")]
    columns += [_impl_column(i) for i in shown]
    columns += [ratio_column("reverie", i, f"reverie/{i}") for i in shown]
    return "\n".join(tabulate(rows, columns))


def plot(rows: Sequence[Cell], path: str) -> None:
    """Log-scale bars of reverie's speedup over each baseline, one panel per workload."""
    panels = []
    for w in ("W1", "W2", "W3"):
        sel = [r for r in rows if r.section == w]
        if not sel:
            continue
        panels.append(Panel(w + (f" [{sel[0].note}]" if sel[0].note else ""),
                            [r.metric for r in sel],
                            {f"vs {LABELS[i]}": [r.ratio("reverie", i) for r in sel]
                             for i in BASELINES},
                            {f"vs {LABELS[i]}": COLORS[i] for i in BASELINES}))
    plot_ratios(panels, path, "reverie speedup over each baseline (higher is better; "
                "1x = same speed)")


# ---------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------


def report(rows: Sequence[Cell], w3_rows: Sequence[Cell], copies: Dict[str, Any],
           memory: Dict[str, Any], skipped: Dict[str, str], s: Settings, with_cpprb: bool) -> str:
    """The table and the notes under it."""
    lines = [results_table(rows, with_cpprb), ""]
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


WORKLOADS = ("W1", "W2", "W3", "memory", "concurrency", "episodes", "policies", "memories")
SECTIONS = ("concurrency", "episodes", "policies", "memories")  # sections with their own report


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
    with_policies = "policies" in workloads and why["reverie"] is None
    if with_policies:
        from . import policies

        reason = policies.unavailable()
        if reason is not None:
            with_policies, skipped["policies"] = False, reason
    elif "policies" in workloads:
        skipped["policies"] = f"reverie {why['reverie']}"
    with_memories = "memories" in workloads and why["reverie"] is None
    if with_memories:
        from . import memories

        reason = memories.unavailable()
        if reason is not None:
            with_memories, skipped["memories"] = False, reason
    elif "memories" in workloads:
        skipped["memories"] = f"reverie {why['reverie']}"
    total = (len(impls) * (3 * ("W1" in workloads) + len(s.w2_capacities) * ("W2" in workloads))
             + 2 * len(w3) + len(mem))
    if concurrent:
        from . import concurrency

        total += concurrency.cells()
    if episodic:
        total += episodes.cells()
    if with_policies:
        total += policies.cells()
    if with_memories:
        total += memories.cells()
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
        pol = policies.run(s, prog)[1] if with_policies else None
        mems = memories.run(s, prog, out_dir)[1] if with_memories else None
    finally:
        prog.close()
    base = any(w not in SECTIONS for w in workloads)
    text = report(rows, w3_rows, copies, memory, skipped, s, "cpprb" in impls) if base else ""
    if conc is not None:
        text += ("\n\n" if text else "") + conc["report"]
    elif "concurrency" in skipped and not base:
        text += f"\nconcurrency: skipped, {skipped['concurrency']}"
    if epi is not None:
        text += ("\n\n" if text else "") + epi["report"]
    elif "episodes" in skipped and not base:
        text += f"\nepisodes: skipped, {skipped['episodes']}"
    if pol is not None:
        text += ("\n\n" if text else "") + pol["report"]
    elif "policies" in skipped and not base:
        text += f"\npolicies: skipped, {skipped['policies']}"
    if mems is not None:
        text += ("\n\n" if text else "") + mems["report"]
    elif "memories" in skipped and not base:
        text += f"\nmemories: skipped, {skipped['memories']}"
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
        "rows": [{"workload": r.section, "metric": r.metric, "unit": r.unit, "note": r.note,
                  "values": r.values,
                  "ratios": {i: r.ratio("reverie", i) for i in BASELINES}}
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
    if pol is not None:
        result["policies"] = pol
    if mems is not None:
        result["memories"] = mems
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
