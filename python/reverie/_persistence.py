"""A buffer's persistence, in terms of its table's configuration and state alone: checkpoint
files (``save``/``load``), ``state_dict``/``load_state_dict``, and pickled shared handles.

No buffer class is named here: a stored configuration says which façade serves it
(``_config.buffer_class``), so this module does not import the buffer modules back.
"""

from __future__ import annotations

import os
from typing import (
    Any,
    Callable,
    Dict,
    Mapping,
    Optional,
    Tuple,
    TypeVar,
    Union,
)

from . import _checkpoint, _state
from ._config import buffer_class, differences, parse, spec_of
from ._limiter import RateLimiter
from ._parts import Part
from ._spec import Field
from ._table import Table
from ._values import as_int

# The buffers are typed structurally here (Any): naming their class would import it back.
ReplayBuffer = Any

B = TypeVar("B")


def reduce(buf: ReplayBuffer) -> Tuple[Any, ...]:
    """``buf.__reduce__``: a shared buffer pickles as its segment's name."""
    buf._check_open()
    if buf._storage == "memmap":
        raise TypeError("a storage='memmap' buffer cannot be sent to another process (one "
                        "process opens its file at a time): close it here and reopen "
                        "its path there")
    if buf._storage != "shared" or buf._core is None:
        raise TypeError(
            "a ReplayBuffer with storage='memory' cannot be sent to another process; "
            "create it with storage='shared' (and a spec) to share it, or send state_dict()")
    return (attach, (buf._core.shared_name, buf._admit_fn))


def attach(name: str, admit_fn: Optional[Callable[..., Any]] = None) -> ReplayBuffer:
    """Unpickles a shared buffer's handle: attaches to its segment (not as its owner). The
    segment describes itself (its configuration), so the handle is just its name."""
    config = Table.stored_config("attach_shared", name)
    buf = buffer_class(config)._from_config(config, storage="shared")
    buf._admit_fn = admit_fn
    table = Table.create(config, "attach_shared", name)
    buf._limiter = RateLimiter._from_core(table.core)
    buf._install(table, owner=False)
    return buf


def reopen(buf: ReplayBuffer, file: str, spec: Optional[Dict[str, Field]],
           named: Mapping[str, bool]) -> None:
    """Opens the table in an existing memmap file: its configuration (in the file's header)
    must match the call's; spec, seed and the policy roles the call does not name (`named`)
    are the file's."""
    stored = Table.stored_config("file", file)
    given = buf._config(spec_of(stored) if spec is None else spec)
    if buf._seed is None:
        given["seed"] = stored["seed"]
    for role, is_named in named.items():
        if not is_named:
            given[role] = stored.get(role)
    diff = differences(stored, given)
    if diff:
        raise ValueError(f"'{file}' holds a buffer made with other settings than this call's: "
                         + "; ".join(diff))
    buf._seed = int(stored["seed"])
    buf._sampler = Part.from_config("selector", stored["selector"])
    buf._writer = Part.from_config("writer", stored["writer"])
    admission = stored.get("admission")
    buf._admit = None if admission is None else Part.from_config("admission", admission)
    buf._max_times, buf._metadata = stored.get("max_times_sampled"), bool(stored.get("metadata"))
    table = buf._install(Table.create(stored, "file", file))
    if buf._limiter is None:  # the file's rate limiter stays in force: show it
        buf._limiter = RateLimiter._from_core(table.core)


def config_now(buf: ReplayBuffer) -> Dict[str, Any]:
    """The configuration with the live settings as they are now (what a save keeps)."""
    if buf._table is None:
        return buf._config({})
    config = parse(buf._core.config_json, "table")  # as now (a partitioned table's grows)
    config["selector"] = buf._sampler.config()
    if buf._admit is not None:
        config["admission"] = buf._admit.config()
    config["rate_limiter"] = None if buf._limiter is None else buf._limiter.config()
    return config


def save(buf: ReplayBuffer, path: Union[str, os.PathLike], progress: Optional[bool]) -> None:
    buf._check_open()
    _checkpoint.save(buf._table, config_now(buf), path, progress=progress)


def load(cls: Any, path: Union[str, os.PathLike], progress: Optional[bool]) -> Any:
    def check(config: Mapping[str, Any]) -> None:
        # The file's class, or a class it derives from (ReplayBuffer.load of an
        # EpisodeBuffer file), or a user subclass of it serving the same view.
        stored = buffer_class(config)
        if not (issubclass(stored, cls) or (issubclass(cls, stored) and cls._View is stored._View)):
            raise TypeError(f"{os.fspath(path)} holds a {stored.__name__}, which is not a "
                            f"{cls.__name__}; load it with {stored.__name__}.load")

    def configure(table: Table, config: Mapping[str, Any]) -> None:
        limiter = config.get("rate_limiter")
        if limiter is not None:  # before the counters: configuring resets the offset
            RateLimiter(**limiter)._bind(table.core)

    config, table = _checkpoint.load(path, check=check, before_restore=configure,
                                     progress=progress)
    stored = buffer_class(config)
    buf = (cls if issubclass(cls, stored) else stored)._from_config(config)
    if table is not None:
        buf._install(table, configure_limiter=False)
    return buf  # type: ignore[return-value]


def state_dict(buf: ReplayBuffer) -> Dict[str, Any]:
    return _state.state_dict(buf._table, config_now(buf))


def load_state_dict(buf: ReplayBuffer, state: Mapping[str, Any]) -> None:
    try:
        _load_state(buf, state)
    except (KeyError, TypeError, AttributeError, IndexError) as e:
        raise ValueError(f"malformed reverie state_dict: {type(e).__name__}: {e}") from None


def _load_state(buf: ReplayBuffer, state: Mapping[str, Any]) -> None:
    if buf._storage == "memmap":
        raise ValueError("load_state_dict into a storage='memmap' buffer is not supported: "
                         "load into a memory buffer, or reopen the memmap file")
    _state.check_format(state)
    theirs = dict(state["config"])
    mine = buf._config(spec_of(theirs) if buf._table is None else buf._table.spec)
    # Adopted from the state: the seed, and the sampler's and admission rule's settings
    # (when they are of the same kind); everything else must be this buffer's.
    mine["seed"] = theirs.get("seed")
    for role in ("selector", "admission"):
        if mine.get(role) and theirs.get(role) and mine[role]["kind"] == theirs[role]["kind"]:
            mine[role] = theirs[role]
    diff = differences(theirs, mine)
    if diff:
        raise ValueError("state is of another buffer: " + "; ".join(diff))
    seed = as_int("seed", theirs["seed"])
    sampler = Part.from_config("selector", theirs["selector"])
    admit = None if theirs.get("admission") is None else Part.from_config("admission", theirs["admission"])
    if "arrays" not in state:
        if buf._table is not None:
            raise ValueError("state is of an empty (unbuilt) buffer; this buffer holds data")
        buf._seed, buf._sampler = seed, sampler
        return

    def build(cfg: Mapping[str, Any]) -> Table:
        cfg = dict(cfg)
        cfg["rate_limiter"] = None if buf._limiter is None else buf._limiter.config()
        return Table.create(cfg, *buf._storage_args())

    def configure(table: Table) -> None:
        if buf._limiter is not None:  # before the counters: configuring resets the offset
            buf._limiter._bind(table.core)

    table = _state.load(state, build, configure)
    buf._seed, buf._sampler = seed, sampler
    if admit is not None:
        buf._admit = admit
    buf._install(table, configure_limiter=False)
