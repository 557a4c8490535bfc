"""Sampler configurations: which items a batch takes."""

from __future__ import annotations

import math
from typing import Any, Optional


def _non_negative(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {value}")
    return float(value)


class Uniform:
    """Uniform sampling over the stored items.

    Args:
        replacement: draw with replacement (default); without it a batch holds distinct
            items and may not be larger than the buffer.
    """

    kind = "uniform"

    def __init__(self, replacement: bool = True) -> None:
        if not isinstance(replacement, bool):
            raise TypeError(f"replacement must be a bool, got {type(replacement).__name__}")
        self.replacement = replacement

    def _core_args(self) -> dict[str, Any]:
        return dict(sampler="uniform", replacement=self.replacement, alpha=0.0, beta=0.0, eps=0.0)

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "replacement": self.replacement}

    def __repr__(self) -> str:
        return f"Uniform(replacement={self.replacement})"


class Prioritized:
    """Proportional prioritized replay (Schaul et al., "Prioritized Experience Replay", 2016).

    An item with priority p_i (e.g. |TD error|) is drawn with probability
    ``P(i) = (p_i + eps)^alpha / sum_k (p_k + eps)^alpha``; new items get the largest
    ``(p + eps)^alpha`` seen so far. Batches are stratified: the total is cut into B equal
    segments and one item is drawn from each. Importance weights are
    ``w_i = (N * P(i))^-beta / max_j w_j`` with N the number of stored items.

    Args:
        alpha: how much prioritisation is used (0 = uniform).
        beta: importance-sampling correction (0 = none, 1 = full); may be annealed while
            training through ``buffer.sampler.beta = value``.
        eps: added to every priority so no item's probability is exactly 0.

    >>> buf = ReplayBuffer(1000, sampler=Prioritized(alpha=0.6, beta=0.4))
    """

    kind = "prioritized"

    def __init__(self, alpha: float = 0.6, beta: float = 0.4, eps: float = 1e-6) -> None:
        self.alpha = _non_negative("alpha", alpha)
        self._beta = _non_negative("beta", beta)
        self.eps = _non_negative("eps", eps)
        self._core: Optional[Any] = None

    @property
    def beta(self) -> float:
        return self._beta

    @beta.setter
    def beta(self, value: float) -> None:
        value = _non_negative("beta", value)
        if self._core is not None:
            self._core.beta = value
        self._beta = value

    def _core_args(self) -> dict[str, Any]:
        return dict(sampler="prioritized", replacement=True, alpha=self.alpha, beta=self._beta,
                    eps=self.eps)

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "alpha": self.alpha, "beta": self._beta, "eps": self.eps}

    def __repr__(self) -> str:
        return f"Prioritized(alpha={self.alpha}, beta={self._beta}, eps={self.eps})"


Sampler = (Uniform, Prioritized)


def sampler_from_config(config: dict[str, Any]) -> Any:
    kind = config.get("kind")
    if kind == "uniform":
        return Uniform(replacement=bool(config["replacement"]))
    if kind == "prioritized":
        return Prioritized(alpha=config["alpha"], beta=config["beta"], eps=config["eps"])
    raise ValueError(f"unknown sampler kind {kind!r} in state")
