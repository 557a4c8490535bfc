"""Batch: what sample() and get() return."""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch


class Batch(dict):
    """A batch: a dict of field name -> tensor [B, *shape], with attribute access.

    Attributes:
        indices: int64 tensor [B], the items' keys (for ``update_priorities`` and ``get``).
            Keys are opaque: each packs the item's slot and that slot's generation.
        weights: float32 tensor [B] of importance weights (prioritized sampling), else None.
        meta: with ``metadata=True``, a dict of int64 tensors [B]: ``inserted`` (the item's
            insertion number: items stored before it, ever), ``version`` (``buf.version``
            when it was written), ``times_sampled`` and ``last_sampled`` (how often it had
            been sampled, and the sample call that last drew it, -1 for none: as this draw
            found it; ``get`` reports them as they are now). Else None.
        partition: for a PartitionedBuffer, an int64 tensor [B] of each item's partition (its
            partition key value). Else None.
    """

    __slots__ = ("indices", "weights", "meta", "partition")

    def __init__(self, fields: Any, indices: torch.Tensor, weights: Optional[torch.Tensor],
                 meta: Optional[Dict[str, torch.Tensor]] = None,
                 partition: Optional[torch.Tensor] = None) -> None:
        super().__init__(fields)
        self.indices = indices
        self.weights = weights
        self.meta = meta
        self.partition = partition

    def __getattr__(self, name: str) -> torch.Tensor:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(
                f"batch has no field '{name}'; fields: {', '.join(self)}"
            ) from None

    def to(self, *args: Any, **kwargs: Any) -> "Batch":
        """Moves every tensor (e.g. ``batch.to("cuda", non_blocking=True)``); indices and
        metadata stay where they are."""
        moved = {k: v.to(*args, **kwargs) for k, v in self.items()}
        weights = None if self.weights is None else self.weights.to(*args, **kwargs)
        return Batch(moved, self.indices, weights, self.meta, self.partition)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}: {tuple(v.shape)} {v.dtype}" for k, v in self.items())
        extra = ", meta=yes" if self.meta is not None else ""
        return f"Batch({fields}, weights={'yes' if self.weights is not None else 'no'}{extra})"
