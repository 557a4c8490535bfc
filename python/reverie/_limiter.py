"""Replay-ratio control: how many sampled items each inserted item pays for."""

from __future__ import annotations

import math
from typing import Any, Dict, Optional


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {value}")
    return value


class RateLimiter:
    """Controls the replay ratio, as Reverb's rate limiters do.

    ``sample`` waits until ``min_size_to_sample`` items have been inserted. With
    ``samples_per_insert`` set, sampling and inserting are also kept near that ratio of
    sampled items (batch sizes summed) to inserted items. Let I be the items inserted, S the
    items sampled and spi the ratio. The running difference D = I * spi - S has the target
    D0 = spi * min_size_to_sample. A sample starts only while D >= D0 - tolerance, and an
    insert only while D <= D0 + tolerance (or while fewer than min_size_to_sample items are
    in). Each check happens before its call, so sampling and inserting are never blocked at
    the same time: no deadlock, whatever the tolerance.

    A call that is not allowed waits, with the GIL released, until another thread or
    process lets it through. Once ``timeout`` seconds have passed it raises TimeoutError,
    saying why it was refused. ``timeout=0`` never waits (fail fast), and ``None`` waits
    forever (Ctrl-C still works). ``samples_per_insert``, ``tolerance`` and ``timeout`` may
    be changed while the buffer is in use, e.g. to raise the replay ratio during training.

    Args:
        min_size_to_sample: items that must be inserted before the first sample (>= 1).
        samples_per_insert: sampled items per inserted item, or None for no ratio control.
        tolerance: how far D may stray from its target, in sampled items. Default:
            ``2 * max(1, samples_per_insert)``. A batch of B needs a tolerance of about B for
            sampling and inserting to overlap rather than take turns.
        timeout: seconds a call may wait; 0 means never wait, None means forever.

    >>> limiter = RateLimiter(min_size_to_sample=1000, samples_per_insert=8.0, tolerance=512)
    >>> buf = ReplayBuffer(100_000, rate_limiter=limiter)
    >>> buf.rate_limiter.samples_per_insert = 16.0  # adaptive replay ratio
    """

    def __init__(self, min_size_to_sample: int = 1, samples_per_insert: Optional[float] = None,
                 tolerance: Optional[float] = None, timeout: Optional[float] = None) -> None:
        if isinstance(min_size_to_sample, bool) or not isinstance(min_size_to_sample, int):
            raise TypeError(f"min_size_to_sample must be an int, got {type(min_size_to_sample).__name__}")
        if min_size_to_sample < 1:
            raise ValueError(f"min_size_to_sample must be >= 1, got {min_size_to_sample}")
        self._min_size = min_size_to_sample
        self._spi = 0.0 if samples_per_insert is None else _number("samples_per_insert", samples_per_insert)
        self._tolerance = (2.0 * max(1.0, self._spi) if tolerance is None
                           else _number("tolerance", tolerance))
        self._timeout = self._check_timeout(timeout)
        self._core: Optional[Any] = None

    @staticmethod
    def _check_timeout(timeout: Optional[float]) -> Optional[float]:
        if timeout is None:
            return None
        return _number("timeout", timeout)

    # ---- settings (changes reach a buffer in use at once, in every process) ---------------

    @property
    def min_size_to_sample(self) -> int:
        return self._min_size

    @property
    def samples_per_insert(self) -> Optional[float]:
        self._refresh()
        return self._spi or None

    @samples_per_insert.setter
    def samples_per_insert(self, value: Optional[float]) -> None:
        spi = 0.0 if value is None else _number("samples_per_insert", value)
        self._push(spi=spi)

    @property
    def tolerance(self) -> float:
        self._refresh()
        return self._tolerance

    @tolerance.setter
    def tolerance(self, value: float) -> None:
        self._push(tolerance=_number("tolerance", value))

    @property
    def timeout(self) -> Optional[float]:
        self._refresh()
        return self._timeout

    @timeout.setter
    def timeout(self, value: Optional[float]) -> None:
        self._push(timeout=self._check_timeout(value), set_timeout=True)

    # ---- state ---------------------------------------------------------------------------

    def can_sample(self, batch_size: int = 1) -> bool:
        """Whether a sample (of any size: the check is made before the call) could start now
        without waiting."""
        return self._core is not None and bool(self._core.can_sample())

    def can_insert(self) -> bool:
        """Whether an add/extend could start now without waiting."""
        return self._core is None or bool(self._core.can_insert())

    def stats(self) -> Dict[str, Any]:
        """{'inserted': items inserted, 'sampled': items sampled, 'ratio': sampled/inserted}."""
        if self._core is None:
            return {"inserted": 0, "sampled": 0, "ratio": 0.0}
        inserted, sampled = self._core.written, self._core.sampled
        return {"inserted": inserted, "sampled": sampled,
                "ratio": sampled / inserted if inserted else 0.0}

    def config(self) -> Dict[str, Any]:
        self._refresh()
        return {"min_size_to_sample": self._min_size, "samples_per_insert": self._spi or None,
                "tolerance": self._tolerance, "timeout": self._timeout}

    def __repr__(self) -> str:
        c = self.config()
        return ("RateLimiter(" + ", ".join(f"{k}={v!r}" for k, v in c.items()) + ")")

    # ---- binding to a core -----------------------------------------------------------------

    def _bind(self, core: Any) -> None:
        self._core = core
        core.configure_rate_limiter(True, self._min_size, self._spi, self._tolerance,
                                    -1.0 if self._timeout is None else self._timeout)

    @classmethod
    def _from_core(cls, core: Any) -> Optional["RateLimiter"]:
        """The limiter a shared buffer was made with (in an attached process)."""
        enabled, min_size, spi, tolerance, timeout = core.rate_limiter_config()
        if not enabled:
            return None
        limiter = cls(int(min_size), spi or None, tolerance, None if timeout < 0 else timeout)
        limiter._core = core
        return limiter

    def _refresh(self) -> None:
        # Another process may have changed a shared buffer's settings.
        if self._core is not None:
            _, self._min_size, self._spi, self._tolerance, timeout = self._core.rate_limiter_config()
            self._timeout = None if timeout < 0 else timeout

    def _push(self, spi: Optional[float] = None, tolerance: Optional[float] = None,
              timeout: Optional[float] = None, set_timeout: bool = False) -> None:
        self._refresh()
        if spi is not None:
            self._spi = spi
        if tolerance is not None:
            self._tolerance = tolerance
        if set_timeout:
            self._timeout = timeout
        if self._core is not None:
            self._bind(self._core)
