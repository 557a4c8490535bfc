"""Checkpoint throughput: reverie's save/load against torch.save/torch.load of the same tensors,
np.savez/np.load, and the disk's own sequential write/read speed, all measured in one run.

    python -m reverie.bench.checkpoint [--quick] [--dir DIR] [--repeats N]

Every write is timed to durability (the file fsynced), and every read starts cold: before it,
the file's pages are dropped from the page cache (``posix_fadvise(POSIX_FADV_DONTNEED)``).
The disk's figures are a plain file of the same size written in 64 MiB chunks + fsync, and
read back with ``readinto``. The four methods take turns (disk, reverie, torch, numpy, then
again), through the shared harness (``harness.py``); a figure is the median over the runs.
GB/s count the buffer's stored bytes (columns), 1 GB = 1e9 bytes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch

import reverie as rv

from .harness import drop_cache, fmt_ratio, fmt_value, human_count, interleave, markdown, summary
from .workloads import W1_SPEC, W3_SPEC, fill_blocks, item_bytes

CHUNK = 64 << 20
METHODS = ("disk", "reverie", "torch", "npz")
# (direction, then the figure's name for each method): the table's rows and columns.
DIRECTIONS = (("save", ("disk write", "reverie save", "torch save", "np.savez")),
              ("load", ("disk read", "reverie load", "torch load", "np.load")))
TARGET = 0.5  # reverie save/load over the disk's sequential write/read, at least


def _fsynced(path: str, write: Callable[[Any], None]) -> None:
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def disk_write(path: str, payload: memoryview) -> None:
    """A plain sequential write of ``payload`` in 64 MiB chunks, then fsync."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for off in range(0, len(payload), CHUNK):
            chunk = payload[off:off + CHUNK]
            done = 0
            while done < len(chunk):
                done += os.write(fd, chunk[done:])
        os.fsync(fd)
    finally:
        os.close(fd)


def disk_read(path: str, into: memoryview) -> None:
    """A plain sequential read of the whole file in 64 MiB chunks."""
    with open(path, "rb", buffering=0) as f:
        off = 0
        while off < len(into):
            n = f.readinto(into[off:off + CHUNK])
            if not n:
                break
            off += n


def make_buffer(spec: Mapping[str, Any], capacity: int, seed: int = 0) -> rv.ReplayBuffer:
    """A full prioritized buffer of random items (W3's frames repeat one random block)."""
    buf = rv.ReplayBuffer(capacity, {n: (np.dtype(dt).name, shape) for n, (dt, shape) in spec.items()},
                          sampler=rv.Prioritized(alpha=0.6, beta=0.4), seed=seed)
    for block in fill_blocks(spec, capacity, np.random.default_rng(seed)):
        buf.extend(**block)
    return buf


@dataclass
class Case:
    """One buffer's figures: seconds per run of each figure (e.g. ``"reverie save"``)."""

    name: str
    nbytes: int
    seconds: Dict[str, List[float]] = field(default_factory=dict)

    def add(self, method: str, s: float) -> None:
        self.seconds.setdefault(method, []).append(s)

    def gbps(self, method: str) -> Optional[float]:
        """Stored bytes over the median seconds of ``method``, in GB/s (None: not measured)."""
        times = self.seconds.get(method)
        return None if not times else self.nbytes / summary(times)["value"] / 1e9


def _timed(fn: Callable[[], Any]) -> Tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _save_load(save: Callable[[], Any], load: Callable[[], Any], path: str,
               check: Optional[Callable[[Any], None]] = None) -> Tuple[float, float]:
    """(seconds to save to ``path``, seconds to load it back cold); the file is removed."""
    s_save, _ = _timed(save)
    drop_cache(path)
    s_load, loaded = _timed(load)
    if check is not None:
        check(loaded)
    del loaded
    os.unlink(path)
    return s_save, s_load


def _npz_save(columns: Dict[str, np.ndarray], f: Any) -> None:
    np.savez(f, **columns)  # type: ignore[arg-type]


def _npz_load(path: str) -> Dict[str, np.ndarray]:
    with np.load(path) as data:
        return {n: data[n] for n in data.files}


