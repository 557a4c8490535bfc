"""Replay-policy benchmarks (issue 13): ``python -m reverie.bench --workloads policies``.

What the parts of a table cost, each cell measured in this one process with the variants
in turns, the figure the median of the rounds (the shared harness, ``harness.py``):

- **Reservoir admission**: a stream of 1M W1 items (quick: 100k) offered in batches of 256
  into capacity 100k (quick: 10k): ``ReplayBuffer(writer=rv.Reservoir())`` against the
  numpy Algorithm R written the usual way (a Python loop, one random draw per offered item:
  ``NumpyReservoir``; target >= 20x) and against Avalanche's "concatenate, random keys, keep
  the top k" update (``AvalancheReservoir``; target >= 100x), in offered items/s.
- **Top-k retention**: the same stream with a ``score`` field (f32, iid uniform in [0, 1)),
  ``writer=rv.KeepTopK(score="score")`` against a ``heapq`` writer (TorchRL's
  ``TensorDictMaxValueWriter`` pattern: ``HeapqTopK``; target >= 20x), in offered items/s.
- **Max times sampled**: ``sample(256)`` with ``max_times_sampled=1`` (a consume-once queue:
  every sampled item is removed, the most removal work per sample) against plain uniform
  ``sample(256)``, both W1 buffers of capacity 1M (quick: 100k) filled one lap. Target: time
  per sample within 1.3x of uniform.
- **Metadata**: W1 ``extend(256)`` into full FIFO buffers of 1M (quick: 100k) with
  ``metadata=True`` against ``metadata=False``. Target: time per call within 1.2x.

What is timed (the regime the targets are about):

- Admission and retention are timed **after the table is full**. Every variant starts from
  the state after the stream's first ``capacity`` offers (built untimed), then offers the
  stream's next batches, offers ``capacity`` .. 1M; only the offering calls are timed. A
  variant that reaches the end of the stream restarts (untimed) from the full table, so it
  keeps cycling through that window; how much of it each variant covered and the share of
  its timed offers it kept are reported under the table (the keep rate falls from 1 at a
  full table to capacity / n, 0.1 at the stream's end). Batches are views of one
  pre-generated stream, so no variant pays for making data.
- Max times sampled: the consume-once buffer drains by 256 items a sample. It is timed from
  full down to 3/4 full (``capacity / 4 / 256`` samples), then refilled untimed by extending
  one full lap (every slot written again, counts reset), and so on; it holds between
  ``capacity`` and ``3/4 capacity`` items while timed (7/8 on average). The plain buffer
  stays full and is timed with the same loop (calls timed in chunks, no refill needed).
  A refill per sample (``extend(256)`` after each ``sample(256)`` in both buffers) was not
  used: a FIFO writer writes the oldest slot, live or not, so the consume-once buffer would
  not stay full and the two would not hold the same number of items.
- Before timing, a small stream (20k items into 2k) checks that the parts do what the
  figures assume: the reservoir holds its capacity and counts every offer, and KeepTopK holds
  exactly the scores ``HeapqTopK`` holds.

The section adds about 40 s to a full run (about 10 s with ``--quick``) on a 2-core machine:
9 variants x 3 s timed, the rest filling, restarts and refills.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .harness import (
    Cell,
    Progress,
    human_count,
    interleave,
    measure_rates,
    ratio_column,
    summary,
    tabulate,
    value_column,
)
from .policy_baselines import AvalancheReservoir, HeapqTopK, NumpyReservoir
from .workloads import W1_SPEC, Columns, Settings, batches, make_columns

__all__ = ["BATCH", "MTS_DRAIN", "MTS_N", "SCORED_SPEC", "TARGETS", "Offers", "Timed", "cells",
           "check_policies", "fill_lap", "reservoir_offers", "run", "sizes", "stream_columns",
           "table", "top_k_offers", "unavailable", "w1_buffer"]

BATCH = 256
MTS_N = 1  # max_times_sampled of the consume-once buffer
MTS_DRAIN = 4  # timed from full down to (1 - 1/MTS_DRAIN) full, then refilled
TARGETS = {
    "reservoir": {"numpy": 20.0, "avalanche": 100.0},  # reverie items/s over the baseline's
    "top-k": {"heapq": 20.0},
    "max_times_sampled": 1.3,  # time per call with the part over without, at most
    "metadata": 1.2,
}
SCORED_SPEC = {**W1_SPEC, "score": (np.float32, ())}
LABELS = {"reverie": "reverie", "numpy": "numpy Algorithm R", "avalanche": "Avalanche-style",
          "heapq": "heapq top-k"}


def sizes(s: Settings) -> Tuple[int, int]:
    """(items in the stream, capacity) of the admission and retention cells: the run's W1
    capacity and a tenth of it (full run: 1M into 100k; quick: 100k into 10k)."""
    return s.w1_capacity, max(s.w1_capacity // 10, 1)


def unavailable() -> Optional[str]:
    """Why the section cannot run (None when it can): it needs reverie's policy parts."""
    try:
        import reverie as rv
    except Exception as exc:  # ImportError, or a broken build raising something else
        return f"reverie not importable ({type(exc).__name__}: {exc})".splitlines()[0]
    missing = [n for n in ("Reservoir", "KeepTopK") if not hasattr(rv, n)]
    if missing:
        return f"this reverie build has no {', '.join(missing)}"
    return None


