"""TrajectoryBuffer: a replay buffer whose items mix fixed fields with ragged ones
(variable-length token trajectories), kept in a byte-bounded arena (cpp arena.h), and
batches in the layouts trainers use: packed (cu_seqlens), nested, padded.
"""

from __future__ import annotations

import math
import time
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch

from . import _presets
from ._batch import Batch
from ._buffer import ReplayBuffer
from ._config import register_buffer
from ._spec import Field, SpecLike, normalize_spec
from ._values import as_int as _as_int

LAYOUTS = ("packed", "padded", "nested")
STALENESS_BUCKETS = 16  # staleness 0 .. 14, and 15 or more


class Packed(NamedTuple):
    """One ragged field of a batch of items in packed form: ``values [N_tok, *rest]`` and
    either ``offsets [n + 1]`` (cu_seqlens: item i is ``values[offsets[i]:offsets[i+1]]``)
    or ``lengths [n]``. ``extend(ids=rv.Packed(values, offsets=cu))``."""

    values: Any
    offsets: Any = None
    lengths: Any = None


class GroupLayout:
    """One length group of a ragged batch. ``lengths`` int64 [B]; ``cu_seqlens`` int32
    [B + 1] (one more entry when packed padding was added); ``max_seqlen`` the longest item;
    ``position_ids`` (packed: int64 [N_tok], restarting at 0 per item and over the padding;
    made when first read) or ``attention_mask`` (padded: int64 [B, T]); the other is None."""

    __slots__ = ("lengths", "cu_seqlens", "max_seqlen", "attention_mask", "_packed", "_positions")

    def __init__(self, lengths: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
                 attention_mask: Optional[torch.Tensor], packed: bool) -> None:
        self.lengths, self.cu_seqlens, self.max_seqlen = lengths, cu_seqlens, max_seqlen
        self.attention_mask = attention_mask
        self._packed = packed
        self._positions: Optional[torch.Tensor] = None

    @property
    def position_ids(self) -> Optional[torch.Tensor]:
        if not self._packed:
            return None
        if self._positions is None:
            cu = self.cu_seqlens.to(torch.int64)
            spans = cu[1:] - cu[:-1]
            self._positions = torch.arange(int(cu[-1])) - torch.repeat_interleave(cu[:-1], spans)
        return self._positions

    def __repr__(self) -> str:
        return f"GroupLayout({len(self.lengths)} items, max_seqlen={self.max_seqlen})"


class RaggedBatch(Batch):
    """A Batch of a TrajectoryBuffer: fixed fields [B, *shape]; ragged fields packed
    ``[N_tok, *rest]``, padded ``[B, T, *rest]`` or nested (jagged ``[B, j, *rest]``).

    Attributes (besides Batch's): ``layout``; ``groups`` {group: GroupLayout}; and those of
    the batch's main group (the only group, or the one named by ``sample(group=)``, by
    default the last declared: the response): ``lengths``, ``cu_seqlens``, ``max_seqlen``,
    ``position_ids`` (packed). ``attention_mask`` (padded): the main group's with one group;
    with several, the groups' masks side by side in declaration order, so it lines up with
    ``torch.cat([prompt_ids, response_ids], dim=1)`` (a left-padded prompt, then a
    right-padded response: verl's and TRL's convention).
    """

    __slots__ = ("layout", "groups", "lengths", "cu_seqlens", "max_seqlen", "attention_mask", "group_sizes", "_main",
                 "_group_of")
    layout: str
    groups: Dict[str, GroupLayout]
    lengths: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int
    attention_mask: Optional[torch.Tensor]
    group_sizes: Optional[torch.Tensor]
    _main: GroupLayout
    _group_of: Dict[str, str]

    @property
    def position_ids(self) -> Optional[torch.Tensor]:
        """Packed: the main group's position ids (int64 [N_tok]); None otherwise."""
        return self._main.position_ids

    def __repr__(self) -> str:
        return f"RaggedBatch[{self.layout}, {len(self.lengths)} items]({', '.join(self)})"

    def for_trainer(self, preset: str, **roles: Optional[str]) -> Dict[str, torch.Tensor]:
        """This padded batch's tensors under the names of ``preset``'s loss code ("verl",
        "trl", "openrlhf"); README "Trainer presets" gives each mapping. ``roles`` name the
        fields playing prompt, response, logprobs, advantages and loss_mask when they are
        not named so."""
        return _presets.for_trainer(self, preset, **roles)

    def per_item(self, field: str, reduce: str = "mean", abs: bool = False) -> torch.Tensor:
        """A ragged field reduced per item over its own tokens ("sum", "mean", "max", "min";
        of the absolute values with ``abs``): float [B] scores, e.g. priorities from
        |advantage|: ``buf.update_priorities(batch.indices, batch.per_item("advantages",
        abs=True))``, or the oldest policy version of a partial rollout's tokens (a ragged
        field of per-token versions): ``batch.per_item("token_version", "min")``."""
        if field not in self:
            raise ValueError(f"batch has no field '{field}'; fields: {', '.join(self)}")
        if field not in self._group_of:
            raise ValueError(f"per_item reduces ragged fields; '{field}' is a fixed field")
        values = self[field]
        layout = self.groups[self._group_of[field]]
        if self.layout == "nested":
            values = values.values()
        if values.dim() != (2 if self.layout == "padded" else 1):
            raise ValueError(f"per_item reduces per-token scalars; '{field}' has shape {tuple(values.shape)}")
        values = values.abs() if abs else values
        values = values.to(torch.float64) if not values.is_floating_point() else values
        if self.layout == "padded":
            assert layout.attention_mask is not None
            return _presets.per_item_padded(values, layout.attention_mask, reduce)
        return _presets.per_item_packed(values, layout.cu_seqlens, len(layout.lengths), reduce)


