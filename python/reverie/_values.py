"""Checks and conversions of the values callers pass (shared by the façade classes)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def as_int(name: str, value: Any) -> int:
    """`value` as an int (numpy ints too); TypeError naming `name` for anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    return int(value)


def to_numpy(value: Any) -> np.ndarray:
    """A numpy view (CPU tensors, arrays) or conversion (other devices, sequences)."""
    if isinstance(value, torch.Tensor):
        try:
            return value.numpy()  # the common case: a CPU tensor, no copy
        except (RuntimeError, TypeError):  # requires grad, another device, or bfloat16
            value = value.detach().cpu()
            return (value.float() if value.dtype == torch.bfloat16 else value).numpy()
    arr = np.asarray(value)
    if arr.size == 0 and arr.dtype.kind == "f":
        arr = arr.astype(np.int64)  # an empty list: no dtype to judge
    return arr
