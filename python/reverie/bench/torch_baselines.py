"""The torch-native replay the GPU section compares reverie's device buffer with.

Written the way people write them on one device, with nothing that waits for it:

- :class:`TorchPER`: proportional prioritized replay on a priority tensor, sampled with
  ``torch.cumsum`` + ``torch.searchsorted`` (stratified) or ``torch.multinomial``.
- :class:`TorchGather`: uniform sampling from a device column, ``randint`` + ``index_select``.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import numpy as np
import torch

from . import baselines as bl
from .workloads import ALPHA, BETA, EPS


def torch_dtype(dt: Any) -> torch.dtype:
    """The torch dtype of a numpy dtype (``np.float32`` -> ``torch.float32``)."""
    return torch.from_numpy(np.zeros(0, dtype=dt)).dtype


class TorchPER:
    """A prioritized replay buffer in plain torch on one device, as people write it.

    Columns are ``[capacity, *shape]`` tensors and the priorities ``(p + eps)^alpha`` one
    tensor of ``capacity`` elements (``prio_dtype``). ``draw="searchsorted"``: the batch is
    stratified, one uniform point per segment of the total, found by ``torch.searchsorted``
    in the ``torch.cumsum`` of the priorities; ``draw="multinomial"``:
    ``torch.multinomial(priorities, B, replacement=True)``. Weights are
    ``(N * P)^-beta / max`` over the batch. New items get the largest stored priority. Nothing
    in sample -> update waits for the device.
    """

    DRAWS = ("searchsorted", "multinomial")

    def __init__(self, capacity: int, spec: bl.Spec,
                 device: torch.device, *, prio_dtype: torch.dtype = torch.float32,
                 draw: str = "searchsorted", alpha: float = ALPHA, beta: float = BETA,
                 eps: float = EPS, seed: int = 0) -> None:
        if draw not in self.DRAWS:
            raise ValueError(f"draw must be one of {self.DRAWS}, got {draw!r}")
        if prio_dtype not in (torch.float32, torch.float64):
            raise ValueError(f"prio_dtype must be torch.float32 or torch.float64, got {prio_dtype}")
        if capacity <= 0:
            raise ValueError(f"capacity must be > 0, got {capacity}")
        self.capacity, self.device, self.draw = capacity, device, draw
        self.alpha, self.beta, self.eps = alpha, beta, eps
        self.columns = {name: torch.zeros((capacity, *shape), dtype=torch_dtype(dt), device=device)
                        for name, (dt, shape) in spec.items()}
        self.prio = torch.zeros(capacity, dtype=prio_dtype, device=device)
        self.gen = torch.Generator(device=device)
        self.gen.manual_seed(seed)
        self.size = 0
        self.pos = 0
        self._offsets: Dict[int, torch.Tensor] = {}

    def extend(self, **fields: torch.Tensor) -> None:
        """Writes a batch of items (tensors on any device) into the ring."""
        if set(fields) != set(self.columns):
            raise ValueError(f"fields must be exactly {list(self.columns)}, got {list(fields)}")
        n = len(next(iter(fields.values())))
        skip = max(0, n - self.capacity)  # of more than capacity items the last ones stay
        slots = (self.pos + skip + torch.arange(n - skip, device=self.device)) % self.capacity
        for name, col in self.columns.items():
            col.index_copy_(0, slots, fields[name][skip:].to(self.device))
        top: Any = self.prio[:self.size].max() if self.size else 1.0
        self.prio[slots] = top
        self.pos = (self.pos + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, n: int) -> Tuple[Dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """(fields, indices, float32 weights), all on the device."""
        if self.size == 0:
            raise ValueError(f"cannot sample {n} items: the buffer is empty")
        prio = self.prio if self.size == self.capacity else self.prio[:self.size]
        if self.draw == "searchsorted":
            cdf = torch.cumsum(prio, 0)
            total = cdf[-1]
            offsets = self._offsets.get(n)
            if offsets is None:
                offsets = self._offsets[n] = torch.arange(n, dtype=prio.dtype, device=self.device)
            points = (offsets + torch.rand(n, generator=self.gen, dtype=prio.dtype,
                                           device=self.device)) * (total / n)
            idx = torch.searchsorted(cdf, points, right=True).clamp_(max=self.size - 1)
        else:
            total = prio.sum()
            idx = torch.multinomial(prio, n, replacement=True, generator=self.gen)
        weights = (prio.index_select(0, idx) / total * self.size).pow_(-self.beta)
        weights = (weights / weights.max()).float()
        return {name: col.index_select(0, idx) for name, col in self.columns.items()}, idx, weights

    def update(self, idx: torch.Tensor, priorities: torch.Tensor) -> None:
        self.prio[idx] = (priorities.to(self.prio.dtype) + self.eps) ** self.alpha


class TorchGather:
    """Uniform sampling from one device column in torch: ``randint`` + ``index_select``."""

    def __init__(self, column: torch.Tensor, seed: int = 0) -> None:
        self.column = column
        self.gen = torch.Generator(device=column.device)
        self.gen.manual_seed(seed)

    def sample(self, n: int) -> Tuple[Dict[str, torch.Tensor], torch.Tensor, None]:
        idx = torch.randint(len(self.column), (n,), generator=self.gen, device=self.column.device)
        return {"obs": self.column.index_select(0, idx)}, idx, None
