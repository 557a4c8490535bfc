"""The Python side of one core table (``reverie._core.Table``): built from a configuration,
it turns the core's arrays into tensors and exposes the table's state (its named arrays and
scalars) the same way for every kind of table. The façade classes (``_buffer.py``,
``_episodes.py``) hold one; persistence (``_state.py``, ``_checkpoint.py``, ``_export.py``)
works on it without asking which façade it serves.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence

import numpy as np
import torch

from . import _core
from ._batch import Batch
from ._config import parse, spec_of
from ._spec import Field

META_FIELDS = ("inserted", "version", "times_sampled", "last_sampled")


class StateArray(NamedTuple):
    """One persisted array of a table (part.h): a view of the table's memory."""

    name: str            # "column:<field>", "table.stamps", "priority.leaves", ...
    dtype: str           # reverie / numpy dtype name ("bfloat16" columns: int16 bits in `data`)
    shape: tuple
    per_slot: bool       # one entry per slot (exports take the stored items' entries)
    data: np.ndarray     # the view (bfloat16 as uint16)


class Table:
    """A core table and its spec. Thread-safety: as the core's (table.h)."""

    def __init__(self, core: Any) -> None:
        self.core = core
        self.config: Dict[str, Any] = parse(core.config_json, "table")
        self.spec: Dict[str, Field] = spec_of(self.config)
        self.names: List[str] = list(self.spec)
        self.out_shapes = [(f.shape, f.torch_dtype) for f in self.spec.values()]
        self.bf16 = [i for i, f in enumerate(self.spec.values()) if f.dtype == "bfloat16"]
        self.meta = bool(self.config.get("metadata"))
        self.capacity = int(self.config["capacity"])
        self.partitioned = self.config.get("partitions") is not None
        self._columns: Optional[Dict[str, torch.Tensor]] = None

    @classmethod
    def create(cls, config: Mapping[str, Any], storage: str = "memory", name: str = "") -> "Table":
        """A new table (or, for ``storage="file"``, the table in that file when it exists)."""
        if config.get("partitions") is not None:
            return cls(_core.PartitionedTable(dict(config), storage, name))
        return cls(_core.Table(dict(config), storage, name))

    @staticmethod
    def stored_config(storage: str, name: str) -> Dict[str, Any]:
        """The configuration of an existing shared segment (``"attach_shared"``) or table file
        (``"file"``)."""
        if _core.PartitionedTable.holds(storage, name):
            return parse(_core.PartitionedTable.stored_config(storage, name), name)
        return parse(_core.Table.stored_config(storage, name), name)

    # ---- reading ------------------------------------------------------------------------

    def tensors(self, arrays: Sequence[np.ndarray], names: Sequence[str]) -> Dict[str, torch.Tensor]:
        """{name: tensor} of the core's arrays (bfloat16 fields from their raw bits)."""
        out = dict(zip(names, map(torch.from_numpy, arrays)))
        if self.bf16:
            for name in names:
                base = name if name in self.spec else name[5:]  # next_<obs>
                if base in self.spec and self.spec[base].dtype == "bfloat16":
                    out[name] = out[name].view(torch.bfloat16)
        return out

    @staticmethod
    def meta_tensors(meta: Optional[Dict[str, np.ndarray]]) -> Optional[Dict[str, torch.Tensor]]:
        if meta is None:
            return None
        return {name: torch.from_numpy(meta[name]) for name in META_FIELDS}

    def sample(self, batch_size: int, out: Optional[List[torch.Tensor]] = None,
               mixture: Optional[List[float]] = None) -> Batch:
        core = self.core
        addresses = None if out is None else [t.data_ptr() for t in out]
        partition = None
        if self.partitioned:
            arrays, keys, weights, meta, partition = core.sample(batch_size, addresses, self.meta, mixture)
        else:
            arrays, keys, weights, meta = core.sample(batch_size, addresses, self.meta)
        fields: Any = self.tensors(arrays, self.names) if out is None else zip(self.names, out)
        return Batch(fields, torch.from_numpy(keys),
                     None if weights is None else torch.from_numpy(weights),
                     self.meta_tensors(meta), None if partition is None else torch.from_numpy(partition))

    def check_out(self, out: Mapping[str, torch.Tensor], batch_size: int) -> List[torch.Tensor]:
        """The ``out=`` tensors of a sample, in field order, checked against the spec."""
        table = self
        if set(out) != set(table.names):
            raise ValueError(f"out must have exactly the fields {table.names}, got {list(out)}")
        tensors = []
        for name, (shape, dt) in zip(table.names, table.out_shapes):
            t = out[name]
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"out['{name}'] must be a tensor, got {type(t).__name__}")
            want = (batch_size, *shape)
            if t.dtype != dt:
                raise TypeError(f"out['{name}']: expected dtype {dt}, got {t.dtype}")
            if tuple(t.shape) != want:
                raise ValueError(f"out['{name}']: expected shape {want}, got {tuple(t.shape)}")
            if t.device.type != "cpu" or not t.is_contiguous():
                raise ValueError(f"out['{name}'] must be a contiguous CPU tensor")
            tensors.append(t)
        return tensors

    def get(self, keys: np.ndarray) -> Batch:
        got = self.core.get(keys, self.meta)
        arrays, stored, meta = got[:3]
        partition = torch.from_numpy(got[3]) if self.partitioned else None
        return Batch(self.tensors(arrays, self.names), torch.from_numpy(stored), None,
                     self.meta_tensors(meta), partition)

    def columns(self) -> Dict[str, torch.Tensor]:
        """Zero-copy views {name: tensor [capacity, *shape]} of the storage."""
        if self.partitioned:
            raise ValueError("a partitioned buffer has no single storage to view: each partition "
                             "is a table of its own (read items with get(keys))")
        if self._columns is None:
            cols = {}
            for i, (name, field) in enumerate(self.spec.items()):
                view = torch.from_numpy(self.core.column(i))
                if field.dtype == "bfloat16":
                    view = view.view(torch.bfloat16)
                cols[name] = view
            self._columns = cols
        return dict(self._columns)

    def priorities(self) -> torch.Tensor:
        """The stored q of every slot, from a consistent copy of the tree's leaves."""
        (leaves,), scalars = self.core.snapshot(["priority.leaves"])
        units = np.frombuffer(leaves, dtype=np.uint64).astype(np.float64)
        return torch.from_numpy(np.ldexp(units, -int(scalars["priority.scale_exp"])))

    # ---- state (part.h) -------------------------------------------------------------------

    def state_arrays(self) -> List[StateArray]:
        return [StateArray(name, dtype, tuple(shape), bool(per_slot), view)
                for name, dtype, shape, per_slot, view in self.core.state_arrays()]

    def state_view(self, name: str) -> np.ndarray:
        """The view of one state array (KeyError naming the arrays when there is none)."""
        for a in self.state_arrays():
            if a.name == name:
                return a.data
        raise KeyError(f"no state array {name!r}; arrays: {[a.name for a in self.state_arrays()]}")

    def scalars(self) -> Dict[str, Any]:
        return dict(self.core.scalars())

    def restore(self, scalars: Mapping[str, Any]) -> None:
        """After every state array was overwritten: checks and rebuilds (ValueError)."""
        self.core.restore(dict(scalars))

    def stored_keys(self) -> np.ndarray:
        return np.asarray(self.core.stored_keys())

    def slots_of(self, keys: Any) -> np.ndarray:
        return np.asarray(self.core.slots_of(np.asarray(keys, dtype=np.int64).reshape(-1)))