def run_case(name: str, spec: Mapping[str, Any], capacity: int, directory: str,
             repeats: int, log: Callable[[str], None]) -> Case:
    """Every method ``repeats`` times on one full buffer, the methods in turns."""
    buf = make_buffer(spec, capacity)
    nbytes = item_bytes(spec) * capacity
    case = Case(f"{name} {human_count(capacity)}", nbytes)
    columns = buf.columns
    numpy_cols = {n: t.numpy() for n, t in columns.items()}
    payload = np.random.default_rng(1).integers(0, 256, nbytes, dtype=np.uint8)
    scratch = np.empty(nbytes, dtype=np.uint8)
    paths = {m: os.path.join(directory, f"{name}.{m}") for m in METHODS}
    log(f"{case.name}: {nbytes / 1e6:.0f} MB of columns, {repeats} run(s) each")

    def same_length(loaded: Any) -> None:
        assert len(loaded) == len(buf)

    runs = {
        # The disk itself.
        "disk": partial(_save_load, lambda: disk_write(paths["disk"], payload.data),
                        lambda: disk_read(paths["disk"], scratch.data), paths["disk"]),
        # reverie (its save fsyncs the file and the directory).
        "reverie": partial(_save_load, lambda: buf.save(paths["reverie"], progress=False),
                           lambda: rv.ReplayBuffer.load(paths["reverie"], progress=False),
                           paths["reverie"], same_length),
        # torch.save / torch.load of the same tensors (the column views, no copies).
        "torch": partial(_save_load,
                         lambda: _fsynced(paths["torch"], lambda f: torch.save(columns, f)),
                         lambda: torch.load(paths["torch"]), paths["torch"]),
        # np.savez / np.load (every array read).
        "npz": partial(_save_load, lambda: _fsynced(paths["npz"], partial(_npz_save, numpy_cols)),
                       lambda: _npz_load(paths["npz"]), paths["npz"]),
    }
    for method, times in interleave(runs, repeats).items():
        i = METHODS.index(method)
        for s_save, s_load in times:
            case.add(DIRECTIONS[0][1][i], s_save)
            case.add(DIRECTIONS[1][1][i], s_load)
    buf.close()
    return case


def table(cases: List[Case]) -> str:
    """One row per buffer and direction: each method's GB/s, then reverie's over each."""
    rows = []
    for c in cases:
        for direction, names in DIRECTIONS:
            d, r, t, n = (c.gbps(m) for m in names)
            rows.append([f"{c.name} ({c.nbytes / 1e6:.0f} MB)", direction]
                        + [fmt_value(x, "GB/s") for x in (d, r, t, n)]
                        + [fmt_ratio(None if r is None or not b else r / b) for b in (d, t, n)])
    return "\n".join(markdown(["buffer", "direction", "disk (plain file)", "reverie", "torch",
                               "numpy .npz", "reverie/disk", "reverie/torch", "reverie/numpy"],
                              rows))


def run(quick: bool = False, directory: Optional[str] = None, repeats: Optional[int] = None,
        log: Callable[[str], None] = print) -> List[Case]:
    """Measures every case; returns them (``table(cases)`` formats them)."""
    repeats = repeats or (1 if quick else 3)
    cases = [("W1", W1_SPEC, 200_000 if quick else 1_000_000),
             ("W3", W3_SPEC, 5_000 if quick else 50_000)]
    tmp = tempfile.mkdtemp(prefix="reverie-ckpt-bench-", dir=directory)
    try:
        return [run_case(name, spec, cap, tmp, repeats, log) for name, spec, cap in cases]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller buffers, one run each")
    parser.add_argument("--dir", default=None,
                        help="where the files go (default: the temp dir, e.g. /tmp)")
    parser.add_argument("--repeats", type=int, default=None, help="runs per figure (median)")
    args = parser.parse_args(argv)
    cases = run(args.quick, args.dir, args.repeats)
    print()
    print(table(cases))
    print(f"\nTarget: reverie save/load at >= {TARGET:.2f}x the disk's sequential write/read "
          "(same run).")


if __name__ == "__main__":
    main()
