"""Export to and import from numpy ``.npz``: one array per field, the stored items oldest
first, readable without reverie.

A file written by ``to_npz`` also holds the items' keys (``__keys__``), the table's
configuration and scalars (``__reverie__``, JSON) and every other state array of the table
(``__state__:<name>``: per stored item for the per-slot arrays, e.g. priority leaves or row
flags, whole for the others), so ``from_npz(path)`` restores exactly the buffer that was
saved. Given another buffer or other constructor arguments, ``from_npz`` instead writes the
items into that buffer oldest first, carrying priorities and episode flags over where they
fit.

>>> to_npz(buf, "replay.npz")
>>> same = from_npz("replay.npz")
>>> small = from_npz("replay.npz", capacity=1000)   # the newest 1000 items
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional

import numpy as np

from ._config import buffer_class, spec_of
from ._npz_format import FORMAT, FORMAT_VERSION, KEYS, META, STATE, read_npz
from ._npz_import import import_items
from ._persistence import config_now
from ._table import Table

# ---- writing -------------------------------------------------------------------------------

def to_npz(buf: Any, path: "str | os.PathLike[str]", *, compressed: bool = False) -> None:
    """Writes every stored item of ``buf`` to a numpy ``.npz`` file, oldest first.

    The file holds one array ``[n, *shape]`` per field (bfloat16 fields as their int16 bits),
    ``__keys__`` (the items' keys, int64 [n]), ``__reverie__`` (JSON: the format version,
    the buffer's configuration and state scalars) and ``__state__:<name>`` for each other
    state array of the buffer (per item where the array has one entry per slot). ``np.load``
    reads it without reverie. The file is written to a temporary name in the same directory
    and renamed into place.

    Args:
        buf: a ReplayBuffer or EpisodeBuffer.
        path: the file to write (taken as given: no ``.npz`` is appended).
        compressed: zip-deflate the arrays (``np.savez_compressed``).
    """
    buf._check_open()
    bad = sorted(n for n in buf.spec if n.startswith("__"))
    if bad:
        raise ValueError(f"field names {bad} are reserved by the npz format (they start with '__')")
    table: Optional[Table] = buf._table
    arrays: Dict[str, np.ndarray] = {}
    meta: Dict[str, Any] = {"format": FORMAT, "version": FORMAT_VERSION, "config": config_now(buf),
                            "scalars": None, "per_slot": [], "whole": []}
    if table is not None:
        keys = table.stored_keys()
        slots = table.slots_of(keys)
        meta["scalars"] = table.scalars()
        arrays[KEYS] = keys
        for a in table.state_arrays():
            if a.name.startswith("column:"):
                arrays[a.name[7:]] = a.data[slots]
            elif a.per_slot:
                arrays[STATE + a.name] = a.data[slots]
                meta["per_slot"].append(a.name)
            else:
                arrays[STATE + a.name] = np.array(a.data, copy=True)
                meta["whole"].append(a.name)
    arrays[META] = np.array(json.dumps(meta))
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    save = np.savez_compressed if compressed else np.savez
    try:
        with open(tmp, "wb") as f:
            save(f, **arrays)  # type: ignore[arg-type]  # numpy stubs: allow_pickle
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _restore_exact(path: str, arrays: Dict[str, np.ndarray], meta: Dict[str, Any]) -> Any:
    """The buffer that was saved, rebuilt from its configuration and state."""
    config = meta["config"]
    cls = buffer_class(config)
    buf = cls._from_config(config)
    if meta["scalars"] is None:
        return buf
    table = Table.create(buf._config(spec_of(config)))
    slots = table.slots_of(arrays[KEYS])
    if (slots < 0).any():
        raise ValueError(f"{path}: {KEYS} holds keys that are no keys of its buffer")
    for a in table.state_arrays():
        if a.name.startswith("column:"):
            src = arrays.get(a.name[7:])
        else:
            src = arrays.get(STATE + a.name)
        if src is None:
            raise ValueError(f"{path}: no array for the buffer's state '{a.name}'")
        if a.per_slot:
            if src.shape[1:] != a.data.shape[1:] or len(src) != len(slots):
                raise ValueError(f"{path}: array for '{a.name}' has shape {src.shape}, expected "
                                 f"({len(slots)}, *{a.data.shape[1:]})")
            a.data[slots] = src.view(a.data.dtype) if src.dtype.itemsize == a.data.dtype.itemsize else src
        else:
            if src.shape != a.data.shape:
                raise ValueError(f"{path}: array for '{a.name}' has shape {src.shape}, expected {a.data.shape}")
            np.copyto(a.data.reshape(-1).view(np.uint8), np.ascontiguousarray(src).reshape(-1).view(np.uint8))
    limiter = config.get("rate_limiter")
    if limiter is not None:
        from ._limiter import RateLimiter

        RateLimiter(**limiter)._bind(table.core)
    try:
        table.restore(meta["scalars"])
    except ValueError as e:
        raise ValueError(f"{path}: inconsistent state: {e}") from None
    buf._install(table, configure_limiter=False)
    return buf


def from_npz(path: "str | os.PathLike[str]", buf: Optional[Any] = None, **kwargs: Any) -> Any:
    """Reads items from an ``.npz`` file into a buffer (a new one, or ``buf``), oldest first.

    A file written by ``to_npz`` with no other arguments gives back exactly the saved buffer
    (its class, configuration, items, keys, priorities, episode boundaries and every other
    part's state). With ``buf`` or constructor arguments, the items are written into that
    buffer (the new one gets the file's settings unless overridden), oldest first, through
    its writer; priorities and episode boundaries come along where they fit. Any ``.npz``
    of equal-length arrays ``[n, *shape]``, one per field (e.g. ``np.savez(path, obs=obs,
    action=action, ...)``) is read that way too; for an EpisodeBuffer (``num_envs=`` given,
    or ``buf`` an EpisodeBuffer) the rows are in key order: step t of env e at row
    ``t * num_envs + e``.

    Args:
        path: the file.
        buf: a buffer to extend (its spec must match the file's fields); default: a new one.
        **kwargs: constructor arguments of the new buffer (``capacity``, ``sampler``,
            ``seed``, ``num_envs``, ...), overriding the file's; not with ``buf``.

    Raises:
        ValueError: the file is not an npz archive, its arrays differ in length, its
            metadata is malformed, or its fields do not fit ``buf``. ``buf`` is then unchanged.
        FileNotFoundError: no such file.
    """
    if buf is not None and kwargs:
        raise TypeError(f"from_npz: constructor arguments {sorted(kwargs)} are for a new "
                        "buffer, not with buf=")
    arrays, meta = read_npz(path)
    if meta is not None and buf is None and not kwargs:
        try:
            return _restore_exact(os.fspath(path), arrays, meta)
        except (KeyError, TypeError) as e:
            raise ValueError(f"{path}: malformed reverie npz ({type(e).__name__}: {e})") from None
    return import_items(os.fspath(path), arrays, meta, buf, kwargs)


__all__: List[str] = ["from_npz", "to_npz"]
