"""A table's configuration: the one description of a buffer that every layer uses.

A configuration is a plain dict (JSON-able): capacity, spec, seed, and each part's entry
(``{"kind": ..., **settings}``, see ``_parts.py``), plus the optional metadata, remover, view
and rate limiter. The core keeps its canonical JSON (keys sorted) in the buffer's region, so
a shared segment or a memmap file describes itself; checkpoints and npz exports carry it,
and a shared buffer pickles as just its segment's name. The same configuration builds the
same buffer everywhere (``buffer_class`` picks the façade class by its view).
"""

from __future__ import annotations

import json
from typing import Any, Callable, Dict, List, Mapping, Optional, Type

from ._spec import Field

CONFIG_VERSION = 2

# view kind (None for plain buffers) -> the façade class that serves it (filled by the
# façade modules as they are imported: @register_buffer).
_BUFFER_CLASSES: Dict[Optional[str], Type[Any]] = {}


def register_buffer(view: Optional[str]) -> Callable[[Type[Any]], Type[Any]]:
    """Class decorator: the façade class that serves tables with this view kind."""

    def register(cls: Type[Any]) -> Type[Any]:
        _BUFFER_CLASSES[view] = cls
        return cls

    return register


def view_kind(config: Mapping[str, Any]) -> Optional[str]:
    """The façade kind of a configuration: its view's kind, "partitions" for a partitioned
    table, None for a plain one."""
    if config.get("partitions") is not None:
        return "partitions"
    if config.get("ragged") is not None:
        return "ragged"
    view = config.get("view")
    return None if view is None else view["kind"]


def buffer_class(config: Mapping[str, Any]) -> Type[Any]:
    """The façade class (ReplayBuffer, EpisodeBuffer) of a configuration."""
    kind = view_kind(config)
    cls = _BUFFER_CLASSES.get(kind)
    if cls is None:
        raise ValueError(f"no buffer class serves tables with view {kind!r} (known: "
                         f"{sorted(str(k) for k in _BUFFER_CLASSES)})")
    return cls


def spec_entry(spec: Mapping[str, Field]) -> List[List[Any]]:
    """A spec as the configuration holds it: [[name, dtype, [dims]], ...]."""
    return [[name, f.dtype, list(f.shape)] for name, f in spec.items()]


def spec_of(config: Mapping[str, Any]) -> Dict[str, Field]:
    return {name: Field(dtype, tuple(shape)) for name, dtype, shape in config["spec"]}


def make_config(capacity: int, spec: Mapping[str, Field], seed: int, *, writer: Any,
                selector: Any, admission: Any = None, max_times_sampled: Optional[int] = None,
                metadata: bool = False, view: Optional[Dict[str, Any]] = None,
                rate_limiter: Optional[Dict[str, Any]] = None, shard: int = 0,
                reuse: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The configuration of a table (parts as ``_parts.Part`` objects or None)."""
    config = {
        "capacity": int(capacity),
        "spec": spec_entry(spec),
        "seed": int(seed),
        "shard": int(shard),
        "writer": writer.config(),
        "selector": selector.config(),
        "admission": None if admission is None else admission.config(),
        "max_times_sampled": None if max_times_sampled is None else int(max_times_sampled),
        "metadata": bool(metadata),
        "view": view,
        "rate_limiter": rate_limiter,
    }
    if reuse is not None:  # absent otherwise: configurations of older files stay equal
        config["reuse"] = reuse
    return config


def canonical(config: Mapping[str, Any]) -> str:
    """The configuration as JSON, keys sorted (the core writes the same canonical form)."""
    return json.dumps(config, sort_keys=True, separators=(",", ":"))


def parse(text: str, where: str) -> Dict[str, Any]:
    """A configuration from its JSON (a region's, a checkpoint's, an export's)."""
    try:
        config = json.loads(text)
    except ValueError as e:
        raise ValueError(f"{where}: the stored configuration is not JSON ({e})") from None
    if not isinstance(config, dict) or "capacity" not in config or "spec" not in config:
        raise ValueError(f"{where}: the stored configuration is not a reverie table's")
    return config


# Settings that may change while a buffer is in use, left out when two configurations are
# compared for "the same buffer" (the core's fingerprint leaves them out too).
_LIVE = {"selector": ("beta", "exponent"), "admission": ("value",)}


def fixed(config: Mapping[str, Any]) -> Dict[str, Any]:
    """The configuration without its live settings."""
    out = {k: v for k, v in config.items() if k != "rate_limiter"}
    if isinstance(out.get("partitions"), dict):  # partitions made on first use: a fact of use
        out["partitions"] = {k: v for k, v in out["partitions"].items() if k != "created"}
    for role, names in _LIVE.items():
        part = out.get(role)
        if isinstance(part, dict):
            out[role] = {k: v for k, v in part.items() if k not in names}
    return out


def differences(stored: Mapping[str, Any], given: Mapping[str, Any]) -> List[str]:
    """The settings in which two configurations differ (live settings aside), as
    "<key> <stored> (given: <given>)" strings, for error messages."""
    a, b = fixed(stored), fixed(given)
    return [f"{_SHOWN.get(key, key)} {a.get(key)!r} (this call: {b.get(key)!r})"
            for key in sorted(set(a) | set(b))
            if json.dumps(a.get(key), sort_keys=True) != json.dumps(b.get(key), sort_keys=True)]


# Configuration keys as the constructors name them.
_SHOWN = {"selector": "sampler", "admission": "admit", "view": "episode options"}
