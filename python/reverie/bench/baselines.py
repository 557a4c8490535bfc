"""The replay buffers reverie is compared against, written the way people write them.

Four baselines, from the tutorial to the best one can reasonably do in numpy:

- :class:`DequeReplay`: ``collections.deque`` of tuples + ``random.sample`` (uniform).
- :class:`PythonSumTreePER`: proportional PER on a sum-tree and min-tree kept in Python
  lists, with one Python descent per sampled item (prioritized).
- :class:`NumpyReplay`: preallocated numpy columns, a ring pointer, fancy-index gather
  (uniform).
- :class:`NumpyPER`: numpy columns + a vectorised sum-tree and min-tree: the whole batch
  descends the levels together and priority updates are applied level by level
  (prioritized; the "best existing" baseline).

Every buffer takes a spec ``{name: (numpy dtype, per-item shape)}``. Items are given
positionally in spec order: ``add(obs, action, reward, next_obs, done)``, and batches
column by column: ``extend(obs_batch, action_batch, ...)``. ``sample`` returns a dict of
torch tensors; the prioritized ones add ``"indices"`` (numpy int64 slots) and
``"weights"`` (float32 tensor of importance weights ``(N P(i))^-beta / max_j w_j``).
"""

from __future__ import annotations

import collections
import random
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

Spec = Mapping[str, Tuple[Any, Tuple[int, ...]]]
"""``{field name: (numpy dtype, per-item shape)}``."""

__all__ = ["Spec", "DequeReplay", "PythonSumTreePER", "NumpyReplay", "NumpyPER", "normalize_spec",
           "tree_size"]


def tree_size(capacity: int) -> int:
    """The number of leaves of a binary tree over ``capacity`` items: the next power of two."""
    if capacity <= 0:
        raise ValueError(f"capacity must be > 0, got {capacity}")
    return 1 << (capacity - 1).bit_length()


def normalize_spec(spec: Spec) -> Dict[str, Tuple[np.dtype, Tuple[int, ...]]]:
    """The spec with numpy dtypes and shape tuples (an int shape ``n`` becomes ``(n,)``)."""
    out = {}
    for name, (dtype, shape) in spec.items():
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        out[name] = (np.dtype(dtype), shape)
    return out


def _python_rows(columns: Sequence[Any], n: int) -> List[tuple]:
    """The first ``n`` rows of the columns as item tuples: row views for array fields,
    Python numbers for scalar fields (a fast stand-in for ``n`` separate ``add`` calls)."""
    fields = [list(c[:n]) if np.ndim(c) > 1 else np.asarray(c[:n]).tolist() for c in columns]
    return list(zip(*fields))


def _rows_to_tensors(names: Sequence[str], dtypes: Sequence[np.dtype],
                     rows: Sequence[tuple]) -> Dict[str, torch.Tensor]:
    """Tutorial collation: transpose a list of item tuples, stack each field, wrap in torch."""
    columns = zip(*rows)
    return {name: torch.as_tensor(np.array(col, dtype=dt))
            for name, dt, col in zip(names, dtypes, columns)}


# ---------------------------------------------------------------------------------------
# Uniform
# ---------------------------------------------------------------------------------------


class DequeReplay:
    """The tutorial uniform buffer: a bounded deque of item tuples, ``random.sample``."""

    def __init__(self, capacity: int, spec: Spec, seed: Optional[int] = None) -> None:
        self.capacity = capacity
        self.spec = normalize_spec(spec)
        self.names = list(self.spec)
        self.dtypes = [dt for dt, _ in self.spec.values()]
        self.buffer: collections.deque = collections.deque(maxlen=capacity)
        self.rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self.buffer)

    def add(self, *item: Any) -> None:
        """Stores one item, given as the spec's fields in order."""
        self.buffer.append(item)

    def extend(self, *columns: Any) -> None:
        """Stores a batch (one array per field, leading axis n) one row at a time."""
        for row in zip(*columns):
            self.buffer.append(row)

    def load(self, *columns: Any) -> None:
        """Benchmark fill: the same as ``extend``, with the rows built in one pass."""
        n = len(columns[0])
        self.buffer.extend(_python_rows([c[max(0, n - self.capacity):] for c in columns],
                                        min(n, self.capacity)))

    def sample(self, batch_size: int) -> Dict[str, torch.Tensor]:
        """Draws ``batch_size`` distinct items uniformly; a dict of tensors [B, *shape]."""
        rows = self.rng.sample(self.buffer, batch_size)
        return _rows_to_tensors(self.names, self.dtypes, rows)