class GroupFilter:
    """Which groups ``add_group`` keeps, from the group's own values (a dict of tensors,
    every value's first axis the group; ragged values as a list of per-member tensors).
    Built in: ``StdFilter`` (DAPO / Skywork SSB: drop groups whose reward spread is <= eps,
    i.e. zero advantage), ``MeanFilter`` (OpenRLHF: keep groups whose mean reward lies in
    (lo, hi)), ``NonZeroFilter`` (drop groups whose advantages are all zero). Any callable
    taking that dict and returning a bool works too."""

    def __call__(self, group: Mapping[str, Any]) -> bool:
        raise NotImplementedError


class StdFilter(GroupFilter):
    """Keeps a group when the standard deviation of its ``field`` exceeds ``eps``."""

    def __init__(self, field: str = "reward", eps: float = 1e-6) -> None:
        self.field, self.eps = field, float(eps)

    def __call__(self, group: Mapping[str, Any]) -> bool:
        values = _group_values(group, self.field).to(torch.float64)
        return bool(values.numel() > 1 and float(values.std(unbiased=False)) > self.eps)


class MeanFilter(GroupFilter):
    """Keeps a group when the mean of its ``field`` lies strictly inside (lo, hi)."""

    def __init__(self, field: str = "reward", lo: float = 0.0, hi: float = 1.0) -> None:
        self.field, self.lo, self.hi = field, float(lo), float(hi)

    def __call__(self, group: Mapping[str, Any]) -> bool:
        mean = float(_group_values(group, self.field).to(torch.float64).mean())
        return self.lo < mean < self.hi


class NonZeroFilter(GroupFilter):
    """Keeps a group unless every value of its ``field`` (e.g. per-token advantages) is 0."""

    def __init__(self, field: str = "advantages") -> None:
        self.field = field

    def __call__(self, group: Mapping[str, Any]) -> bool:
        return bool((_group_values(group, self.field) != 0).any())


def _group_values(group: Mapping[str, Any], name: str) -> torch.Tensor:
    if name not in group:
        raise ValueError(f"the group filter reads field '{name}', which the group does not have; "
                         f"fields: {', '.join(group)}")
    value = group[name]
    if isinstance(value, Packed):
        value = value.values
    if isinstance(value, (list, tuple)):
        parts = [torch.as_tensor(v).reshape(-1) for v in value]
        return torch.cat(parts) if parts else torch.zeros(0)
    if isinstance(value, torch.Tensor) and value.is_nested:
        return value.values().reshape(-1)
    return torch.as_tensor(value).reshape(-1)


def rollout_quota(version: int, max_staleness: int, batch_size: int, started: int) -> int:
    """AReaL-style pacing: how many more rollouts a producer may start now so that none is
    more than ``max_staleness`` policy versions old when the trainer (at ``version``) consumes
    batches of ``batch_size`` trajectories, given ``started`` rollouts started so far (since
    version 0). ``(max_staleness + version + 1) * batch_size - started``, at least 0."""
    return max(0, (int(max_staleness) + int(version) + 1) * int(batch_size) - int(started))


