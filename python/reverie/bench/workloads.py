"""The workloads every section shares: specs, random data, settings, and the W1-W3 adapters.

- Specs: ``W1_SPEC`` (MuJoCo-like transitions, 165 bytes) and ``W3_SPEC`` (Atari-like frames
  u8[4,84,84]); PER's ``ALPHA``, ``BETA``, ``EPS``.
- Data: :func:`make_columns` (random items, one array per field), :func:`fill_blocks`
  (the blocks that fill a buffer), :func:`item_bytes`; W1 as an actor hands it out
  (:func:`transitions`, :func:`batches`), a full W1 reverie buffer (:func:`filled_buffer`)
  and its committed count (:func:`committed`).
- :class:`Settings`: sizes and timing of a ``python -m reverie.bench`` run (``--quick`` or
  full), read by every section of that run.
- Adapters: one object per library (reverie, numpy, pure Python, cpprb) behind the same
  calls (``add_loop``, ``extend``, ``sample``, ``step``); :func:`build_filled` makes one
  full, :func:`bench_cases` / :func:`filled_case` serve the pytest-benchmark suite in bench/.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

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


def transitions(n: int, seed: int) -> List[Dict[str, Any]]:
    """``n`` single W1 transitions as an environment loop hands them out: fresh arrays for
    obs/action/next_obs, Python numbers for reward and done."""
    cols = make_columns(W1_SPEC, n, np.random.default_rng(seed))
    return [{name: (c[i].copy() if c.ndim > 1 else c[i].item()) for name, c in cols.items()}
            for i in range(n)]


def batches(size: int, count: int, seed: int) -> List[Columns]:
    """``count`` distinct W1 batches of ``size`` rows (separate arrays per batch)."""
    rng = np.random.default_rng(seed)
    return [make_columns(W1_SPEC, size, rng) for _ in range(count)]


def filled_buffer(prioritized: bool, seed: int, storage: str = "memory",
                  capacity: int = 1_000_000) -> Any:
    """A W1 reverie buffer written one full lap, so its pages are resident."""
    import reverie as rv

    sampler = rv.Prioritized(alpha=ALPHA, beta=BETA, eps=EPS) if prioritized else rv.Uniform()
    buf = rv.ReplayBuffer(capacity, spec=dict(W1_SPEC), sampler=sampler, seed=seed,
                          storage=storage)
    block = batches(min(capacity, 65536), 1, seed)[0]
    done = 0
    while done < capacity:
        k = min(65536, capacity - done)
        buf.extend(**{name: col[:k] for name, col in block.items()})
        done += k
    return buf


def committed(buf: Any) -> int:
    """How many items have been committed to a reverie buffer since it was made (by every
    process writing to it): what the shared-memory ingestion cells wait for.

    The one place the benchmarks read a buffer's internals: the core's ``written`` counter
    (``buf._core.written``), for which the Python API has no public name yet.
    """
    return int(buf._core.written)


@dataclass
class Settings:
    """Sizes and timing of one ``python -m reverie.bench`` run (a :class:`harness.Timing`)."""

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
        """The ``--quick`` or the full run's settings (``budget_s``: None for the default)."""
        if quick:
            return cls(True, 100_000, (100_000, 1_000_000), 10_000,
                       budget_s or 0.6, 3, 0.1, seed)
        return cls(False, 1_000_000, (100_000, 1_000_000), 50_000,
                   budget_s or 3.0, 5, 0.3, seed)


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
    """``{impl: None if usable, else why not}``."""
    why: Dict[str, Optional[str]] = {"numpy": None, "python": None}
    for key, module in (("reverie", "reverie"), ("cpprb", "cpprb")):
        try:
            __import__(module)
            why[key] = None
        except Exception as exc:  # ImportError, or a broken build raising something else
            why[key] = f"not importable ({type(exc).__name__}: {exc})".splitlines()[0]
    return why


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
