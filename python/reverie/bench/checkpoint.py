"""Checkpoint throughput: reverie's save/load against torch.save/torch.load of the same tensors,
np.savez/np.load, and the disk's own sequential write/read speed, all measured in one run.

    python -m reverie.bench.checkpoint [--quick] [--dir DIR] [--repeats N]

Every write is timed to durability (the file fsynced), and every read starts cold: before it,
the file's pages are dropped from the page cache (``posix_fadvise(POSIX_FADV_DONTNEED)``).
The disk's figures are a plain file of the same size written in 64 MiB chunks + fsync, and
read back with ``readinto``. GB/s count the buffer's stored bytes (columns), 1 GB = 1e9 bytes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch

import reverie as rv

from .runner import W1_SPEC, W3_SPEC, fill_blocks, human_count, item_bytes

CHUNK = 64 << 20


def drop_cache(path: str) -> None:
    """Evicts the file's pages from the page cache (after an fsync they are clean)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


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
    name: str
    nbytes: int
    seconds: Dict[str, List[float]] = field(default_factory=dict)

    def add(self, method: str, s: float) -> None:
        self.seconds.setdefault(method, []).append(s)

    def gbps(self, method: str) -> Optional[float]:
        times = self.seconds.get(method)
        return None if not times else self.nbytes / float(np.median(times)) / 1e9


def _timed(fn: Callable[[], Any]) -> Tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def run_case(name: str, spec: Mapping[str, Any], capacity: int, directory: str,
             repeats: int, log: Callable[[str], None]) -> Case:
    from reverie import _checkpoint

    buf = make_buffer(spec, capacity)
    nbytes = item_bytes(spec) * capacity
    case = Case(f"{name} {human_count(capacity)}", nbytes)
    columns = buf.columns
    numpy_cols = {n: t.numpy() for n, t in columns.items()}
    payload = np.random.default_rng(1).integers(0, 256, nbytes, dtype=np.uint8)
    scratch = np.empty(nbytes, dtype=np.uint8)
    paths = {m: os.path.join(directory, f"{name}.{m}") for m in ("disk", "reverie", "torch", "npz")}
    log(f"{case.name}: {nbytes / 1e6:.0f} MB of columns, {repeats} run(s) each")
    for _ in range(repeats):
        # The disk itself.
        s, _ = _timed(lambda: disk_write(paths["disk"], payload.data))
        case.add("disk write", s)
        drop_cache(paths["disk"])
        s, _ = _timed(lambda: disk_read(paths["disk"], scratch.data))
        case.add("disk read", s)
        os.unlink(paths["disk"])

        # reverie (its save fsyncs the file and the directory).
        s, _ = _timed(lambda: _checkpoint.save(buf, paths["reverie"], progress=False))
        case.add("reverie save", s)
        drop_cache(paths["reverie"])
        s, loaded = _timed(lambda: _checkpoint.load(paths["reverie"], progress=False))
        case.add("reverie load", s)
        assert len(loaded) == len(buf)
        del loaded

        # torch.save / torch.load of the same tensors (the column views, no copies).
        s, _ = _timed(lambda: _fsynced(paths["torch"], lambda f: torch.save(columns, f)))
        case.add("torch save", s)
        drop_cache(paths["torch"])
        s, loaded = _timed(lambda: torch.load(paths["torch"]))
        case.add("torch load", s)
        del loaded

        # np.savez / np.load (every array read).
        s, _ = _timed(lambda: _fsynced(paths["npz"], lambda f: np.savez(f, **numpy_cols)))  # type: ignore[arg-type]
        case.add("np.savez", s)
        drop_cache(paths["npz"])

        def npz_load() -> Dict[str, np.ndarray]:
            with np.load(paths["npz"]) as data:
                return {n: data[n] for n in data.files}

        s, loaded = _timed(npz_load)
        case.add("np.load", s)
        del loaded
        for m in ("reverie", "torch", "npz"):
            os.unlink(paths[m])
    buf.close()
    return case


def _fmt(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.2f} GB/s"


def table(cases: List[Case]) -> str:
    lines = ["| buffer | direction | disk (plain file) | reverie | torch | numpy .npz | "
             "reverie/disk | reverie/torch | reverie/numpy |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in cases:
        for direction, disk, ours, th, npz in (
                ("save", "disk write", "reverie save", "torch save", "np.savez"),
                ("load", "disk read", "reverie load", "torch load", "np.load")):
            d, r, t, n = c.gbps(disk), c.gbps(ours), c.gbps(th), c.gbps(npz)

            def ratio(a: Optional[float], b: Optional[float]) -> str:
                return "-" if a is None or not b else f"{a / b:.2f}x"

            lines.append(f"| {c.name} ({c.nbytes / 1e6:.0f} MB) | {direction} | {_fmt(d)} | "
                         f"{_fmt(r)} | {_fmt(t)} | {_fmt(n)} | {ratio(r, d)} | {ratio(r, t)} | "
                         f"{ratio(r, n)} |")
    return "\n".join(lines)


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
    print("\nTarget: reverie save/load at >= 0.50x the disk's sequential write/read (same run).")


if __name__ == "__main__":
    main()