def cells() -> int:
    """Progress steps this section reports."""
    return 1 + 3 + 2 + 2 + 2


# ---------------------------------------------------------------------------------------
# Timing: calls in chunks, only the calls timed, an untimed restart between epochs
# ---------------------------------------------------------------------------------------


class Timed:
    """Calls ``op(i)`` for ``i = 0, 1, ...`` of an epoch, timing only those calls.

    An epoch is ``epoch_calls`` calls (None: endless); between two epochs ``restart()`` runs
    untimed (a new full table, a refill). Calls are timed in chunks (one clock reading per
    chunk, the chunk doubled up to 64 calls while it takes under 2 ms), the same way for
    every variant. ``units`` is what one call counts (items offered, batches).
    """

    def __init__(self, op: Callable[[int], Any], units: float, epoch_calls: Optional[int] = None,
                 restart: Optional[Callable[[], None]] = None) -> None:
        if epoch_calls is not None and (epoch_calls <= 0 or restart is None):
            raise ValueError("an epoch needs epoch_calls > 0 and a restart")
        self.op, self.units, self.epoch_calls, self.restart = op, units, epoch_calls, restart
        self.i = 0  # position in the epoch
        self.calls = 0  # timed calls so far
        self.restarts = 0

    def rate(self, seconds: float) -> float:
        """Units per timed second over at least ``seconds`` of timed calls."""
        op, spent, calls, chunk = self.op, 0.0, 0, 1
        while spent < seconds:
            if self.epoch_calls is not None and self.i >= self.epoch_calls:
                assert self.restart is not None
                self.restart()
                self.i = 0
                self.restarts += 1
            n = chunk if self.epoch_calls is None else min(chunk, self.epoch_calls - self.i)
            first = self.i
            start = time.perf_counter()
            for j in range(first, first + n):
                op(j)
            took = time.perf_counter() - start
            spent += took
            calls += n
            self.i += n
            if took < 2e-3 and chunk < 64:
                chunk *= 2
        self.calls += calls
        return calls * self.units / spent


def _measure(variants: Dict[str, Timed], s: Settings) -> Dict[str, Dict[str, Any]]:
    """Each variant's ``Timed.rate``, in turns: ``s.warmup_s`` each, then ``s.repeats``
    rounds of ``s.budget_s / s.repeats`` timed seconds each."""
    slice_s = s.budget_s / s.repeats
    rates = interleave({k: partial(t.rate, slice_s) for k, t in variants.items()}, s.repeats,
                       warmup={k: partial(t.rate, s.warmup_s) for k, t in variants.items()})
    return {k: summary(v) for k, v in rates.items()}


# ---------------------------------------------------------------------------------------
# Admission and retention: a stream offered after the table is full
# ---------------------------------------------------------------------------------------


