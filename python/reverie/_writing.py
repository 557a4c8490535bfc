"""The Python side of a buffer's writes: the calls its C write functions hand back while no
core is bound to them (before the first write fixes the spec, with a caller's admission
predicate, or after close), and a sample waiting for the first write. Bound writes never
come here."""

from __future__ import annotations

from typing import Any, Dict, Mapping, Tuple

import numpy as np
import torch

from . import _core
from ._spec import infer_field
from ._table import Table
from ._values import to_numpy

# The buffer is typed structurally (Any): naming ReplayBuffer here, even for type checking
# only, would make _buffer -> _writing -> _buffer a circle of the layers (tests/test_layers.py).


def unbound_write(buf: Any, args: Tuple[Any, ...], fields: Dict[str, Any],
                  batched: bool) -> int:
    if args:
        name = "extend" if batched else "add"
        raise TypeError(f"{name}() takes fields as keyword arguments only, e.g. "
                        f"{name}(obs=o, reward=r)")
    buf._check_open()
    if buf._table is None:
        with buf._first_write_lock:
            if buf._table is None:
                return _first_write(buf, fields, batched)
    if buf._admit_fn is not None:
        return _write_admitted(buf, fields, batched)
    # Another thread's first write built the core meanwhile: an ordinary write.
    return int((buf.__dict__["extend"] if batched else buf.__dict__["add"])(**fields))


def await_first_item(buf: Any, batch_size: int) -> Table:
    """sample() before the spec is known: an error, or with a rate limiter that may wait,
    a wait for another thread's first add (the limiter then waits for the rest)."""
    buf._check_open()
    limiter = buf._limiter
    if limiter is None or limiter.timeout == 0:
        raise ValueError(f"cannot sample {batch_size} items: the buffer is empty (add items first)")
    timeout = limiter.timeout
    waited = 0.0
    while not buf._built.wait(0.05):  # in slices: Ctrl-C and close() are noticed
        buf._check_open()
        waited += 0.05
        if timeout is not None and waited >= timeout:
            raise TimeoutError(
                f"sample({batch_size}) waited {timeout} s (the rate limiter's timeout) and "
                f"no item was added: sampling starts once {limiter.min_size_to_sample} items "
                "are inserted (min_size_to_sample), and 0 are so far")
    assert buf._table is not None
    return buf._table


def _write_admitted(buf: Any, fields: Dict[str, Any], batched: bool) -> int:
    """A write through the caller's predicate: it sees the whole batch at once (add: a
    batch of one), and the core stores the rows its mask keeps."""
    if not batched:
        fields = {k: _one(v) for k, v in fields.items()}
    verdict = buf._admit_fn(dict(fields))  # type: ignore[misc]
    mask = np.asarray(to_numpy(verdict), dtype=bool).reshape(-1)
    if not batched and mask.size != 1:
        raise ValueError(f"the admission predicate returned {mask.size} values for the one "
                         "item of add(); expected one bool")
    return int(buf._core.extend_masked(mask, **fields))


def _first_write(buf: Any, fields: Mapping[str, Any], batched: bool) -> int:
    """Infers the spec from the first add/extend; if that write fails, the buffer stays
    unbuilt (the spec is not fixed by a rejected call)."""
    if not fields:
        raise ValueError("add()/extend() need at least one field, e.g. add(obs=..., reward=...)")
    lead = (buf._view.leading_axes(fields) if buf._view is not None else 1) if batched else 0
    buf._build({name: infer_field(name, v, lead) for name, v in fields.items()})
    try:
        if buf._admit_fn is not None:
            return _write_admitted(buf, dict(fields), batched)
        return buf.extend(**fields) if batched else buf.add(**fields)
    except BaseException:
        _core.bind_writes(buf._writes, None)  # back to inferring on the next write
        buf._table = buf._core = None
        buf._built.clear()
        raise


def _one(value: Any) -> Any:
    """One item as a batch of one (for a callable-admitted add)."""
    if isinstance(value, torch.Tensor):
        return value.unsqueeze(0)
    return np.asarray(value)[None]
