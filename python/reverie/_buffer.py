"""The public replay buffer: a thin, validated front over reverie._core."""

from __future__ import annotations

import copy
import json
import os
import secrets
import threading
from multiprocessing import util as mp_util
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import numpy as np
import torch

from . import _core
from ._limiter import RateLimiter
from ._samplers import Prioritized, Uniform, sampler_from_config
from ._spec import Field, SpecLike, infer_field, normalize_spec

_STATE_VERSION = 1


class Batch(dict):
    """A sampled batch: a dict of field name -> tensor [B, *shape], with attribute access.

    Attributes:
        indices: int64 tensor [B], the items' keys for ``update_priorities`` (key = the
            item's insertion number; ``key % capacity`` is its slot).
        weights: float32 tensor [B] of importance weights (prioritized sampling), else None.
    """

    __slots__ = ("indices", "weights")

    def __init__(self, fields: Any, indices: torch.Tensor,
                 weights: Optional[torch.Tensor]) -> None:
        super().__init__(fields)
        self.indices = indices
        self.weights = weights

    def __getattr__(self, name: str) -> torch.Tensor:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(
                f"batch has no field '{name}'; fields: {', '.join(self)}"
            ) from None

    def to(self, *args: Any, **kwargs: Any) -> "Batch":
        """Moves every tensor (e.g. ``batch.to("cuda", non_blocking=True)``)."""
        moved = {k: v.to(*args, **kwargs) for k, v in self.items()}
        weights = None if self.weights is None else self.weights.to(*args, **kwargs)
        return Batch(moved, self.indices, weights)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}: {tuple(v.shape)} {v.dtype}" for k, v in self.items())
        return f"Batch({fields}, weights={'yes' if self.weights is not None else 'no'})"


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    return int(value)


def _to_numpy(value: Any) -> np.ndarray:
    """A numpy view (CPU tensors, arrays) or conversion (other devices, sequences)."""
    if isinstance(value, torch.Tensor):
        try:
            return value.numpy()  # the common case: a CPU tensor, no copy
        except (RuntimeError, TypeError):  # requires grad, another device, or bfloat16
            value = value.detach().cpu()
            return (value.float() if value.dtype == torch.bfloat16 else value).numpy()
    arr = np.asarray(value)
    if arr.size == 0 and arr.dtype.kind == "f":
        arr = arr.astype(np.int64)  # an empty list: no dtype to judge
    return arr


