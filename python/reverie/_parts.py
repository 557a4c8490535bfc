"""The parts a buffer is built from: samplers (selectors), writers and admission rules.

Each class names its core part (``kind``, registered in ``cpp/src/parts.cc``) and carries its
settings; ``config()`` is the part's entry of the table configuration, ``from_config`` builds
it back. The core looks the kind up in its registry, so a new part is a core file, one
registration line there, and a small class here (registered by subclassing); nothing else
names the kinds.

Settings that may change while the buffer is in use (a prioritized sampler's ``beta``, a
threshold's ``value``) are *live*: once the part is bound to a buffer, setting them reaches
the buffer's core (and every process sharing it).
"""

from __future__ import annotations

import math
from typing import Any, Callable, ClassVar, Dict, Optional, Tuple, Type, Union

from ._values import as_int


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__}")
    return value


def _non_negative(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {value}")
    return float(value)


def _finite(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return float(value)


class Part:
    """A part of a buffer: its ``role`` (``"selector"``, ``"writer"``, ``"admission"``), its
    core ``kind`` and its settings. Subclasses with a ``kind`` register themselves."""

    role: ClassVar[str] = ""
    kind: ClassVar[str] = ""
    _classes: ClassVar[Dict[Tuple[str, str], Type["Part"]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.kind:
            Part._classes[(cls.role, cls.kind)] = cls

    def __init__(self) -> None:
        self._core: Optional[Any] = None  # the core table this part belongs to, once bound

    def settings(self) -> Dict[str, Any]:
        """The part's settings (without its kind)."""
        return {}

    def config(self) -> Dict[str, Any]:
        """The part's entry of a table configuration: ``{"kind": ..., **settings}``."""
        return {"kind": self.kind, **self.settings()}

    @classmethod
    def from_config(cls, role: str, config: Dict[str, Any]) -> "Part":
        """The part a configuration entry describes (ValueError for an unknown kind)."""
        if not isinstance(config, dict) or "kind" not in config:
            raise ValueError(f"a {role} configuration must be a mapping with a 'kind', got {config!r}")
        part = cls._classes.get((role, config["kind"]))
        if part is None:
            known = sorted(k for r, k in cls._classes if r == role)
            raise ValueError(f"unknown {role} kind {config['kind']!r}; known: {', '.join(known)}")
        settings = {k: v for k, v in config.items() if k != "kind"}
        return part(**settings)

    def _bound(self, core: Any) -> "Part":
        """A copy of this part bound to a buffer's core (live settings go there)."""
        part = self.__class__.__new__(self.__class__)
        part.__dict__.update(self.__dict__)
        part._core = core
        return part

    def _set_live(self, name: str, value: Any) -> None:
        if self._core is not None:
            self._core.set_live(self.role, name, value)

    def _live(self, name: str, fallback: Any) -> Any:
        if self._core is None:
            return fallback
        return self._core.live(self.role)[name]

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, Part) and self.role == other.role and self.config() == other.config()

    def __hash__(self) -> int:
        return hash((self.role, self.kind))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.settings().items())
        return f"{type(self).__name__}({args})"


# ---- samplers (the core's selectors) ----------------------------------------------------------


class Uniform(Part):
    """Uniform sampling over the stored items.

    Args:
        replacement: draw with replacement (default); without it a batch holds distinct
            items and may not be larger than the buffer.
    """

    role = "selector"
    kind = "uniform"

    def __init__(self, replacement: bool = True) -> None:
        super().__init__()
        self.replacement = _flag("replacement", replacement)

    def settings(self) -> Dict[str, Any]:
        return {"replacement": self.replacement}


class Prioritized(Part):
    """Proportional prioritized replay (Schaul et al., "Prioritized Experience Replay", 2016).

    An item with priority p_i (e.g. |TD error|) is drawn with probability
    ``P(i) = (p_i + eps)^alpha / sum_k (p_k + eps)^alpha``; new items get the largest
    ``(p + eps)^alpha`` seen so far. Batches are stratified: the total is cut into B equal
    segments and one item is drawn from each. Importance weights are
    ``w_i = (N * P(i))^-beta / max_j w_j`` with N the number of stored items.

    Args:
        alpha: how much prioritisation is used (0 = uniform).
        beta: importance-sampling correction (0 = none, 1 = full); may be annealed while
            training through ``buffer.sampler.beta = value`` (live).
        eps: added to every priority so no item's probability is exactly 0.

    >>> buf = ReplayBuffer(1000, sampler=Prioritized(alpha=0.6, beta=0.4))
    """

    role = "selector"
    kind = "prioritized"

    def __init__(self, alpha: float = 0.6, beta: float = 0.4, eps: float = 1e-6) -> None:
        super().__init__()
        self.alpha = _non_negative("alpha", alpha)
        self._beta = _non_negative("beta", beta)
        self.eps = _non_negative("eps", eps)

    @property
    def beta(self) -> float:
        if self._core is not None:
            self._beta = float(self._live("beta", self._beta))
        return self._beta

    @beta.setter
    def beta(self, value: float) -> None:
        value = _non_negative("beta", value)
        self._set_live("beta", value)
        self._beta = value

    def settings(self) -> Dict[str, Any]:
        return {"alpha": self.alpha, "beta": self.beta, "eps": self.eps}


class Recency(Part):
    """Recency-weighted sampling: P(i) proportional to (age_i + 1)^(-exponent), age_i the
    number of items written after item i (0 for the newest). Power-law replay
    ("Catastrophic Interference is Mitigated in Naturalistic Power-Law Learning
    Environments"); 0 is uniform. Draws are exact (a closed-form proposal with rejection),
    about 1-2 random numbers per item. ``buf.sampler.exponent = x`` changes it while the
    buffer is in use (live). Needs the FIFO writer.

    Args:
        exponent: a >= 0 (at most 64).
    """

    role = "selector"
    kind = "recency"

    def __init__(self, exponent: float = 1.0) -> None:
        super().__init__()
        self._exponent = _non_negative("exponent", exponent)
        if self._exponent > 64:
            raise ValueError(f"exponent must be at most 64, got {exponent}")

    @property
    def exponent(self) -> float:
        if self._core is not None:
            self._exponent = float(self._live("exponent", self._exponent))
        return self._exponent

    @exponent.setter
    def exponent(self, value: float) -> None:
        value = _non_negative("exponent", value)
        if value > 64:
            raise ValueError(f"exponent must be at most 64, got {value}")
        self._set_live("exponent", value)
        self._exponent = value

    def settings(self) -> Dict[str, Any]:
        return {"exponent": self.exponent}


# ---- writers --------------------------------------------------------------------------------


class _Pinnable(Part):
    """A writer with the ``pins`` option (pinned items are never evicted: writer.h)."""

    def __init__(self, pins: bool = False) -> None:
        super().__init__()
        self.pins = _flag("pins", pins)

    def settings(self) -> Dict[str, Any]:
        return {"pins": True} if self.pins else {}


class Fifo(_Pinnable):
    """First in, first out (the default): every item is stored; when the buffer is full the
    oldest is overwritten. Lock-free for any number of writer threads and processes.

    Args:
        pins: allow pinning (``buf.pin(keys)``, ``buf.pin_all()``): a pinned item is never
            evicted, and the others turn over in the remaining slots (the oldest unpinned
            item goes first; an unpinned item rejoins by its age). Writes then take the
            buffer's writer lock instead of the lock-free ring, and a buffer whose items are
            all pinned refuses writes (ValueError). Not with ``max_times_sampled``, episode
            buffers or the ``Recency`` sampler.
    """

    role = "writer"
    kind = "fifo"



class Reservoir(_Pinnable):
    """Reservoir sampling (Algorithm R; Vitter 1985) over every item ever offered: after n
    offers, each offered item is held with probability exactly capacity / n, so the buffer
    is a uniform sample of the whole stream (continual learning's reservoir rehearsal).

    The n-th offered item is kept while the buffer has room; after that it replaces a
    uniformly drawn slot j of [0, n) when j < capacity, else it is dropped (``extend``
    returns how many items it stored). Decisions depend only on the buffer's seed and n, so
    a batch of offers decides exactly as the same offers one by one. Not with
    ``max_times_sampled``.

    Args:
        pins: allow pinning (``buf.pin(keys)``): an offer whose drawn slot is pinned is
            dropped, so with P items pinned the other capacity - P slots hold a uniform
            sample of the stream (Algorithm R of that size).
    """

    role = "writer"
    kind = "reservoir"



class KeepTopK(Part):
    """Keeps the ``capacity`` best items by a score (Reverb's MinHeap remover, self-imitation's
    best-trajectory buffers): once full, an item enters iff its score is at least the lowest
    held score, evicting the lowest-scored item (the oldest among equal lowest scores); an
    item below the minimum is dropped (``extend`` returns how many it stored).

    Args:
        score: the name of a numeric scalar field, or ``"priority"`` to rank by the items'
            priorities under a ``Prioritized`` sampler (changing with ``update_priorities``;
            new items enter with the running max priority).
    """

    role = "writer"
    kind = "keep_top_k"

    def __init__(self, score: str) -> None:
        super().__init__()
        if not isinstance(score, str) or not score:
            raise TypeError(f"score must be a field name or 'priority', got {score!r}")
        self.score = score

    def settings(self) -> Dict[str, Any]:
        return {"score": self.score}


class ClassBalanced(Part):
    """A class-balanced reservoir (CBRS; Chrysakis & Moens, "Online Continual Learning from
    Imbalanced Data", ICML 2020): a memory that keeps every class of an imbalanced stream.

    While the buffer has room every item is kept. Once full, an item of a class that is not
    *full* replaces an item drawn uniformly from the largest class (uniformly among classes
    tied for largest); a class is full once it is, or has been since the buffer filled, a
    largest class. An item of a full class c replaces a uniformly drawn item of its own class
    with probability m_c / n_c (m_c held, n_c offered so far), else it is dropped. Held
    counts approach the water-filling min(n_c, tau); within a class the held items are a
    uniform sample of those offered. O(1) expected per offered item for any number of
    classes. Not with ``max_times_sampled``.

    Args:
        label: an integer scalar field holding the class.
        max_classes: how many classes the buffer can tell apart (1 .. 2^20; memory grows
            with it: 8 words per class); an item of one more class is refused (ValueError,
            nothing stored).

    ``buf.writer.counts()`` gives ``{label: held}`` and ``buf.writer.offered()`` the items
    offered per class.
    """

    role = "writer"
    kind = "class_balanced"

    def __init__(self, label: str, max_classes: int = 65536) -> None:
        super().__init__()
        if not isinstance(label, str) or not label:
            raise TypeError(f"label must be a field name, got {label!r}")
        self.label = label
        self.max_classes = as_int("max_classes", max_classes)
        if not 1 <= self.max_classes <= 1 << 20:
            raise ValueError(f"max_classes must be in [1, 1048576], got {self.max_classes}")

    def settings(self) -> Dict[str, Any]:
        return {"label": self.label, "max_classes": self.max_classes}

    def _per_class(self, what: str) -> Dict[int, int]:
        if self._core is None:
            return {}
        import numpy as np  # the part classes stay importable without numpy at hand

        arrays, scalars = self._core.snapshot([f"{self.kind}.labels", f"{self.kind}.{what}"])
        n = int(scalars[f"{self.kind}.classes"])
        labels = np.frombuffer(arrays[0], np.int64)[:n]
        values = np.frombuffer(arrays[1], np.int64)[:n]
        return dict(zip(labels.tolist(), values.tolist()))

    def counts(self) -> Dict[int, int]:
        """Items held per class label, for every class seen (a consistent snapshot)."""
        return self._per_class("held")

    def offered(self) -> Dict[int, int]:
        """Items offered per class label so far (n_c)."""
        return self._per_class("offered")


class Quotas(ClassBalanced):
    """Equal shares of one memory as groups (tasks, experiences, sources) arrive, each group
    keeping its newest items: while the buffer has room every item is kept; once full, an
    item of a group below its share takes the oldest item of the largest group (uniformly
    among groups tied for largest), and an item of a group at its share replaces that
    group's own oldest item. Held counts are the water-filling min(n_g, tau) within 1:
    slots a small group cannot fill go to the others, and every group keeps at least one
    slot while groups <= capacity (Avalanche's ExperienceBalancedBuffer gives groups 0 slots
    once they outnumber capacity per group). O(1) per item for any number of groups. For a
    uniform sample of each group instead of its newest items, use ``ClassBalanced`` (CBRS:
    the same shares). Not with ``max_times_sampled``.

    Args:
        group: an integer scalar field holding the group.
        max_groups: how many groups the buffer can tell apart (1 .. 2^20); an item of one
            more is refused (ValueError, nothing stored).

    ``buf.writer.counts()`` gives ``{group: held}``, ``buf.writer.offered()`` the items
    offered per group.
    """

    kind = "quotas"

    def __init__(self, group: str, max_groups: int = 65536) -> None:
        if not isinstance(group, str) or not group:
            raise TypeError(f"group must be a field name, got {group!r}")
        max_groups = as_int("max_groups", max_groups)
        if not 1 <= max_groups <= 1 << 20:
            raise ValueError(f"max_groups must be in [1, 1048576], got {max_groups}")
        super().__init__(group, max_groups)
        self.group = group
        self.max_groups = max_groups

    def settings(self) -> Dict[str, Any]:
        return {"group": self.group, "max_groups": self.max_groups}


class KeyedArchive(Part):
    """An archive of at most one item per user key, replaced only by a better one
    (Go-Explore's cell archive, a solution cache per problem), the worst keys evicted once
    the buffer is full.

    Entries rank by (score, tiebreak, recency): a higher ``score`` is better; at equal
    scores the better ``tiebreak`` (smaller with ``tiebreak_order="min"``, the default, e.g.
    a trajectory length; larger with ``"max"``); at equal both the newer item. An item
    whose key is held replaces that entry iff it ranks above it (a worse one is a no-op);
    an item of a new key takes a free slot, or once full replaces the lowest-ranked entry
    iff it ranks above it (that entry's key leaves the archive). ``extend`` returns how
    many items were stored. O(1) expected per offered item for the key lookup, plus
    O(log capacity) for an item that enters. NaN scores are refused. Not with
    ``max_times_sampled``.

    Args:
        key: an integer scalar field (a cell id, a problem id).
        score: a numeric scalar field.
        tiebreak: a numeric scalar field ranking equal scores, or None.
        tiebreak_order: ``"min"`` or ``"max"``: which tiebreak value wins.

    ``buf.writer.lookup(user_keys)`` gives the buffer keys held for those user keys (-1:
    none), for ``buf.get``; ``len(buf)`` is the number of keys held.
    """

    role = "writer"
    kind = "keyed_archive"

    def __init__(self, key: str, score: str, tiebreak: Optional[str] = None,
                 tiebreak_order: str = "min") -> None:
        super().__init__()
        for name, value in (("key", key), ("score", score)):
            if not isinstance(value, str) or not value:
                raise TypeError(f"{name} must be a field name, got {value!r}")
        if tiebreak is not None and (not isinstance(tiebreak, str) or not tiebreak):
            raise TypeError(f"tiebreak must be a field name or None, got {tiebreak!r}")
        if tiebreak_order not in ("min", "max"):
            raise ValueError(f"tiebreak_order must be 'min' (the smaller wins) or 'max', got {tiebreak_order!r}")
        self.key, self.score, self.tiebreak, self.tiebreak_order = key, score, tiebreak, tiebreak_order

    def settings(self) -> Dict[str, Any]:
        return {"key": self.key, "score": self.score, "tiebreak": self.tiebreak,
                "tiebreak_order": self.tiebreak_order}

    def lookup(self, user_keys: Any) -> Any:
        """The buffer keys of the entries held for ``user_keys`` (an int64 tensor, -1 where a
        user key holds nothing), e.g. ``buf.get(keys[keys >= 0])``."""
        import numpy as np
        import torch

        arr = np.asarray(user_keys.numpy() if hasattr(user_keys, "numpy") else user_keys)
        arr = arr.reshape(-1)
        if self._core is None:
            return torch.full((arr.size,), -1, dtype=torch.int64)
        return torch.from_numpy(self._core.lookup(arr))


# ---- admission rules ------------------------------------------------------------------------


class Threshold(Part):
    """Admits only items whose score field is at least ``value`` (decided for a whole batch
    at once); the others are dropped and counted, and ``extend`` returns how many were
    stored. ``buf.admit.value = x`` changes the threshold while the buffer is in use (live).

    Args:
        field: a numeric scalar field.
        value: the lowest score admitted (finite).
    """

    role = "admission"
    kind = "threshold"

    def __init__(self, field: str, value: float) -> None:
        super().__init__()
        if not isinstance(field, str) or not field:
            raise TypeError(f"field must be a field name, got {field!r}")
        self.field = field
        self._value = _finite("value", value)

    @property
    def value(self) -> float:
        if self._core is not None:
            self._value = float(self._live("value", self._value))
        return self._value

    @value.setter
    def value(self, value: float) -> None:
        value = _finite("value", value)
        self._set_live("value", value)
        self._value = value

    def settings(self) -> Dict[str, Any]:
        return {"field": self.field, "value": self.value}


def sampler_from_config(config: Dict[str, Any]) -> Part:
    """The sampler a configuration entry (``sampler.config()``) describes."""
    return Part.from_config("selector", dict(config))


Admit = Union[Part, Callable[[Dict[str, Any]], Any], None]


def _given(value: Any, arg: str, role: str, default: Part, names: str) -> Part:
    """The part given as argument `arg` (which must play `role`), or `default`: a fresh,
    unbound copy with the settings as they are now (a part taken from another buffer is
    bound to that one's core)."""
    if value is None:
        return default
    if not isinstance(value, Part) or value.role != role:
        raise TypeError(f"{arg} must be {names}, got {type(value).__name__}")
    return Part.from_config(role, value.config())


def policy(sampler: Optional[Part], writer: Optional[Part], admit: Admit,
           max_times_sampled: Optional[int], metadata: bool
           ) -> Tuple[Part, Part, Optional[Part], Optional[Callable[..., Any]], Optional[int]]:
    """A buffer's policy arguments, checked: (sampler, writer, admission rule, admission
    callable, max_times_sampled). Which combinations the table accepts is the core's to say."""
    sampler = _given(sampler, "sampler", "selector", Uniform(), "Uniform(), Prioritized(...) or Recency(...)")
    writer = _given(writer, "writer", "writer", Fifo(),
                    "Fifo(), Reservoir(), KeepTopK(score=...), ClassBalanced(label=...), Quotas(group=...) or "
                    "KeyedArchive(...)")
    admit_fn: Optional[Callable[..., Any]] = None
    if admit is not None and not isinstance(admit, Part):
        if not callable(admit):
            raise TypeError(f"admit must be None, a rule such as Threshold(...) or a callable, "
                            f"got {type(admit).__name__}")
        admit_fn, admit = admit, None
    elif admit is not None:
        admit = _given(admit, "admit", "admission", admit, "Threshold(...) or a callable")
    if max_times_sampled is not None:
        max_times_sampled = as_int("max_times_sampled", max_times_sampled)
        if max_times_sampled < 1:
            raise ValueError(f"max_times_sampled must be >= 1 (or None), got {max_times_sampled}")
    if not isinstance(metadata, bool):
        raise TypeError(f"metadata must be a bool, got {type(metadata).__name__}")
    return sampler, writer, admit, admit_fn, max_times_sampled


def reuse_rules(min_interval: Optional[int], unit: str, max_staleness: Optional[int]) -> Optional[Dict[str, Any]]:
    """The table's "reuse" entry from the buffer's arguments (None: no rules), checked."""
    if min_interval is None and max_staleness is None:
        if unit != "calls":
            raise ValueError("interval_unit is for min_interval, which is not given")
        return None
    out: Dict[str, Any] = {}
    if min_interval is not None:
        n = as_int("min_interval", min_interval)
        if n < 1:
            raise ValueError(f"min_interval must be >= 1 (or None), got {n}")
        if unit not in ("calls", "items"):
            raise ValueError(f"interval_unit must be 'calls' (sample calls) or 'items' (items written), got {unit!r}")
        out["min_interval"], out["unit"] = n, unit
    if max_staleness is not None:
        s = as_int("max_staleness", max_staleness)
        if s < 0:
            raise ValueError(f"max_staleness must be >= 0 (or None), got {s}")
        out["max_staleness"] = s
    return out
