"""from_npz into another buffer than the one saved (another capacity, sampler, an existing
buffer, a plain npz of fields): the items are written through the target's writer, oldest
first, and priorities and episode flags are carried over where they fit."""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import numpy as np
import torch

from ._buffer import ReplayBuffer
from ._config import buffer_class, spec_of
from ._episodes import EpisodeBuffer
from ._npz_format import KEYS, STATE, field_value
from ._parts import Part, Prioritized
from ._spec import Field

_LEAVES = STATE + "priority.leaves"
_FLAGS = STATE + "episodes.row_flags"


def _new_buffer(meta: Optional[Dict[str, Any]], spec: Dict[str, Field], n: int,
                kwargs: Dict[str, Any]) -> Any:
    if meta is None:
        cls = EpisodeBuffer if "num_envs" in kwargs else ReplayBuffer
        capacity = kwargs.pop("capacity", None)
        if capacity is None:
            num_envs = int(kwargs.get("num_envs", 1))
            capacity = max(n, num_envs) if cls is ReplayBuffer else max(-(-n // num_envs), 1) * num_envs
        return cls(capacity, spec, **kwargs)
    config = meta["config"]
    stored = buffer_class(config)
    cls = EpisodeBuffer if stored is EpisodeBuffer or "num_envs" in kwargs else ReplayBuffer
    args: Dict[str, Any] = {"sampler": Part.from_config("selector", config["selector"]),
                            "seed": config["seed"]}
    if stored is EpisodeBuffer:
        view = config["view"]
        args.update(num_envs=view["num_envs"], obs_fields=tuple(view["obs"]),
                    frame_stack=view["frame_stack"], reward=view["reward"],
                    terminated=view["terminated"], truncated=view["truncated"])
    elif cls is ReplayBuffer:
        args["writer"] = Part.from_config("writer", config["writer"])
    args.update(kwargs)
    capacity = args.pop("capacity", config["capacity"])
    return cls(capacity, spec, **args)


def import_items(path: str, arrays: Dict[str, np.ndarray], meta: Optional[Dict[str, Any]],
                 buf: Optional[Any], kwargs: Dict[str, Any]) -> Any:
    keys = arrays.pop(KEYS, None)
    flags = arrays.get(_FLAGS)
    leaves = arrays.get(_LEAVES)
    arrays = {k: v for k, v in arrays.items() if not k.startswith(STATE)}
    if meta is not None:
        try:
            spec = spec_of(meta["config"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: malformed spec in its metadata ({e})") from None
        if set(arrays) != set(spec):
            raise ValueError(f"{path}: arrays {sorted(arrays)} do not match its spec {sorted(spec)}")
        arrays = {n: arrays[n] for n in spec}
    else:
        spec = {}
        for name, arr in arrays.items():
            if arr.ndim == 0:
                raise ValueError(f"{path}: array '{name}' is a scalar; every field needs an "
                                 "item axis [n, *shape]")
            if arr.dtype.kind not in "biuf":
                raise ValueError(f"{path}: array '{name}' has dtype {arr.dtype}, not a number type")
            try:
                spec[name] = Field(arr.dtype, arr.shape[1:])
            except TypeError as e:
                raise ValueError(f"{path}: array '{name}': {e}") from None
    lengths = {name: arr.shape[0] if arr.ndim else -1 for name, arr in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"{path}: the field arrays differ in length: {lengths}")
    n = next(iter(lengths.values()), 0)
    for name, field in spec.items():
        arr = arrays[name]
        want = field.torch_dtype if field.dtype != "bfloat16" else torch.int16
        if meta is not None and (tuple(arr.shape[1:]) != field.shape
                                 or torch.from_numpy(arr[:0]).dtype != want):
            raise ValueError(f"{path}: array '{name}' is {arr.dtype} {arr.shape[1:]}, its spec "
                             f"says {field}")
    for extra, name in ((keys, KEYS), (flags, _FLAGS), (leaves, _LEAVES)):
        if extra is not None and extra.shape[:1] != (n,):
            raise ValueError(f"{path}: {name} has shape {extra.shape}, expected ({n},)")
    if buf is None:
        buf = _new_buffer(meta, spec, n, dict(kwargs))
    elif buf.spec and dict(buf.spec) != spec:
        raise ValueError(f"{path}: its fields {spec} do not match the buffer's spec {buf.spec}")
    if n == 0:
        return buf
    episodic = isinstance(buf, EpisodeBuffer)
    num_envs = buf.num_envs if episodic else 1
    if episodic and n % num_envs:
        raise ValueError(f"{path}: {n} rows are not whole steps of num_envs={num_envs} envs")
    before = 0 if buf._core is None else int(buf._core.written)
    values = {name: field_value(spec[name], arr) for name, arr in arrays.items()}
    if episodic:
        values = {name: v.reshape(n // num_envs, num_envs, *v.shape[1:]) for name, v in values.items()}
    stored = buf.extend(**values)
    if not buf.writer.kind == "fifo":
        return buf  # other writers place items their own way: only the items come along
    # The imported rows still stored are the newest ones: the last min(n, capacity) of them.
    kept = min(int(stored), buf.capacity)
    new_keys = buf._table.stored_keys()[-kept:]
    view = (meta or {}).get("config", {}).get("view") or {}
    if episodic and flags is not None and before == 0 and view.get("num_envs") == num_envs:
        _restore_flags(buf, new_keys, flags[n - kept:])
    if leaves is not None and isinstance(buf.sampler, Prioritized) and meta is not None:
        _restore_priorities(buf, meta, new_keys, leaves[n - kept:], fresh=before == 0)
    return buf


def _restore_flags(buf: Any, keys: np.ndarray, flags: np.ndarray) -> None:
    """Sets the episode flags of imported rows to the original's (whose oldest stored rows may
    continue an episode that began before them)."""
    table = buf._table
    row_flags = table.state_view("episodes.row_flags")
    streams = table.state_view("episodes.stream_flags")
    row_flags[buf._slots_of(keys)] = flags.astype(np.uint8)
    n = buf.num_envs
    envs = buf._core.insertions_of(keys) % n  # step t of env e is insertion t * n + e
    for e in range(n):
        mine = keys[envs == e]
        if mine.size:
            streams[e] = row_flags[buf._slots_of(mine[-1:])][0]


def _restore_priorities(buf: Any, meta: Mapping[str, Any], keys: np.ndarray,
                        leaves: np.ndarray, fresh: bool) -> None:
    """The stored priorities of imported items: bit for bit where alpha, eps and the
    fixed-point scale agree, else inverted to a priority (p = q^(1/alpha) - eps) for
    update_priorities."""
    if not keys.size:
        return
    scalars = meta.get("scalars") or {}
    saved = meta["config"]["selector"]
    sampler = buf.sampler
    scale_exp = int(scalars.get("priority.scale_exp", 0))
    state = buf.state_dict()
    now = int(state["scalars"]["priority.scale_exp"])
    same = saved.get("alpha") == sampler.alpha and saved.get("eps") == sampler.eps
    if same and scale_exp == now:
        merged = state["arrays"]["priority.leaves"].numpy().view(np.uint64).copy()
        merged[buf._slots_of(keys)] = leaves.view(np.uint64)
        state["arrays"]["priority.leaves"] = torch.from_numpy(merged.view(np.int64))
        saved_max = float(scalars.get("priority.max_q", state["scalars"]["priority.max_q"]))
        now_max = float(state["scalars"]["priority.max_q"])
        # the max priority new items get
        state["scalars"]["priority.max_q"] = saved_max if fresh else max(now_max, saved_max)
        buf.load_state_dict(state)
        return
    q = np.ldexp(leaves.astype(np.float64), -scale_exp)
    alpha = float(saved.get("alpha", sampler.alpha)) or 1.0  # the file's sampler
    eps = float(saved.get("eps", sampler.eps))
    p = np.maximum(q ** (1.0 / alpha) - eps, 0.0)
    buf.update_priorities(keys, p)
