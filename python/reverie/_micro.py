"""Balanced micro-batches of variable-length sequences (``rv.micro_batches``): the split of a
batch over devices or gradient-accumulation steps that RL trainers for language models make
before every update, by the cost a*L + L^2 of each sequence, keeping a prompt's group whole
when asked. The algorithm (Karmarkar-Karp largest differencing) is the core's
(cpp/include/reverie/micro_batch.h)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional

import numpy as np
import torch

from . import _core
from ._values import as_int


@dataclass(frozen=True)
class MicroBatches:
    """A split of sequences 0 .. n-1 into micro-batches.

    Attributes:
        indices: one int64 tensor per micro-batch, the sequences it holds (ascending).
        restore: int64 [n]: ``torch.cat(outputs)[restore]`` puts per-sequence outputs
            computed micro-batch by micro-batch (in ``indices`` order) back in the input's
            order.
        costs: float64 [k], each micro-batch's sum of a*L + L^2.
        tokens: int64 [k], each micro-batch's tokens.
    """

    indices: List[torch.Tensor]
    restore: torch.Tensor
    costs: torch.Tensor
    tokens: torch.Tensor

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def imbalance(self) -> float:
        """max / mean cost over the micro-batches (1.0: perfectly even)."""
        mean = float(self.costs.mean()) if len(self.costs) else 0.0
        return float(self.costs.max()) / mean if mean > 0 else 1.0


def _ints(name: str, values: Any) -> np.ndarray:
    arr = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(arr.shape)}")
    if arr.size and arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be integers, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def micro_batches(lengths: Any, num_micro_batches: Optional[int] = None, *, max_tokens: Optional[int] = None,
                  groups: Any = None, a: float = 4096.0) -> MicroBatches:
    """Splits sequences of the given lengths into micro-batches of balanced cost.

    Args:
        lengths: tokens of each sequence (1-D ints, e.g. ``batch.lengths``).
        num_micro_batches: how many micro-batches (k). Leave it out to take as few as the
            token budget allows.
        max_tokens: a token budget per micro-batch. A sequence (or group) longer than the
            budget gets a micro-batch of its own, the only kind allowed over it; with a
            given count, a split that cannot keep the budget is a ValueError naming the
            smallest count that can.
        groups: group ids (1-D ints, e.g. the prompt of each response): the sequences of one
            id stay in one micro-batch.
        a: the weight of the linear term of a sequence's cost a*L + L^2; about 6 x the
            model's hidden size makes it the ratio of the linear layers' FLOPs to
            attention's.

    Returns:
        A :class:`MicroBatches`: ``indices`` per micro-batch, ``restore``, ``costs``,
        ``tokens``, and ``imbalance`` (max / mean cost).

    The split is Karmarkar-Karp's largest differencing method for k subsets, by cost, ties
    to the earlier sequence: a function of the input alone.

    >>> mb = rv.micro_batches(batch.lengths, 4, groups=batch["group"])
    >>> outs = [model(pack(batch, idx)) for idx in mb.indices]
    >>> per_seq = torch.cat(outs)[mb.restore]
    """
    arr = _ints("lengths", lengths)
    g = None if groups is None else _ints("groups", groups)
    if g is not None and len(g) != len(arr):
        raise ValueError(f"got {len(arr)} lengths but {len(g)} group ids")
    k = 0 if num_micro_batches is None else as_int("num_micro_batches", num_micro_batches)
    if num_micro_batches is not None and k < 1:
        raise ValueError(f"num_micro_batches must be >= 1, got {k}")
    budget = 0 if max_tokens is None else as_int("max_tokens", max_tokens)
    if max_tokens is not None and budget < 1:
        raise ValueError(f"max_tokens must be >= 1, got {budget}")
    if isinstance(a, bool) or not isinstance(a, (int, float)):
        raise TypeError(f"a must be a number, got {type(a).__name__}")
    order, starts, costs, tokens = _core.split_micro_batches(arr, g, k, budget, float(a))
    order_t = torch.from_numpy(np.asarray(order))
    indices = [order_t[int(starts[b]):int(starts[b + 1])] for b in range(len(starts) - 1)]
    restore = torch.empty_like(order_t)
    restore[order_t] = torch.arange(len(order_t), dtype=torch.int64)
    return MicroBatches(indices, restore, torch.from_numpy(np.asarray(costs)), torch.from_numpy(np.asarray(tokens)))
