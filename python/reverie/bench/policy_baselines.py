"""Admission and retention written the way people write them: two reservoirs and a top-k.

The baselines of issue 13's policy rows ("reservoir admission of 1M W1 items offered in
batches of 256 into capacity 100k", "top-k retention: 1M scored items into capacity 100k"):

- :class:`NumpyReservoir`: Algorithm R (Vitter, "Random sampling with a reservoir", ACM
  TOMS 11(1), 1985) with numpy rows and a Python loop, one random draw per offered item.
- :class:`AvalancheReservoir`: the update of Avalanche's ``ReservoirSamplingBuffer``
  (``avalanche/training/storage_policy.py``): a random key per item, new items concatenated
  with the held ones, sorted by key, the top ``capacity`` kept.
- :class:`HeapqTopK`: TorchRL's ``TensorDictMaxValueWriter`` pattern
  (``torchrl/data/replay_buffers/writers.py``): a ``heapq`` min-heap of (score, slot) over a
  fixed storage, a batch processed item by item.

The conventions of ``baselines.py``: a spec ``{name: (numpy dtype, per-item shape)}``, and
batches column by column in spec order, ``extend(obs_batch, action_batch, ...)``, which
returns how many of the offered items were stored. ``len(buf)`` is the number of items held
and ``held()`` their rows, ``{name: array [len(buf), *shape]}`` (views of the storage).

>>> res = NumpyReservoir(2, {"id": (np.int64, ())}, seed=0)
>>> res.extend(np.arange(2))
2
>>> sorted(res.held()["id"].tolist())
[0, 1]
"""

from __future__ import annotations

import heapq
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .baselines import Spec, normalize_spec

__all__ = ["AvalancheReservoir", "HeapqTopK", "NumpyReservoir"]


class _Rows:
    """Fixed numpy columns of ``capacity`` rows, and the checks every baseline here makes."""

    def __init__(self, capacity: int, spec: Spec) -> None:
        if capacity <= 0:
            raise ValueError(f"capacity must be > 0, got {capacity}")
        self.capacity = capacity
        self.spec = normalize_spec(spec)
        self.names = list(self.spec)
        self.columns = [np.zeros((capacity, *shape), dtype=dt) for dt, shape in self.spec.values()]
        self.offered = 0  # items offered so far (all batches)

    def _batch(self, columns: Sequence[Any]) -> Tuple[List[np.ndarray], int]:
        """The batch's columns as arrays, and its length.

        Raises:
            ValueError: not one column per field, or columns of different lengths.
        """
        if len(columns) != len(self.names):
            raise ValueError(f"extend takes one column per field {self.names}, got "
                             f"{len(columns)}")
        cols = [np.asarray(c) for c in columns]
        n = len(cols[0])
        if any(len(c) != n for c in cols):
            raise ValueError(f"columns of different lengths: {[len(c) for c in cols]}")
        return cols, n

    def held(self) -> Dict[str, np.ndarray]:
        """The rows held: ``{name: array [len(self), *shape]}`` (views of the storage)."""
        size = len(self)
        return {name: col[:size] for name, col in zip(self.names, self.columns)}

    def __len__(self) -> int:
        return min(self.offered, self.capacity)


class NumpyReservoir(_Rows):
    """Algorithm R the usual way: numpy rows, a Python loop, one draw per offered item.

    The first ``capacity`` (k) offers fill rows 0, 1, ..., k - 1. From then on the n-th offer
    (1-based) draws ``j = rng.integers(0, n)``, uniform over 0 .. n - 1, and replaces row j
    when j < k; otherwise it is dropped. After n offers every offered item is held with
    probability exactly k/n; the first item after the memory fills is kept with probability
    k/(k+1) (drawing over 0 .. n - 2 or 1 .. n instead is the off-by-one to avoid). A batch
    is iterated item by item in Python, each kept item's row written at once into the
    numpy columns, so a batch of offers equals the same offers one by one.

    Args:
        capacity: k, the rows held.
        spec: ``{name: (numpy dtype, per-item shape)}``.
        seed: seeds ``np.random.default_rng``.
    """

    def __init__(self, capacity: int, spec: Spec, seed: Optional[int] = None) -> None:
        super().__init__(capacity, spec)
        self.rng = np.random.default_rng(seed)

    def extend(self, *columns: Any) -> int:
        """Offers a batch (one array per field, spec order); returns how many were kept
        (an item a later one of the same batch replaced counts, as it would one by one)."""
        cols, size = self._batch(columns)
        k, rng, store = self.capacity, self.rng, self.columns
        n = self.offered
        kept = 0
        for i in range(size):
            n += 1
            if n <= k:
                row = n - 1
            else:
                row = int(rng.integers(0, n))
                if row >= k:
                    continue
            for dst, src in zip(store, cols):
                dst[row] = src[i]
            kept += 1
        self.offered = n
        return kept