class NumpyReplay:
    """Preallocated numpy columns with a ring pointer; fancy-index gather, uniform draws."""

    def __init__(self, capacity: int, spec: Spec, seed: Optional[int] = None) -> None:
        self.capacity = capacity
        self.spec = normalize_spec(spec)
        self.names = list(self.spec)
        self.columns = [np.zeros((capacity, *shape), dtype=dt) for dt, shape in self.spec.values()]
        self.ptr = 0
        self.size = 0
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.size

    def add(self, *item: Any) -> None:
        """Stores one item, given as the spec's fields in order."""
        ptr = self.ptr
        for col, value in zip(self.columns, item):
            col[ptr] = value
        self.ptr = (ptr + 1) % self.capacity
        if self.size < self.capacity:
            self.size += 1

    def _write(self, columns: Sequence[Any]) -> np.ndarray:
        """Writes a batch at the ring pointer (wrapping around); returns the slots written."""
        n = len(columns[0])
        if n > self.capacity:  # only the newest `capacity` rows survive
            columns = [c[n - self.capacity:] for c in columns]
            self.ptr = (self.ptr + n - self.capacity) % self.capacity
            n = self.capacity
        start = self.ptr
        first = min(n, self.capacity - start)
        for col, values in zip(self.columns, columns):
            col[start:start + first] = values[:first]
            if first < n:
                col[:n - first] = values[first:]
        self.ptr = (start + n) % self.capacity
        self.size = min(self.size + n, self.capacity)
        return (start + np.arange(n)) % self.capacity

    def extend(self, *columns: Any) -> None:
        """Stores a batch (one array per field, leading axis n) with slice assignment."""
        self._write(columns)

    def load(self, *columns: Any) -> None:
        """Benchmark fill; for this buffer the same as ``extend``."""
        self._write(columns)

    def sample(self, batch_size: int) -> Dict[str, torch.Tensor]:
        """Draws ``batch_size`` items uniformly with replacement; a dict of tensors."""
        idx = self.rng.integers(0, self.size, batch_size)
        return {name: torch.from_numpy(col[idx]) for name, col in zip(self.names, self.columns)}


# ---------------------------------------------------------------------------------------
# Prioritized
# ---------------------------------------------------------------------------------------


