"""GPU section: reverie's device buffer against torch-native replay on the same GPU.

(About 700 lines: a standalone script as well as a section, it carries its own command line,
the device checks run before timing, and the three comparisons' adapters; the torch
baselines themselves are in ``torch_baselines.py``.)

    python -m reverie.bench.gpu [--quick] [--device cuda] [--json PATH]

Everything is measured side by side in this one process on one device:

- W2 on the device (fields obs f32[17], action f32[6], reward f32, next_obs f32[17], done
  bool; capacity 100k and 1M, full before timing; one step = ``sample(256)`` with importance
  weights + ``update_priorities(256)`` with random priorities already on the device), in
  microseconds per step:

  (a) reverie's ``DeviceReplayBuffer`` (``ReplayBuffer(..., device="cuda")``);
  (b) the torch-native prioritized buffer people write (``TorchPER``, in
      ``torch_baselines.py``): priorities
      ``(p + eps)^alpha`` in one float32 (and, as a second figure, float64) tensor of
      ``capacity`` elements; a sample is ``torch.cumsum`` + ``torch.searchsorted`` of
      stratified uniform points, weights ``(N * P)^-beta / max`` in torch ops and an
      ``index_select`` per field; an update is an index assignment of ``(p + eps)^alpha``;
  (c) the same buffer drawing with ``torch.multinomial(replacement=True)``;
  (d) reverie's host buffer with ``sample(256, device="cuda")`` (rows gathered into pinned
      memory, copied asynchronously) and ``update_priorities`` of the TD errors moved to the
      CPU (``.cpu()``), without and with ``prefetch=True``.

  Target: the device buffer >= 5x the cumsum + searchsorted buffer at 1M (the faster of its
  float32 and float64 forms).
- W3 on the device (frames u8[4,84,84], capacity 50k, uniform): ``sample(32)`` and
  ``sample(256)`` of the device buffer and torch's ``randint`` + ``column.index_select(0,
  idx)``, in gathered GB/s (bytes of frames written into the batch per second), against the
  device's copy bandwidth measured in the same turns: ``dst.copy_(src)`` of 1 GiB device to
  device, counted as bytes copied per second (each byte is read once and written once, so
  the memory traffic is twice that, as it is for a gather). Target: gather >= 50% of copy.

Timing: each variant is warmed up, then calibrated to a number K of calls that fill one
slice of the budget; a figure is the median over repeats of (K calls between two
``torch.cuda.synchronize()``) / K, the variants taken in turns (A B C A B C ...,
``harness.interleave``) so that a change in the machine's state hits all of them alike. The
benchmark adds no synchronisation inside a run; a variant that waits by itself (the host
path's ``.cpu()`` of the TD errors) pays for it.

Without a CUDA device the section prints one line saying it was skipped and exits 0.
``--device cpu`` runs the same code with tiny sizes on the host reference (reverie's device
kernels on one CPU thread, the torch baselines on the CPU with one thread): it checks the code
path, and its figures say nothing about a GPU.

Length: about 700 lines, over the ~500 of the house style, because this is a section that
also runs on its own: choosing and checking the device (and the skip rule), the
synchronised, calibrated timing a GPU needs on top of the shared harness, the adapters that
put reverie's device and host buffers behind one sample/update interface, the batch checks
made before timing, two workloads, their report and the command line. Its torch baselines
are in ``torch_baselines.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import os
import sys
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Dict, Iterator, List, NoReturn, Optional, Sequence, Tuple

import numpy as np
import torch

import reverie as rv

from . import baselines as bl
from .harness import (
    Cell,
    fmt_ratio,
    fmt_stats,
    human_count,
    interleave,
    machine_info,
    markdown,
    ratio_column,
    summary,
    tabulate,
    value_column,
)
from .torch_baselines import TorchGather, TorchPER, torch_dtype
from .workloads import ALPHA, BETA, EPS, W1_SPEC, W3_SPEC, Columns, item_bytes, make_columns

W2_BATCH = 256
W3_BATCHES = (32, 256)
POOL = 64  # distinct priority vectors the W2 steps cycle through
W2_TARGET = 5.0  # device buffer speedup over the cumsum + searchsorted buffer at 1M, at least
W3_TARGET = 0.5  # gathered GB/s over copied GB/s, at least
FRAME_BYTES = item_bytes(W3_SPEC)

W2_KINDS = ("reverie", "torch-f32", "torch-f64", "multinomial", "host", "host-prefetch")
W2_LABELS = {
    "reverie": "reverie device buffer",
    "torch-f32": "torch cumsum + searchsorted (f32)",
    "torch-f64": "torch cumsum + searchsorted (f64)",
    "multinomial": "torch multinomial (f32)",
    "host": "reverie host buffer + pinned copy",
    "host-prefetch": "reverie host buffer + pinned copy, prefetch",
}
SEARCHSORTED = ("torch-f32", "torch-f64")
W3_LABELS = {"reverie": "reverie device buffer", "index_select": "torch randint + index_select",
             "copy": "device copy (dst.copy_(src))"}

Sync = Callable[[], None]


# ---------------------------------------------------------------------------------------
# Settings and device
# ---------------------------------------------------------------------------------------


@dataclass
class Settings:
    device: str
    quick: bool
    w2_capacities: Tuple[int, ...]
    w3_capacity: int
    copy_bytes: int  # size of the device-to-device copy that gives the copy bandwidth
    budget_s: float  # timed seconds per variant and cell, split over the repeats
    repeats: int
    warmup_s: float
    seed: int = 0

    @classmethod
    def make(cls, device: torch.device, quick: bool, budget_s: Optional[float] = None,
             seed: int = 0) -> "Settings":
        if budget_s is not None and not budget_s > 0:
            raise ValueError(f"budget_s must be > 0, got {budget_s}")
        if device.type == "cpu":  # the host reference: tiny sizes, the code path only
            return cls(str(device), quick, (2_000, 20_000), 1_000, 32 << 20,
                       budget_s or (0.15 if quick else 0.6), 3, 0.03 if quick else 0.1, seed)
        if quick:
            return cls(str(device), True, (100_000, 1_000_000), 50_000, 1 << 30,
                       budget_s or 0.6, 3, 0.1, seed)
        return cls(str(device), False, (100_000, 1_000_000), 50_000, 1 << 30,
                   budget_s or 3.0, 5, 0.3, seed)


def unavailable(device: torch.device) -> Optional[str]:
    """Why the section cannot run on ``device`` (None when it can)."""
    if device.type == "cpu":
        return None
    if not rv.cuda_built():
        return ("this build of reverie has no CUDA kernels (built without nvcc or with "
                "REVERIE_CUDA=OFF)")
    if not rv.cuda_available():
        from reverie import _core

        return (f"no CUDA device or driver is present (torch.cuda.is_available() is "
                f"{torch.cuda.is_available()}, reverie sees {_core.cuda_device_count()} "
                "device(s))")
    return None


def resolve_device(name: str) -> torch.device:
    """``"cuda"`` -> ``cuda:<current>``; ``"cpu"`` as is.

    Raises:
        ValueError: not a cpu or cuda device, or a CUDA index that does not exist.
    """
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"--device must be 'cuda', 'cuda:N' or 'cpu', got {name!r}") from exc
    if dev.type not in ("cuda", "cpu"):
        raise ValueError(f"--device must be 'cuda', 'cuda:N' or 'cpu', got {name!r}")
    if dev.type == "cuda" and unavailable(dev) is None:
        count = torch.cuda.device_count()
        index = torch.cuda.current_device() if dev.index is None else dev.index
        if not 0 <= index < count:
            raise ValueError(f"--device {name}: there are {count} CUDA device(s), "
                             f"cuda:0 .. cuda:{count - 1}")
        dev = torch.device("cuda", index)
    return dev


def synchronizer(device: torch.device) -> Sync:
    """Waits for the device's queued work (a no-op on the CPU, where nothing is queued)."""
    if device.type == "cuda":
        def sync() -> None:
            torch.cuda.synchronize(device)
        return sync

    def nothing() -> None:
        pass

    return nothing


