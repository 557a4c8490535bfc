"""Host buffer -> GPU learner: pinned staging, asynchronous copies and prefetching."""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, List, Optional

import torch

from ._batch import Batch

# The buffer is typed structurally (Any): naming ReplayBuffer here, even for type checking
# only, would make _buffer -> _staging -> _buffer a circle of the layers (tests/test_layers.py).


class Stager:
    """Serves ``buffer.sample(batch_size, device=..., prefetch=...)``.

    To CUDA: rows are gathered (by the C++ core, GIL released) into one of two sets of
    pinned host tensors, then copied to the device with ``non_blocking=True`` on the current
    stream, and a CUDA event marks when that copy is done; a set is gathered into again only
    after its event (the host waits only if the copy of two calls ago is still running).
    With prefetch a worker thread gathers the next batch into the other set while the
    caller trains on this one. To the CPU: no staging, prefetch alone.
    """

    def __init__(self, buffer: Any, batch_size: int, device: torch.device) -> None:
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"sample(device={str(device)!r}): torch sees no CUDA device "
                               "(torch.cuda.is_available() is False)")
        if device.type not in ("cuda", "cpu"):
            raise ValueError(f"device must be 'cuda[:N]' or 'cpu', got {str(device)!r}")
        self._buffer = buffer
        self._batch = batch_size
        self._device = device
        self._cuda = device.type == "cuda"
        self._pinned: List[Optional[dict]] = [None, None]
        self._copied: List[Any] = [None, None]  # torch.cuda.Event per set, once used
        self._next = 0
        self._pending: Optional[Future] = None
        self._worker: Optional[ThreadPoolExecutor] = None
        self._lock = threading.Lock()

    def serves(self, batch_size: int, device: torch.device) -> bool:
        return batch_size == self._batch and device == self._device

    def _gather(self, slot: int) -> Batch:
        buf = self._buffer
        if not self._cuda:
            return buf.sample(self._batch)
        event = self._copied[slot]
        if event is not None:
            event.synchronize()  # this set's previous copy to the device has finished
        pinned = self._pinned[slot]
        if pinned is None:
            pinned = {name: torch.empty((self._batch, *f.shape), dtype=f.torch_dtype, pin_memory=True)
                      for name, f in buf.spec.items()}
            self._pinned[slot] = pinned
        return buf.sample(self._batch, out=pinned)

    def sample(self, prefetch: bool) -> Batch:
        with self._lock:
            slot = self._next
            self._next ^= 1
            if self._pending is not None:
                pending, self._pending = self._pending, None
                batch = pending.result()  # gathered into `slot` by the worker
            else:
                batch = self._gather(slot)
            if self._cuda:
                batch = batch.to(self._device, non_blocking=True)
                event = torch.cuda.Event()
                event.record(torch.cuda.current_stream(self._device))
                self._copied[slot] = event
            if prefetch:
                if self._worker is None:
                    self._worker = ThreadPoolExecutor(1, thread_name_prefix="reverie-prefetch")
                self._pending = self._worker.submit(self._gather, self._next)
            return batch

    def close(self) -> None:
        """Drops a prefetched batch (waiting for its gather) and stops the worker."""
        with self._lock:
            pending, self._pending = self._pending, None
            if pending is not None:
                try:
                    pending.result()
                except Exception:  # noqa: BLE001 - a dropped batch's error is not the caller's
                    pass
            if self._worker is not None:
                self._worker.shutdown(wait=True)
                self._worker = None


def staged(buffer: Any, batch_size: int, device: torch.device, prefetch: bool) -> Batch:
    """``buffer.sample(batch_size, device=..., prefetch=...)``: through the buffer's stager,
    a new one when the batch size or device changed."""
    stager = buffer._stager
    if stager is None or not stager.serves(batch_size, device):
        if stager is not None:
            stager.close()
        stager = buffer._stager = Stager(buffer, batch_size, device)
    return stager.sample(prefetch)
