"""Episode buffers: a table of vectorized env steps composed with an episode view, for
n-step transitions, sequences and frame stacks with every observation stored once (the logic
is in the core: cpp/include/reverie/episodes.h and episode_view.h)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from . import _writing
from ._batch import Batch
from ._buffer import ReplayBuffer
from ._config import register_buffer
from ._limiter import RateLimiter
from ._parts import Part, Uniform
from ._spec import Field, SpecLike
from ._table import Table
from ._values import as_int as _as_int

_EPISODE_ENDS = ("pad", "drop")


@dataclass(frozen=True)
class EpisodeView:
    """The episode view's settings (the table configuration's ``"view"``): which fields play
    which part, how many envs step together, and the frame stack."""

    num_envs: int = 1
    obs_fields: Tuple[str, ...] = ("obs",)
    frame_stack: int = 1
    reward: str = "reward"
    terminated: str = "terminated"
    truncated: str = "truncated"

    def config(self) -> Dict[str, Any]:
        return {"kind": "episodes", "num_envs": self.num_envs, "obs": list(self.obs_fields),
                "frame_stack": self.frame_stack, "reward": self.reward,
                "terminated": self.terminated, "truncated": self.truncated}

    @classmethod
    def from_config(cls, view: Mapping[str, Any]) -> "EpisodeView":
        return cls(int(view["num_envs"]), tuple(view["obs"]), int(view["frame_stack"]),
                   view["reward"], view["terminated"], view["truncated"])

    @property
    def next_names(self) -> list:
        return [f"next_{n}" for n in self.obs_fields]

    def roles(self) -> Dict[str, str]:
        return {"reward": self.reward, "terminated": self.terminated, "truncated": self.truncated}

    def check_spec(self, spec: Mapping[str, Field]) -> None:
        """Names the view's fields must not collide with (the sampled outputs); the core
        checks the roles' fields themselves."""
        names = list(spec)
        for part, name in [*self.roles().items(), *(("obs_fields", n) for n in self.obs_fields)]:
            if name not in spec:
                raise ValueError(f"the {part} field '{name}' is not in the spec (fields: "
                                 f"{', '.join(names)}); name it with {part}=... or add it")
        outputs = self.next_names + ["return", "discount", "mask"]
        taken = sorted(set(outputs) & set(names))
        if taken:
            raise ValueError(f"field names {taken} are taken by sampled outputs "
                             f"({', '.join(outputs)}); rename those fields")

    def leading_axes(self, fields: Mapping[str, Any]) -> int:
        """Axes before the item's shape in an extend() whose spec is being inferred: the
        reward is a scalar per row, so its axes are the leading ones, (num_envs,) for one step
        or (T, num_envs) for T steps."""
        reward = fields.get(self.reward)
        shape = getattr(reward, "shape", None)
        if shape is None and isinstance(reward, (list, tuple)):
            shape = np.shape(reward)
        return 2 if shape is not None and len(shape) == 2 else 1