def stream_columns(n: int, seed: int) -> Columns:
    """``n`` scored W1 items: the W1 fields and ``score`` (f32, uniform in [0, 1))."""
    rng = np.random.default_rng(seed)
    cols = make_columns(W1_SPEC, n, rng)
    cols["score"] = rng.random(n, dtype=np.float32)
    return cols


@dataclass
class Offers:
    """One variant offered a stream: a full table, then the stream's batches after it.

    ``make(first)`` builds the variant's table and offers it ``first``, the stream's first
    ``capacity`` items, in one call (the state after those offers: reservoirs keep all of
    them and a batch decides as the same offers one by one; Avalanche's update keeps the
    same distribution). ``offer(batch)`` offers one batch and returns how many it stored.
    """

    make: Callable[[Any], Any]
    offer: Callable[[Any, Any], int]
    first: Any
    window: List[Any]  # the batches after the first capacity items, in stream order
    kept: int = 0
    buf: Any = None

    def restart(self) -> None:
        self.buf = None  # free the old table first
        self.buf = self.make(self.first)

    def call(self, i: int) -> None:
        self.kept += self.offer(self.buf, self.window[i])

    def timed(self) -> Timed:
        self.restart()
        return Timed(self.call, BATCH, len(self.window), self.restart)


def _slices(cols: Columns, names: Sequence[str], capacity: int,
            as_dict: bool) -> Tuple[Any, List[Any]]:
    """The first ``capacity`` items and the batches of BATCH after them, as keyword dicts
    (reverie) or column lists in spec order (the baselines)."""
    def part(lo: int, hi: int) -> Any:
        if as_dict:
            return {n: cols[n][lo:hi] for n in names}
        return [cols[n][lo:hi] for n in names]

    total = len(cols[names[0]])
    window = [part(lo, min(lo + BATCH, total)) for lo in range(capacity, total, BATCH)]
    return part(0, capacity), window


def _reverie_offers(cols: Columns, spec: Dict[str, Any], capacity: int, writer: Any,
                    seed: int) -> Offers:
    import reverie as rv

    first, window = _slices(cols, list(spec), capacity, True)
    seeds = iter(range(seed, seed + 1_000_000))  # each restart a fresh seed

    def make(first_: Dict[str, np.ndarray]) -> Any:
        buf = rv.ReplayBuffer(capacity, spec=dict(spec), writer=writer, seed=next(seeds))
        stored = buf.extend(**first_)
        if stored != capacity or len(buf) != capacity:
            raise RuntimeError(f"{writer!r}: stored {stored} of the first {capacity} offers")
        return buf

    return Offers(make, lambda buf, b: buf.extend(**b), first, window)


def _baseline_offers(cols: Columns, spec: Dict[str, Any], capacity: int,
                     build: Callable[[int], Any]) -> Offers:
    first, window = _slices(cols, list(spec), capacity, False)

    def make(first_: List[np.ndarray]) -> Any:
        buf = build(capacity)
        buf.extend(*first_)
        if len(buf) != capacity:
            raise RuntimeError(f"{type(buf).__name__}: holds {len(buf)} of {capacity}")
        return buf

    return Offers(make, lambda buf, b: buf.extend(*b), first, window)


def _stream_cell(name: str, offers: Dict[str, Offers], n: int, capacity: int, s: Settings,
                 prog: Progress) -> Cell:
    prog.note(f"policies: {name}, {human_count(n)} offered into {human_count(capacity)}")
    timers = {k: o.timed() for k, o in offers.items()}
    cell = Cell(name, f"{human_count(n)} W1 items into {human_count(capacity)}, batches of "
                f"{BATCH}", "items/s")
    cell.values = _measure(timers, s)
    window = n - capacity
    cell.extra = {
        "targets": TARGETS[name],
        "ratios": {k: cell.ratio("reverie", k) for k in offers if k != "reverie"},
        "stream": n, "capacity": capacity, "batch": BATCH,
        "timed_offers": {k: t.calls * BATCH for k, t in timers.items()},
        "windows_covered": {k: t.calls * BATCH / window for k, t in timers.items()},
        "kept_share": {k: o.kept / max(t.calls * BATCH, 1)
                       for (k, o), t in zip(offers.items(), timers.values())},
        "restarts": {k: t.restarts for k, t in timers.items()},
    }
    for o in offers.values():
        o.buf = None
    prog.advance(len(offers))
    return cell