def refill_group(group: Mapping[str, Any], archive: "TrajectoryBuffer", key: int, *, reward: str = "reward",
                 replace: int = 1) -> Dict[str, Any]:
    """A group with its ``replace`` lowest-reward members replaced by the archived
    trajectory of the same prompt (ARPO's replay of past successes): ``archive`` is a
    TrajectoryBuffer with ``writer=rv.KeyedArchive(key=..., score=...)`` (its best
    trajectory per prompt key), ``key`` the prompt's key. ``group`` holds, as for
    ``add_group``, fixed fields [G, ...] and ragged fields as lists of G values; the result
    has the same form (recompute the advantages before ``add_group``). Unchanged when the
    archive holds nothing for ``key``."""
    keys = archive._core.lookup(np.asarray([int(key)], dtype=np.int64))
    if int(keys[0]) < 0:
        return dict(group)
    if reward not in group:
        raise ValueError(f"refill_group ranks members by field '{reward}', which the group does not have")
    stored = archive.get(keys)
    rewards = torch.as_tensor(group[reward]).reshape(-1)
    size = len(rewards)
    if not 1 <= replace <= size:
        raise ValueError(f"replace must be in [1, {size}] (the group's size), got {replace}")
    worst = torch.argsort(rewards, stable=True)[:replace].tolist()
    out: Dict[str, Any] = {}
    for name, value in group.items():
        if name not in stored:
            raise ValueError(f"the archive has no field '{name}' to refill the group with")
        if name in archive._ragged:
            members = list(value)
            if len(members) != size:
                raise ValueError(f"ragged field '{name}': {len(members)} members, the group has {size}")
            for i in worst:
                members[i] = stored[name]
            out[name] = members
        else:
            column = torch.as_tensor(value).clone()
            column[worst] = stored[name][0].to(column.dtype)
            out[name] = column
    return out


def _np_dtype(field: Field) -> np.dtype:
    return np.dtype("uint16") if field.dtype == "bfloat16" else np.dtype(field.dtype)