@register_buffer("episodes")
class EpisodeBuffer(ReplayBuffer):
    """A replay buffer of env steps that knows episodes, for n-step returns, sequences and
    stacked frames: a FIFO table composed with an episode view.

    Each call of ``extend`` stores one step of a vectorized env (every value ``[num_envs,
    *shape]``) or ``T`` steps time-major (``[T, num_envs, *shape]``); env ``e`` keeps its own
    stream, so steps of different envs never mix. A row is (obs, action, reward, terminated,
    truncated) as ``env.step`` returned them for that obs; the next observation is the obs of
    the env's next row, so observations are stored once. Rows follow gymnasium's next-step
    autoreset (its default since 1.0): after a step that ended an episode, the env's next row
    holds the episode's final observation (its other fields are ignored), and the row after
    it starts the next episode.

    Args:
        capacity: rows in all; a multiple of ``num_envs`` (each env keeps the last
            ``capacity // num_envs`` of its steps).
        spec: as for ReplayBuffer, per env step; may be inferred from the first ``extend`` of
            one step. ``reward`` must be a float32/float64 scalar, ``terminated`` and
            ``truncated`` bool scalars.
        sampler, seed, rate_limiter, storage, path: as for ReplayBuffer (uniform sampling is
            with replacement). The writer is FIFO; admission rules and max_times_sampled do
            not apply to env streams.
        num_envs: envs stepped together.
        obs_fields: the observation fields: given again as ``next_<name>`` by ``sample`` and
            stacked when ``frame_stack > 1``.
        frame_stack: with k > 1 every obs field holds one frame per row and samples return
            the last k frames ``[..., k, *frame]``; positions before an episode's first row
            repeat its first frame.
        reward, terminated, truncated: the names of those fields.
        metadata: as for ReplayBuffer (``get(keys).meta``).

    Writes take turns under the buffer's writer lock (safe from several threads or
    processes), but each env's stream must get the steps of one env: one actor per buffer,
    or one loop stepping all envs. Sampling runs from any number of threads.
    """

    _View = EpisodeView
    _view: EpisodeView

    def __init__(self, capacity: int, spec: Optional[SpecLike] = None,
                 sampler: Optional[Part] = None, seed: Optional[int] = None, *,
                 num_envs: int = 1, obs_fields: Sequence[str] = ("obs",), frame_stack: int = 1,
                 reward: str = "reward", terminated: str = "terminated",
                 truncated: str = "truncated", rate_limiter: Optional[RateLimiter] = None,
                 storage: str = "memory", path: Optional[Union[str, os.PathLike]] = None,
                 metadata: bool = False) -> None:
        num_envs = _as_int("num_envs", num_envs)
        frame_stack = _as_int("frame_stack", frame_stack)
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if not 1 <= frame_stack <= 64:
            raise ValueError(f"frame_stack must be in [1, 64], got {frame_stack}")
        if isinstance(obs_fields, str):
            obs_fields = (obs_fields,)
        capacity_int = _as_int("capacity", capacity)
        if capacity_int > 0 and capacity_int % num_envs:
            raise ValueError(f"capacity must be a multiple of num_envs (each env keeps capacity // "
                             f"num_envs steps): got capacity {capacity_int}, num_envs {num_envs}")
        if isinstance(sampler, Uniform) and not sampler.replacement:
            raise ValueError("an EpisodeBuffer samples with replacement: use Uniform() or Prioritized()")
        self._view = EpisodeView(num_envs, tuple(obs_fields), frame_stack, reward, terminated, truncated)
        super().__init__(capacity, spec, sampler, seed, rate_limiter=rate_limiter, storage=storage,
                         path=path, metadata=metadata)

    # ---- sampling ---------------------------------------------------------------------

    def sample(self, batch_size: int, *, n_step: int = 1, gamma: float = 0.99,  # type: ignore[override]
               out: None = None) -> Batch:
        """Draws ``batch_size`` n-step transitions.

        A start is any stored transition row whose env has a next row stored (and whose frame
        stack is complete), drawn uniformly or by priority among those. From it the return
        sums up to ``n_step`` rewards of the same env, ``G = sum_i gamma^i r_i``, stopping
        after a terminated step (``discount = 0``), after a truncated step (bootstrap from the
        final observation) and at the env's newest row (bootstrap from it).

        Returns:
            A Batch with every field of the start rows (obs fields as ``[B, k, *frame]``
            stacks when ``frame_stack = k > 1``), ``next_<obs>`` (the bootstrap
            observation), ``return`` and ``discount`` (float32 [B]: ``gamma^m``, or 0 after
            termination); ``indices`` are the starts' keys (for ``update_priorities``).

        Raises:
            ValueError: n_step < 1, gamma outside [0, 1], or no transition to sample yet.
        """
        if out is not None:
            raise ValueError("EpisodeBuffer.sample does not take out=")
        batch_size = _as_int("batch_size", batch_size)
        n_step = _as_int("n_step", n_step)
        gamma = float(gamma)
        table = self._ready(batch_size)
        arrays, next_arrays, returns, discounts, keys, weights = table.core.sample_transitions(
            batch_size, n_step, gamma)
        fields = table.tensors(arrays, table.names)
        fields.update(table.tensors(next_arrays, self._view.next_names))
        fields["return"] = torch.from_numpy(returns)
        fields["discount"] = torch.from_numpy(discounts)
        return Batch(fields, torch.from_numpy(keys),
                     None if weights is None else torch.from_numpy(weights))

    def sample_sequences(self, batch_size: int, length: int, *, burn_in: int = 0,
                         episode_end: str = "pad") -> Batch:
        """Draws ``batch_size`` sequences of ``burn_in + length`` steps of one env each.

        The sequence's start (its first learning step, after the burn-in prefix) is a stored
        transition row, drawn uniformly or by its priority. Steps outside the start's
        episode are zeros with ``mask`` False; the episode's final-observation row, when in
        the window, holds the final observation (mask False). With ``episode_end="drop"``
        only starts with ``length`` steps left in their episode are drawn; with ``"pad"`` the
        rest is masked. Burn-in steps before the episode or the oldest stored data are masked.

        Returns:
            A Batch with every field ``[B, burn_in + length, ...]`` (obs fields stacked when
            ``frame_stack > 1``), ``mask`` (bool [B, burn_in + length]), ``indices`` (the
            starts' keys, for ``update_priorities`` with a per-sequence priority such as
            ``sequence_priority``) and ``weights``.

        Raises:
            ValueError: length < 1, burn_in < 0, burn_in + length more than an env stream
                holds, an unknown episode_end, or no valid start.
        """
        batch_size = _as_int("batch_size", batch_size)
        length = _as_int("length", length)
        burn_in = _as_int("burn_in", burn_in)
        if episode_end not in _EPISODE_ENDS:
            raise ValueError(f"episode_end must be 'pad' or 'drop', got {episode_end!r}")
        table = self._ready(batch_size)
        arrays, mask, keys, weights = table.core.sample_sequences(batch_size, burn_in, length,
                                                                  episode_end == "drop")
        fields = table.tensors(arrays, table.names)
        fields["mask"] = torch.from_numpy(mask)
        return Batch(fields, torch.from_numpy(keys),
                     None if weights is None else torch.from_numpy(weights))

    def _ready(self, batch_size: int) -> Table:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        table = self._table
        return table if table is not None else _writing.await_first_item(self, batch_size)

    def env_steps(self, keys: Any) -> "tuple[torch.Tensor, torch.Tensor]":
        """Which env and which of its steps each key names: ``(env, step)`` int64 tensors,
        step t counting that env's rows from 0 (its t-th written row). Keys are opaque
        (``batch.indices``); this is the buffer's own decoder for them.

        Raises:
            IndexError: a key is not one of this buffer's (never written is fine: the
                position it would name is returned).

        >>> env, step = buf.env_steps(batch.indices)  # doctest: +SKIP
        """
        arr = np.asarray(keys.numpy() if isinstance(keys, torch.Tensor) else keys, dtype=np.int64)
        core = self._core
        if core is None:
            raise IndexError("the buffer is empty: no key names one of its rows yet")
        n = np.asarray(core.insertions_of(arr.reshape(-1)))
        if (n < 0).any():
            bad = int(arr.reshape(-1)[np.flatnonzero(n < 0)[0]])
            raise IndexError(f"index {bad} is not a key of this buffer (use batch.indices)")
        envs = self._view.num_envs
        env, step = n % envs, n // envs
        return (torch.from_numpy(env.reshape(arr.shape)), torch.from_numpy(step.reshape(arr.shape)))

    # ---- inspection ---------------------------------------------------------------------

    @property
    def columns(self) -> Dict[str, torch.Tensor]:
        """Zero-copy views of the storage: {name: tensor [capacity, *shape]}, stream-major:
        env e's rows are ``[e * per, (e + 1) * per)`` with ``per = capacity // num_envs``,
        step t at row ``e * per + t % per``."""
        return super().columns

    num_envs = property(lambda self: self._view.num_envs)
    frame_stack = property(lambda self: self._view.frame_stack)
    obs_fields = property(lambda self: self._view.obs_fields)

    @property
    def _roles(self) -> Dict[str, str]:
        return self._view.roles()

    def __repr__(self) -> str:
        return (super().__repr__()[:-1] + f", num_envs={self.num_envs}, "
                f"frame_stack={self.frame_stack}, obs_fields={list(self.obs_fields)})")


def sequence_priority(td_abs: torch.Tensor, mask: torch.Tensor, eta: float = 0.9) -> torch.Tensor:
    """R2D2's sequence priority (Kapturowski et al., 2019): ``eta * max + (1 - eta) * mean``
    of the absolute TD errors over each sequence's masked steps.

    Args:
        td_abs: [B, T] absolute TD errors.
        mask: [B, T] bool, the steps that count (``batch.mask``).
        eta: the weight of the max, in [0, 1].

    Returns:
        [B] priorities (0 for a sequence without a masked step), for ``update_priorities``.
    """
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    if td_abs.shape != mask.shape or td_abs.dim() != 2:
        raise ValueError(f"td_abs and mask must both be [B, T], got {tuple(td_abs.shape)} and "
                         f"{tuple(mask.shape)}")
    mask = mask.to(torch.bool)
    td = td_abs.detach()
    zero = torch.zeros((), dtype=td.dtype, device=td.device)
    count = mask.sum(1)
    peak = torch.where(mask, td, torch.full_like(td, -torch.inf)).amax(1)
    mean = torch.where(mask, td, zero).sum(1) / count.clamp(min=1)
    return torch.where(count > 0, eta * peak + (1.0 - eta) * mean, zero)