class AvalancheReservoir(_Rows):
    """Reservoir sampling by random keys, as Avalanche's ``ReservoirSamplingBuffer`` updates.

    Every offered item gets a key, uniform in [0, 1), once. An update puts the new items in
    front of the held ones, sorts all of them by key (largest first) and keeps the first
    ``capacity``, with their keys (Avalanche's ``update_from_dataset``: ``torch.rand`` keys,
    ``cat`` of new and buffer, ``sort(descending=True)``, the top ``max_size``). The k
    largest of n independent keys are a uniform k-subset, so after n offers each offered
    item is held with probability k/n. A batch is one update; it is not equal to the same
    offers one by one (the keys differ), only equal in distribution.

    Avalanche's datasets are lazy views (its concat and subset build index maps); here the
    held rows stay materialised in numpy columns, sorted by key, so an update gathers the
    kept rows out of the concatenation. Keys are numpy float64 (Avalanche: float32), the
    sort stable (a tie keeps the new item in front).

    Args:
        capacity: k, the rows held.
        spec: ``{name: (numpy dtype, per-item shape)}``.
        seed: seeds ``np.random.default_rng`` (one ``random(n)`` per batch of n).
    """

    def __init__(self, capacity: int, spec: Spec, seed: Optional[int] = None) -> None:
        super().__init__(capacity, spec)
        # grows to capacity as items come
        self.columns = [np.zeros((0, *shape), dtype=dt) for dt, shape in self.spec.values()]
        self.keys = np.empty(0, dtype=np.float64)  # one per held row, largest first
        self.rng = np.random.default_rng(seed)

    def extend(self, *columns: Any) -> int:
        """Offers a batch (one array per field, spec order); returns how many of its items
        are held after the update."""
        cols, size = self._batch(columns)
        keys = np.concatenate([self.rng.random(size), self.keys])
        order = np.argsort(-keys, kind="stable")[:self.capacity]
        self.keys = keys[order]
        self.columns = [np.concatenate([new, old])[order] for new, old in zip(cols, self.columns)]
        self.offered += size
        return int(np.count_nonzero(order < size))


class HeapqTopK(_Rows):
    """Keeps the ``capacity`` best-scoring items: TorchRL's ``TensorDictMaxValueWriter`` pattern.

    A ``heapq`` min-heap of (score, slot) tuples over fixed storage. While not full, an item
    takes the next slot and its (score, slot) is pushed. When full, an item whose score is
    strictly greater than the heap's minimum takes that minimum's slot (TorchRL pops and
    pushes; ``heapq.heapreplace`` is the same in one step), else it is dropped. A batch is
    processed item by item in Python; the rows kept are then written at once, one index
    assignment per field (a slot taken twice in one batch keeps its last item), as TorchRL's
    ``extend`` sets its storage once.

    Ties, TorchRL's rule: an item whose score equals the minimum of a full buffer is dropped
    (the held item stays); among held items sharing the minimum score, the one in the lowest
    slot is replaced first (tuples compare the slot next). Scores must not be NaN.

    Args:
        capacity: k, the items held.
        spec: ``{name: (numpy dtype, per-item shape)}``.
        score: the field holding each item's score, a scalar per item.

    Raises:
        ValueError: ``score`` is not a field of the spec, or not a scalar field.
    """

    def __init__(self, capacity: int, spec: Spec, score: str = "score") -> None:
        super().__init__(capacity, spec)
        if score not in self.spec:
            raise ValueError(f"score field {score!r} is not in the spec {self.names}")
        if self.spec[score][1] != ():
            raise ValueError(f"score field {score!r} must be a scalar, its shape is "
                             f"{self.spec[score][1]}")
        self.score = score
        self._score_index = self.names.index(score)
        self.heap: List[Tuple[float, int]] = []

    def __len__(self) -> int:
        return len(self.heap)

    def extend(self, *columns: Any) -> int:
        """Offers a batch (one array per field, spec order); returns how many were admitted
        (an item a later one of the same batch replaced counts, as it would one by one)."""
        cols, _ = self._batch(columns)
        heap, k = self.heap, self.capacity
        place: Dict[int, int] = {}  # slot -> the batch item written there
        admitted = 0
        for i, s in enumerate(cols[self._score_index].tolist()):
            if len(heap) < k:
                slot = len(heap)
                heapq.heappush(heap, (s, slot))
            elif s > heap[0][0]:
                slot = heap[0][1]
                heapq.heapreplace(heap, (s, slot))
            else:
                continue
            place[slot] = i
            admitted += 1
        self.offered += len(cols[0])
        if place:
            slots = np.fromiter(place.keys(), dtype=np.int64, count=len(place))
            items = np.fromiter(place.values(), dtype=np.int64, count=len(place))
            for dst, src in zip(self.columns, cols):
                dst[slots] = src[items]
        return admitted