class PythonSumTreePER:
    """The tutorial proportional PER: sum-tree and min-tree in Python lists, Python loops.

    The trees have ``2 * L`` entries (``L`` = capacity rounded up to a power of two), the
    root at 1 and leaf ``i`` at ``L + i``. New items get the largest stored priority
    (``max (p + eps)^alpha``, starting at 1); ``update_priorities`` stores
    ``(p + eps)^alpha``.
    """

    def __init__(self, capacity: int, spec: Spec, alpha: float = 0.6, beta: float = 0.4,
                 eps: float = 1e-6, seed: Optional[int] = None) -> None:
        self.capacity = capacity
        self.spec = normalize_spec(spec)
        self.names = list(self.spec)
        self.dtypes = [dt for dt, _ in self.spec.values()]
        self.alpha, self.beta, self.eps = alpha, beta, eps
        self.leaves = tree_size(capacity)
        self.sum_tree: List[float] = [0.0] * (2 * self.leaves)
        self.min_tree: List[float] = [float("inf")] * (2 * self.leaves)
        self.data: List[Any] = [None] * capacity
        self.ptr = 0
        self.size = 0
        self.max_priority = 1.0  # largest stored (p + eps)^alpha
        self.rng = random.Random(seed)

    def __len__(self) -> int:
        return self.size

    def _set(self, slot: int, value: float) -> None:
        i = slot + self.leaves
        s, m = self.sum_tree, self.min_tree
        s[i] = value
        m[i] = value
        i //= 2
        while i >= 1:
            s[i] = s[2 * i] + s[2 * i + 1]
            m[i] = min(m[2 * i], m[2 * i + 1])
            i //= 2

    def add(self, *item: Any) -> None:
        """Stores one item (spec order) with the current maximum priority."""
        self.data[self.ptr] = item
        self._set(self.ptr, self.max_priority)
        self.ptr = (self.ptr + 1) % self.capacity
        if self.size < self.capacity:
            self.size += 1

    def extend(self, *columns: Any) -> None:
        """Stores a batch one row at a time."""
        for row in zip(*columns):
            self.add(*row)

    def load(self, *columns: Any) -> None:
        """Benchmark fill: the same state as ``extend`` into an empty buffer, built fast.

        Stores the rows as tuples (array fields as row views, scalars as Python numbers)
        and builds both trees bottom-up in one pass instead of one path per item.
        """
        if self.size:
            raise ValueError("load() fills an empty buffer")
        n = min(len(columns[0]), self.capacity)
        self.data[:n] = _python_rows(columns, n)
        leaves = np.zeros(self.leaves)
        leaves[:n] = self.max_priority
        sums, mins = _build_trees(leaves, np.where(np.arange(self.leaves) < n, leaves, np.inf))
        self.sum_tree, self.min_tree = sums.tolist(), mins.tolist()
        self.size = n
        self.ptr = n % self.capacity

    def _retrieve(self, u: float) -> int:
        """The leaf whose prefix-sum interval holds ``u``."""
        s = self.sum_tree
        i = 1
        while i < self.leaves:
            left = s[2 * i]
            if u < left:
                i = 2 * i
            else:
                u -= left
                i = 2 * i + 1
        return min(i - self.leaves, self.size - 1)  # guard against float round-off past the end

    def sample(self, batch_size: int, beta: Optional[float] = None) -> Dict[str, Any]:
        """Stratified proportional sampling; fields as tensors + indices + IS weights."""
        beta = self.beta if beta is None else beta
        total = self.sum_tree[1]
        segment = total / batch_size
        indices = []
        for k in range(batch_size):
            u = self.rng.uniform(segment * k, segment * (k + 1))
            indices.append(self._retrieve(u))
        n = self.size
        max_weight = (self.min_tree[1] / total * n) ** (-beta)
        weights = [(self.sum_tree[i + self.leaves] / total * n) ** (-beta) / max_weight
                   for i in indices]
        batch: Dict[str, Any] = _rows_to_tensors(
            self.names, self.dtypes, [self.data[i] for i in indices])
        batch["indices"] = np.array(indices, dtype=np.int64)
        batch["weights"] = torch.tensor(weights, dtype=torch.float32)
        return batch

    def update_priorities(self, indices: Any, priorities: Any) -> None:
        """Sets ``(p + eps)^alpha`` for each sampled slot, one tree path at a time."""
        for i, p in zip(np.asarray(indices).tolist(), np.asarray(priorities).tolist()):
            q = (p + self.eps) ** self.alpha
            self._set(i, q)
            if q > self.max_priority:
                self.max_priority = q