@register_buffer("ragged")
class TrajectoryBuffer(ReplayBuffer):
    """A replay buffer of variable-length trajectories (RL on language models).

    Items mix fixed fields (a reward, a group id, a version) with ragged ones declared
    ``rv.Field(dtype, (None, *rest), group=...)``: prompt ids, response ids, per-token
    log-probabilities, loss masks, advantages. Ragged values live in one arena of
    ``arena_bytes`` bytes: the buffer is bounded in bytes as well as in items (``capacity``),
    and a new item evicts the oldest items whole until it fits (``stats()["arena_evicted"]``
    counts them). Fields of one group must have equal lengths per item (checked).

    Writing: ``add(**fields)`` takes one item (ragged values ``[L, *rest]``); ``extend``
    takes, per ragged field, a list of per-item tensors / arrays, a torch nested (jagged)
    tensor, or ``rv.Packed(values, offsets=cu_seqlens)`` / ``rv.Packed(values,
    lengths=...)``, and fixed fields as usual. Of a call whose items exceed the arena only
    the newest that fit stay (the others count as stored and evicted, like a FIFO ring's
    overflow).

    Args: as ReplayBuffer (writer: FIFO only, without pins), plus ``arena_bytes``: the
    arena's size in bytes (required); ``group_filter``: which groups ``add_group`` keeps;
    ``stale_wait``: with ``max_staleness``, seconds a sample waits for an item within the
    bound when none is held (default: it raises at once, the "drop" policy). The spec is
    required.
    """

    def __init__(self, capacity: int, spec: Optional[SpecLike] = None, sampler: Any = None,
                 seed: Optional[int] = None, *, arena_bytes: Optional[int] = None,
                 group_filter: Optional[Any] = None, stale_wait: Optional[float] = None, **kwargs: Any) -> None:
        if spec is None:
            raise ValueError("a TrajectoryBuffer needs its spec (ragged fields cannot be inferred): "
                             "spec={'ids': rv.Field('int64', (None,)), ...}")
        fields = normalize_spec(spec)
        ragged = {name: f for name, f in fields.items() if f.ragged}
        if not ragged:
            raise ValueError("a TrajectoryBuffer needs at least one ragged field (shape (None, ...)); "
                             "for fixed shapes use ReplayBuffer")
        if arena_bytes is None:
            raise ValueError("a TrajectoryBuffer needs arena_bytes=, the bytes its ragged values may take "
                             "(e.g. arena_bytes=2**30)")
        arena_bytes = _as_int("arena_bytes", arena_bytes)
        if callable(kwargs.get("admit")):
            raise ValueError("a TrajectoryBuffer takes no callable admit (filter the batch before extend)")
        if group_filter is not None and not callable(group_filter):
            raise TypeError(f"group_filter must be a GroupFilter or a callable, got {type(group_filter).__name__}")
        self._group_filter: Optional[Any] = group_filter
        if stale_wait is not None and (not isinstance(stale_wait, (int, float)) or stale_wait < 0):
            raise ValueError(f"stale_wait must be a number of seconds >= 0, got {stale_wait!r}")
        self._stale_wait: Optional[float] = None if stale_wait is None else float(stale_wait)
        self._set_ragged(ragged, arena_bytes)
        super().__init__(capacity, fields, sampler, seed, **kwargs)
        # add/extend are this class's Python methods (they pack ragged values first).
        self.__dict__.pop("add", None)
        self.__dict__.pop("extend", None)

    def _set_ragged(self, ragged: Mapping[str, Field], arena_bytes: int) -> None:
        self._group_filter = getattr(self, "_group_filter", None)
        self._stale_wait = getattr(self, "_stale_wait", None)
        self._offered_groups = 0
        self._kept_groups = 0
        self._served_staleness = np.zeros(STALENESS_BUCKETS, np.int64)
        self._ragged: Dict[str, Field] = dict(ragged)
        self._groups: List[str] = list(dict.fromkeys(f.group for f in ragged.values() if f.group is not None))
        self._arena_bytes = int(arena_bytes)
        self._pads = [np.array(f.pad).astype(_np_dtype(f)).tobytes() for f in ragged.values()]
        self._group_of = {name: f.group or "" for name, f in ragged.items()}
        self._layouts: Dict[Tuple[str, int, Optional[str]], Tuple[List[bool], int]] = {}

    def _build(self, spec: Dict[str, Field]) -> Any:
        return super()._build({name: f for name, f in spec.items() if not f.ragged})

    def _config(self, spec: Mapping[str, Field]) -> Dict[str, Any]:
        config = super()._config({name: f for name, f in spec.items() if not f.ragged})
        config["ragged"] = {
            "bytes": self._arena_bytes, "groups": list(self._groups),
            "fields": [[name, f.dtype, list(f.shape[1:]), f.group, f.pad] for name, f in self._ragged.items()],
        }
        return config

    @classmethod
    def _from_config(cls, config: Mapping[str, Any], storage: str = "memory") -> "ReplayBuffer":
        buf = super()._from_config(config, storage)
        entry = config["ragged"]
        ragged = {f[0]: Field(f[1], (None, *f[2]), group=f[3], pad=f[4] if len(f) > 4 else 0) for f in entry["fields"]}
        assert isinstance(buf, TrajectoryBuffer)
        buf._set_ragged(ragged, int(entry["bytes"]))
        buf.__dict__.pop("add", None)
        buf.__dict__.pop("extend", None)
        return buf

    # ---- writing ----------------------------------------------------------------------

    def add(self, **fields: Any) -> int:  # type: ignore[override]
        """Stores one item: ragged values ``[L, *rest]``, fixed ones as ReplayBuffer.add.
        Returns 1."""
        core = self._write_core()
        for name, f in self._ragged.items():
            if name in fields and isinstance(fields[name], (list, tuple)):
                fields[name] = np.asarray(fields[name], dtype=_np_dtype(f))
        return int(core.write_ragged(False, {}, **fields))

    def extend(self, **fields: Any) -> int:  # type: ignore[override]
        """Stores a batch of items (see the class docstring for the ragged forms). Returns how
        many were stored."""
        core = self._write_core()
        lengths: Dict[str, np.ndarray] = {}
        for name, f in self._ragged.items():
            if name in fields:
                fields[name], lengths[name] = _packed(name, f, fields[name])
        return int(core.write_ragged(True, lengths, **fields))

    def add_group(self, **fields: Any) -> int:
        """Stores the G responses to one prompt atomically: all or none, evicted together
        later, and drawn together by ``sample_groups``. Every value's first axis is the group
        (ragged fields: a list of G per-member values, a nested tensor or rv.Packed); a value
        of one member's shape (a prompt's ids, a prompt id) is given to every member. With a
        ``group_filter`` the group is stored only when the filter keeps it.

        Returns:
            G when stored, 0 when the filter dropped it (``group_stats()`` counts both).

        Raises:
            ValueError: a group larger than the capacity or half the arena, or any error
                ``extend`` raises; nothing is stored then.
        """
        core = self._write_core()
        size = self._group_size(fields)
        fields = {name: self._broadcast(name, value, size) for name, value in fields.items()}
        if self._group_filter is not None:
            keep = bool(self._group_filter(fields))
            self._offered_groups += 1
            if not keep:
                return 0
        else:
            self._offered_groups += 1
        lengths: Dict[str, np.ndarray] = {}
        for name, f in self._ragged.items():
            if name in fields:
                fields[name], lengths[name] = _packed(name, f, fields[name])
        stored = int(core.write_group(lengths, **fields))
        self._kept_groups += 1
        return stored

    def _group_size(self, fields: Mapping[str, Any]) -> int:
        for name, value in fields.items():
            f = self._ragged.get(name)
            if f is not None:
                if isinstance(value, (list, tuple)):
                    return len(value)
                if isinstance(value, Packed):
                    return len(value.lengths) if value.lengths is not None else len(value.offsets) - 1
                if isinstance(value, torch.Tensor) and value.is_nested:
                    return int(value.size(0))
            elif name in self.spec:
                shape = self.spec[name].shape
                arr = value if hasattr(value, "shape") else np.asarray(value)
                if len(arr.shape) == len(shape) + 1:
                    return int(arr.shape[0])
        raise ValueError("add_group needs at least one field whose first axis is the group "
                         "(a list of per-member ragged values, or a fixed field of shape (G, ...))")

    def _broadcast(self, name: str, value: Any, size: int) -> Any:
        """A value of one member's shape, repeated for every member of the group."""
        f = self._ragged.get(name)
        if f is not None:
            if isinstance(value, (torch.Tensor, np.ndarray)) and not (isinstance(value, torch.Tensor) and value.is_nested):
                return [value] * size
            return value
        if name in self.spec:
            shape = self.spec[name].shape
            if isinstance(value, torch.Tensor):
                return value.expand(size, *shape).contiguous() if value.dim() == len(shape) else value
            arr = np.asarray(value) if not isinstance(value, np.ndarray) else value
            if arr.ndim == len(shape):
                if not isinstance(value, np.ndarray):
                    return np.full((size, *shape), value, dtype=self.spec[name].dtype)
                return np.ascontiguousarray(np.broadcast_to(arr, (size, *shape)))
        return value

    def group_stats(self) -> Dict[str, Any]:
        """Groups offered to ``add_group`` and kept by the filter (this process's calls), the
        pass rate, and the groups held now."""
        offered, kept = self._offered_groups, self._kept_groups
        return {"offered": offered, "kept": kept, "pass_rate": kept / offered if offered else 1.0,
                "groups_held": int(self._core.arena_stats()["groups_held"]) if self._core is not None else 0}

    def deficit(self, num_groups: int) -> int:
        """How many groups to generate for the next ``sample_groups(num_groups)`` to find as many
        held: the groups missing, divided by the filter's pass rate so far (rounded up)."""
        stats = self.group_stats()
        missing = max(0, int(num_groups) - stats["groups_held"])
        rate = stats["pass_rate"] if stats["kept"] else 1.0
        return int(math.ceil(missing / rate)) if missing else 0

    def sample_groups(self, num_groups: int, *, layout: str = "packed", pad_to_multiple_of: int = 1,
                      padding_side: Optional[Mapping[str, str]] = None, group: Optional[str] = None) -> RaggedBatch:
        """Draws ``num_groups`` whole groups (each as the sampler draws one of its members: a
        group of G members is drawn G times as often as one item alone; for groups of equal
        size, uniform over groups) and returns all their members, group after group.
        ``batch.group_sizes`` int64 [num_groups] says how many rows each group has."""
        num_groups = _as_int("num_groups", num_groups)
        if num_groups <= 0:
            raise ValueError(f"num_groups must be > 0, got {num_groups}")
        self._check_open()
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
        left, main = self._layout_args(layout, pad_to_multiple_of, padding_side, group)
        assert self._table is not None
        for _ in range(64):
            _, keys, _, _ = self._fresh(lambda: self._core.sample(num_groups, None, False))
            got = self._core.group_members(keys)
            if got is None:
                continue  # a drawn group was evicted meanwhile: draw again
            members, counts = got
            try:
                fixed, outs, stored, meta, lengths = self._core.get_ragged(
                    members, layout == "padded", int(pad_to_multiple_of), left, self._pads, self._table.meta)
            except IndexError:
                continue
            batch = self._batch(fixed, outs, stored, None, meta, lengths, len(stored), layout, main)
            batch.group_sizes = torch.from_numpy(counts)
            return batch
        raise RuntimeError("the drawn groups were evicted while they were read, 64 times in a row "
                           "(the arena turns over faster than a batch is read: raise arena_bytes)")

    def _write_core(self) -> Any:
        self._check_open()
        return self._core

    # ---- reading ------------------------------------------------------------------------

    def sample(self, batch_size: Optional[int] = None, *, max_tokens: Optional[int] = None,  # type: ignore[override]
               layout: str = "packed", pad_to_multiple_of: int = 1,
               padding_side: Optional[Mapping[str, str]] = None, group: Optional[str] = None,
               order: str = "random") -> RaggedBatch:
        """Draws a batch of whole trajectories.

        Args:
            batch_size: items per batch; with ``max_tokens`` (and no batch_size) the buffer
                draws enough.
            max_tokens: a token budget over all ragged groups: the batch holds as many whole
                items as fit (the draws in random order, the longest prefix that fits; an
                item longer than the budget comes alone). Not with max_times_sampled.
            layout: ``"packed"`` (values ``[N_tok, *rest]`` + cu_seqlens, position_ids),
                ``"padded"`` (``[B, T, *rest]`` + attention_mask) or ``"nested"`` (torch
                jagged nested tensors over the packed memory, no copy).
            pad_to_multiple_of: padded: T rounded up to it; packed: each group's token count
                rounded up (the pad tokens form one extra cu_seqlens entry).
            padding_side: {group: "left" | "right"}; default right, and left for a group named
                ``"prompt"``.
            group: the main group (its lengths, cu_seqlens, ... are the batch's attributes).
            order: ``"random"`` (the sampler's draw) or ``"oldest"``: the ``batch_size``
                oldest items held (within ``max_staleness`` when set), so long rollouts that
                arrive late are not starved; read like ``get`` (no weights, not counted as
                sampled). Fewer when fewer are held.
        """
        if order not in ("random", "oldest"):
            raise ValueError(f"order must be 'random' or 'oldest', got {order!r}")
        if order == "oldest":
            if batch_size is None or max_tokens is not None:
                raise ValueError("order='oldest' takes a batch_size and no max_tokens")
            self._check_open()
            staleness = (self._reuse or {}).get("max_staleness")
            floor = self.version - int(staleness) if staleness is not None else -(1 << 62)
            keys = self._core.oldest_keys(_as_int("batch_size", batch_size), floor)
            if len(keys) == 0:
                raise ValueError("the buffer holds no item to serve (add items first)")
            return self.get(keys, layout=layout, pad_to_multiple_of=pad_to_multiple_of, padding_side=padding_side,
                            group=group)
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
        self._check_open()
        if max_tokens is not None:
            max_tokens = _as_int("max_tokens", max_tokens)
            if max_tokens <= 0:
                raise ValueError(f"max_tokens must be > 0, got {max_tokens}")
        if batch_size is None:
            if max_tokens is None:
                raise ValueError("sample() needs batch_size, max_tokens or both")
        else:
            batch_size = _as_int("batch_size", batch_size)
            if batch_size <= 0:
                raise ValueError(f"batch_size must be > 0, got {batch_size}")
        left, main = self._layout_args(layout, pad_to_multiple_of, padding_side, group)
        assert self._table is not None
        core, meta = self._core, self._table.meta
        draws = batch_size if batch_size is not None else self._budget_draws(int(max_tokens or 0))
        for _ in range(8):
            got = self._fresh(lambda n=draws: core.sample_ragged(n, layout == "padded", int(pad_to_multiple_of), left,
                                                                 self._pads, int(max_tokens or 0), meta))
            n = got[-1]
            # Every draw fit the budget: draw more when another average item would fit too.
            if batch_size is not None or max_tokens is None or n < draws:
                break
            held = int(got[5].sum())
            if held + self._mean_tokens() > max_tokens:
                break
            draws *= 2
        fixed, outs, keys, weights, meta_arrays, lengths, n = got
        return self._batch(fixed, outs, keys, weights, meta_arrays, lengths, n, layout, main)

    def get(self, keys: Any, *, layout: str = "packed", pad_to_multiple_of: int = 1,  # type: ignore[override]
            padding_side: Optional[Mapping[str, str]] = None, group: Optional[str] = None) -> RaggedBatch:
        """The stored items named by ``keys``, in that order, laid out as ``sample`` does."""
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
        self._check_open()
        left, main = self._layout_args(layout, pad_to_multiple_of, padding_side, group)
        assert self._table is not None
        k = self._keys_for_core(keys)
        fixed, outs, stored, meta_arrays, lengths = self._core.get_ragged(
            k, layout == "padded", int(pad_to_multiple_of), left, self._pads, self._table.meta)
        return self._batch(fixed, outs, stored, None, meta_arrays, lengths, len(stored), layout, main)

    def _fresh(self, draw: Any) -> Any:
        """draw(), waiting up to ``stale_wait`` seconds while no held item is within
        ``max_staleness`` (the staleness bound's "wait" policy; without it, "drop": the
        ValueError at once)."""
        if self._stale_wait is None:
            return draw()
        deadline = time.monotonic() + self._stale_wait
        while True:
            try:
                return draw()
            except ValueError as e:
                if "reuse rules allow" not in str(e) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.001)

    def _layout_args(self, layout: str, multiple: Any, sides: Optional[Mapping[str, str]],
                     group: Optional[str]) -> Tuple[List[bool], int]:
        if sides is None and type(multiple) is int:
            key = (layout, multiple, group)
            cached = self._layouts.get(key)
            if cached is None:
                cached = self._layouts[key] = self._check_layout(layout, multiple, None, group)
            return cached
        return self._check_layout(layout, multiple, sides, group)

    def _check_layout(self, layout: str, multiple: Any, sides: Optional[Mapping[str, str]],
                      group: Optional[str]) -> Tuple[List[bool], int]:
        multiple = _as_int("pad_to_multiple_of", multiple)
        if multiple < 1:
            raise ValueError(f"pad_to_multiple_of must be >= 1, got {multiple}")
        if layout == "nested" and multiple != 1:
            raise ValueError("pad_to_multiple_of is for the packed and padded layouts (a nested tensor has no padding)")
        sides = dict(sides or {})
        for g, side in sides.items():
            if g not in self._groups:
                raise ValueError(f"padding_side names group {g!r}; the groups are {self._groups}")
            if side not in ("left", "right"):
                raise ValueError(f"padding_side[{g!r}] must be 'left' or 'right', got {side!r}")
        left = [sides.get(g, "left" if g == "prompt" else "right") == "left" for g in self._groups]
        if group is None:
            main = len(self._groups) - 1
        elif group in self._groups:
            main = self._groups.index(group)
        else:
            raise ValueError(f"group must be one of {self._groups}, got {group!r}")
        return left, main

    def _mean_tokens(self) -> float:
        stats = self._core.arena_stats()
        size = max(1, len(self))
        return max(1.0, sum(stats["tokens_held"].values()) / size)

    def _budget_draws(self, max_tokens: int) -> int:
        return int(min(1 << 16, math.ceil(1.25 * max_tokens / self._mean_tokens()) + 8))

    def _batch(self, fixed: Sequence[np.ndarray], outs: Sequence[np.ndarray], keys: np.ndarray,
               weights: Optional[np.ndarray], meta: Optional[Dict[str, np.ndarray]], lengths: np.ndarray,
               n: int, layout: str, main: int) -> RaggedBatch:
        assert self._table is not None
        table = self._table
        cut = n < len(keys)
        fields: Dict[str, torch.Tensor] = {}
        if table.bf16 or cut:
            for name, t in table.tensors(fixed, table.names).items():
                fields[name] = t[:n] if cut else t
        else:
            for name, a in zip(table.names, fixed):
                fields[name] = torch.from_numpy(a)
        F = len(self._ragged)
        if cut:
            lengths = lengths[:n]
        lens = torch.from_numpy(lengths)
        longest = lengths.max(axis=0).tolist() if n else [0] * len(self._groups)
        groups: Dict[str, GroupLayout] = {}
        packed = layout != "padded"
        for g, gname in enumerate(self._groups):
            mask = outs[F + 2 * g + 1]
            groups[gname] = GroupLayout(lens[:, g], torch.from_numpy(outs[F + 2 * g]), longest[g],
                                        None if mask is None else torch.from_numpy(mask), packed)
        nested = layout == "nested"
        for i, (name, f) in enumerate(self._ragged.items()):
            values = torch.from_numpy(outs[i])
            if f.dtype == "bfloat16":
                values = values.view(torch.bfloat16)
            if nested:
                cu = groups[f.group or ""].cu_seqlens
                values = torch.nested.nested_tensor_from_jagged(values, offsets=cu.to(torch.int64))
            fields[name] = values
        k = torch.from_numpy(keys)
        batch = RaggedBatch(fields, k[:n] if cut else k,
                            None if weights is None else torch.from_numpy(weights)[:n],
                            None if meta is None else {m: torch.from_numpy(a)[:n] for m, a in meta.items()})
        top = groups[self._groups[main]]
        batch.layout = layout
        batch.groups = groups
        batch.lengths = top.lengths
        batch.cu_seqlens = top.cu_seqlens
        batch.max_seqlen = top.max_seqlen
        batch._main = top
        batch.group_sizes = None
        batch._group_of = self._group_of
        if batch.meta is not None:
            age = np.clip(self.version - batch.meta["version"].numpy(), 0, STALENESS_BUCKETS - 1)
            self._served_staleness += np.bincount(age, minlength=STALENESS_BUCKETS)
        if layout == "padded":
            masks = [m for m in (groups[g].attention_mask for g in self._groups) if m is not None]
            batch.attention_mask = masks[0] if len(masks) == 1 else torch.cat(masks, dim=1)
        else:
            batch.attention_mask = None
        return batch

    def update_fields(self, keys: Any, **fields: Any) -> int:
        """ReplayBuffer.update_fields, also for ragged fields (recalibrated per-token
        advantages): a ragged value is a list of per-key values (or rv.Packed / a nested
        tensor), each of the stored item's length. Fixed and ragged fields are updated one
        after the other (each atomically per item). Returns how many keys were skipped
        because their item left."""
        arr = self._keys_for_core(keys)
        if arr is None:
            return 0
        ragged = {name: v for name, v in fields.items() if name in self._ragged}
        fixed = {name: v for name, v in fields.items() if name not in self._ragged}
        lengths: Dict[str, np.ndarray] = {}
        for name in ragged:
            ragged[name], lengths[name] = _packed(name, self._ragged[name], ragged[name])
        skipped = 0
        if ragged:
            skipped = int(self._core.update_ragged(arr, lengths, **ragged))
        if fixed:
            skipped = max(skipped, int(self._core.update_fields(arr, **fixed)))
        return skipped

    def staleness(self) -> Dict[str, np.ndarray]:
        """How stale (``buf.version`` minus the item's version, at that moment) the items
        were: ``served`` by this process's samples (with ``metadata=True``) and ``evicted``
        by the arena's bounds (all processes; with versions kept). int64 [16] counts each,
        index s for staleness s, the last for 15 or more."""
        evicted = np.asarray(self._core.arena_stats()["evicted_staleness"], dtype=np.int64)
        return {"served": self._served_staleness.copy(), "evicted": evicted}

    # ---- inspection ---------------------------------------------------------------------

    @property
    def spec(self) -> Dict[str, Field]:
        """Every field: the fixed ones, then the ragged ones."""
        out = dict(super().spec)
        out.update(self._ragged)
        return out

    def stats(self) -> Dict[str, Any]:
        """ReplayBuffer's figures plus the arena's: ``arena_bytes`` (its size),
        ``arena_used_bytes`` (the span reserved now: held blocks, blocks of items that left,
        skipped ends), ``arena_held_bytes`` (blocks of the items held), ``arena_evicted``
        (items the byte bound evicted, ever) and ``tokens_held`` {group: tokens}."""
        out = super().stats()
        out.update(self._core.arena_stats())
        return out

    def pin(self, keys: Any) -> int:
        raise ValueError("a TrajectoryBuffer cannot pin items: its arena frees the oldest items' bytes in "
                         "insertion order, and a pinned item would block it")

    def pin_all(self, pin: bool = True) -> int:
        return self.pin(None)


