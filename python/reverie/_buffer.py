"""ReplayBuffer: the public façade over one table (``_table.Table``) built from parts.

Somewhat over 500 lines because most of it is the public docstrings (the API reference);
the logic lives in ``_writing`` (unbound writes), ``_persistence`` (checkpoints, state
dicts, shared handles, memmap reopen), ``_staging`` (device batches) and ``_table``.
"""

from __future__ import annotations

import copy
import os
import secrets
import threading
from multiprocessing import util as mp_util
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Type, TypeVar, Union

import numpy as np
import torch

from . import _core, _persistence, _writing
from ._batch import Batch
from ._config import buffer_class, make_config, register_buffer
from ._limiter import RateLimiter
from ._parts import Admit, Part, Prioritized, policy, reuse_rules
from ._spec import Field, SpecLike, normalize_spec
from ._staging import staged
from ._table import Table
from ._values import as_int as _as_int
from ._values import to_numpy as _to_numpy

B = TypeVar("B", bound="ReplayBuffer")


def _has_ragged(spec: Any) -> bool:
    """Whether a spec given to ReplayBuffer declares a ragged field (shape (None, ...))."""
    if not isinstance(spec, Mapping):
        return False
    return any((isinstance(f, Field) and f.ragged) or
               (isinstance(f, tuple) and len(f) == 2 and isinstance(f[1], tuple) and f[1][:1] == (None,))
               for f in spec.values())