def reservoir_offers(cols: Columns, capacity: int, seed: int) -> Dict[str, Offers]:
    """The reservoir cell's variants over the W1 fields of ``cols`` (tables not built yet)."""
    import reverie as rv

    spec = dict(W1_SPEC)
    return {
        "reverie": _reverie_offers(cols, spec, capacity, rv.Reservoir(), seed),
        "numpy": _baseline_offers(cols, spec, capacity,
                                  lambda k: NumpyReservoir(k, spec, seed=seed)),
        "avalanche": _baseline_offers(cols, spec, capacity,
                                      lambda k: AvalancheReservoir(k, spec, seed=seed)),
    }


def top_k_offers(cols: Columns, capacity: int, seed: int) -> Dict[str, Offers]:
    """The top-k cell's variants over the scored items ``cols`` (tables not built yet)."""
    import reverie as rv

    spec = dict(SCORED_SPEC)
    return {
        "reverie": _reverie_offers(cols, spec, capacity, rv.KeepTopK(score="score"), seed),
        "heapq": _baseline_offers(cols, spec, capacity,
                                  lambda k: HeapqTopK(k, spec, score="score")),
    }


def run_reservoir(cols: Columns, s: Settings, prog: Progress) -> Cell:
    n, capacity = len(cols["obs"]), sizes(s)[1]
    return _stream_cell("reservoir", reservoir_offers(cols, capacity, s.seed), n, capacity, s,
                        prog)


def run_top_k(cols: Columns, s: Settings, prog: Progress) -> Cell:
    n, capacity = len(cols["obs"]), sizes(s)[1]
    return _stream_cell("top-k", top_k_offers(cols, capacity, s.seed), n, capacity, s, prog)


# ---------------------------------------------------------------------------------------
# Overheads: max times sampled, metadata
# ---------------------------------------------------------------------------------------


def fill_lap(buf: Any, block: Columns, capacity: int) -> None:
    """Writes one full lap (``capacity`` items) from a block of distinct items, cycled."""
    size = len(block["obs"])
    done = 0
    while done < capacity:
        k = min(size, capacity - done)
        buf.extend(**{name: col[:k] for name, col in block.items()})
        done += k


def w1_buffer(capacity: int, block: Columns, seed: int, **parts: Any) -> Any:
    """A W1 reverie buffer with ``parts`` (e.g. ``max_times_sampled=1``) written one lap."""
    import reverie as rv

    buf = rv.ReplayBuffer(capacity, spec=dict(W1_SPEC), seed=seed, **parts)
    fill_lap(buf, block, capacity)
    if len(buf) != capacity:
        raise RuntimeError(f"W1 buffer {parts}: holds {len(buf)} of {capacity}")
    return buf


def run_max_times_sampled(block: Columns, s: Settings, prog: Progress) -> Cell:
    capacity = s.w1_capacity
    prog.note(f"policies: max_times_sampled={MTS_N}, filling 2 x {human_count(capacity)}")
    mts = w1_buffer(capacity, block, s.seed, max_times_sampled=MTS_N)
    plain = w1_buffer(capacity, block, s.seed)
    epoch = capacity // MTS_DRAIN // BATCH  # samples from full down to 3/4 full (N = 1)
    lows: List[int] = []

    def refill() -> None:
        lows.append(len(mts))
        fill_lap(mts, block, capacity)

    sample_mts, sample_plain = mts.sample, plain.sample
    timers = {"with": Timed(lambda i: sample_mts(BATCH), 1, epoch, refill),
              "without": Timed(lambda i: sample_plain(BATCH), 1)}
    prog.note(f"policies: sample {BATCH}, max_times_sampled={MTS_N} vs uniform")
    cell = Cell("max_times_sampled", f"sample {BATCH}, max_times_sampled={MTS_N} vs uniform, "
                f"cap {human_count(capacity)}", "batches/s")
    cell.values = _measure(timers, s)
    expected = capacity - epoch * BATCH * MTS_N
    cell.extra = {
        "with": f"ReplayBuffer(max_times_sampled={MTS_N}), timed from {capacity:,} down to "
                f"{expected:,} items, refilled untimed (one lap)",
        "without": "ReplayBuffer() uniform, full",
        "target": TARGETS["max_times_sampled"],
        "time_ratio": cell.ratio("without", "with"),
        "samples_per_epoch": epoch, "refills": timers["with"].restarts,
        "held_at_refill": sorted(set(lows)), "held_at_refill_expected": expected,
    }
    if any(n != expected for n in lows):
        cell.extra["problem"] = f"held {sorted(set(lows))} at a refill, expected {expected:,}"
    prog.advance(2)
    return cell


