"""Device-resident replay: columns, priority tree and sampling in GPU memory.

(A little over 500 lines, most of them the docstrings of its public API; the logic is in the
shared kernels, cpp/include/reverie/kernels.h.)
"""

from __future__ import annotations

import contextlib
import math
import secrets
from typing import Any, Dict, List, Mapping, Optional, Union

import numpy as np
import torch

from . import _core, _state
from ._batch import Batch
from ._config import CONFIG_VERSION, make_config
from ._parts import Fifo, Part, Prioritized, Uniform
from ._spec import Field, SpecLike, infer_field, normalize_spec
from ._table import Table
from ._values import as_int as _as_int


class _Live:
    """A device buffer's live settings, as the parts set them (``_parts.Part._set_live``)."""

    def __init__(self, core: Any) -> None:
        self._device_core = core

    def set_live(self, role: str, name: str, value: Any) -> None:
        if (role, name) != ("selector", "beta"):
            raise ValueError(f"'{name}' is not a setting a device buffer can change")
        self._device_core.beta = value

    def live(self, role: str) -> Dict[str, Any]:
        return {"beta": float(self._device_core.beta)} if role == "selector" else {}


def cuda_available() -> bool:
    """Whether device buffers can run on CUDA here: the build has the kernels, and a driver
    and a GPU are present (``torch.cuda.is_available()`` is asked too)."""
    return bool(_core.cuda_built()) and _core.cuda_device_count() > 0 and torch.cuda.is_available()


_INT_KINDS = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _number_fits(value: Any, dtype: torch.dtype) -> bool:
    """A Python number converts to a field's dtype as on the CPU buffer: bool -> any,
    int -> int or float, float -> float."""
    if isinstance(value, bool):
        return True
    if isinstance(value, int):
        return dtype != torch.bool
    return isinstance(value, float) and dtype.is_floating_point