def device_info(device: torch.device) -> Dict[str, Any]:
    """The device's name and the versions: printed above the tables and kept in the JSON."""
    info: Dict[str, Any] = {"device": str(device), "torch": torch.__version__,
                            "reverie": rv.__version__}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                    capability=f"{props.major}.{props.minor}",
                    memory_gb=props.total_memory / 1e9, multiprocessors=props.multi_processor_count)
    else:
        info["name"] = (f"{machine_info()['cpu']} (host reference: reverie's device kernels "
                        "and torch on one CPU thread)")
    return info


def _empty_cache(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------
# reverie's buffers behind the baselines' calls
# ---------------------------------------------------------------------------------------


class DeviceW2:
    """reverie's device buffer behind the same sample/update calls."""

    def __init__(self, buf: rv.DeviceReplayBuffer) -> None:
        self.buf = buf

    def sample(self, n: int) -> Tuple[Dict[str, torch.Tensor], torch.Tensor, Optional[torch.Tensor]]:
        b = self.buf.sample(n)
        return b, b.indices, b.weights

    def update(self, idx: torch.Tensor, priorities: torch.Tensor) -> None:
        self.buf.update_priorities(idx, priorities)

    def close(self) -> None:
        self.buf.synchronize()  # raises what a kernel found (bad keys or priorities)


class HostW2:
    """reverie's host buffer feeding the device: ``sample(B, device=..., prefetch=...)``;
    the TD errors, computed on the device, are moved to the CPU for the update."""

    def __init__(self, buf: rv.ReplayBuffer, device: torch.device, prefetch: bool) -> None:
        self.buf, self.device, self.prefetch = buf, device, prefetch

    def sample(self, n: int) -> Tuple[Dict[str, torch.Tensor], torch.Tensor, Optional[torch.Tensor]]:
        b = self.buf.sample(n, device=self.device, prefetch=self.prefetch)
        return b, b.indices, b.weights

    def update(self, idx: torch.Tensor, priorities: torch.Tensor) -> None:
        self.buf.update_priorities(idx, priorities.cpu())

    def close(self) -> None:
        self.buf.close()  # stops the prefetch worker


class DeviceW3:
    def __init__(self, buf: rv.DeviceReplayBuffer) -> None:
        self.buf = buf

    def sample(self, n: int) -> Tuple[Dict[str, torch.Tensor], torch.Tensor, None]:
        b = self.buf.sample(n)
        return b, b.indices, None


# ---------------------------------------------------------------------------------------
# Building and checking
# ---------------------------------------------------------------------------------------


def w2_columns(capacity: int, seed: int) -> Columns:
    """``capacity`` random W1 items (host arrays)."""
    return make_columns(W1_SPEC, capacity, np.random.default_rng(seed))


def build_w2(kind: str, capacity: int, device: torch.device, cols: Columns, seed: int = 0,
             device_cols: Optional[Dict[str, torch.Tensor]] = None) -> Any:
    """A full W2 buffer of ``kind`` (see ``W2_KINDS``) holding ``cols``; ``device_cols``: the
    same columns already on the device (made here when not given)."""
    if kind not in W2_KINDS:
        raise ValueError(f"kind must be one of {W2_KINDS}, got {kind!r}")
    if kind in ("host", "host-prefetch"):
        host = rv.ReplayBuffer(capacity, dict(W1_SPEC), sampler=_prioritized(), seed=seed)
        host.extend(**cols)
        return HostW2(host, device, prefetch=kind == "host-prefetch")
    if device_cols is None:
        device_cols = {name: torch.from_numpy(c).to(device) for name, c in cols.items()}
    if kind == "reverie":
        buf = rv.DeviceReplayBuffer(capacity, dict(W1_SPEC), sampler=_prioritized(), seed=seed,
                                    device=device)
        buf.extend(**device_cols)
        return DeviceW2(buf)
    per = TorchPER(capacity, W1_SPEC, device, seed=seed,
                   prio_dtype=torch.float64 if kind == "torch-f64" else torch.float32,
                   draw="multinomial" if kind == "multinomial" else "searchsorted")
    per.extend(**device_cols)
    return per


def _prioritized() -> rv.Prioritized:
    return rv.Prioritized(alpha=ALPHA, beta=BETA, eps=EPS)


def priority_pool(device: torch.device, seed: int = 0) -> List[torch.Tensor]:
    """``POOL`` vectors of ``W2_BATCH`` |TD error|-like priorities on the device (taken apart
    up front, so no step pays for indexing the pool)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    pool = torch.rand((POOL, W2_BATCH), generator=gen, device=device) + 1e-3
    return list(pool.unbind(0))


def w2_stepper(impl: Any, rows: Sequence[torch.Tensor], batch: int = W2_BATCH) -> Callable[[], None]:
    """One W2 step per call: sample ``batch`` items with weights, update their priorities
    with the next vector of the pool."""
    if len(rows) != POOL or any(len(r) != batch for r in rows):
        raise ValueError(f"the priority pool must hold {POOL} vectors of {batch} values")
    sample, update = impl.sample, impl.update
    counter = [0]

    def step() -> None:
        counter[0] += 1
        _, idx, _ = sample(batch)
        update(idx, rows[counter[0] & (POOL - 1)])

    return step


def check_batch(label: str, fields: Dict[str, torch.Tensor], idx: torch.Tensor,
                weights: Optional[torch.Tensor], n: int, spec: bl.Spec,
                device: torch.device, written: int, prioritized: bool) -> None:
    """Checks one batch before its variant is timed (so a broken variant is not timed).

    Raises:
        RuntimeError: saying which variant returned what.
    """
    def fail(what: str) -> NoReturn:
        raise RuntimeError(f"{label}: {what}")

    for name, (dt, shape) in spec.items():
        t = fields.get(name)
        if t is None:
            fail(f"the batch has no field '{name}' (fields: {list(fields)})")
        want = (n, *shape)
        if tuple(t.shape) != want or t.dtype != torch_dtype(dt) or t.device.type != device.type:
            fail(f"field '{name}' is {tuple(t.shape)} {t.dtype} on {t.device}, expected "
                 f"{want} {torch_dtype(dt)} on {device}")
    if idx.dtype != torch.int64 or tuple(idx.shape) != (n,):
        fail(f"indices are {tuple(idx.shape)} {idx.dtype}, expected ({n},) torch.int64")
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi >= written:
        fail(f"indices span {lo} .. {hi}, expected 0 .. {written - 1}")
    if not prioritized:
        return
    if weights is None:
        fail("a prioritized batch came without weights")
    w = weights.detach().cpu()
    if w.dtype != torch.float32 or tuple(w.shape) != (n,):
        fail(f"weights are {tuple(w.shape)} {w.dtype}, expected ({n},) torch.float32")
    if not bool(torch.isfinite(w).all()) or float(w.min()) <= 0 or float(w.max()) > 1 + 1e-4:
        fail(f"weights span {float(w.min())} .. {float(w.max())}, expected (0, 1]")


# ---------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------


def _run(op: Callable[[], Any], calls: int, sync: Sync) -> float:
    """Seconds for ``calls`` calls of ``op``, the device idle before and after."""
    sync()
    start = time.perf_counter()
    for _ in range(calls):
        op()
    sync()
    return time.perf_counter() - start


def _warm(op: Callable[[], Any], seconds: float, sync: Sync) -> None:
    deadline = time.perf_counter() + seconds
    while True:
        op()
        if time.perf_counter() >= deadline:
            break
    sync()


def _calls_for(op: Callable[[], Any], seconds: float, sync: Sync) -> int:
    """How many calls of ``op`` take about ``seconds``: runs of doubling length until one
    lasts a tenth of that, then scaled."""
    target = max(seconds / 10, 1e-3)
    calls = 1
    while True:
        elapsed = _run(op, calls, sync)
        if elapsed >= target:
            return max(1, round(calls * seconds / elapsed))
        grow = target / elapsed * 1.2 if elapsed > 0 else 64.0
        calls = max(calls * 2, min(int(calls * grow), calls * 64))


def measure(ops: Dict[str, Callable[[], Any]], s: Settings, sync: Sync) -> Dict[str, List[float]]:
    """Seconds per call of each op, one figure per round: after warm-up and calibration,
    each round runs every op K times (its own K, one slice of the budget) between two
    synchronisations, the ops in turns."""
    slice_s = s.budget_s / s.repeats
    for op in ops.values():
        _warm(op, s.warmup_s, sync)
    calls = {k: _calls_for(op, slice_s, sync) for k, op in ops.items()}
    return interleave({k: partial(_per_call, op, calls[k], sync) for k, op in ops.items()},
                      s.repeats)


def _per_call(op: Callable[[], Any], calls: int, sync: Sync) -> float:
    return _run(op, calls, sync) / calls


# ---------------------------------------------------------------------------------------
# Workloads
# ---------------------------------------------------------------------------------------


Log = Callable[[str], None]


def run_w2(s: Settings, device: torch.device, sync: Sync, log: Log) -> List[Cell]:
    """One cell per capacity: us/step of every W2 variant."""
    out = []
    rows = priority_pool(device, s.seed + 1)
    for cap in s.w2_capacities:
        name = human_count(cap)
        log(f"W2 @ {name}: filling {len(W2_KINDS)} buffers")
        cols = w2_columns(cap, s.seed)
        dcols = {k: torch.from_numpy(c).to(device) for k, c in cols.items()}
        impls = {k: build_w2(k, cap, device, cols, s.seed, dcols) for k in W2_KINDS}
        del cols, dcols
        _empty_cache(device)
        try:
            for kind, impl in impls.items():
                fields, idx, weights = impl.sample(W2_BATCH)
                check_batch(W2_LABELS[kind], fields, idx, weights, W2_BATCH, W1_SPEC, device,
                            cap, True)
            log(f"W2 @ {name}: timing step {W2_BATCH}")
            ops = {k: w2_stepper(impl, rows) for k, impl in impls.items()}
            secs = measure(ops, s, sync)
        finally:
            for impl in impls.values():
                if hasattr(impl, "close"):
                    impl.close()
            del impls
            _empty_cache(device)
        cell = Cell("W2", f"step {W2_BATCH} @ {name}", "us/step",
                    {k: summary([x * 1e6 for x in v]) for k, v in secs.items()})
        us = {k: v["value"] for k, v in cell.values.items()}
        cell.extra["capacity"] = cap
        cell.extra["speedup"] = {k: us[k] / us["reverie"] for k in W2_KINDS}
        best = min(SEARCHSORTED, key=lambda k: us[k])
        cell.extra["searchsorted_baseline"] = best
        cell.extra["speedup_vs_searchsorted"] = cell.extra["speedup"][best]
        if cap == 1_000_000:
            cell.extra["target"] = W2_TARGET
        out.append(cell)
    return out


def fill_w3(capacity: int, device: torch.device, seed: int = 0,
            ) -> Tuple[rv.DeviceReplayBuffer, torch.Tensor]:
    """A full uniform W3 device buffer and a torch column holding the same frames (one
    random block of up to 2048 frames, repeated: repeats do not change copying speed)."""
    block_n = min(2048, capacity)
    block = torch.from_numpy(
        make_columns(W3_SPEC, block_n, np.random.default_rng(seed))["obs"]).to(device)
    buf = rv.DeviceReplayBuffer(capacity, dict(W3_SPEC), sampler=rv.Uniform(), seed=seed,
                                device=device)
    column = torch.empty((capacity, *W3_SPEC["obs"][1]), dtype=torch.uint8, device=device)
    done = 0
    while done < capacity:
        k = min(block_n, capacity - done)
        buf.extend(obs=block[:k])
        column[done:done + k].copy_(block[:k])
        done += k
    return buf, column


def run_w3(s: Settings, device: torch.device, sync: Sync, log: Log) -> List[Cell]:
    """One cell per batch size: GB/s of the device buffer, of index_select and of a plain
    device-to-device copy, in turns."""
    cap = s.w3_capacity
    log(f"W3 @ {human_count(cap)}: filling ({cap * FRAME_BYTES / 1e9:.2f} GB per buffer)")
    buf, column = fill_w3(cap, device, s.seed)
    impls: Dict[str, Any] = {"reverie": DeviceW3(buf), "index_select": TorchGather(column, s.seed)}
    src = torch.ones(s.copy_bytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    out = []
    try:
        for n in W3_BATCHES:
            for kind, impl in impls.items():
                fields, idx, _ = impl.sample(n)
                check_batch(W3_LABELS[kind], fields, idx, None, n, W3_SPEC, device, cap, False)
            log(f"W3 sample {n}: timing")
            ops: Dict[str, Callable[[], Any]] = {k: _sampler(impl, n) for k, impl in impls.items()}
            ops["copy"] = _copier(dst, src)
            secs = measure(ops, s, sync)
            per_call = {"reverie": n * FRAME_BYTES, "index_select": n * FRAME_BYTES,
                        "copy": s.copy_bytes}
            cell = Cell("W3", f"sample {n}", "GB/s",
                        {k: summary([per_call[k] / x / 1e9 for x in v]) for k, v in secs.items()})
            cell.extra["batch"] = n
            cell.extra["bytes_per_call"] = per_call
            cell.extra["share_of_copy"] = cell.ratio("reverie", "copy")
            cell.extra["vs_index_select"] = cell.ratio("reverie", "index_select")
            cell.extra["target"] = W3_TARGET
            cell.extra["samples_per_s"] = cell.values["reverie"]["value"] * 1e9 / FRAME_BYTES
            out.append(cell)
        buf.synchronize()
    finally:
        del impls, buf, column, src, dst
        _empty_cache(device)
    return out


def _sampler(impl: Any, n: int) -> Callable[[], Any]:
    sample = impl.sample

    def op() -> Any:
        return sample(n)

    return op


def _copier(dst: torch.Tensor, src: torch.Tensor) -> Callable[[], Any]:
    def op() -> Any:
        return dst.copy_(src)

    return op


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------


def table(w2: Sequence[Cell], w3: Sequence[Cell], s: Settings, info: Dict[str, Any]) -> str:
    """The section's markdown tables and notes."""
    lines = [f"GPU section on {info['name']} ({info['device']}); torch {info['torch']}"
             + (f", CUDA {info['cuda']}" if info.get("cuda") else "")
             + f", reverie {info['reverie']}"]
    if s.device == "cpu":
        lines.append("device=cpu: the host reference with tiny sizes; these figures check the "
                     "code path and say nothing about a GPU")
    if w2:
        lines.append("")
        lines.append(f"W2 on the device: one step = sample({W2_BATCH}) with weights + "
                     f"update_priorities({W2_BATCH}); us/step, median [min-max]; speedup = "
                     "variant's us / reverie device buffer's us")
        head = ["variant"]
        for c in w2:
            cap = human_count(c.extra["capacity"])
            head += [f"@ {cap}", f"speedup @ {cap}"]
        body = []
        for k in W2_KINDS:
            row = [W2_LABELS[k]]
            for c in w2:
                target = c.extra.get("target") if k == c.extra["searchsorted_baseline"] else None
                row += [fmt_stats(c.values.get(k), "us"),
                        "1x" if k == "reverie" else fmt_ratio(c.extra["speedup"].get(k), target)]
            body.append(row)
        lines += markdown(head, body)
        for c in w2:
            if "target" in c.extra:
                r = c.extra["speedup_vs_searchsorted"]
                lines.append(f"target at {human_count(c.extra['capacity'])}: reverie device "
                             f">= {W2_TARGET:g}x the cumsum + searchsorted buffer (the faster, "
                             f"{W2_LABELS[c.extra['searchsorted_baseline']]}): {r:.2f}x, "
                             f"{'met' if r >= W2_TARGET else 'MISSED'}")
        lines.append("  host buffer + pinned copy: sample(256, device=...) gathers into pinned "
                     "memory and copies asynchronously; the TD errors go to the CPU with .cpu() "
                     "(which waits for the device); prefetch gathers the next batch on a worker "
                     "thread (one step stale)")
    if w3:
        lines.append("")
        lines.append(f"W3 on the device: frames u8[4,84,84], capacity "
                     f"{human_count(s.w3_capacity)}, uniform; GB/s = bytes of frames gathered "
                     "into the batch per second (1 GB = 1e9 bytes), median [min-max]")
        copy_target = None if s.device == "cpu" else W3_TARGET
        lines += tabulate(w3, [("metric", lambda c: c.metric),
                               value_column("reverie", W3_LABELS["reverie"]),
                               value_column("index_select", W3_LABELS["index_select"]),
                               value_column("copy", f"copy of {s.copy_bytes >> 20:,} MiB"),
                               ratio_column("reverie", "copy", "reverie / copy",
                                            target=copy_target, percent=True),
                               ratio_column("reverie", "index_select", "reverie / index_select"),
                               ("reverie samples/s",
                                lambda c: f"{c.extra['samples_per_s']:,.0f}")])
        lines.append(f"  copy: dst.copy_(src) of {s.copy_bytes:,} bytes device to device, "
                     "measured in turns with the gathers; GB/s = bytes copied per second (each "
                     "byte read once and written once, as a gathered byte is), so the memory "
                     "traffic is twice the figure for both")
    lines.append(f"each figure: median of {s.repeats} repeats of {s.budget_s / s.repeats:.2g} s "
                 f"per variant, in turns, after {s.warmup_s:g} s warm-up; K calls between two "
                 "synchronisations (torch.cuda.synchronize; none on the CPU), K calibrated per variant; buffers "
                 "full before timing")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------


def _log(text: str) -> None:
    print(f"[gpu] {text}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _on(device: torch.device) -> Iterator[None]:
    """CUDA: ``device`` is the current device. CPU: torch runs on one thread, as reverie's
    host reference does (and two thread pools do not fight over a small machine's cores)."""
    if device.type == "cuda":
        with torch.cuda.device(device):
            yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def run(s: Settings, log: Log = _log) -> Dict[str, Any]:
    """Runs W2 and W3 on ``s.device``; returns the cells, the report and its settings.

    Raises:
        RuntimeError: the device cannot run the section (see ``unavailable``), or a variant
            returned a malformed batch.
    """
    t0 = time.perf_counter()
    device = torch.device(s.device)
    why = unavailable(device)
    if why is not None:
        raise RuntimeError(f"the GPU section cannot run on {device}: {why}")
    with _on(device):
        sync = synchronizer(device)
        info = device_info(device)
        log(f"device: {info['name']}")
        w2 = run_w2(s, device, sync, log)
        w3 = run_w3(s, device, sync, log)
    text = table(w2, w3, s, info)
    return {
        "device": info,
        "settings": {**dataclasses.asdict(s), "w2_batch": W2_BATCH, "w3_batches": list(W3_BATCHES),
                     "alpha": ALPHA, "beta": BETA, "eps": EPS, "w2_target": W2_TARGET,
                     "w3_target": W3_TARGET,
                     "statistic": "median of repeats, variants in turns, synchronised runs"},
        "w2": [c.as_dict() for c in w2],
        "w3": [c.as_dict() for c in w3],
        "elapsed_s": time.perf_counter() - t0,
        "report": text,
    }


def _write_json(path: str, result: Dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reverie.bench.gpu",
                                description=(__doc__ or "").split("\n")[0])
    p.add_argument("--quick", action="store_true", help="shorter cells (under a minute on a GPU)")
    p.add_argument("--device", default="cuda",
                   help="'cuda', 'cuda:N', or 'cpu' for the host reference with tiny sizes")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results here")
    p.add_argument("--budget", type=float, default=None, help="timed seconds per variant and cell")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.budget is not None and not args.budget > 0:
        p.error(f"--budget must be > 0, got {args.budget}")
    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        p.error(str(exc))
    why = unavailable(device)
    if why is not None:
        print(f"reverie.bench.gpu: skipped, {why}; nothing was measured "
              "(--device cpu runs the host reference)")
        if args.json:
            _write_json(args.json, {"skipped": why, "device": str(device)})
        return 0
    result = run(Settings.make(device, args.quick, args.budget, args.seed))
    print(result["report"])
    print(f"total time {result['elapsed_s']:.0f} s")
    if args.json:
        _write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