class ReplayBuffer:
    """A fixed-capacity replay buffer with a C++ core; batches come out as torch tensors.

    Items are dicts of named fields. The spec (each field's dtype and per-item shape) is
    given or inferred from the first ``add``/``extend``. When full, the oldest items are
    overwritten. All heavy work runs with the GIL released; any number of threads may add,
    sample and update priorities at once (writers are lock-free).

    Args:
        capacity: how many items the buffer holds.
        spec: optional {name: Field(dtype, shape) | (dtype, shape)}; required for
            ``storage="shared"``.
        sampler: ``Uniform()`` (default) or ``Prioritized(alpha, beta, eps)``.
        seed: seeds the counter-based generator: the same seed and the same calls give the
            same samples on any machine. Default: a random seed.
        rate_limiter: optional ``RateLimiter`` (minimum size, samples per insert).
        storage: ``"memory"`` (this process), ``"shared"`` or ``"memmap"``.
            ``"shared"``: POSIX shared memory that worker processes use too. A shared buffer
            pickles as a handle, so it can be passed to ``multiprocessing`` /
            ``torch.multiprocessing`` workers (spawn or fork); they attach by name. The
            creating process owns the segment and removes it on ``close()``, when the buffer
            is garbage collected, or when it exits.
            ``"memmap"``: the whole buffer (columns, counters, priority tree) lives in the
            file ``path``, so it may exceed RAM (the OS pages it in and out). Creating a
            buffer on an existing path reopens it with everything it held; its settings
            are kept in ``<path>.json`` (spec and seed may then be left out; the file's
            prioritized beta and rate limiter are kept unless new ones are given). One
            buffer in one process opens a path at a time.
        path: the file of a ``storage="memmap"`` buffer.
        device: ``"cuda"`` / ``"cuda:N"`` makes a GPU-resident buffer (``DeviceReplayBuffer``:
            columns, priority tree and sampling in device memory); ``None`` or ``"cpu"``
            (default) keeps it in host memory. A host buffer still feeds a GPU learner:
            ``sample(B, device="cuda", prefetch=True)``.

    >>> buf = ReplayBuffer(100_000, sampler=Prioritized(alpha=0.6, beta=0.4), seed=0)
    >>> buf.add(obs=np.zeros(4, np.float32), action=1, reward=0.5, done=False)
    >>> batch = buf.sample(32)
    >>> buf.update_priorities(batch.indices, torch.rand(32))
    """

    def __new__(cls, *args: Any, device: Any = None, **kwargs: Any) -> Any:
        # device="cuda": the buffer lives on the GPU (DeviceReplayBuffer).
        if device is not None and torch.device(device).type == "cuda":
            if cls is not ReplayBuffer:
                raise ValueError(f"device={device!r}: {cls.__name__} has no GPU-resident form; "
                                 "device buffers are ReplayBuffer(..., device='cuda')")
            unsupported = [k for k in ("rate_limiter", "storage", "path") if kwargs.get(k) not in (None, "memory")]
            if unsupported:
                raise ValueError(f"device={device!r} buffers do not take {', '.join(unsupported)}: "
                                 "they keep everything in GPU memory")
            kwargs.pop("rate_limiter", None), kwargs.pop("storage", None), kwargs.pop("path", None)
            from ._device import DeviceReplayBuffer
            return DeviceReplayBuffer(*args, device=device, **kwargs)
        return super().__new__(cls)

    def __init__(self, capacity: int, spec: Optional[SpecLike] = None,
                 sampler: Union[Uniform, Prioritized, None] = None,
                 seed: Optional[int] = None, *, rate_limiter: Optional[RateLimiter] = None,
                 storage: str = "memory", path: Optional[Union[str, os.PathLike]] = None,
                 device: Any = None) -> None:
        if device is not None and torch.device(device).type != "cpu":
            raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}")
        capacity = _as_int("capacity", capacity)
        if capacity <= 0:
            raise ValueError(f"capacity must be > 0, got {capacity}")
        if sampler is None:
            sampler = Uniform()
        if not isinstance(sampler, (Uniform, Prioritized)):
            raise TypeError(f"sampler must be Uniform or Prioritized, got {type(sampler).__name__}")
        if storage not in ("memory", "shared", "memmap"):
            raise ValueError(f"storage must be 'memory', 'shared' or 'memmap', got {storage!r}")
        file: Optional[str] = None
        if storage == "memmap":
            if path is None:
                raise ValueError("storage='memmap' needs path=, the file the buffer lives in")
            file = os.fspath(path)
            spec, seed = self._reopen_settings(file, capacity, spec, sampler, seed)
        elif path is not None:
            raise ValueError(f"path= is for storage='memmap' (this buffer: storage={storage!r})")
        if seed is None:
            seed = secrets.randbits(63)
        seed = _as_int("seed", seed)
        if not 0 <= seed < 2**64:
            raise ValueError(f"seed must be in [0, 2**64), got {seed}")
        if rate_limiter is not None and not isinstance(rate_limiter, RateLimiter):
            raise TypeError(f"rate_limiter must be a RateLimiter, got {type(rate_limiter).__name__}")
        if storage != "memory" and spec is None:
            raise ValueError(f"storage={storage!r} needs spec= (its layout is fixed up front), "
                             "e.g. spec={'obs': ('float32', (17,)), 'reward': ('float32', ())}")
        sampler = copy.copy(sampler)  # bound to this buffer (beta changes reach its core)
        if isinstance(sampler, Prioritized):
            sampler._core = None  # a sampler passed from another buffer is not bound here
        limiter = copy.copy(rate_limiter)
        if limiter is not None:
            limiter._core = None
        self._init_fields(capacity, seed, storage, sampler, limiter)
        self._path: Optional[str] = file
        if spec is not None:
            self._build(normalize_spec(spec))

    # ---- construction -------------------------------------------------------------------

    def _settings(self, spec: Mapping[str, Any]) -> Dict[str, Any]:
        """What a memmap buffer's <path>.json keeps: everything its layout depends on."""
        return {"class": type(self).__name__, "capacity": self._capacity,
                "spec": {n: [f.dtype, list(f.shape)] for n, f in normalize_spec(spec).items()},
                "sampler": {k: v for k, v in self._sampler.config().items() if k != "beta"},
                "seed": self._seed, "options": _jsonable(self._options())}

    def _reopen_settings(self, file: str, capacity: int, spec: Optional[SpecLike],
                         sampler: Union[Uniform, Prioritized],
                         seed: Optional[int]) -> Tuple[Optional[SpecLike], Optional[int]]:
        """For an existing memmap file: the spec and seed it was made with (given ones must
        match). Returns (spec, seed) unchanged for a new file."""
        meta_path = file + ".json"
        if not (os.path.exists(file) and os.path.getsize(file) > 0):
            return spec, seed
        try:
            with open(meta_path) as f:
                meta = json.load(f)
        except (OSError, ValueError) as e:
            raise ValueError(f"'{file}' exists but its settings file '{meta_path}' cannot be "
                             f"read ({e}); it is not a reverie memmap buffer, or was moved "
                             "without its .json") from None
        given = {"class": type(self).__name__, "capacity": capacity,
                 "sampler": {k: v for k, v in sampler.config().items() if k != "beta"},
                 "options": _jsonable(self._options())}
        for key, value in given.items():
            if meta.get(key) != value:
                raise ValueError(f"'{file}' holds a buffer with {key} {meta.get(key)!r}; this "
                                 f"call asks for {value!r}")
        if spec is not None and {n: [f.dtype, list(f.shape)]
                                 for n, f in normalize_spec(spec).items()} != meta["spec"]:
            raise ValueError(f"'{file}' holds a buffer with spec {meta['spec']}; this call "
                             f"gives {spec}")
        if seed is not None and _as_int("seed", seed) != meta["seed"]:
            raise ValueError(f"'{file}' holds a buffer with seed {meta['seed']}; this call "
                             f"gives {seed} (leave seed out to keep the file's)")
        return {n: (d, tuple(sh)) for n, (d, sh) in meta["spec"].items()}, int(meta["seed"])

    def _write_settings(self, spec: Mapping[str, Any]) -> None:
        assert self._path is not None
        tmp = f"{self._path}.json.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(self._settings(spec), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._path + ".json")
        from ._checkpoint import _fsync_dir

        _fsync_dir(os.path.dirname(os.path.abspath(self._path)))

    def _init_fields(self, capacity: int, seed: int, storage: str,
                     sampler: Union[Uniform, Prioritized], limiter: Optional[RateLimiter]) -> None:
        """The state of a buffer with no core yet (__init__, and _attach on unpickling)."""
        self._capacity = capacity
        self._seed = seed
        self._storage = storage
        self._path = None  # the file of a memmap buffer (set by __init__)
        self._closed = False
        self._finalizer: Optional[mp_util.Finalize] = None
        self._sampler = sampler
        self._limiter = limiter
        self._core: Any = None
        # add/extend: C functions bound to this buffer once, for its whole life (aliases such
        # as `add = buf.add` taken at any time keep working); _install binds them to the core.
        self._writes, self.add, self.extend = _core.make_write_target(self)  # type: ignore[method-assign]
        self._built = threading.Event()  # set once the spec is known and the core exists
        self._first_write_lock = threading.Lock()  # one first write infers the spec
        self._spec: Dict[str, Field] = {}
        self._columns: Optional[Dict[str, torch.Tensor]] = None
        self._stager: Any = None  # sample(device=..., prefetch=...) state (_staging.py)

    def _build(self, spec: Dict[str, Field]) -> Any:
        if self._storage == "memmap":
            assert self._path is not None
            if not (os.path.exists(self._path) and os.path.getsize(self._path) > 0):
                # Settings first: a crash between the two leaves settings without data, which
                # the next open overwrites, never data without its settings.
                self._write_settings(spec)
        core = self._install(self._make_core(spec, self._sampler, self._seed), spec)
        if self._storage == "memmap" and core.reopened:
            if isinstance(self._sampler, Prioritized):
                self._sampler._beta = float(core.beta)  # as the file has it
            if self._limiter is None:
                # The file's rate limiter stays in force: show it.
                self._limiter = RateLimiter._from_core(core)
        return core

    def _make_core(self, spec: Dict[str, Field], sampler: Union[Uniform, Prioritized],
                   seed: int, attach: Optional[str] = None) -> Any:
        if attach is not None:
            storage, name = "attach_shared", attach
        elif self._storage == "shared":
            storage, name = "create_shared", f"reverie-{os.getpid()}-{secrets.token_hex(6)}"
        elif self._storage == "memmap":
            assert self._path is not None
            storage, name = "file", self._path
        else:
            storage, name = "memory", ""
        return _core.ReplayBuffer(
            self._capacity, [(n, f.dtype, list(f.shape)) for n, f in spec.items()],
            seed=seed, storage=storage, name=name, **sampler._core_args(),
            **self._core_options(spec))

    # Hooks for subclasses with more core configuration (EpisodeBuffer).
    def _leading_axes(self, fields: Mapping[str, Any]) -> int:
        """Axes before the item's shape in an extend() whose spec is being inferred."""
        return 1

    def _slots_of(self, keys: np.ndarray) -> np.ndarray:
        """The slots of the given keys (the core's decoder, key.h; -1: not a key of this
        buffer)."""
        return self._core.slots_of(np.asarray(keys, dtype=np.int64))

    def _core_options(self, spec: Dict[str, Field]) -> Dict[str, Any]:
        """Extra keyword arguments of the core for this spec (validated here)."""
        return {}

    def _options(self) -> Dict[str, Any]:
        """The constructor options a process attaching to this buffer needs."""
        return {}

    def _set_options(self, options: Mapping[str, Any]) -> None:
        """Adopts _options() of the creator (unpickling)."""

    def _extra_state(self, core: Any) -> Dict[str, Any]:
        return {}

    def _load_extra_state(self, core: Any, state: Mapping[str, Any]) -> None:
        """Loads _extra_state() into a new core (load_state_dict), before it is swapped in."""

    def _install(self, core: Any, spec: Dict[str, Field], owner: bool = True,
                 configure_limiter: bool = True) -> Any:
        if self._finalizer is not None:
            self._finalizer()  # a replaced shared core (load_state_dict): remove its segment
        if owner and core.shared_name is not None:
            # Removes the segment when this object is collected, when the interpreter exits,
            # and when a multiprocessing worker that created it ends (those end with
            # os._exit, which skips atexit handlers but runs these finalizers).
            self._finalizer = mp_util.Finalize(self, core.unlink, exitpriority=0)
        if owner and self._limiter is not None:
            if configure_limiter:
                self._limiter._bind(core)
            else:
                self._limiter._core = core
        self._spec = spec
        self._names = list(spec)
        self._out_shapes = [(f.shape, f.torch_dtype) for f in spec.values()]
        self._bf16 = [i for i, f in enumerate(spec.values()) if f.dtype == "bfloat16"]
        self._columns = None
        self._core = core
        if isinstance(self._sampler, Prioritized):
            self._sampler._core = core
        # The per-item path: once the spec is known, add/extend go straight to the core
        # (which validates everything) without a Python frame in between.
        _core.bind_writes(self._writes, core)
        self._built.set()
        return core

    def _first_write(self, fields: Mapping[str, Any], batched: bool) -> None:
        """Infers the spec from the first add/extend; if that write fails, the buffer stays
        unbuilt (the spec is not fixed by a rejected call)."""
        self._check_open()
        if not fields:
            raise ValueError("add()/extend() need at least one field, e.g. add(obs=..., reward=...)")
        lead = self._leading_axes(fields) if batched else 0
        self._build({name: infer_field(name, v, lead) for name, v in fields.items()})
        try:
            if batched:
                self.extend(**fields)
            else:
                self.add(**fields)
        except BaseException:
            _core.bind_writes(self._writes, None)  # back to inferring on the next write
            self._core = None
            self._built.clear()
            self._spec = {}
            if isinstance(self._sampler, Prioritized):
                self._sampler._core = None
            raise

    # ---- writing ----------------------------------------------------------------------

    # add/extend are instance attributes (C functions, see _init_fields); these class-level
    # methods document them and serve calls through the class (ReplayBuffer.add(buf, ...)).

    def add(self, **fields: Any) -> None:
        """Stores one item. Values: tensors, numpy arrays or Python numbers.

        Arrays and tensors must have the field's dtype and shape exactly; Python numbers are
        converted when their kind fits (bool -> any, int -> int/float, float -> float).

        Raises:
            ValueError: a field is missing, unknown, or has the wrong shape.
            TypeError: a value has the wrong dtype or type.
        """
        return self.__dict__["add"](**fields)

    def extend(self, **fields: Any) -> None:
        """Stores a batch of items given along the leading axis of every field.

        When more items than the capacity come at once, only the last ``capacity`` stay.
        """
        return self.__dict__["extend"](**fields)

    def unbound_add(self, *args: Any, **fields: Any) -> None:
        """add() while no core is bound: infers the spec from this first write, or reports
        the closed buffer. Called by the write functions; not for direct use."""
        self._unbound_write(args, fields, batched=False)

    def unbound_extend(self, *args: Any, **fields: Any) -> None:
        """extend() while no core is bound (see unbound_add)."""
        self._unbound_write(args, fields, batched=True)

    def _unbound_write(self, args: Tuple[Any, ...], fields: Dict[str, Any], batched: bool) -> None:
        if args:
            name = "extend" if batched else "add"
            raise TypeError(f"{name}() takes fields as keyword arguments only, e.g. "
                            f"{name}(obs=o, reward=r)")
        with self._first_write_lock:
            if self._core is None:
                self._first_write(fields, batched)
                return
        # Another thread's first write built the core meanwhile: an ordinary write.
        (self.__dict__["extend"] if batched else self.__dict__["add"])(**fields)

    # ---- sampling ---------------------------------------------------------------------

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
            A Batch whose tensors own freshly gathered memory (or are the ``out`` tensors).

        Raises:
            ValueError: the buffer is empty, the batch is too large without replacement,
                every priority is zero, or ``out`` does not fit.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int):
            batch_size = _as_int("batch_size", batch_size)
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        if device is not None or prefetch:
            if out is not None:
                raise ValueError("out= and device=/prefetch= exclude each other (staging uses its own pinned buffers)")
            return self._staged(batch_size, torch.device("cpu" if device is None else device),
                                bool(prefetch))
        core = self._core
        if core is None:
            core = self._await_first_item(batch_size)
        from_numpy = torch.from_numpy
        if out is None:
            arrays, keys, weights = core.sample(batch_size)
            if self._bf16:
                tensors = [from_numpy(a) for a in arrays]
                for i in self._bf16:
                    tensors[i] = tensors[i].view(torch.bfloat16)
                fields = zip(self._names, tensors)
            else:
                fields = zip(self._names, map(from_numpy, arrays))
        else:
            tensors = self._check_out(out, batch_size)
            _, keys, weights = core.sample(batch_size, [t.data_ptr() for t in tensors])
            fields = zip(self._names, tensors)
        return Batch(fields, from_numpy(keys), None if weights is None else from_numpy(weights))

    def get(self, keys: Any) -> Batch:
        """The stored items named by ``keys`` (e.g. ``batch.indices`` of an earlier sample),
        in that order, as a Batch of fresh tensors (``indices`` are the keys; no weights).

        An EpisodeBuffer returns its rows as stored (single frames, no next observation).

        Raises:
            IndexError: naming the first key that names no stored item: never written, not
                a key of this buffer, or overwritten since (the buffer is unchanged).
            TypeError: keys are not integers.

        >>> batch = buf.sample(32)
        >>> again = buf.get(batch.indices)  # the same items, as long as they are stored
        """
        arr = _to_numpy(keys)
        core = self._core
        if core is None:
            self._check_open()
            if arr.size:
                raise IndexError(f"index {arr.reshape(-1)[0]} was never written: the buffer is empty")
            return Batch({}, torch.from_numpy(np.zeros(0, np.int64)), None)
        arrays, stored = core.get(arr.reshape(-1) if arr.ndim else arr.reshape(1))
        return Batch(self._as_tensors(arrays), torch.from_numpy(stored), None)

    def _as_tensors(self, arrays: Any) -> Dict[str, torch.Tensor]:
        """{field: tensor} of the core's arrays in spec order (bfloat16 from its raw bits)."""
        tensors = [torch.from_numpy(a) for a in arrays]
        for i in self._bf16:
            tensors[i] = tensors[i].view(torch.bfloat16)
        return dict(zip(self._names, tensors))

    def _staged(self, batch_size: int, device: torch.device, prefetch: bool) -> Batch:
        from ._staging import Stager

        stager = self._stager
        if stager is None or not stager.serves(batch_size, device):
            if stager is not None:
                stager.close()
            stager = self._stager = Stager(self, batch_size, device)
        return stager.sample(prefetch)

    def _await_first_item(self, batch_size: int) -> Any:
        """sample() before the spec is known: an error, or with a rate limiter that may wait,
        a wait for another thread's first add (the limiter then waits for the rest)."""
        self._check_open()
        limiter = self._limiter
        if limiter is None or limiter.timeout == 0:
            raise ValueError(f"cannot sample {batch_size} items: the buffer is empty (add items first)")
        timeout = limiter.timeout
        waited = 0.0
        while not self._built.wait(0.05):  # in slices: Ctrl-C and close() are noticed
            self._check_open()
            waited += 0.05
            if timeout is not None and waited >= timeout:
                raise TimeoutError(
                    f"sample({batch_size}) waited {timeout} s (the rate limiter's timeout) and "
                    f"no item was added: sampling starts once {limiter.min_size_to_sample} items "
                    "are inserted (min_size_to_sample), and 0 are so far")
        return self._core

    def _check_out(self, out: Mapping[str, torch.Tensor], batch_size: int) -> list:
        if set(out) != set(self._names):
            raise ValueError(f"out must have exactly the fields {self._names}, got {list(out)}")
        tensors = []
        for name, (shape, dt) in zip(self._names, self._out_shapes):
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

    def update_priorities(self, indices: Any, priorities: Any) -> int:
        """Sets the priorities of sampled items (e.g. ``|TD error|``).

        Args:
            indices: the items' keys, as in ``batch.indices`` (1-D ints).
            priorities: 1-D, finite and >= 0, one per index. A repeated index keeps the
                last value.

        Returns:
            How many updates were ignored because their item has been overwritten since it
            was sampled (also counted in ``stale_updates``).

        Raises:
            IndexError: an index was never written.
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

    # ---- inspection ---------------------------------------------------------------------

    def __len__(self) -> int:
        return 0 if self._core is None else self._core.size

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def spec(self) -> Dict[str, Field]:
        """{name: Field}; empty until the spec is given or inferred."""
        return dict(self._spec)

    @property
    def sampler(self) -> Union[Uniform, Prioritized]:
        """This buffer's sampler; e.g. ``buf.sampler.beta = 1.0`` anneals beta."""
        return self._sampler

    @property
    def seed(self) -> int:
        return self._seed

    @property
    def rate_limiter(self) -> Optional[RateLimiter]:
        """This buffer's RateLimiter (None without one); its settings may be changed live."""
        return self._limiter

    @property
    def storage(self) -> str:
        return self._storage

    @property
    def shared_name(self) -> Optional[str]:
        """The shared-memory segment's name (/dev/shm/<name>), or None."""
        return None if self._core is None else self._core.shared_name

    # ---- processes --------------------------------------------------------------------

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
        # Drop every reference to the core, so its memory (and a memmap file's lock) is
        # released now; column views handed out earlier keep it alive while they live.
        if self._stager is not None:
            self._stager.close()
            self._stager = None
        if isinstance(self._sampler, Prioritized):
            self._sampler._core = None
        if self._limiter is not None:
            self._limiter._core = None
        self._core = None
        self._columns = None
        self._closed = True

    def save(self, path: Union[str, os.PathLike], *, progress: Optional[bool] = None) -> None:
        """Writes a checkpoint of everything (storage, priorities, counters, rate-limiter and
        generator state) to ``path``, atomically: a temporary file in the same directory,
        fsynced, then renamed over ``path``; a crash at any point leaves the previous file
        intact. Columns stream from the buffer (no second copy), each with a CRC32. A
        progress bar shows for large buffers (``progress=None``: above 256 MB). Call it while
        no other thread writes to the buffer."""
        from . import _checkpoint

        _checkpoint.save(self, path, progress=progress)

    @classmethod
    def load(cls, path: Union[str, os.PathLike], *, progress: Optional[bool] = None) -> "ReplayBuffer":
        """A buffer restored from ``save(path)``, in memory: it draws exactly the batches the
        saved buffer would have drawn next. A ReplayBuffer file loads as ReplayBuffer, an
        EpisodeBuffer file as EpisodeBuffer.

        Raises:
            ValueError: not a reverie checkpoint, another format version, truncated, or a
                checksum mismatch (naming the section). Nothing is returned then.
            TypeError: ``EpisodeBuffer.load`` of a plain buffer's file.
        """
        from . import _checkpoint

        return _checkpoint.load(path, progress=progress, cls=cls)

    def flush(self) -> None:
        """A memmap buffer: writes its pages to the file and waits for the disk (msync). The
        OS writes them back anyway; this makes them durable now. Other storage: no-op."""
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
        self._check_open()
        if self._storage == "memmap":
            raise TypeError("a storage='memmap' buffer cannot be sent to another process (one "
                            "process opens its file at a time): close it here and reopen "
                            "its path there")
        if self._storage != "shared" or self._core is None:
            raise TypeError(
                "a ReplayBuffer with storage='memory' cannot be sent to another process; "
                "create it with storage='shared' (and a spec) to share it, or send state_dict()")
        spec = {n: (f.dtype, f.shape) for n, f in self._spec.items()}
        return (_attach, (type(self), self._core.shared_name, self._capacity, spec,
                          self._sampler.config(), self._seed, self._options()))

    @property
    def stale_updates(self) -> int:
        """Priority updates ignored because their item had been overwritten."""
        return 0 if self._core is None else self._core.stale_updates

    @property
    def columns(self) -> Dict[str, torch.Tensor]:
        """Zero-copy views of the storage: {name: tensor [capacity, *shape]}.

        Rows ``[0, len(self))`` hold items (an EpisodeBuffer: see its ``columns``); writing
        to a view writes the buffer.
        """
        if self._core is None:
            return {}
        if self._columns is None:
            cols = {}
            for i, (name, field) in enumerate(self._spec.items()):
                view = torch.from_numpy(self._core.column(i))
                if field.dtype == "bfloat16":
                    view = view.view(torch.bfloat16)
                cols[name] = view
            self._columns = cols
        return dict(self._columns)

    def priorities(self) -> torch.Tensor:
        """The stored ``(p + eps)^alpha`` of every slot [capacity] (0 for empty slots), as the
        sum-tree holds them (fixed point). Prioritized buffers only."""
        if not isinstance(self._sampler, Prioritized):
            raise ValueError("priorities() needs a Prioritized sampler")
        if self._core is None:
            return torch.zeros(self._capacity, dtype=torch.float64)
        leaves, scale_exp, _ = self._core.priority_state()
        return torch.from_numpy(np.ldexp(leaves.astype(np.float64), -scale_exp))

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}: {f}" for n, f in self._spec.items()) or "inferred on first add"
        return (f"ReplayBuffer(capacity={self._capacity}, size={len(self)}, "
                f"sampler={self._sampler!r}, fields={{{fields}}})")

    # ---- state ----------------------------------------------------------------------------

    def state_dict(self) -> Dict[str, Any]:
        """Everything needed to continue exactly: spec, storage, priorities, counters, seed and
        the generator's position. Tensors are copies."""
        state: Dict[str, Any] = {
            "version": _STATE_VERSION,
            "capacity": self._capacity,
            "seed": self._seed,
            "sampler": self._sampler.config(),
            "spec": {n: (f.dtype, f.shape) for n, f in self._spec.items()},
        }
        if self._core is None:
            return state
        written, calls, stale, sampled, offset = self._core.get_counters()
        state["counters"] = {"written": written, "sample_calls": calls, "stale_updates": stale,
                             "sampled": sampled, "limiter_offset": offset}
        if self._limiter is not None:
            state["rate_limiter"] = self._limiter.config()
        state["columns"] = {n: t.clone() for n, t in self.columns.items()}
        if self._core.prioritized:
            leaves, scale_exp, max_q = self._core.priority_state()
            state["priorities"] = {"leaves": torch.from_numpy(leaves.view(np.int64)),
                                   "scale_exp": scale_exp, "max_q": max_q}
        state.update(self._extra_state(self._core))
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restores a ``state_dict()``: afterwards the buffer samples what the original would.

        The state's seed and sampler settings (alpha, beta, eps, replacement) are adopted,
        and so are the rate limiter's counts; its settings stay this buffer's own;
        capacity, spec and sampler kind must match this buffer's (an unbuilt buffer takes
        the state's spec). Everything is checked and loaded into a new core first, and only
        then swapped in.

        Raises:
            ValueError: the state is malformed, inconsistent, or from another version,
                capacity, spec or sampler kind. Nothing is changed then.
        """
        try:
            self._load_state(state)
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"malformed reverie state_dict: {type(e).__name__}: {e}") from None

    def _load_state(self, state: Mapping[str, Any]) -> None:
        if self._storage == "memmap":
            raise ValueError("load_state_dict into a storage='memmap' buffer is not supported: "
                             "load into a memory buffer, or reopen the memmap file")
        if not isinstance(state, Mapping) or state.get("version") != _STATE_VERSION:
            raise ValueError(f"not a reverie state_dict of version {_STATE_VERSION}")
        if state["capacity"] != self._capacity:
            raise ValueError(f"state has capacity {state['capacity']}, this buffer {self._capacity}")
        sampler = sampler_from_config(dict(state["sampler"]))
        if sampler.kind != self._sampler.kind:
            raise ValueError(f"state has a {sampler.kind} sampler, this buffer {self._sampler.kind}")
        spec = normalize_spec(state["spec"]) if state["spec"] else {}
        if self._spec and spec != self._spec:
            raise ValueError(f"state has spec {spec}, this buffer {self._spec}")
        seed = _as_int("seed", state["seed"])
        if "counters" not in state:
            if self._core is not None:
                raise ValueError("state is of an empty (unbuilt) buffer; this buffer holds data")
            self._seed, self._sampler = seed, sampler
            return
        counters = state["counters"]
        written = _as_int("written", counters["written"])
        calls = _as_int("sample_calls", counters["sample_calls"])
        stale = _as_int("stale_updates", counters["stale_updates"])
        sampled = _as_int("sampled", counters.get("sampled", 0))
        offset = float(counters.get("limiter_offset", 0.0))
        if written < 0 or calls < 0 or stale < 0 or sampled < 0:
            raise ValueError(f"state counters must be >= 0, got {dict(counters)}")
        arrays = []
        for name, field in spec.items():
            t = state["columns"].get(name)
            want = (self._capacity, *field.shape)
            if not isinstance(t, torch.Tensor) or t.dtype != field.torch_dtype or tuple(t.shape) != want:
                raise ValueError(f"state column '{name}' must be a {field.torch_dtype} tensor of shape {want}")
            t = t.detach().cpu().contiguous()
            arrays.append(t.view(torch.int16).numpy() if t.dtype == torch.bfloat16 else t.numpy())
        if set(state["columns"]) != set(spec):
            raise ValueError(f"state columns {list(state['columns'])} do not match its spec {list(spec)}")
        core = self._make_core(spec, sampler, seed)
        leaves = None
        if core.prioritized:
            pr = state["priorities"]
            leaves = pr["leaves"]
            if not isinstance(leaves, torch.Tensor) or leaves.dtype != torch.int64 or tuple(leaves.shape) != (self._capacity,):
                raise ValueError(f"state priority leaves must be an int64 tensor of shape ({self._capacity},)")
            leaves = leaves.detach().cpu().contiguous().numpy()
            if (leaves < 0).any():
                raise ValueError("state priority leaves must be >= 0")
        for i, arr in enumerate(arrays):
            core.load_column(i, arr)
        self._load_extra_state(core, state)
        if self._limiter is not None:
            # Configured before the counters are set: configuring a limiter resets its offset.
            core.configure_rate_limiter(True, self._limiter._min_size, self._limiter._spi,
                                        self._limiter._tolerance,
                                        -1.0 if self._limiter._timeout is None
                                        else self._limiter._timeout)
        core.set_counters(written, calls, stale, sampled, offset)
        if leaves is not None:
            # After the counters: the core checks that only slots holding items have priorities.
            core.set_priority_state(leaves.view(np.uint64), int(pr["scale_exp"]), float(pr["max_q"]))
        # All loaded: swap in.
        self._seed = seed
        self._sampler = sampler
        self._install(core, spec, configure_limiter=False)


def _jsonable(value: Any) -> Any:
    """Tuples as lists, recursively (what JSON gives back)."""
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _attach(cls: "type[ReplayBuffer]", name: str, capacity: int, spec: Dict[str, Any],
            sampler_config: Dict[str, Any], seed: int, options: Dict[str, Any]) -> ReplayBuffer:
    """Unpickles a shared buffer's handle: attaches to its segment (not as its owner)."""
    sampler = sampler_from_config(dict(sampler_config))
    buf = cls.__new__(cls)
    buf._init_fields(capacity, seed, "shared", sampler, None)
    buf._set_options(options)
    fields = normalize_spec(spec)
    core = buf._make_core(fields, sampler, seed, attach=name)
    buf._limiter = RateLimiter._from_core(core)
    buf._install(core, fields, owner=False)
    if isinstance(sampler, Prioritized):
        sampler._beta = float(core.beta)  # as the creator has it now
    return buf
