"""Field specs: a name's dtype and per-item shape, and how they are inferred from values."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Tuple, Union

import numpy as np
import torch

# reverie's dtype names, each with its torch dtype. The C++ core knows the same names.
TORCH_DTYPES: dict[str, torch.dtype] = {
    "bool": torch.bool,
    "uint8": torch.uint8,
    "int8": torch.int8,
    "int16": torch.int16,
    "int32": torch.int32,
    "int64": torch.int64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}
_NAME_OF_TORCH = {v: k for k, v in TORCH_DTYPES.items()}

DTypeLike = Union[str, torch.dtype, np.dtype, type]


def dtype_name(dtype: DTypeLike) -> str:
    """Normalises a torch dtype, numpy dtype or name to reverie's dtype name.

    Raises:
        TypeError: the dtype is not one reverie stores.
    """
    if isinstance(dtype, torch.dtype):
        name = _NAME_OF_TORCH.get(dtype)
    elif isinstance(dtype, str) and dtype in TORCH_DTYPES:
        name = dtype
    else:
        try:
            name = np.dtype(dtype).name  # type: ignore[arg-type]
        except TypeError:
            name = None
        if name not in TORCH_DTYPES:
            name = None
    if name is None:
        raise TypeError(
            f"unsupported dtype {dtype!r}; supported: {', '.join(TORCH_DTYPES)}"
        )
    return name


@dataclass(frozen=True)
class Field:
    """One stored field: element dtype and per-item shape.

    Args:
        dtype: torch dtype, numpy dtype or name ("float32", "uint8", "bfloat16", ...).
        shape: shape of one item, () for a scalar. ``None`` as the first dimension makes the
            field ragged: a variable length per item (tokens, turns), kept in the byte-bounded
            arena of a ``TrajectoryBuffer`` (README "RL on language models").
        group: a ragged field's length group: fields of one group share their length per
            item (ids, logprobs, loss mask) and the buffer checks it. Default ``"tokens"``.
        pad: a ragged field's pad value in padded layouts (default 0).

    >>> Field(torch.uint8, (4, 84, 84))
    Field(dtype='uint8', shape=(4, 84, 84), group=None, pad=0)
    >>> Field(torch.int64, (None,), group="response")
    Field(dtype='int64', shape=(None,), group='response', pad=0)
    """

    dtype: str
    shape: Tuple[Any, ...] = ()
    group: Optional[str] = None
    pad: Union[int, float, bool] = 0

    def __init__(self, dtype: DTypeLike, shape: Any = (), *, group: Optional[str] = None,
                 pad: Union[int, float, bool] = 0) -> None:
        if isinstance(shape, int) or shape is None:
            shape = (shape,)
        try:
            dims = tuple(None if (i == 0 and d is None) else int(d) for i, d in enumerate(shape))
        except TypeError:
            raise TypeError(f"shape must be a tuple of ints (None first for a ragged field), got {shape!r}") from None
        if any(d is not None and d < 0 for d in dims):
            raise ValueError(f"shape dimensions must be >= 0, got {dims}")
        ragged = bool(dims) and dims[0] is None
        if not ragged and group is not None:
            raise ValueError(f"group={group!r} is for ragged fields (shape (None, ...)), got shape {dims}")
        if ragged and group is None:
            group = "tokens"
        if not isinstance(pad, (int, float)):
            raise TypeError(f"pad must be a number, got {type(pad).__name__}")
        object.__setattr__(self, "dtype", dtype_name(dtype))
        object.__setattr__(self, "shape", dims)
        object.__setattr__(self, "group", group)
        object.__setattr__(self, "pad", pad)

    @property
    def ragged(self) -> bool:
        """Whether the leading axis is variable per item (shape ``(None, *rest)``)."""
        return bool(self.shape) and self.shape[0] is None

    @property
    def torch_dtype(self) -> torch.dtype:
        return TORCH_DTYPES[self.dtype]

    def __str__(self) -> str:
        return f"{self.dtype}{list(self.shape)}"


SpecLike = Mapping[str, Union[Field, Tuple[Any, Any], DTypeLike]]


def normalize_spec(spec: SpecLike) -> dict[str, Field]:
    """Turns {name: Field | (dtype, shape) | dtype} into {name: Field}."""
    if not isinstance(spec, Mapping) or not spec:
        raise TypeError(f"spec must be a non-empty mapping name -> Field, got {spec!r}")
    out: dict[str, Field] = {}
    for name, field in spec.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"field names must be non-empty strings, got {name!r}")
        if isinstance(field, Field):
            out[name] = field
        elif isinstance(field, tuple) and len(field) == 2:
            out[name] = Field(*field)
        else:
            out[name] = Field(field)
    return out


def infer_field(name: str, value: Any, batched: Union[bool, int]) -> Field:
    """The Field a value implies: arrays and tensors keep their dtype, a Python float is
    float32, an int int64, a bool bool. With `batched` the leading axis is the batch (an int:
    that many leading axes, e.g. 2 for time x envs)."""
    if isinstance(value, torch.Tensor):
        dtype: str = dtype_name(value.dtype)
        shape = tuple(value.shape)
    elif isinstance(value, (np.ndarray, np.generic)):
        dtype, shape = dtype_name(value.dtype), tuple(value.shape)
    elif isinstance(value, bool):
        dtype, shape = "bool", ()
    elif isinstance(value, int):
        dtype, shape = "int64", ()
    elif isinstance(value, float):
        dtype, shape = "float32", ()
    elif isinstance(value, (list, tuple)):
        arr = np.asarray(value)
        kinds = {"b": "bool", "i": "int64", "u": "int64", "f": "float32"}
        if arr.dtype.kind not in kinds:
            raise TypeError(f"field '{name}': cannot store a list of {arr.dtype}")
        dtype, shape = kinds[arr.dtype.kind], tuple(arr.shape)
    else:
        raise TypeError(
            f"field '{name}': expected a tensor, numpy array or number, "
            f"got {type(value).__name__}"
        )
    lead = int(batched)
    if lead:
        if len(shape) < lead:
            raise ValueError(
                f"field '{name}': extend() needs {lead} leading batch ax{'is' if lead == 1 else 'es'}, "
                f"got shape {shape}"
            )
        shape = shape[lead:]
    return Field(dtype, shape)