@register_buffer(None)
class ReplayBuffer:
    """A replay buffer with a C++ core; batches come out as torch tensors.

    Items are dicts of named fields. The spec (each field's dtype and per-item shape) is
    given or inferred from the first ``add``/``extend``. What the buffer keeps is decided by
    its parts (README "Replay policies"): the writer (FIFO by default), an admission rule,
    and a remover (``max_times_sampled``); what a batch takes, by its sampler. All heavy work
    runs with the GIL released; any number of threads may add, sample and update priorities
    at once (FIFO writers are lock-free).

    Args:
        capacity: how many items the buffer holds.
        spec: optional {name: Field(dtype, shape) | (dtype, shape)}; required for
            ``storage="shared"``.
        sampler: ``Uniform()`` (default) or ``Prioritized(alpha, beta, eps)``.
        seed: seeds the counter-based generator: the same seed and the same calls give the
            same samples and admission decisions on any machine. Default: a random seed.
        writer: ``Fifo()`` (default: the oldest item leaves), ``Reservoir()`` (a uniform
            sample of everything offered) or ``KeepTopK(score="<field>" | "priority")``.
        admit: ``None``, ``Threshold("<field>", value)``, or a callable taking the batch as
            a dict of arrays (numpy or torch, as given; ``add`` passes a batch of one) and
            returning a bool mask; items it rejects are dropped. ``extend`` returns how many were
            stored. A callable is this process's own (it is not saved or shared).
        max_times_sampled: an item leaves after its N-th sample (Reverb's
            ``max_times_sampled``; 1: a consume-once queue). None: never.
        metadata: keep per-item metadata (insertion number, ``version``, times sampled,
            last sample call), returned as ``batch.meta``.
        rate_limiter: optional ``RateLimiter`` (minimum size, samples per insert).
        storage: ``"memory"`` (this process), ``"shared"`` or ``"memmap"``.
            ``"shared"``: POSIX shared memory that worker processes use too. A shared buffer
            pickles as a handle (its segment's name), so it can be passed to
            ``multiprocessing`` / ``torch.multiprocessing`` workers (spawn or fork); they
            attach by name. The creating process owns the segment and removes it on
            ``close()``, when the buffer is garbage collected, or when it exits.
            ``"memmap"``: the whole buffer (configuration, columns, counters, every part's
            state) lives in the file ``path``, so it may exceed RAM. Creating a buffer on an
            existing path reopens it with everything it held: spec, seed and policy
            (sampler, writer, admit, max_times_sampled, metadata) may then be left out, and
            those given must be the file's; the file's live settings, e.g. beta, and its rate
            limiter are kept unless a new rate limiter is given. One buffer in one process opens a path at
            a time.
        path: the file of a ``storage="memmap"`` buffer.
        device: ``"cuda"`` / ``"cuda:N"`` makes a GPU-resident buffer (``DeviceReplayBuffer``);
            ``None`` or ``"cpu"`` (default) keeps it in host memory. A host buffer still
            feeds a GPU learner: ``sample(B, device="cuda", prefetch=True)``.

    >>> buf = ReplayBuffer(100_000, sampler=Prioritized(alpha=0.6, beta=0.4), seed=0)
    >>> buf.add(obs=np.zeros(4, np.float32), action=1, reward=0.5, done=False)
    >>> batch = buf.sample(32)
    >>> buf.update_priorities(batch.indices, torch.rand(32))
    """

    _view: Optional[Any] = None  # an episode view (_episodes.EpisodeView) for EpisodeBuffer
    _View: Any = None  # the class of this façade's view (EpisodeBuffer: EpisodeView)
    _seed: Optional[int]
    _path: Optional[str]

    def __new__(cls, *args: Any, device: Any = None, **kwargs: Any) -> Any:
        # device="cuda": the buffer lives on the GPU (DeviceReplayBuffer).
        if device is not None and torch.device(device).type == "cuda":
            if cls is not ReplayBuffer:
                raise ValueError(f"device={device!r}: {cls.__name__} has no GPU-resident form; "
                                 "device buffers are ReplayBuffer(..., device='cuda')")
            unsupported = [k for k in ("rate_limiter", "storage", "path", "writer", "admit",
                                       "max_times_sampled", "metadata")
                           if kwargs.get(k) not in (None, "memory", False)]
            if unsupported:
                raise ValueError(f"device={device!r} buffers do not take {', '.join(unsupported)}: "
                                 "they are FIFO rings kept entirely in GPU memory")
            for k in ("rate_limiter", "storage", "path", "writer", "admit", "max_times_sampled", "metadata"):
                kwargs.pop(k, None)
            from ._device import DeviceReplayBuffer
            return DeviceReplayBuffer(*args, device=device, **kwargs)
        if cls is ReplayBuffer and _has_ragged(args[1] if len(args) > 1 else kwargs.get("spec")):
            # Ragged fields (shape (None, ...)): the buffer is a TrajectoryBuffer.
            return super().__new__(buffer_class({"ragged": True}))
        return super().__new__(cls)

    def __init__(self, capacity: int, spec: Optional[SpecLike] = None,
                 sampler: Optional[Part] = None, seed: Optional[int] = None, *,
                 writer: Optional[Part] = None, admit: Admit = None,
                 max_times_sampled: Optional[int] = None, metadata: bool = False,
                 rate_limiter: Optional[RateLimiter] = None, storage: str = "memory",
                 path: Optional[Union[str, os.PathLike]] = None, device: Any = None,
                 min_interval: Optional[int] = None, interval_unit: str = "calls",
                 max_staleness: Optional[int] = None) -> None:
        if device is not None and torch.device(device).type != "cpu":
            raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}")
        capacity = _as_int("capacity", capacity)
        if capacity <= 0:
            raise ValueError(f"capacity must be > 0, got {capacity}")
        # Roles the call names: a reopened memmap file's own are kept for the others.
        named = {"selector": sampler is not None, "writer": writer is not None,
                 "admission": admit is not None, "max_times_sampled": max_times_sampled is not None,
                 "metadata": bool(metadata)}
        sampler, writer, admit, admit_fn, max_times_sampled = policy(
            sampler, writer, admit, max_times_sampled, metadata)
        if storage not in ("memory", "shared", "memmap"):
            raise ValueError(f"storage must be 'memory', 'shared' or 'memmap', got {storage!r}")
        if rate_limiter is not None and not isinstance(rate_limiter, RateLimiter):
            raise TypeError(f"rate_limiter must be a RateLimiter, got {type(rate_limiter).__name__}")
        file: Optional[str] = None
        if storage == "memmap":
            if path is None:
                raise ValueError("storage='memmap' needs path=, the file the buffer lives in")
            file = os.fspath(path)
        elif path is not None:
            raise ValueError(f"path= is for storage='memmap' (this buffer: storage={storage!r})")
        if seed is not None:
            seed = _as_int("seed", seed)
            if not 0 <= seed < 2**64:
                raise ValueError(f"seed must be in [0, 2**64), got {seed}")
        reuse = reuse_rules(min_interval, interval_unit, max_staleness)
        self._init_fields(capacity, seed, storage, sampler, writer, admit, max_times_sampled,
                          metadata, copy.copy(rate_limiter), admit_fn, reuse)
        self._path = file
        if file is not None and os.path.exists(file) and os.path.getsize(file) > 0:
            _persistence.reopen(self, file, None if spec is None else normalize_spec(spec), named)
            return
        if self._seed is None:
            self._seed = secrets.randbits(63)
        if storage != "memory" and spec is None:
            raise ValueError(f"storage={storage!r} needs spec= (its layout is fixed up front), "
                             "e.g. spec={'obs': ('float32', (17,)), 'reward': ('float32', ())}")
        if spec is not None:
            self._build(normalize_spec(spec))

    # ---- construction -------------------------------------------------------------------

    def _init_fields(self, capacity: int, seed: Optional[int], storage: str, sampler: Part,
                     writer: Part, admit: Optional[Part], max_times: Optional[int],
                     metadata: bool, limiter: Optional[RateLimiter],
                     admit_fn: Optional[Callable[..., Any]] = None,
                     reuse: Optional[Dict[str, Any]] = None) -> None:
        """The state of a buffer with no table yet (__init__, and _from_config)."""
        self._capacity = capacity
        self._reuse = reuse
        self._seed = seed
        self._storage = storage
        self._path = None
        self._closed = False
        self._finalizer: Optional[mp_util.Finalize] = None
        self._sampler, self._writer, self._admit = sampler, writer, admit
        self._admit_fn = admit_fn
        self._max_times, self._metadata = max_times, metadata
        self._limiter = limiter
        if limiter is not None:
            limiter._core = None
        self._table: Optional[Table] = None
        self._core: Any = None
        # add/extend: C functions bound to this buffer once, for its whole life (aliases such
        # as `add = buf.add` taken at any time keep working); _install binds them to the core.
        self._writes, self.add, self.extend = _core.make_write_target(self)  # type: ignore[method-assign]
        self._built = threading.Event()  # set once the spec is known and the table exists
        self._first_write_lock = threading.Lock()  # one first write infers the spec
        self._version = 0
        self._stager: Any = None  # sample(device=..., prefetch=...) state (_staging.py)

    def _config(self, spec: Mapping[str, Field]) -> Dict[str, Any]:
        """This buffer's table configuration for `spec`."""
        return make_config(self._capacity, spec, int(self._seed or 0), writer=self._writer,
                           selector=self._sampler, admission=self._admit,
                           max_times_sampled=self._max_times, metadata=self._metadata,
                           view=None if self._view is None else self._view.config(),
                           rate_limiter=None if self._limiter is None else self._limiter.config(),
                           reuse=self._reuse)

    def _storage_args(self) -> Tuple[str, str]:
        if self._storage == "shared":
            return "create_shared", f"reverie-{os.getpid()}-{secrets.token_hex(6)}"
        if self._storage == "memmap":
            assert self._path is not None
            return "file", self._path
        return "memory", ""

    def _build(self, spec: Dict[str, Field]) -> Table:
        if self._view is not None:
            self._view.check_spec(spec)
        table = Table.create(self._config(spec), *self._storage_args())
        return self._install(table)

    def _install(self, table: Table, owner: bool = True, configure_limiter: bool = True) -> Table:
        if self._finalizer is not None:
            self._finalizer()  # a replaced shared table (load_state_dict): remove its segment
            self._finalizer = None
        core = table.core
        if owner and core.shared_name is not None:
            # Removes the segment when this object is collected, when the interpreter exits,
            # and when a multiprocessing worker that created it ends (those end with
            # os._exit, which skips atexit handlers but runs these finalizers).
            self._finalizer = mp_util.Finalize(self, core.unlink, exitpriority=0)
        if self._limiter is not None:
            if owner and configure_limiter:
                self._limiter._bind(core)
            else:
                self._limiter._core = core
        self._table, self._core = table, core
        if owner and not core.reopened and configure_limiter:
            core.version = self._version  # set before the table existed (a new table)
        self._sampler = self._sampler._bound(core)
        self._writer = self._writer._bound(core)
        if self._admit is not None:
            self._admit = self._admit._bound(core)
        if self._admit_fn is None:
            # The per-item path: add/extend go straight to the core (which validates
            # everything) without a Python frame in between.
            _core.bind_writes(self._writes, core)
        self._built.set()
        return table

    @classmethod
    def _from_config(cls, config: Mapping[str, Any], storage: str = "memory") -> "ReplayBuffer":
        """A façade for a table of this configuration, not built yet (checkpoints, exports,
        attaching processes)."""
        buf = cls.__new__(cls)
        view = config.get("view")
        if view is not None:
            buf._view = cls._View.from_config(view)
        limiter = config.get("rate_limiter")
        buf._init_fields(
            int(config["capacity"]), int(config["seed"]), storage,
            Part.from_config("selector", config["selector"]), Part.from_config("writer", config["writer"]),
            None if config.get("admission") is None else Part.from_config("admission", config["admission"]),
            config.get("max_times_sampled"), bool(config.get("metadata")),
            None if limiter is None else RateLimiter(**limiter), None, config.get("reuse"))
        return buf

    # ---- writing ----------------------------------------------------------------------
    # add/extend are instance attributes (C functions, see _init_fields); these class-level
    # methods document them and serve calls through the class (ReplayBuffer.add(buf, ...)).

    def add(self, **fields: Any) -> int:
        """Stores one item. Values: tensors, numpy arrays or Python numbers.

        Arrays and tensors must have the field's dtype and shape exactly; Python numbers are
        converted when their kind fits (bool -> any, int -> int/float, float -> float).

        Returns:
            1 if the item was stored, 0 if the admission rule or the writer dropped it.

        Raises:
            ValueError: a field is missing, unknown, or has the wrong shape.
            TypeError: a value has the wrong dtype or type.
        """
        return self.__dict__["add"](**fields)

    def extend(self, **fields: Any) -> int:
        """Stores a batch of items given along the leading axis of every field.

        Returns:
            How many items were stored (the rest were dropped by the admission rule or the
            writer). A FIFO buffer stores all: of more items than the capacity the last
            ``capacity`` stay.
        """
        return self.__dict__["extend"](**fields)

    def unbound_add(self, *args: Any, **fields: Any) -> int:
        """add() while no core is bound (before the spec is known, with a callable admit, or
        closed). Called by the write functions; not for direct use."""
        return _writing.unbound_write(self, args, fields, batched=False)

    def unbound_extend(self, *args: Any, **fields: Any) -> int:
        """extend() while no core is bound (see unbound_add)."""
        return _writing.unbound_write(self, args, fields, batched=True)

    # ---- reading ------------------------------------------------------------------------

    def sample(self, batch_size: int, *, out: Optional[Mapping[str, torch.Tensor]] = None,
               device: Any = None, prefetch: bool = False) -> Batch:
        """Draws ``batch_size`` items.

        Args:
            batch_size: items per batch (> 0).
            out: optional {field: tensor [B, *shape]} to gather into (e.g. pinned memory);
                each must be a contiguous CPU tensor of the field's dtype.
            device: where the batch goes, e.g. ``"cuda"``: rows are gathered into pinned
                memory (two sets, reused) and copied asynchronously on the current stream;
                ``indices`` stay on the CPU (for ``update_priorities``).
            prefetch: also start gathering the next batch of the same size and device on a
                worker thread now, while the caller trains on this one (double buffering).
                The next call with the same arguments returns it. It is drawn before this
                batch's priorities are updated (one step stale, as in Reverb's prefetch).

        Returns:
            A Batch whose tensors own freshly gathered memory (or are the ``out`` tensors);
            ``batch.meta`` with ``metadata=True``.

        Raises:
            ValueError: the buffer is empty, the batch is too large without replacement,
                every priority is zero, every item was sampled ``max_times_sampled`` times,
                or ``out`` does not fit.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int):
            batch_size = _as_int("batch_size", batch_size)
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        if device is not None or prefetch:
            if out is not None:
                raise ValueError("out= and device=/prefetch= exclude each other (staging uses its own pinned buffers)")
            return staged(self, batch_size, torch.device("cpu" if device is None else device),
                          bool(prefetch))
        table = self._table
        if table is None:
            table = _writing.await_first_item(self, batch_size)
        return table.sample(batch_size, None if out is None else table.check_out(out, batch_size))

    def get(self, keys: Any) -> Batch:
        """The stored items named by ``keys`` (e.g. ``batch.indices`` of an earlier sample),
        in that order, as a Batch of fresh tensors (``indices`` are the keys; no weights;
        ``meta`` as the items' metadata is now, with ``metadata=True``).

        An EpisodeBuffer returns its rows as stored (single frames, no next observation).

        Raises:
            IndexError: naming the first key that names no stored item: never written, not
                a key of this buffer, or overwritten or removed since (nothing changes).
            TypeError: keys are not integers.

        >>> batch = buf.sample(32)
        >>> again = buf.get(batch.indices)  # the same items, as long as they are stored
        """
        arr = _to_numpy(keys)
        table = self._table
        if table is None:
            self._check_open()
            if arr.size:
                raise IndexError(f"index {arr.reshape(-1)[0]} was never written: the buffer is empty")
            return Batch({}, torch.from_numpy(np.zeros(0, np.int64)), None)
        return table.get(arr.reshape(-1) if arr.ndim else arr.reshape(1))

    def update_priorities(self, indices: Any, priorities: Any) -> int:
        """Sets the priorities of sampled items (e.g. ``|TD error|``).

        Args:
            indices: the items' keys, as in ``batch.indices`` (1-D ints).
            priorities: 1-D, finite and >= 0, one per index. A repeated index keeps the
                last value.

        Returns:
            How many updates were ignored because their item has left since it was sampled
            (overwritten, evicted or removed; also counted in ``stale_updates``).

        Raises:
            IndexError: an index names nothing this buffer ever held.
            ValueError: a priority is NaN, infinite or negative; lengths differ; or the
                sampler is not prioritized.
            TypeError: indices are not integers or priorities not numbers.
        """
        keys = _to_numpy(indices)
        values = _to_numpy(priorities)
        core = self._core
        if core is None:
            self._check_open()
            if not isinstance(self._sampler, Prioritized):
                raise ValueError("update_priorities needs a prioritized sampler; this buffer "
                                 "samples uniformly")
            if keys.size:
                raise IndexError(f"index {keys.flat[0]} was never written: the buffer is empty")
            return 0
        return core.update_priorities(keys, values)

    def update_fields(self, keys: Any, **fields: Any) -> int:
        """Overwrites fields of stored items in place, e.g. advantages recalibrated after
        the fact (SPEAR), logits rewritten (DER), labels that arrive later.

        Args:
            keys: the items' keys, as in ``batch.indices`` (1-D ints).
            **fields: some of the buffer's fields, each ``[len(keys), *shape]`` with the
                field's dtype (tensors or arrays; Python numbers as for ``add``), or one
                item's shape to give every key the same value. A repeated key keeps the
                last value.

        Returns:
            How many keys were skipped because their item has left since (overwritten,
            evicted or removed; also counted in ``stale_updates``).

        Raises:
            IndexError: a key names nothing this buffer ever held.
            ValueError / TypeError: an unknown field, a field given twice, a wrong shape or
                dtype. Nothing changes on any error.

        A sample running at the same time returns each item either wholly before or
        wholly after the update.

        >>> batch = buf.sample(256)
        >>> buf.update_fields(batch.indices, advantage=new_adv)
        """
        arr = self._keys_for_core(keys)
        return 0 if arr is None else self._core.update_fields(arr, **fields)

    def pin(self, keys: Any) -> int:
        """Pins stored items: they are never evicted (the GeRe anchor set, a demo set that
        must stay) until ``unpin``. Needs a writer made with pins (``rv.Fifo(pins=True)``,
        ``rv.Reservoir(pins=True)``).

        Args:
            keys: the items' keys, as in ``batch.indices`` or ``buf.keys()`` (1-D ints).

        Returns:
            How many items were pinned by this call (pinned ones, and keys of items that
            left since, which are counted in ``stale_updates``, change nothing).

        Raises:
            IndexError: a key names nothing this buffer ever held (nothing changes).
            ValueError: the writer has no pins.
        """
        return self._pin(keys, True)

    def unpin(self, keys: Any) -> int:
        """Releases pinned items (they may be evicted again, oldest first); returns how many
        changed. Keys and errors as for ``pin``."""
        return self._pin(keys, False)

    def pin_all(self, pin: bool = True) -> int:
        """Pins every item held now and every item written from now on (a buffer, or with
        partitions see ``pin_partition``, of anchors); ``pin_all(False)`` unpins every item.
        Once full, a FIFO buffer that pins what it is given refuses further writes
        (ValueError); a reservoir drops them (``extend`` returns 0, counted in
        ``stats()["reservoir.rejected"]``). Returns how many items changed. (A partitioned
        buffer: ``pin_partition``.)"""
        core = self._core
        if core is None:
            self._check_open()
            raise ValueError("pin_all needs the buffer's writer, made at its first write: write first")
        return int(core.pin_all(bool(pin)))

    def keys(self) -> torch.Tensor:
        """The keys of the items stored now, oldest first (int64; O(size), or O(capacity log
        capacity) for writers other than FIFO): e.g. ``buf.pin(buf.keys()[:100])``."""
        if self._table is None:
            return torch.empty(0, dtype=torch.int64)
        return torch.from_numpy(np.ascontiguousarray(self._table.stored_keys(), dtype=np.int64))

    @property
    def pinned(self) -> int:
        """How many items are pinned now."""
        return 0 if self._core is None else int(self._core.pinned)

    def _pin(self, keys: Any, pin: bool) -> int:
        arr = self._keys_for_core(keys)
        return 0 if arr is None else int(self._core.pin(arr, pin))

    def _keys_for_core(self, keys: Any) -> Optional[np.ndarray]:
        """Keys as a 1-D array for the core, or None (nothing to do) when the buffer has no
        table yet and no keys were given; IndexError for keys of an empty buffer."""
        arr = _to_numpy(keys)
        arr = arr.reshape(-1) if arr.ndim else arr.reshape(1)
        if self._core is None:
            self._check_open()
            if arr.size:
                raise IndexError(f"index {arr[0]} was never written: the buffer is empty")
            return None
        return arr

    # ---- inspection ---------------------------------------------------------------------

    def __len__(self) -> int:
        return 0 if self._core is None else self._core.size

    capacity = property(lambda self: self._capacity, doc="How many items the buffer holds.")
    seed = property(lambda self: self._seed, doc="The generator's seed.")
    storage = property(lambda self: self._storage, doc="'memory', 'shared' or 'memmap'.")
    sampler = property(lambda self: self._sampler,
                       doc="This buffer's sampler; e.g. ``buf.sampler.beta = 1.0`` anneals beta.")
    writer = property(lambda self: self._writer, doc="This buffer's writer (Fifo, Reservoir, KeepTopK).")
    admit = property(lambda self: self._admit if self._admit_fn is None else self._admit_fn,
                     doc="The admission rule (e.g. ``buf.admit.value = 0.5``), callable, or None.")
    max_times_sampled = property(lambda self: self._max_times, doc="The remover's N, or None.")
    rate_limiter = property(lambda self: self._limiter,
                            doc="This buffer's RateLimiter (None without one); settings may change live.")

    @property
    def spec(self) -> Dict[str, Field]:
        """{name: Field}; empty until the spec is given or inferred."""
        return {} if self._table is None else dict(self._table.spec)

    @property
    def version(self) -> int:
        """An int stamped on every item written from now on (e.g. the policy version; the
        items' ``batch.meta["version"]`` with ``metadata=True``). Settable; shared by every
        process of a shared buffer."""
        return self._version if self._core is None else int(self._core.version)

    @version.setter
    def version(self, value: int) -> None:
        self._version = _as_int("version", value)
        if self._core is not None:
            self._core.version = self._version

    @property
    def shared_name(self) -> Optional[str]:
        """The shared-memory segment's name (/dev/shm/<name>), or None."""
        return None if self._core is None else self._core.shared_name

    @property
    def stale_updates(self) -> int:
        """Priority updates ignored because their item had left."""
        return 0 if self._core is None else self._core.stale_updates

    def stats(self) -> Dict[str, Any]:
        """The table's counters and every part's: items written, sample calls, stale updates,
        and e.g. ``reservoir.offers``, ``keep_top_k.rejected``, ``threshold.dropped``."""
        return {} if self._table is None else self._table.scalars()

    @property
    def columns(self) -> Dict[str, torch.Tensor]:
        """Zero-copy views of the storage: {name: tensor [capacity, *shape]}; writing to a
        view writes the buffer (bypassing every part)."""
        return {} if self._table is None else self._table.columns()

    def priorities(self) -> torch.Tensor:
        """The stored ``(p + eps)^alpha`` of every slot [capacity] (0 for slots without an
        item), as the sum-tree holds them (fixed point). Prioritized buffers only."""
        if not isinstance(self._sampler, Prioritized):
            raise ValueError("priorities() needs a Prioritized sampler")
        if self._table is None:
            return torch.zeros(self._capacity, dtype=torch.float64)
        return self._table.priorities()

    def _slots_of(self, keys: np.ndarray) -> np.ndarray:
        """The slots of the given keys (the core's decoder, key.h; -1: not a key of this
        buffer)."""
        assert self._table is not None
        return self._table.slots_of(keys)

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}: {f}" for n, f in self.spec.items()) or "inferred on first add"
        return (f"{type(self).__name__}(capacity={self._capacity}, size={len(self)}, "
                f"sampler={self._sampler!r}, writer={self._writer!r}, fields={{{fields}}})")

    # ---- lifetime, processes and persistence ----------------------------------------------

    def close(self) -> None:
        """Releases the buffer. For a shared buffer the creator also removes the segment's
        name (processes still attached keep working until they close). Idempotent."""
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None
        if self._core is not None:
            if self._storage == "memmap":
                self._core.flush()
            _core.bind_writes(self._writes, None)  # writes now report the closed buffer
        if self._stager is not None:
            self._stager.close()
            self._stager = None
        # Drop every reference to the core, so its memory (and a memmap file's lock) is
        # released now; column views handed out earlier keep it alive while they live.
        for part in (self._sampler, self._writer, self._admit, self._limiter):
            if part is not None:
                part._core = None
        self._table = self._core = None
        self._closed = True

    def flush(self) -> None:
        """A memmap buffer: writes its pages to the file and waits for the disk (msync).
        Other storage: no-op."""
        if self._core is not None and self._storage == "memmap":
            self._core.flush()

    def __enter__(self) -> "ReplayBuffer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("this buffer is closed")

    def __reduce__(self) -> Tuple[Any, ...]:
        return _persistence.reduce(self)

    def save(self, path: Union[str, os.PathLike], *, progress: Optional[bool] = None) -> None:
        """Writes a checkpoint of everything (configuration, storage, every part's state,
        counters, rate-limiter and generator state) to ``path``, atomically: a temporary file
        in the same directory, fsynced, then renamed over ``path``; a crash at any point
        leaves the previous file intact. A progress bar shows for large buffers
        (``progress=None``: above 256 MB). Call it while no other thread writes."""
        _persistence.save(self, path, progress)

    @classmethod
    def load(cls: Type[B], path: Union[str, os.PathLike], *, progress: Optional[bool] = None) -> B:
        """A buffer restored from ``save(path)``, in memory: it draws exactly the batches and
        makes exactly the admission and eviction decisions the saved buffer would have made
        next. The saved class is restored (an EpisodeBuffer file as EpisodeBuffer); a
        callable ``admit`` is not saved.

        Raises:
            ValueError: not a reverie checkpoint, another format version, truncated, or a
                checksum mismatch (naming the section). Nothing is returned then.
            TypeError: ``EpisodeBuffer.load`` of a plain buffer's file.
        """
        return _persistence.load(cls, path, progress)

    def state_dict(self) -> Dict[str, Any]:
        """Everything needed to continue exactly: the configuration and every state array
        and scalar of the table (tensors are copies)."""
        return _persistence.state_dict(self)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restores a ``state_dict()``: afterwards the buffer samples and decides what the
        original would.

        The state's seed and sampler settings are adopted, and so are the rate limiter's
        counts; its settings stay this buffer's own. Capacity, spec (an unbuilt buffer takes
        the state's), sampler kind, writer, admission rule, remover, metadata and view must
        match this buffer's. Everything is loaded into a new table first, and only then is it
        swapped in.

        Raises:
            ValueError: the state is malformed, inconsistent, or of another version or
                configuration. Nothing is changed then.
        """
        _persistence.load_state_dict(self, state)

