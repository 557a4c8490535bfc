"""Continual-learning memory benchmarks (issue 14): ``python -m reverie.bench --workloads memories``.

Each cell's variants measured in this one process, in turns, the figure the median of the
rounds (``harness.measure_rates``):

- **Class-balanced reservoir**: 100 classes (uniform and Zipf(1.1) labels), images
  uint8[3, 32, 32], memory 5,120, offers in batches of 10 and 256, timed after the memory is
  full: ``writer=rv.ClassBalanced(label="y")`` against a per-item Python CBRS loop
  (``PythonCBRS``: numpy rows, one Python decision per offered item, the largest class found
  with ``max`` over the class counts, as it is usually written; target >= 20x) and against a
  port of Avalanche 0.6's ``ClassBalancedBuffer`` update (``AvalancheClassBalanced``:
  per experience, each class's ``ReservoirSamplingBuffer`` concatenates, draws random keys,
  keeps its top share, and every class is resized to an equal share; numpy instead of
  Avalanche's lazy dataset subsets, so faster than the library itself; target >= 50x). The
  per-offer cost as classes grow from 10 to 10,000 (batches of 256) is a second table and a
  plot (``memories_classes.png``).
- **Keyed archive**: 10^6 keys (quick: 10^5), inserts of random (key, score) items in batches
  of 4,096, ``writer=rv.KeyedArchive(key=, score=)`` against a Python dict of
  (score, row) updated per item (target >= 20x), in inserts/s.
- **Mixture**: ``sample(256)`` of a ``PartitionedBuffer`` of 4 prioritized partitions of
  capacity/4 with equal weights against one prioritized ``ReplayBuffer`` of the capacity
  (1M; quick 100k), W1 items; target: time per call within 1.5x.
- **Reuse rules**: ``sample(256)`` with ``min_interval=4`` (calls), and with
  ``max_staleness=2`` (every item within the bound), against plain uniform ``sample(256)``;
  target: within 1.5x each.

The section adds about 60 s to a full run on a 2-core machine (about 15 s with --quick).
"""

from __future__ import annotations

import random
import time
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .harness import (
    Cell,
    Progress,
    human_count,
    measure_rates,
    ratio_column,
    tabulate,
    value_column,
)
from .workloads import W1_SPEC, Columns, Settings, batches

__all__ = ["AvalancheClassBalanced", "PythonCBRS", "TARGETS", "cells", "run", "unavailable"]

MEMORY = 5120
IMAGE = (3, 32, 32)
TARGETS = {"cbrs": {"python": 20.0, "avalanche": 50.0}, "archive": {"dict": 20.0},
           "mixture": 1.5, "min_interval": 1.5, "max_staleness": 1.5}
CLASS_COUNTS = (10, 100, 1000, 10000)


def unavailable() -> Optional[str]:
    """Why the section cannot run (None when it can)."""
    try:
        import reverie as rv
    except Exception as exc:  # ImportError, or a broken build raising something else
        return f"reverie not importable ({type(exc).__name__}: {exc})".splitlines()[0]
    missing = [n for n in ("ClassBalanced", "KeyedArchive", "PartitionedBuffer") if not hasattr(rv, n)]
    return f"this reverie build has no {', '.join(missing)}" if missing else None


def cells() -> int:
    """Progress steps this section reports."""
    return 4 + len(CLASS_COUNTS) + 1 + 1 + 2


# ---------------------------------------------------------------------------------------
# Baselines
# ---------------------------------------------------------------------------------------


class PythonCBRS:
    """CBRS (Chrysakis & Moens 2020) as a per-item Python loop over numpy rows."""

    def __init__(self, memory: int, seed: int) -> None:
        self.memory = memory
        self.rows = np.zeros((memory, *IMAGE), np.uint8)
        self.labels = np.zeros(memory, np.int64)
        self.members: Dict[int, List[int]] = {}
        self.offered: Dict[int, int] = {}
        self.full: set = set()
        self.size = 0
        self.rng = random.Random(seed)

    def extend(self, x: np.ndarray, y: np.ndarray) -> None:
        for row, label in zip(x, y.tolist()):
            self.offered[label] = self.offered.get(label, 0) + 1
            members = self.members.setdefault(label, [])
            if self.size < self.memory:
                slot = self.size
                self.size += 1
                members.append(slot)
            else:
                largest = max(len(m) for m in self.members.values())
                if len(members) == largest:
                    self.full.add(label)
                if label not in self.full:
                    tied = [c for c, m in self.members.items() if len(m) == largest]
                    giver = self.rng.choice(tied)
                    self.full.add(giver)
                    g = self.members[giver]
                    j = self.rng.randrange(len(g))
                    slot = g[j]
                    g[j] = g[-1]
                    g.pop()
                    members.append(slot)
                elif self.rng.random() < len(members) / self.offered[label]:
                    slot = members[self.rng.randrange(len(members))]
                else:
                    continue
            self.rows[slot] = row
            self.labels[slot] = label