class DeviceReplayBuffer:
    """A replay buffer that lives on a GPU: columns and priority tree in device memory.

    ``sample`` returns CUDA tensors written by the kernels into memory the tensors own, on
    the caller's current torch stream; ``add``/``extend`` take CUDA tensors (copied device to
    device) or CPU values; ``update_priorities`` runs on the device. Nothing in
    sample -> update_priorities waits for the GPU. Draws are the CPU buffer's (same seed, same
    calls: same indices and weights), since both run the same kernels (kernels.h).

    Indices and priorities given as tensors on the buffer's device are checked by the kernel:
    a bad one makes it ignore that whole update and record the error, which
    ``synchronize()`` raises. Anything else (numpy, lists, CPU tensors for a CUDA buffer) is
    checked at once, as on the CPU buffer.

    ``device="cpu"`` runs the very same kernels on host memory (the reference the CUDA build
    is tested against; the ordinary ``ReplayBuffer`` is the fast CPU buffer), over CUDA's grids
    on the calling thread, or with ``block_threads=N`` the tree programs on a block of N
    threads with real barriers, as a GPU runs them.

    The protocol it shares with ``ReplayBuffer``: ``add``/``extend`` (returning counts),
    ``sample``, ``update_priorities``, ``get(keys)``, ``state_dict()`` (in the CPU buffer's
    format), ``spec``, ``len``, ``columns``, ``priorities()``, ``stale_updates``. What it does
    not do: it is a FIFO ring only (no ``writer``, ``admit``, ``max_times_sampled``,
    ``metadata``, ``version`` or ``stats()``), samples with replacement, has no rate limiter,
    no shared or memmap storage, and no ``load_state_dict``, ``save``/``load`` or pickling.

    Args:
        capacity: how many items the buffer holds.
        spec: optional {name: Field | (dtype, shape)}; else inferred from the first write.
        sampler: ``Uniform()`` (with replacement) or ``Prioritized(alpha, beta, eps)``.
        seed: seeds the counter-based generator. Default: a random seed.
        device: ``"cuda"``, ``"cuda:N"`` or a torch.device; ``"cpu"`` for the reference.
        block_threads: ``device="cpu"`` only: the threads of the host's stand-in for a CUDA
            block, a power of two up to 1024 (1: the calling thread alone). A check of the
            kernels' synchronisation without a GPU; slow.

    >>> buf = ReplayBuffer(1_000_000, sampler=Prioritized(), device="cuda")  # doctest: +SKIP
    >>> buf.extend(obs=obs_cuda, action=act_cuda, reward=rew_cuda)          # doctest: +SKIP
    >>> batch = buf.sample(256)                                              # doctest: +SKIP
    >>> buf.update_priorities(batch.indices, td_error.abs())                 # doctest: +SKIP
    """

    def __init__(self, capacity: int, spec: Optional[SpecLike] = None,
                 sampler: Union[Uniform, Prioritized, None] = None, seed: Optional[int] = None,
                 *, device: Union[str, torch.device] = "cuda", block_threads: int = 1) -> None:
        capacity = _as_int("capacity", capacity)
        if capacity <= 0:
            raise ValueError(f"capacity must be > 0, got {capacity}")
        dev = torch.device(device)
        if dev.type not in ("cuda", "cpu"):
            raise ValueError(f"device must be 'cuda', 'cuda:N' or 'cpu', got {device!r}")
        block_threads = _as_int("block_threads", block_threads)
        if not (1 <= block_threads <= 1024 and block_threads & (block_threads - 1) == 0):
            raise ValueError(f"block_threads must be a power of two in [1, 1024], got {block_threads}")
        if block_threads != 1 and dev.type != "cpu":
            raise ValueError(f"block_threads is for device='cpu' (the host's stand-in for a CUDA "
                             f"block); on {dev} the GPU's blocks run the kernels")
        if dev.type == "cuda":
            if not _core.cuda_built():
                raise RuntimeError(
                    "device='cuda': this build of reverie has no CUDA kernels (built without "
                    "nvcc or with REVERIE_CUDA=OFF); reinstall with nvcc on the PATH")
            if not cuda_available():
                raise RuntimeError(
                    "device='cuda' needs a CUDA GPU and driver: reverie sees "
                    f"{_core.cuda_device_count()} device(s), torch.cuda.is_available() is "
                    f"{torch.cuda.is_available()}")
            dev = torch.device("cuda", torch.cuda.current_device() if dev.index is None else dev.index)
        if sampler is None:
            sampler = Uniform()
        if isinstance(sampler, Uniform):
            if not sampler.replacement:
                raise ValueError("device buffers sample with replacement; Uniform(replacement=False) "
                                 "is only on the CPU ReplayBuffer")
        elif not isinstance(sampler, Prioritized):
            raise TypeError(f"sampler must be Uniform or Prioritized, got {type(sampler).__name__}")
        if seed is None:
            seed = secrets.randbits(63)
        seed = _as_int("seed", seed)
        if not 0 <= seed < 2**64:
            raise ValueError(f"seed must be in [0, 2**64), got {seed}")
        self._capacity = capacity
        self._device = dev
        self._seed = seed
        self._block_threads = block_threads
        self._sampler = sampler.from_config("selector", sampler.config())  # unbound, settings now
        self._core: Any = None
        self._spec: Dict[str, Field] = {}
        if spec is not None:
            self._build(normalize_spec(spec))

    # ---- construction -------------------------------------------------------------------

    def _build(self, spec: Dict[str, Field]) -> None:
        row_bytes = []
        for name, f in spec.items():
            size = math.prod(f.shape) * torch.empty((), dtype=f.torch_dtype).element_size()
            if size == 0:
                raise ValueError(f"field '{name}' has shape {f.shape}: device buffers need "
                                 "fields of at least one element")
            row_bytes.append(size)
        s = self._sampler
        p = s if isinstance(s, Prioritized) else None
        self._core = _core.DeviceReplay(
            self._capacity, row_bytes, self._device.type,
            -1 if self._device.index is None else self._device.index, p is not None,
            0.0 if p is None else p.alpha, 0.0 if p is None else p.beta,
            0.0 if p is None else p.eps, self._seed, self._block_threads)
        if p is not None:
            self._sampler = p._bound(_Live(self._core))  # beta changes reach the kernels
        self._spec = spec
        self._names = list(spec)
        self._fields = list(spec.values())

    def _on_device(self) -> Any:
        """Makes the buffer's GPU current for a call when it is not (torch restores the
        caller's device without creating a context on it)."""
        if self._device.type == "cuda" and torch.cuda.current_device() != self._device.index:
            return torch.cuda.device(self._device)
        return contextlib.nullcontext()

    def _stream(self) -> int:
        if self._device.type == "cuda":
            return int(torch.cuda.current_stream(self._device).cuda_stream)
        return 0

    # ---- writing ----------------------------------------------------------------------

    def add(self, **fields: Any) -> int:
        """Stores one item (tensors on any device, numpy arrays or Python numbers); returns 1
        (a device buffer is a FIFO ring: it stores every item)."""
        return self._write(fields, batched=False)

    def extend(self, **fields: Any) -> int:
        """Stores a batch of items along the leading axis of every field; returns how many
        (all). Of more than ``capacity`` items only the last ``capacity`` stay."""
        return self._write(fields, batched=True)

    def _write(self, fields: Mapping[str, Any], batched: bool) -> int:
        if self._core is None:
            if not fields:
                raise ValueError("add()/extend() need at least one field, e.g. add(obs=..., reward=...)")
            self._build({n: infer_field(n, v, batched) for n, v in fields.items()})
            try:
                return self._write(fields, batched)
            except BaseException:
                self._core = None
                self._spec = {}
                self._sampler._core = None
                raise
        if set(fields) != set(self._names):
            missing = [n for n in self._names if n not in fields]
            unknown = [n for n in fields if n not in self._spec]
            raise ValueError(f"fields must be exactly {self._names}; missing {missing}, unknown {unknown}")
        tensors: List[torch.Tensor] = []
        n: Optional[int] = None
        for name, f in zip(self._names, self._fields):
            t = self._as_tensor(name, fields[name], f, batched)
            rows = t.shape[0] if batched else 1
            if n is None:
                n = rows
            elif rows != n:
                raise ValueError(f"extend(): field '{name}' has {rows} items, '{self._names[0]}' has {n}")
            tensors.append(t)
        assert n is not None
        with self._on_device():
            self._core.add([t.data_ptr() for t in tensors], n, self._stream())
        return n

    def _as_tensor(self, name: str, value: Any, f: Field, batched: bool) -> torch.Tensor:
        dt = f.torch_dtype
        if isinstance(value, torch.Tensor):
            t = value
        elif isinstance(value, (np.ndarray, np.generic)):
            t = torch.from_numpy(np.asarray(value))
        elif isinstance(value, (bool, int, float)) and not batched:
            if not _number_fits(value, dt):
                raise TypeError(f"field '{name}': cannot store a {type(value).__name__} in {f.dtype}")
            t = torch.tensor(value, dtype=dt)
        elif isinstance(value, (list, tuple)):
            t = torch.as_tensor(np.asarray(value))
            if t.dtype != dt and (t.dtype.is_floating_point <= dt.is_floating_point):
                t = t.to(dt)  # a list of Python numbers, converted as single numbers are
        else:
            raise TypeError(f"field '{name}': expected a tensor, numpy array or number, "
                            f"got {type(value).__name__}")
        if t.dtype != dt:
            raise TypeError(f"field '{name}': expected dtype {dt}, got {t.dtype}")
        want = f.shape
        got = tuple(t.shape[1:]) if batched else tuple(t.shape)
        if (batched and t.dim() < 1) or got != want:
            shape = ("N", *want) if batched else want
            raise ValueError(f"field '{name}': expected shape {shape}, got {tuple(t.shape)}")
        if t.device != self._device:
            t = t.to(self._device)
        return t.detach().contiguous()

    # ---- sampling and priorities ------------------------------------------------------

    def sample(self, batch_size: int) -> "Batch":
        """Draws ``batch_size`` items: a Batch of tensors on the buffer's device.

        Raises:
            ValueError: batch_size < 1 or the buffer is empty. (A prioritized buffer whose
                priorities are all 0 returns indices -1 and weights 0, and synchronize()
                raises; checking first would wait for the GPU. Unlike the CPU buffer's
                refusal, that call still advances the generator.)
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int):
            batch_size = _as_int("batch_size", batch_size)
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        if self._core is None:
            raise ValueError(f"cannot sample {batch_size} items: the buffer is empty (add items first)")
        dev = self._device
        out = [torch.empty((batch_size, *f.shape), dtype=f.torch_dtype, device=dev)
               for f in self._fields]
        keys = torch.empty(batch_size, dtype=torch.int64, device=dev)
        weights = (torch.empty(batch_size, dtype=torch.float32, device=dev)
                   if isinstance(self._sampler, Prioritized) else None)
        with self._on_device():
            self._core.sample(batch_size, [t.data_ptr() for t in out], keys.data_ptr(),
                              0 if weights is None else weights.data_ptr(), self._stream())
        return Batch(zip(self._names, out), keys, weights)

    def get(self, keys: Any) -> "Batch":
        """The stored items named by ``keys`` (e.g. ``batch.indices``), in that order: a Batch
        of tensors on the buffer's device (``indices`` are the keys; no weights, no meta).
        The keys are checked on the host (keys on the device are copied there first, which
        waits for the GPU).

        Raises:
            IndexError: naming the first key that names no stored item (never written, not
                a key of this buffer, or overwritten since); nothing is gathered then.
            TypeError: keys are not integers.
        """
        host = keys.detach().cpu() if isinstance(keys, torch.Tensor) else torch.as_tensor(np.asarray(keys))
        if host.numel() == 0:
            host = host.to(torch.int64)  # [] carries no dtype
        if host.dtype.is_floating_point or host.dtype == torch.bool or host.is_complex():
            raise TypeError(f"keys must be integers, got {host.dtype}")
        host = host.reshape(-1).to(torch.int64).contiguous()
        n = int(host.shape[0])
        dev = self._device
        if self._core is None:
            if n:
                raise IndexError(f"index {int(host[0])} was never written: the buffer is empty")
            return Batch({}, torch.zeros(0, dtype=torch.int64, device=dev), None)
        out = [torch.empty((n, *f.shape), dtype=f.torch_dtype, device=dev) for f in self._fields]
        on_dev = host.to(dev)
        if n:
            with self._on_device():
                self._core.get(host.numpy(), on_dev.data_ptr(), [t.data_ptr() for t in out],
                               self._stream())
        return Batch(zip(self._names, out), on_dev, None)

    def state_dict(self) -> Dict[str, Any]:
        """The buffer's state in the CPU ``ReplayBuffer``'s format (a FIFO table of the same
        capacity, spec, seed and sampler; tensors on the CPU; it waits for the GPU), so
        ``ReplayBuffer(...).load_state_dict(state)`` continues on the CPU with exactly the
        draws this buffer would make next. Device buffers keep no rate limiter, so the
        state's limiter counts are 0. There is no ``load_state_dict``, ``save``/``load`` or
        pickling for device buffers (restoring the device tree is not implemented)."""
        config = make_config(self._capacity, self._spec, self._seed, writer=Fifo(),
                             selector=self._sampler)
        if self._core is None:
            return _state.state_dict(None, config)
        with self._on_device():
            st = self._core.read_status(self._stream(), False)
        arrays: Dict[str, torch.Tensor] = {f"column:{n}": t for n, t in self.columns.items()}
        # The ring's stamps follow from `written` for a FIFO table (the core rebuilds them).
        arrays["table.stamps"] = torch.zeros(self._capacity, dtype=torch.int64)
        scalars: Dict[str, Any] = {
            "table.written": int(self._core.written), "table.sample_calls": int(self._core.sample_calls),
            "table.stale_updates": int(st.stale), "table.version": 0,
            "limiter.sampled": 0, "limiter.offset": 0.0}
        if isinstance(self._sampler, Prioritized):
            with self._on_device():
                leaves = self._core.read_leaves(self._stream())
            arrays["priority.leaves"] = torch.from_numpy(leaves.astype(np.uint64).view(np.int64))
            scalars.update({"priority.beta": float(self._sampler.beta), "priority.max_q": float(st.max_q),
                            "priority.scale_exp": int(st.scale_exp)})
        raw = {"format": _state.FORMAT, "version": CONFIG_VERSION, "config": config,
               "scalars": scalars, "arrays": arrays}
        # Through a CPU table: the core checks the state and derives what follows from it.
        table = _state.load(raw, lambda cfg: Table.create(cfg), lambda t: None)
        return _state.state_dict(table, config)

    def update_priorities(self, indices: Any, priorities: Any) -> None:
        """Sets the priorities of sampled items (e.g. ``|TD error|``), on the device.

        Args:
            indices: keys as in ``batch.indices`` (1-D ints), on any device.
            priorities: 1-D floats, finite and >= 0, one per index. A repeated index keeps
                the last value. Updates of items overwritten since they were sampled are
                ignored and counted (``stale_updates``).

        Returns None: the count of ignored updates would need a wait for the GPU.

        Raises:
            ValueError / IndexError: at once for bad values given off the device; for tensors
                on the device, at the next ``synchronize()`` (the update is then ignored
                entirely).
            TypeError: indices not integers or priorities not numbers.
        """
        if not isinstance(self._sampler, Prioritized):
            raise ValueError("update_priorities needs a prioritized sampler; this buffer samples uniformly")
        keys = indices if isinstance(indices, torch.Tensor) else torch.as_tensor(np.asarray(indices))
        prio = priorities if isinstance(priorities, torch.Tensor) else torch.as_tensor(np.asarray(priorities))
        if keys.dim() != 1 or prio.dim() != 1:
            raise ValueError(f"indices and priorities must be 1-D, got shapes {tuple(keys.shape)} "
                             f"and {tuple(prio.shape)}")
        if keys.shape[0] != prio.shape[0]:
            raise ValueError(f"got {keys.shape[0]} indices and {prio.shape[0]} priorities")
        if keys.dtype.is_floating_point or keys.dtype == torch.bool or keys.is_complex():
            raise TypeError(f"indices must be integers, got {keys.dtype}")
        if prio.dtype == torch.bool or prio.is_complex():
            raise TypeError(f"priorities must be real numbers, got {prio.dtype}")
        n = int(keys.shape[0])
        if n == 0:
            return
        if self._core is None:
            raise IndexError(f"index {int(keys[0])} was never written: the buffer is empty")
        dev = self._device
        on_device = (isinstance(indices, torch.Tensor) and isinstance(priorities, torch.Tensor)
                     and keys.device == dev and prio.device == dev)
        if not on_device:
            self._check_on_host(keys.cpu(), prio.detach().cpu())
        keys = keys.to(dev, torch.int64).contiguous()
        if prio.dtype not in (torch.float32, torch.float64):
            prio = prio.to(torch.float64)  # as the CPU buffer reads them
        prio = prio.to(dev).detach().contiguous()
        with self._on_device():
            self._core.update_priorities(keys.data_ptr(), prio.data_ptr(),
                                         prio.dtype == torch.float64, n, self._stream())

    def _check_on_host(self, keys: torch.Tensor, prio: torch.Tensor) -> None:
        """The CPU buffer's checks, for values that are on the host anyway."""
        p = prio.double().numpy()
        s = self._sampler
        assert isinstance(s, Prioritized)
        with np.errstate(over="ignore", invalid="ignore"):
            ok = np.isfinite(p) & (p >= 0)
            if s.alpha > 1:
                ok &= np.isfinite(np.power(np.where(ok, p, 0.0) + s.eps, s.alpha))
        if not ok.all():
            k = int(np.argmin(ok))
            raise ValueError(f"priorities must be finite and >= 0 (and (p + eps)^alpha finite); "
                             f"got {p[k]} at position {k}")
        # Keys through the core's decoder (key.h): an overwritten key is stale, not an error.
        self._core.check_keys(keys.numpy().astype(np.int64, copy=False), False)

    def synchronize(self) -> None:
        """Waits for the buffer's queued work and raises the first error a kernel found
        since the last call (each is reported once).

        Raises:
            ValueError: an update had a NaN, infinite, negative or overflowing priority (that
                update was ignored), or a prioritized sample met all-zero priorities.
            IndexError: an update named a key that was never written (ignored likewise).
        """
        if self._core is None:
            return
        with self._on_device():
            st = self._core.read_status(self._stream(), True)
        if st.error == 1:
            raise ValueError(f"update_priorities: priority {st.error_value} at position {st.error_pos} "
                             "is not finite and >= 0 (or (p + eps)^alpha overflows); that whole "
                             "update was ignored")
        if st.error == 2:
            raise IndexError(f"update_priorities: index {st.error_key} at position {st.error_pos} "
                             "was never written (use batch.indices from sample()); that whole "
                             "update was ignored")
        if st.error == 3:
            # The CPU buffer's message, found one call late (checking first would wait).
            raise ValueError("cannot sample: every stored item has priority 0 (found after the "
                             "sample call; that batch holds indices -1 and weights 0)")

    # ---- inspection ---------------------------------------------------------------------

    def __len__(self) -> int:
        return 0 if self._core is None else int(self._core.size)

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def spec(self) -> Dict[str, Field]:
        return dict(self._spec)

    @property
    def sampler(self) -> Part:
        return self._sampler

    @property
    def seed(self) -> int:
        return self._seed

    @property
    def stale_updates(self) -> int:
        """Updates ignored because their item had been overwritten (waits for the GPU)."""
        if self._core is None:
            return 0
        with self._on_device():
            return int(self._core.read_status(self._stream(), False).stale)

    def priorities(self) -> torch.Tensor:
        """The stored ``(p + eps)^alpha`` of every slot as the tree holds it (float64, on the
        CPU; a copy that waits for the GPU)."""
        if not isinstance(self._sampler, Prioritized):
            raise ValueError("priorities exist only with a prioritized sampler")
        if self._core is None:
            return torch.zeros(self._capacity, dtype=torch.float64)
        with self._on_device():
            st = self._core.read_status(self._stream(), False)
            leaves = self._core.read_leaves(self._stream()).astype(np.float64)
        return torch.from_numpy(np.ldexp(leaves, -int(st.scale_exp)))

    def _leaves(self) -> np.ndarray:
        """The tree's leaves in fixed-point units (tests compare them with the CPU tree)."""
        return self._core.read_leaves(self._stream())

    @property
    def columns(self) -> Dict[str, torch.Tensor]:
        """A CPU copy of every column {name: tensor [capacity, *shape]} (unwritten rows are
        zero). A copy, unlike the CPU buffer's views: it waits for the GPU."""
        out: Dict[str, torch.Tensor] = {}
        if self._core is None:
            return out
        for i, (name, f) in enumerate(zip(self._names, self._fields)):
            t = torch.empty((self._capacity, *f.shape), dtype=f.torch_dtype)
            with self._on_device():
                self._core.read_column(i, t.data_ptr(), self._stream())
            out[name] = t
        return out

    def close(self) -> None:
        """Frees the device memory now (it waits for the buffer's queued work). Idempotent;
        the buffer is then empty and unbuilt."""
        self._sampler._core = None
        self._core = None
        self._spec = {}

    def __enter__(self) -> "DeviceReplayBuffer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}: {f}" for n, f in self._spec.items())
        return (f"DeviceReplayBuffer(len={len(self)}, capacity={self._capacity}, device={self._device}, "
                f"sampler={self._sampler!r}, fields={{{fields}}})")