def run_metadata(block: Columns, s: Settings, prog: Progress) -> Cell:
    capacity = s.w1_capacity
    prog.note(f"policies: metadata on/off, filling 2 x {human_count(capacity)}")
    on = w1_buffer(capacity, block, s.seed, metadata=True)
    off = w1_buffer(capacity, block, s.seed)
    batch = {k: v[:BATCH] for k, v in make_columns(W1_SPEC, BATCH,
                                                   np.random.default_rng(s.seed + 7)).items()}
    ext_on, ext_off = on.extend, off.extend
    prog.note(f"policies: extend {BATCH}, metadata on vs off")
    cell = Cell("metadata", f"extend {BATCH}, metadata=True vs False, cap "
                f"{human_count(capacity)}", "items/s")
    cell.values = {("with" if k == "on" else "without"): v for k, v in measure_rates(
        {"on": lambda: ext_on(**batch), "off": lambda: ext_off(**batch)}, BATCH, s).items()}
    cell.extra = {"with": "ReplayBuffer(metadata=True)", "without": "ReplayBuffer()",
                  "target": TARGETS["metadata"], "time_ratio": cell.ratio("without", "with")}
    prog.advance(2)
    return cell


# ---------------------------------------------------------------------------------------
# Checks and report
# ---------------------------------------------------------------------------------------


def check_policies(seed: int, n: int = 20_000, capacity: int = 2_000) -> List[str]:
    """What the figures assume, on a small stream: the reservoir holds ``capacity`` items
    and counts every offer, and KeepTopK holds exactly the scores ``HeapqTopK`` holds.
    Returns the problems found (empty: none)."""
    import reverie as rv

    cols = stream_columns(n, seed)
    bad: List[str] = []
    res = rv.ReplayBuffer(capacity, spec=dict(W1_SPEC), writer=rv.Reservoir(), seed=seed)
    names = list(W1_SPEC)
    stored = sum(res.extend(**{k: cols[k][lo:lo + BATCH] for k in names})
                 for lo in range(0, n, BATCH))
    stats = res.stats()
    if len(res) != capacity:
        bad.append(f"reservoir holds {len(res)} of {capacity}")
    if stats.get("reservoir.offers") != n:
        bad.append(f"reservoir counted {stats.get('reservoir.offers')} offers of {n}")
    if stats.get("table.written") != stored:
        bad.append(f"reservoir: extend reported {stored} stored, the table wrote "
                   f"{stats.get('table.written')}")
    spec = dict(SCORED_SPEC)
    top = rv.ReplayBuffer(capacity, spec=spec, writer=rv.KeepTopK(score="score"), seed=seed)
    heap = HeapqTopK(capacity, spec, score="score")
    for lo in range(0, n, BATCH):
        top.extend(**{k: cols[k][lo:lo + BATCH] for k in spec})
        heap.extend(*[cols[k][lo:lo + BATCH] for k in spec])
    got = np.sort(top.columns["score"].numpy()[:len(top)])
    want = np.sort(heap.held()["score"])
    if got.shape != want.shape or not np.array_equal(got, want):
        bad.append(f"KeepTopK holds other scores than heapq ({len(got)} vs {len(want)} items)")
    return bad