def _packed(name: str, field: Field, value: Any) -> Tuple[Any, np.ndarray]:
    """A ragged field's batch value as (packed values, int64 lengths)."""
    if isinstance(value, Packed):
        values = value.values
        if (value.offsets is None) == (value.lengths is None):
            raise ValueError(f"ragged field '{name}': rv.Packed needs offsets= or lengths= (one of them)")
        if value.lengths is not None:
            lengths = np.ascontiguousarray(_to_numpy(value.lengths), dtype=np.int64)
        else:
            offsets = np.asarray(_to_numpy(value.offsets), dtype=np.int64)
            if offsets.ndim != 1 or len(offsets) == 0 or offsets[0] != 0:
                raise ValueError(f"ragged field '{name}': offsets must be 1-D and start at 0 "
                                 f"(cu_seqlens), got {offsets[:4]}...")
            lengths = np.diff(offsets)
        if isinstance(values, (list, tuple)):
            values = np.asarray(values, dtype=_np_dtype(field))
        return values, lengths
    if isinstance(value, torch.Tensor) and value.is_nested:
        offsets_t = value.offsets()  # type: ignore[attr-defined]
        return value.values(), np.diff(offsets_t.cpu().numpy()).astype(np.int64)
    if isinstance(value, (list, tuple)):
        items = list(value)
        if not items:
            return np.zeros((0, *field.shape[1:]), _np_dtype(field)), np.zeros(0, np.int64)
        try:
            # CPU tensors without grad: numpy views joined by one concatenate (a third of
            # torch.cat's time for hundreds of small tensors, measured in bench/llm's adds).
            views = [x.numpy() for x in items]
        except (AttributeError, RuntimeError, TypeError):  # arrays, lists, CUDA, grad or bfloat16 tensors
            views = []
        if views:
            arrays = views
        elif all(isinstance(x, torch.Tensor) for x in items):
            try:
                lengths = np.array([x.shape[0] for x in items], dtype=np.int64)
            except IndexError:
                raise ValueError(f"ragged field '{name}': every item needs its variable axis first (shape (L, ...)); "
                                 "a scalar item was given") from None
            return torch.cat(items), lengths
        else:
            arrays = [x if isinstance(x, np.ndarray) else np.asarray(_to_numpy(x), dtype=_np_dtype(field))
                      for x in items]
        try:
            lengths = np.array([len(x) for x in arrays], dtype=np.int64)
        except TypeError:
            raise ValueError(f"ragged field '{name}': every item needs its variable axis first (shape (L, ...)); "
                             "a scalar item was given") from None
        return np.concatenate(arrays), lengths
    raise TypeError(f"ragged field '{name}': extend takes a list of per-item values, a nested tensor or "
                    f"rv.Packed(values, offsets=...), got {type(value).__name__}")


def _to_numpy(x: Any) -> Any:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x