class AvalancheClassBalanced:
    """Avalanche 0.6's ClassBalancedBuffer (adaptive size) update, ported to numpy arrays:
    per experience (one offered batch), each seen class gets an equal share of the memory
    (the remainder to the first classes); a class's reservoir concatenates its new items to
    its buffer, draws a random key per new item, keeps its top `share` by key."""

    def __init__(self, memory: int, seed: int) -> None:
        self.memory = memory
        self.rng = np.random.default_rng(seed)
        self.groups: Dict[int, Tuple[np.ndarray, np.ndarray]] = {}  # class -> (rows, keys)
        self.seen: List[int] = []

    def extend(self, x: np.ndarray, y: np.ndarray) -> None:
        for c in np.unique(y).tolist():
            if c not in self.groups:
                self.seen.append(c)
        n = len(self.seen)
        share = {c: self.memory // n + (1 if i < self.memory % n else 0) for i, c in enumerate(self.seen)}
        for c in np.unique(y).tolist():
            new = x[y == c]
            keys = self.rng.random(len(new))
            if c in self.groups:
                rows, old_keys = self.groups[c]
                rows, keys = np.concatenate([new, rows]), np.concatenate([keys, old_keys])
            else:
                rows = new
            top = np.argsort(-keys, kind="stable")[:share[c]]
            self.groups[c] = (rows[top], keys[top])
        for c, (rows, keys) in self.groups.items():  # resize every class to its share
            if len(rows) > share[c]:
                top = np.argsort(-keys, kind="stable")[:share[c]]
                self.groups[c] = (rows[top], keys[top])


class DictArchive:
    """A keyed archive as a Python dict of (score, row), updated per item."""

    def __init__(self) -> None:
        self.best: Dict[int, Tuple[float, np.ndarray]] = {}

    def extend(self, key: np.ndarray, score: np.ndarray, obs: np.ndarray) -> None:
        best = self.best
        for k, s, row in zip(key.tolist(), score.tolist(), obs):
            old = best.get(k)
            if old is None or s > old[0]:
                best[k] = (s, row)


# ---------------------------------------------------------------------------------------
# Cells
# ---------------------------------------------------------------------------------------


class Cycle:
    """Offers consecutive batches of a pregenerated stream, wrapping at its end."""

    def __init__(self, cols: Dict[str, np.ndarray], batch: int) -> None:
        self.cols, self.batch, self.at = cols, batch, 0
        self.n = len(next(iter(cols.values())))

    def next(self) -> Dict[str, np.ndarray]:
        if self.at + self.batch > self.n:
            self.at = 0
        out = {k: v[self.at:self.at + self.batch] for k, v in self.cols.items()}
        self.at += self.batch
        return out


def labels_of(shape: str, classes: int, n: int, rng: np.random.Generator) -> np.ndarray:
    if shape == "uniform":
        return rng.integers(0, classes, n)
    p = 1.0 / np.arange(1, classes + 1) ** 1.1
    return rng.choice(classes, n, p=p / p.sum())


def cbrs_cell(shape: str, batch: int, s: Settings, prog: Progress, classes: int = 100,
              baselines: bool = True) -> Cell:
    import reverie as rv

    prog.note(f"memories: class-balanced reservoir, {classes} classes ({shape}), batches of {batch}")
    rng = np.random.default_rng(s.seed + batch + classes)
    n = 40_000 if s.quick else 200_000
    stream = {"x": rng.integers(0, 256, (n, *IMAGE), dtype=np.uint8), "y": labels_of(shape, classes, n, rng)}
    buf = rv.ReplayBuffer(MEMORY, {"x": ("uint8", IMAGE), "y": ("int64", ())},
                          writer=rv.ClassBalanced(label="y", max_classes=max(classes, 16)), seed=s.seed)
    variants: Dict[str, Any] = {"reverie": buf}
    if baselines:
        variants["python"] = PythonCBRS(MEMORY, s.seed)
        variants["avalanche"] = AvalancheClassBalanced(MEMORY, s.seed)
    ops: Dict[str, Callable[[], Any]] = {}
    for name, v in variants.items():
        cycle = Cycle(stream, batch)
        while (len(v) if name == "reverie" else _held(v)) < MEMORY:  # full before timing (untimed)
            b = cycle.next()
            v.extend(x=b["x"], y=b["y"])
        ops[name] = partial(_offer, v, cycle)
    values = measure_rates(ops, batch, s)
    prog.advance()
    return Cell("cbrs", f"{classes} classes, {shape}, batches of {batch}", "offers/s", values,
                extra={"classes": classes, "targets": TARGETS["cbrs"]})


def _offer(v: Any, cycle: "Cycle") -> None:
    b = cycle.next()
    v.extend(x=b["x"], y=b["y"])


def _held(v: Any) -> int:
    if isinstance(v, PythonCBRS):
        return v.size
    return sum(len(r) for r, _ in v.groups.values())


def archive_cell(s: Settings, prog: Progress) -> Cell:
    import reverie as rv

    prog.note("memories: keyed archive")
    keys = 100_000 if s.quick else 1_000_000
    n = 10 * keys
    rng = np.random.default_rng(s.seed + 7)
    stream: Dict[str, np.ndarray] = {"key": rng.integers(0, keys, n), "score": rng.random(n, dtype=np.float32),
                                     "obs": rng.random((n, 4), dtype=np.float32)}
    batch = 4096
    buf = rv.ReplayBuffer(keys, {"key": ("int64", ()), "score": ("float32", ()), "obs": ("float32", (4,))},
                          writer=rv.KeyedArchive(key="key", score="score"), seed=s.seed)
    ref = DictArchive()
    c1, c2 = Cycle(stream, batch), Cycle(stream, batch)
    ops = {"reverie": lambda: buf.extend(**c1.next()),
           "dict": lambda: (lambda b: ref.extend(b["key"], b["score"], b["obs"]))(c2.next())}
    values = measure_rates(ops, batch, s)
    prog.advance()
    return Cell("archive", f"{human_count(keys)} keys, batches of {batch}", "inserts/s", values,
                extra={"keys": keys, "targets": TARGETS["archive"]})


def _fill(buf: Any, block: Columns, capacity: int, extra: Optional[Dict[str, np.ndarray]] = None) -> None:
    size = len(block["obs"])
    done = 0
    while done < capacity:
        k = min(size, capacity - done)
        cols = {name: col[:k] for name, col in block.items()}
        if extra:
            cols.update({name: col[done:done + k] for name, col in extra.items()})
        buf.extend(**cols)
        done += k


def overhead_cells(s: Settings, prog: Progress) -> List[Cell]:
    import reverie as rv

    cap = s.w1_capacity
    block = batches(min(cap, 65536), 1, s.seed + 3)[0]
    out: List[Cell] = []
    prog.note("memories: mixture over 4 prioritized partitions")
    spec = {**{k: (np.dtype(d).name, shape) for k, (d, shape) in W1_SPEC.items()}, "src": ("int64", ())}
    mixed = rv.PartitionedBuffer(cap // 4, spec, sampler=rv.Prioritized(), key="src", seed=s.seed,
                                 declared={p: rv.Partition() for p in range(4)})
    _fill(mixed, block, cap, {"src": np.arange(cap) % 4})
    mixed.mixture = {0: 1.0, 1: 1.0, 2: 1.0, 3: 1.0}
    one = rv.ReplayBuffer(cap, dict(W1_SPEC), sampler=rv.Prioritized(), seed=s.seed)
    _fill(one, block, cap)
    values = measure_rates({"with": lambda: mixed.sample(256), "without": lambda: one.sample(256)}, 1, s)
    out.append(Cell("mixture", f"sample(256), 4 partitions vs one buffer, {human_count(cap)} (prioritized)",
                    "batches/s", values, extra={"target": TARGETS["mixture"]}))
    prog.advance()
    plain = rv.ReplayBuffer(cap, dict(W1_SPEC), seed=s.seed)
    _fill(plain, block, cap)
    rules: Tuple[Tuple[str, Dict[str, Any]], ...] = (("min_interval", {"min_interval": 4}),
                                                     ("max_staleness", {"max_staleness": 2}))
    for name, kwargs in rules:
        prog.note(f"memories: {name}")
        ruled = rv.ReplayBuffer(cap, dict(W1_SPEC), seed=s.seed, **kwargs)
        _fill(ruled, block, cap)
        values = measure_rates({"with": partial(ruled.sample, 256), "without": partial(plain.sample, 256)}, 1, s)
        out.append(Cell(name, f"sample(256) with {next(iter(kwargs))}={next(iter(kwargs.values()))} vs uniform, "
                        f"{human_count(cap)}", "batches/s", values, extra={"target": TARGETS[name]}))
        prog.advance()
    return out


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------

LABELS = {"reverie": "reverie", "python": "Python CBRS loop", "avalanche": "Avalanche-style", "dict": "Python dict"}


def table(cbrs: Sequence[Cell], flat: Sequence[Cell], archive: Cell, overheads: Sequence[Cell]) -> str:
    name = ("part", lambda c: c.section)
    metric = ("metric", lambda c: f"{c.metric} ({c.unit})")
    lines = ["Class-balanced reservoir (memory 5,120, uint8[3,32,32] images), offers/s after the memory "
             "is full (median [min-max]); ratio: reverie's rate over the baseline's"]
    lines += tabulate(cbrs, [name, metric] + [value_column(k, LABELS[k]) for k in ("reverie", "python", "avalanche")]
                      + [ratio_column("reverie", k, f"reverie/{LABELS[k]}", target=partial(_target, k))
                         for k in ("python", "avalanche")])
    lines += ["", "Per-offer cost as classes grow (reverie, batches of 256, uniform labels)"]
    base = flat[0].value("reverie") or 1.0
    lines += tabulate(flat, [("classes", lambda c: str(c.extra["classes"])), value_column("reverie", "offers/s"),
                             ("cost vs 10 classes", lambda c: f"{base / (c.value('reverie') or 1.0):.2f}x")])
    lines += ["", "Keyed archive: inserts/s (median [min-max])"]
    lines += tabulate([archive], [name, metric, value_column("reverie"), value_column("dict", LABELS["dict"]),
                                  ratio_column("reverie", "dict", "reverie/dict", target=lambda c: c.extra["targets"]["dict"])])
    lines += ["", "Overheads: the same sample calls with and without the part; time ratio: time per call "
              "with over without"]
    lines += tabulate(overheads, [name, metric, value_column("with", "with the part"), value_column("without"),
                                  ratio_column("without", "with", "time with / without",
                                               target=lambda c: c.extra["target"], at_most=True)])
    return "\n".join(lines)


def _target(key: str, c: Cell) -> Optional[float]:
    return c.extra["targets"][key]


def plot(flat: Sequence[Cell], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    xs = [c.extra["classes"] for c in flat]
    ys = [1e6 / (c.value("reverie") or 1.0) for c in flat]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(xs, ys, marker="o")
    ax.set_xscale("log")
    ax.set_ylim(0, max(ys) * 1.5)
    ax.set_xlabel("classes")
    ax.set_ylabel("us per offered item")
    ax.set_title("ClassBalanced: cost per offer (memory 5,120)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(s: Settings, prog: Progress, out_dir: Optional[str] = None) -> Tuple[List[Cell], Dict[str, Any]]:
    """Runs the section; returns the cells and their JSON form."""
    import os

    t0 = time.perf_counter()
    cbrs = [cbrs_cell(shape, batch, s, prog) for shape in ("uniform", "zipf") for batch in (10, 256)]
    flat = [cbrs_cell("uniform", 256, s, prog, classes=k, baselines=False) for k in CLASS_COUNTS]
    for c in flat:
        c.section = "cbrs-classes"
    archive = archive_cell(s, prog)
    overheads = overhead_cells(s, prog)
    text = table(cbrs, flat, archive, overheads)
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, "memories_classes.png")
        plot(flat, path)
        text += f"\nwrote {path}"
    text += f"\nmemories: {time.perf_counter() - t0:.0f} s"
    all_cells = cbrs + flat + [archive] + overheads
    return all_cells, {"cells": [c.as_dict() for c in all_cells], "targets": TARGETS,
                       "elapsed_s": time.perf_counter() - t0, "report": text}
