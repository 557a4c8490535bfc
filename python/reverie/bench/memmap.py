"""Sampling from a buffer larger than the page cache it may use: ``python -m
reverie.bench.memmap [--quick] [--budget-mb MB]``.

A W1 buffer (obs f32[17], action f32[6], reward, next_obs f32[17], done; 165 bytes a row) is
written to a file several times the budget, with reverie's ``storage="memmap"`` and, for
comparison, as ``np.memmap`` columns (what people write by hand). Each sampling run happens
in a fresh process placed in its own memory cgroup whose limit is the budget, so the page
cache that holds the file's pages is capped; the file's cached pages are dropped before each
run (``posix_fadvise(DONTNEED)``). Where no memory cgroup can be made (cgroup v1 memory
controller not writable), the runs are made without a cap and the report says so.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from functools import partial
from typing import Any, Dict, Optional

import numpy as np

from .harness import drop_cache, fmt_ratio, interleave, markdown, timed
from .workloads import W1_SPEC, item_bytes

W1 = W1_SPEC
ROW_BYTES = item_bytes(W1_SPEC)  # 165
KINDS = ("reverie", "numpy")
BATCHES = (256, 4096)
CGROUP_ROOT = "/sys/fs/cgroup/memory"


def make_cgroup(budget: int) -> Optional[str]:
    """A fresh memory cgroup limited to `budget` bytes, or None where that is not possible."""
    path = os.path.join(CGROUP_ROOT, f"reverie-bench-{os.getpid()}")
    try:
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "memory.limit_in_bytes"), "w") as f:
            f.write(str(budget))
        return path
    except OSError:
        return None


def fill(kind: str, directory: str, capacity: int, seed: int = 0) -> None:
    """Writes the buffer file(s) once, in chunks."""
    import reverie as rv

    rng = np.random.default_rng(seed)
    chunk = 1 << 16
    if kind == "reverie":
        buf = rv.ReplayBuffer(capacity, W1, seed=seed, storage="memmap",
                              path=os.path.join(directory, "reverie.rvb"))
    else:
        cols = {n: np.lib.format.open_memmap(os.path.join(directory, f"np_{n}.npy"), mode="w+",
                                             dtype=dt, shape=(capacity, *shape))
                for n, (dt, shape) in W1.items()}
    for start in range(0, capacity, chunk):
        n = min(chunk, capacity - start)
        rows = {name: (rng.random((n, *shape)) < 0.01 if np.dtype(dt) == np.bool_
                       else rng.standard_normal((n, *shape), dtype=np.float32))
                for name, (dt, shape) in W1.items()}
        if kind == "reverie":
            buf.extend(**rows)
        else:
            for name, arr in rows.items():
                cols[name][start:start + n] = arr
    if kind == "reverie":
        buf.close()
    else:
        for arr in cols.values():
            arr.flush()


def sample_run(kind: str, directory: str, capacity: int, batch: int, seconds: float) -> Dict[str, Any]:
    """In the measuring process: samples for `seconds`, returns batches/s and RSS."""
    import torch

    import reverie as rv

    if kind == "reverie":
        buf = rv.ReplayBuffer(capacity, storage="memmap", path=os.path.join(directory, "reverie.rvb"))
        step = lambda: buf.sample(batch)  # noqa: E731
    else:
        cols = {n: np.load(os.path.join(directory, f"np_{n}.npy"), mmap_mode="r") for n in W1}
        rng = np.random.default_rng(1)

        def step() -> Any:
            idx = np.sort(rng.integers(0, capacity, batch))
            return {n: torch.from_numpy(np.ascontiguousarray(c[idx])) for n, c in cols.items()}
    calls, elapsed = timed(step, seconds)
    return {"batches_per_s": calls / elapsed, "rows_per_s": calls * batch / elapsed}


def measure(kind: str, directory: str, capacity: int, batch: int, seconds: float,
            cgroup: Optional[str]) -> Dict[str, Any]:
    files = ([os.path.join(directory, "reverie.rvb")] if kind == "reverie" else
             [os.path.join(directory, f"np_{n}.npy") for n in W1])
    for f in files:
        drop_cache(f)
    # The child imports first and then moves into the cgroup: memory charged before the move
    # (the interpreter, torch) stays outside it (cgroup v1), so the limit caps what the
    # sampling itself brings in, the buffer file's page cache.
    join = (f"open({os.path.join(cgroup, 'cgroup.procs')!r}, 'w').write(str(os.getpid())); "
            if cgroup else "")
    code = ("import json, os, sys, torch, reverie; from reverie.bench.memmap import sample_run; "
            + join +
            f"print(json.dumps(sample_run({kind!r}, {directory!r}, {capacity}, {batch}, {seconds})))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=600)
    return json.loads(res.stdout.strip().splitlines()[-1])


def run(quick: bool = False, budget_mb: Optional[int] = None, seconds: float = 3.0) -> Dict[str, Any]:
    budget = (budget_mb or (128 if quick else 512)) << 20
    capacity = (4 * budget) // ROW_BYTES  # the file is 4x the budget
    cgroup = make_cgroup(budget)
    out: Dict[str, Any] = {"budget_bytes": budget, "capacity": capacity,
                           "file_bytes": capacity * ROW_BYTES, "capped": cgroup is not None}
    with tempfile.TemporaryDirectory(dir=os.environ.get("REVERIE_BENCH_DIR")) as d:
        for kind in KINDS:
            print(f"memmap: writing the {kind} file ({capacity * ROW_BYTES / 1e9:.1f} GB)",
                  file=sys.stderr)
            fill(kind, d, capacity)
        for batch in BATCHES:  # one cold run per kind, in turns
            runs = interleave({k: partial(measure, k, d, capacity, batch, seconds, cgroup)
                               for k in KINDS}, 1)
            for kind, (result,) in runs.items():
                out[f"{kind} sample {batch}"] = result
    if cgroup:
        try:
            os.rmdir(cgroup)
        except OSError:
            pass
    return out


def report(r: Dict[str, Any]) -> str:
    """The run's markdown table, under a line saying how the page cache was capped."""
    cap = "a memory cgroup limit" if r["capped"] else "NOT enforced: no writable memory cgroup"
    lines = [f"Sampling from a file-backed W1 buffer of {r['capacity']:,} rows "
             f"({r['file_bytes'] / 1e9:.2f} GB) with a page-cache budget of "
             f"{r['budget_bytes'] >> 20} MB ({cap}); cold cache at the start of each run"]
    rows = []
    for batch in BATCHES:
        a, b = r[f"reverie sample {batch}"], r[f"numpy sample {batch}"]
        rows.append([str(batch), f"{a['rows_per_s']:,.0f}", f"{b['rows_per_s']:,.0f}",
                     fmt_ratio(a["rows_per_s"] / b["rows_per_s"])])
    lines += markdown(["batch", "reverie memmap (rows/s)", "np.memmap columns (rows/s)",
                       "reverie/numpy"], rows)
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--budget-mb", type=int, default=None)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    r = run(args.quick, args.budget_mb, args.seconds)
    print(report(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
