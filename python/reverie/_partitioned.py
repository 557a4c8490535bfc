"""PartitionedBuffer: a buffer split by a partition key (task, class, domain, source), one
table per partition (``_core.PartitionedTable``), batches mixed from the partitions by
weights that may change at any time."""

from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional

import torch

from ._batch import Batch
from ._buffer import ReplayBuffer
from ._config import register_buffer
from ._parts import Part
from ._spec import Field, SpecLike
from ._values import as_int


class Partition:
    """The settings of one declared partition; those left out are the buffer's.

    Args:
        capacity: items this partition holds.
        sampler, writer, admit, max_times_sampled: as for ``ReplayBuffer`` (``admit`` a
            rule such as ``Threshold``; a callable applies to the whole buffer).
    """

    def __init__(self, capacity: Optional[int] = None, *, sampler: Optional[Part] = None,
                 writer: Optional[Part] = None, admit: Optional[Part] = None,
                 max_times_sampled: Optional[int] = None) -> None:
        self.settings: Dict[str, Any] = {}
        if capacity is not None:
            capacity = as_int("capacity", capacity)
            if capacity <= 0:
                raise ValueError(f"capacity must be > 0, got {capacity}")
            self.settings["capacity"] = capacity
        for arg, role, value in (("sampler", "selector", sampler), ("writer", "writer", writer),
                                 ("admit", "admission", admit)):
            if value is None:
                continue
            if not isinstance(value, Part) or value.role != role:
                raise TypeError(f"{arg} must be a {role} part (e.g. rv.Uniform(), rv.Fifo(), "
                                f"rv.Threshold(...)), got {type(value).__name__}")
            self.settings[role] = value.config()
        if max_times_sampled is not None:
            n = as_int("max_times_sampled", max_times_sampled)
            if n < 1:
                raise ValueError(f"max_times_sampled must be >= 1 (or None), got {n}")
            self.settings["max_times_sampled"] = n

    def __repr__(self) -> str:
        return f"Partition({self.settings})"


def _weights(name: str, mixture: Mapping[Any, Any]) -> Dict[int, float]:
    if not isinstance(mixture, Mapping):
        raise TypeError(f"{name} must be a dict {{partition value: weight}}, got {type(mixture).__name__}")
    out: Dict[int, float] = {}
    for value, weight in mixture.items():
        v = as_int("a partition value", value)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise TypeError(f"{name}: the weight of partition {v} must be a number, got {type(weight).__name__}")
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"{name}: the weight of partition {v} must be finite and >= 0, got {weight}")
        out[v] = float(weight)
    if out and sum(out.values()) <= 0:
        raise ValueError(f"{name}: the weights must not all be 0")
    return out