def table(cells_: Sequence[Cell], checks: Sequence[str], s: Settings) -> str:
    """The section's tables and notes."""
    lines: List[str] = []
    name = ("part", lambda c: c.section)
    metric = ("metric", lambda c: f"{c.metric} ({c.unit})")
    streams = [c for c in cells_ if c.section in ("reservoir", "top-k")]
    overheads = [c for c in cells_ if c.section in ("max_times_sampled", "metadata")]
    if streams:
        lines.append("Admission and retention, offered items/s after the table is full "
                     "(median [min-max]); ratio: reverie's rate over the baseline's")
        lines += tabulate(streams, [name, metric]
                          + [value_column(k, LABELS[k]) for k in LABELS]
                          + [ratio_column("reverie", k, f"reverie/{LABELS[k]}",
                                          target=partial(_target, k))
                             for k in ("numpy", "avalanche", "heapq")])
        for c in streams:
            share = ", ".join(f"{LABELS[k]} {v:.0%}" for k, v in c.extra["kept_share"].items())
            cover = ", ".join(f"{LABELS[k]} {v:.2g}" for k, v in c.extra["windows_covered"].items())
            lines.append(f"  {c.section}: share of the timed offers stored: {share}; timed offers "
                         f"/ offers {human_count(c.extra['capacity'])}..{human_count(c.extra['stream'])}: "
                         f"{cover}")
    if overheads:
        lines.append("")
        lines.append("Overheads of a part: the same calls with and without it (median [min-max]);"
                     " time ratio: time per call with the part over without")
        lines += tabulate(overheads, [name, metric, value_column("with", "with the part"),
                                      value_column("without", "without"),
                                      ratio_column("without", "with", "time with / without",
                                                   target=lambda c: c.extra["target"],
                                                   at_most=True)])
        for c in overheads:
            if c.section == "max_times_sampled":
                lines.append(f"  max_times_sampled: {c.extra['with']} every "
                             f"{c.extra['samples_per_epoch']} samples ({c.extra['refills']} "
                             "refills)" + (f"; PROBLEM: {c.extra['problem']}"
                                           if "problem" in c.extra else ""))
    lines.append("checks on a 20k-item stream into 2k (reservoir size and offer count, KeepTopK "
                 "= heapq's scores): " + ("agree" if not checks else "DIFFER: " + "; ".join(checks)))
    lines.append(f"each figure: median of {s.repeats} rounds of {s.budget_s / s.repeats:.2g} s "
                 f"of timed calls per variant, in turns, after {s.warmup_s:g} s warm-up; "
                 "refills and restarts untimed")
    return "\n".join(lines)


def _target(key: str, c: Cell) -> Optional[float]:
    return c.extra["targets"].get(key)


def run(s: Settings, prog: Progress) -> Tuple[List[Cell], Dict[str, Any]]:
    """Runs the section; returns the cells and their JSON form."""
    t0 = time.perf_counter()
    prog.note("policies: checks")
    checks = check_policies(s.seed)
    prog.advance()
    n, capacity = sizes(s)
    prog.note(f"policies: making a stream of {human_count(n)} scored W1 items")
    cols = stream_columns(n, s.seed)
    out = [run_reservoir(cols, s, prog), run_top_k(cols, s, prog)]
    del cols
    block = batches(min(s.w1_capacity, 65536), 1, s.seed + 3)[0]
    out += [run_max_times_sampled(block, s, prog), run_metadata(block, s, prog)]
    text = table(out, checks, s)
    result = {
        "settings": {"stream": n, "capacity": capacity, "batch": BATCH,
                     "w1_capacity": s.w1_capacity, "max_times_sampled": MTS_N,
                     "mts_drain": f"timed from full to {1 - 1 / MTS_DRAIN:g} full",
                     "repeats": s.repeats, "budget_s": s.budget_s, "warmup_s": s.warmup_s,
                     "targets": TARGETS},
        "cells": [c.as_dict() for c in out],
        "checks": checks,
        "elapsed_s": time.perf_counter() - t0,
        "report": text,
    }
    return out, result