def _build_trees(sum_leaves: np.ndarray, min_leaves: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Full sum- and min-trees (length 2L, root at 1) over power-of-two leaf arrays."""
    size = len(sum_leaves)
    sums = np.zeros(2 * size)
    mins = np.full(2 * size, np.inf)
    sums[size:], mins[size:] = sum_leaves, min_leaves
    lo = size
    while lo > 1:
        hi, lo = lo, lo // 2
        sums[lo:hi] = sums[2 * lo:2 * hi:2] + sums[2 * lo + 1:2 * hi:2]
        mins[lo:hi] = np.minimum(mins[2 * lo:2 * hi:2], mins[2 * lo + 1:2 * hi:2])
    return sums, mins


class NumpyPER(NumpyReplay):
    """Numpy columns + vectorised sum-/min-trees: the fastest plain-numpy PER we can write.

    Trees are float64 arrays of ``2 * L`` entries (root at 1, leaf ``i`` at ``L + i``).
    Sampling is stratified (``B`` equal segments of the total) and the whole batch
    descends one level per numpy step; an update writes the leaves and then recomputes
    the touched parents level by level, for both trees at once (the top levels, where
    the touched nodes are dense, whole).
    """

    def __init__(self, capacity: int, spec: Spec, alpha: float = 0.6, beta: float = 0.4,
                 eps: float = 1e-6, seed: Optional[int] = None) -> None:
        super().__init__(capacity, spec, seed)
        self.alpha, self.beta, self.eps = alpha, beta, eps
        self.leaves = tree_size(capacity)
        self.depth = self.leaves.bit_length() - 1
        self.sum_tree = np.zeros(2 * self.leaves)
        self.min_tree = np.full(2 * self.leaves, np.inf)
        self.max_priority = 1.0  # largest stored (p + eps)^alpha

    # -- trees ---------------------------------------------------------------------------

    def _set_leaves(self, slots: np.ndarray, values: np.ndarray) -> None:
        """Writes leaf values (a repeated slot keeps its last value) and fixes the ancestors.

        Low levels recompute only the touched parents (repeats are harmless: each writes
        the same sum); a level with at most ~4x as many nodes as updates is recomputed
        whole with slices, which is cheaper than gathering there.
        """
        idx = slots + self.leaves
        s, m = self.sum_tree, self.min_tree
        s[idx] = values
        m[idx] = values
        dense = 4 * len(idx)
        level = self.depth
        while level > 0 and (1 << (level - 1)) > dense:
            level -= 1
            idx = idx >> 1
            left = idx << 1
            right = left | 1
            s[idx] = s[left] + s[right]
            m[idx] = np.minimum(m[left], m[right])
        while level > 0:
            level -= 1
            lo, hi = 1 << level, 2 << level
            s[lo:hi] = s[2 * lo:2 * hi:2] + s[2 * lo + 1:2 * hi:2]
            m[lo:hi] = np.minimum(m[2 * lo:2 * hi:2], m[2 * lo + 1:2 * hi:2])

    def find_prefix(self, u: np.ndarray) -> np.ndarray:
        """Slots whose prefix-sum intervals hold the values ``u`` (all descend together)."""
        s = self.sum_tree
        u = np.array(u, dtype=np.float64)  # a copy: consumed below
        idx = np.ones(len(u), dtype=np.int64)
        for _ in range(self.depth):
            idx <<= 1
            left = s[idx]
            go_right = u >= left
            np.subtract(u, left, out=u, where=go_right)
            idx += go_right
        idx -= self.leaves
        np.minimum(idx, self.size - 1, out=idx)  # float round-off past the last item
        return idx

    # -- buffer --------------------------------------------------------------------------

    def add(self, *item: Any) -> None:
        """Stores one item (spec order) with the current maximum priority."""
        slot = self.ptr
        super().add(*item)
        self._set_leaves(np.array([slot]), np.array([self.max_priority]))

    def extend(self, *columns: Any) -> None:
        """Stores a batch with slice assignment; every new item gets the maximum priority."""
        slots = self._write(columns)
        self._set_leaves(slots, np.full(len(slots), self.max_priority))

    def sample(  # type: ignore[override]
        self, batch_size: int, beta: Optional[float] = None
    ) -> Dict[str, Any]:
        """Stratified proportional sampling; fields as tensors + indices + IS weights."""
        beta = self.beta if beta is None else beta
        total = self.sum_tree[1]
        u = (np.arange(batch_size) + self.rng.random(batch_size)) * (total / batch_size)
        idx = self.find_prefix(u)
        probs = self.sum_tree[idx + self.leaves] / total
        n = self.size
        weights = (probs * n) ** (-beta)
        weights /= (self.min_tree[1] / total * n) ** (-beta)
        batch: Dict[str, Any] = {name: torch.from_numpy(col[idx])
                                 for name, col in zip(self.names, self.columns)}
        batch["indices"] = idx
        batch["weights"] = torch.from_numpy(weights.astype(np.float32))
        return batch

    def update_priorities(self, indices: Any, priorities: Any) -> None:
        """Sets ``(p + eps)^alpha`` for the given slots in one batched tree update."""
        slots = np.asarray(indices, dtype=np.int64)
        q = (np.asarray(priorities, dtype=np.float64) + self.eps) ** self.alpha
        self._set_leaves(slots, q)
        if len(q):
            self.max_priority = max(self.max_priority, float(q.max()))

    def load(self, *columns: Any) -> None:
        """Benchmark fill: ``extend`` into an empty buffer with one bottom-up tree build."""
        if self.size:
            raise ValueError("load() fills an empty buffer")
        self._write(columns)
        leaves = np.zeros(self.leaves)
        leaves[:self.size] = self.max_priority
        mins = np.where(np.arange(self.leaves) < self.size, leaves, np.inf)
        self.sum_tree, self.min_tree = _build_trees(leaves, mins)