@register_buffer("partitions")
class PartitionedBuffer(ReplayBuffer):
    """A replay buffer split into partitions by the value of an integer field (task, class,
    domain, or a source such as real / synthetic / demo), each with its own capacity,
    writer, admission rule, remover and sampler, and batches drawn from the partitions by
    mixture weights.

    Args:
        capacity: the capacity of each partition made on first use (and of declared ones
            that do not give their own).
        spec, sampler, seed, writer, admit, max_times_sampled, metadata, rate_limiter,
            storage, path: as for ``ReplayBuffer``; the parts are every partition's unless
            a declared partition gives its own. One rate limiter governs the whole buffer.
        key: the partition key, an integer scalar field of the spec.
        declared: ``{value: Partition(...)}`` made up front, in this order.
        max_partitions: how many partitions there can ever be (1 .. 4096; 64 by default).
        on_new: ``"make"`` (a partition for each new value, up to ``max_partitions``) or
            ``"error"`` (only declared values; a write of another is refused).
        mode: ``"exact"``: a batch takes the largest-remainder rounding of B * w_p / sum(w)
            from partition p, every call (a 25/75 mix of 256 is 64/192); ``"stochastic"``:
            multinomial counts.
        empty: an empty partition with weight > 0 makes a sample fail (``"error"``) or is
            left out of that call (``"skip"``).
        mixture: initial weights ``{value: weight}`` (see ``mixture``).

    Sampling. ``buf.mixture = {value: weight}`` sets the weights for every later call, from
    any thread, and for a shared buffer in every process; ``sample(B, mixture={...})`` for
    one call. Never set (or set to None), partitions are weighted by their sizes (uniform
    over all stored items). A partition of weight 0 is never drawn; a partition made after
    the mixture was set has weight 0 until it is set again. ``batch.partition`` holds each
    item's partition value; items come in partition order.

    Importance weights (prioritized partitions): ``w_i = (q_min / q_i)^beta`` with q_i the
    item's priority and q_min the smallest priority held by any partition the call draws
    from. They correct the prioritisation inside each partition, on one scale across
    partitions, and keep the mixture you chose (when the mixture is proportional to the
    partitions' priority totals they are exactly one prioritized buffer's over the union).

    Keys carry their partition, so ``get``, ``update_priorities`` and ``update_fields`` take
    keys of any partitions at once. ``columns`` (one storage view) does not exist here.

    >>> buf = PartitionedBuffer(100_000, spec, key="source",
    ...                         declared={REAL: Partition(50_000), SYNTH: Partition(450_000)})
    >>> buf.mixture = {REAL: 0.5, SYNTH: 0.5}
    >>> batch = buf.sample(256)        # 128 real, 128 synthetic, every call
    """

    _partitions: Dict[str, Any]

    def __init__(self, capacity: int, spec: Optional[SpecLike] = None, sampler: Optional[Part] = None,
                 seed: Optional[int] = None, *, key: str, declared: Optional[Mapping[Any, Partition]] = None,
                 max_partitions: int = 64, on_new: str = "make", mode: str = "exact", empty: str = "error",
                 mixture: Optional[Mapping[Any, Any]] = None, **kwargs: Any) -> None:
        if kwargs.get("device") is not None and torch.device(kwargs["device"]).type != "cpu":
            raise ValueError("a PartitionedBuffer lives in host memory (device='cpu' or None)")
        if not isinstance(key, str) or not key:
            raise TypeError(f"key must be a field name, got {key!r}")
        max_partitions = as_int("max_partitions", max_partitions)
        if not 1 <= max_partitions <= 4096:
            raise ValueError(f"max_partitions must be in [1, 4096], got {max_partitions}")
        for name, value, allowed in (("on_new", on_new, ("make", "error")), ("mode", mode, ("exact", "stochastic")),
                                     ("empty", empty, ("error", "skip"))):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
        entries: List[List[Any]] = []
        for value, part in (declared or {}).items():
            if not isinstance(part, Partition):
                raise TypeError(f"declared[{value!r}] must be a Partition(...), got {type(part).__name__}")
            entries.append([as_int("a partition value", value), dict(part.settings)])
        if len({v for v, _ in entries}) != len(entries):
            raise ValueError("a partition value is declared twice")
        if len(entries) > max_partitions:
            raise ValueError(f"{len(entries)} partitions are declared but max_partitions is {max_partitions}")
        if on_new == "error" and not entries:
            raise ValueError("on_new='error' needs declared partitions (no write could go anywhere)")
        weights = None if mixture is None else _weights("mixture", mixture)
        self._partitions = {"key": key, "max": max_partitions, "on_new": on_new, "mode": mode,
                            "empty": empty, "declared": entries, "created": []}
        super().__init__(capacity, spec, sampler, seed, **kwargs)
        if weights:
            self.mixture = weights

    def _config(self, spec: Mapping[str, Field]) -> Dict[str, Any]:
        config = super()._config(spec)
        config["partitions"] = dict(self._partitions)
        return config

    @classmethod
    def _from_config(cls, config: Mapping[str, Any], storage: str = "memory") -> "PartitionedBuffer":
        buf = super()._from_config(config, storage)
        buf._partitions = dict(config["partitions"])  # type: ignore[attr-defined]
        return buf  # type: ignore[return-value]

    # ---- partitions and the mixture -------------------------------------------------------

    @property
    def partitions(self) -> List[int]:
        """The partition values, in partition order (declared first, then as first written)."""
        if self._core is None:
            return [v for v, _ in self._partitions["declared"]]
        return list(self._core.values)

    def partition_sizes(self) -> Dict[int, int]:
        """{partition value: items held}."""
        if self._core is None:
            return {v: 0 for v in self.partitions}
        return dict(zip(self._core.values, self._core.partition_sizes()))

    def pin_partition(self, value: Any, pin: bool = True) -> int:
        """Pins a whole partition: every item it holds and every item written to it later
        is never evicted (GeRe's frozen set of general samples, a demo set). Once full, a
        pinned partition refuses further writes (ValueError, nothing stored) instead of
        evicting; ``pin_partition(value, False)`` (or ``unpin_partition``) releases it.
        Needs a writer with pins for that partition (``writer=rv.Fifo(pins=True)`` in its
        ``Partition``). Returns how many items changed."""
        v = as_int("a partition value", value)
        if self._core is None:
            self._check_open()
            raise ValueError(f"there is no partition {v} yet: the buffer's table is made at its first write")
        return int(self._core.pin_partition(v, bool(pin)))

    def pin_all(self, pin: bool = True) -> int:
        """Not for a partitioned buffer as a whole: pin a partition (``pin_partition``) or
        items (``pin``)."""
        raise ValueError("a partitioned buffer pins per partition: use pin_partition(value), or pin(keys)")

    def unpin_partition(self, value: Any) -> int:
        """Releases a partition pinned by ``pin_partition``; returns how many items changed."""
        return self.pin_partition(value, False)

    @property
    def mixture(self) -> Optional[Dict[int, float]]:
        """The shared mixture weights ``{value: weight}`` (None: by the partitions' sizes).
        Setting it takes effect at every thread's and process's next sample call; a value
        left out gets weight 0. Every value must be a partition that exists."""
        if self._core is None:
            return self._pending_mixture
        got = dict(self._core.mixture)
        return got or None

    @mixture.setter
    def mixture(self, weights: Optional[Mapping[Any, Any]]) -> None:
        if weights is None:
            if self._core is not None:
                self._core.clear_mixture()
            self._pending_mixture = None
            return
        checked = _weights("mixture", weights)
        if self._core is None:
            self._pending_mixture = checked  # applied once the table exists
            return
        self._core.set_mixture(checked)

    _pending_mixture: Optional[Dict[int, float]] = None

    def set_beta(self, beta: float) -> None:
        """Sets the importance exponent of every prioritized partition (live, in every
        process), e.g. to anneal it while training. ``buf.sampler.beta`` does the same when
        the buffer's own sampler is Prioritized."""
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta < 0:
            raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")
        if self._core is None:
            raise ValueError("the buffer has no partitions yet (it is built at the first write)")
        self._core.set_live("selector", "beta", float(beta))

    def _install(self, table: Any, owner: bool = True, configure_limiter: bool = True) -> Any:
        out = super()._install(table, owner, configure_limiter)
        if owner and self._pending_mixture:
            self._core.set_mixture(self._pending_mixture)
            self._pending_mixture = None
        return out

    def sample(self, batch_size: int, *, out: Optional[Mapping[str, torch.Tensor]] = None,
               device: Any = None, prefetch: bool = False,
               mixture: Optional[Mapping[Any, Any]] = None) -> Batch:
        """As ``ReplayBuffer.sample``, plus ``mixture={value: weight}`` for this call only
        (values left out: weight 0). ``batch.partition`` holds each item's partition value.

        Raises:
            ValueError: as ReplayBuffer.sample; a partition with weight > 0 is empty (with
                ``empty="error"``); every weight is 0; a mixture names no partition.
        """
        if mixture is None:
            return super().sample(batch_size, out=out, device=device, prefetch=prefetch)
        if device is not None or prefetch:
            raise ValueError("mixture= for one call does not combine with device=/prefetch=; "
                             "set buf.mixture instead")
        weights = _weights("mixture", mixture)
        table = self._table
        if table is None:
            from . import _writing
            table = _writing.await_first_item(self, batch_size)
        values = list(self._core.values)
        unknown = sorted(set(weights) - set(values))
        if unknown:
            raise ValueError(f"mixture names partition {unknown[0]}, which does not exist; "
                             f"partitions: {values}")
        batch_size = as_int("batch_size", batch_size)
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        return table.sample(batch_size, None if out is None else table.check_out(out, batch_size),
                            [weights.get(v, 0.0) for v in values])
