"""state_dict() and load_state_dict(): a table's state as tensors, the same for every table.

A state dict holds the table's configuration, its scalars and a copy of every one of its
state arrays (``_table.StateArray``: the columns, the slot stamps and each part's arrays,
e.g. priority leaves, episode flags, reservoir and top-k bookkeeping, item metadata). Loading
builds a table of that configuration, writes the arrays into it, and lets the core check and
rebuild everything derived (trees, heaps); only then is it swapped in.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional

import numpy as np
import torch

from ._config import CONFIG_VERSION
from ._table import StateArray, Table

FORMAT = "reverie-state"

# numpy dtypes with no torch counterpart travel as the signed type of their width.
_AS_SIGNED = {"uint64": np.int64, "uint32": np.int32, "uint16": np.int16}


def _to_tensor(a: StateArray) -> torch.Tensor:
    data = np.array(a.data, copy=True)
    if a.dtype == "bfloat16":
        return torch.from_numpy(data.view(np.int16)).view(torch.bfloat16)
    if a.dtype in _AS_SIGNED:
        data = data.view(_AS_SIGNED[a.dtype])
    return torch.from_numpy(data)


def _into(a: StateArray, value: Any) -> None:
    """Copies a state dict's tensor into the table's array `a` (ValueError if it does not fit)."""
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"state array '{a.name}' must be a tensor, got {type(value).__name__}")
    t = value.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    got = t.numpy()
    want = np.dtype("uint16" if a.dtype == "bfloat16" else a.dtype)
    if got.dtype.itemsize != want.itemsize or got.dtype.kind not in ("iub" if want.kind in "iub" else want.kind):
        raise ValueError(f"state array '{a.name}' must be {a.dtype}, got {value.dtype}")
    if tuple(got.shape) != tuple(a.shape):
        raise ValueError(f"state array '{a.name}' must have shape {tuple(a.shape)}, got "
                         f"{tuple(got.shape)}")
    np.copyto(a.data.reshape(-1).view(np.uint8), got.reshape(-1).view(np.uint8))


def state_dict(table: Optional[Table], config: Mapping[str, Any]) -> Dict[str, Any]:
    """The state of `table` (None: a buffer not built yet, whose configuration is `config`)."""
    state: Dict[str, Any] = {"format": FORMAT, "version": CONFIG_VERSION, "config": dict(config)}
    if table is None:
        return state
    state["scalars"] = table.scalars()
    state["arrays"] = {a.name: _to_tensor(a) for a in table.state_arrays()}
    return state


def check_format(state: Any) -> None:
    if not isinstance(state, Mapping) or state.get("format") != FORMAT:
        raise ValueError("not a reverie state_dict (no 'format': 'reverie-state')")
    if state.get("version") != CONFIG_VERSION:
        raise ValueError(f"a reverie state_dict of version {state.get('version')}; this reverie "
                         f"reads version {CONFIG_VERSION}")
    if not isinstance(state.get("config"), Mapping):
        raise ValueError("malformed reverie state_dict: no configuration")


def load(state: Mapping[str, Any], build: Callable[[Mapping[str, Any]], Table],
         before_restore: Callable[[Table], None]) -> Table:
    """A new table holding `state`: built by `build(config)`, filled, `before_restore(table)`
    (e.g. configuring a rate limiter), then restored. Raises ValueError (the new table is
    dropped) when anything does not fit."""
    arrays = state.get("arrays")
    scalars = state.get("scalars")
    if not isinstance(arrays, Mapping) or not isinstance(scalars, Mapping):
        raise ValueError("malformed reverie state_dict: no arrays or scalars")
    table = build(state["config"])
    wanted = table.state_arrays()
    names = [a.name for a in wanted]
    if set(arrays) != set(names):
        missing, extra = sorted(set(names) - set(arrays)), sorted(set(arrays) - set(names))
        raise ValueError(f"state arrays do not match its configuration: missing {missing}, "
                         f"unexpected {extra}")
    for a in wanted:
        _into(a, arrays[a.name])
    before_restore(table)
    table.restore(scalars)
    return table
