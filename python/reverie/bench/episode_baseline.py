"""The numpy episode buffer the episodes section compares reverie's ``EpisodeBuffer`` with.

:class:`NumpyEpisodeBuffer` is what people write by hand (Stable-Baselines3's ``[T, num_envs,
...]`` layout, obs stored once, every sampler vectorized); :func:`reverie_key_to_step` is the
one place that turns a reverie key into a position of this buffer (through the reverie
buffer's own decoder). It is its own module
because it is a baseline (like ``baselines.py``), a third of the episodes section's size.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from . import baselines as bl


def reverie_key_to_step(rbuf: Any, keys: Any) -> Tuple[np.ndarray, np.ndarray]:
    """(step t, env e) of each of reverie ``EpisodeBuffer`` ``rbuf``'s keys, as int64 arrays.

    Reverie's keys are opaque (a slot and a generation packed into an int64); the buffer
    decodes them (``EpisodeBuffer.env_steps``). Every conversion from a reverie key to a
    position of :class:`NumpyEpisodeBuffer` (and of the benchmark tests' models) goes
    through here.

    Args:
        rbuf: the reverie EpisodeBuffer the keys came from.
        keys: its keys (``batch.indices``: a tensor, array or list).
    """
    env, step = rbuf.env_steps(_as_int64(keys))
    return step.numpy(), env.numpy()


def _as_int64(keys: Any) -> np.ndarray:
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
    return keys.astype(np.int64)


class NumpyEpisodeBuffer:
    """An episode replay buffer in numpy, written the way people write one.

    Columns are ``[T, num_envs, *shape]`` arrays (T = capacity // num_envs steps per env
    stream; Stable-Baselines3's ReplayBuffer layout with ``n_envs``), each observation stored
    once. Row convention and every sampling rule follow ``rv.EpisodeBuffer`` (gymnasium's
    NEXT_STEP autoreset: after a terminated/truncated row comes the episode's
    final-observation row, whose obs is the final observation); step t of env e is stored at
    row ``t % T``, and this buffer's own key for it is ``t * num_envs + e``. Two per-row
    columns are kept at write time: ``final`` (the row is a final-observation row) and
    ``ep_start`` (the step at which the row's episode began), so validity, stacks and
    episode masks are array arithmetic.

    All sampling is vectorized over the batch: starts are drawn uniformly over the stored
    (step, env) pairs and invalid ones redrawn together (rejection sampling, uniform over
    the valid starts); n-step returns come from a ``[B, n]`` index grid with cumulative
    done masks; sequences from a ``[B, L]`` window grid. Batches are dicts of torch tensors
    (``torch.from_numpy`` of freshly gathered arrays) with ``"indices"`` holding the keys.

    ``nstep_at`` / ``sequences_at`` recompute a reverie batch from reverie's start keys: they
    turn the keys into (step, env) positions with :func:`reverie_key_to_step` (which asks the
    reverie buffer to decode them), and hand the keys back unchanged as ``"indices"``.
    ``nstep_at_steps`` / ``sequences_at_steps`` take the positions themselves.
    """

    def __init__(self, capacity: int, spec: bl.Spec, num_envs: int = 1,
                 seed: Optional[int] = None, *, obs_fields: Sequence[str] = ("obs",),
                 frame_stack: int = 1, reward: str = "reward", terminated: str = "terminated",
                 truncated: str = "truncated") -> None:
        if num_envs < 1 or capacity % num_envs:
            raise ValueError(f"capacity {capacity} is not a multiple of num_envs {num_envs}")
        if frame_stack < 1:
            raise ValueError(f"frame_stack must be >= 1, got {frame_stack}")
        self.capacity, self.num_envs, self.frame_stack = capacity, num_envs, frame_stack
        self.T = capacity // num_envs
        self.spec = bl.normalize_spec(spec)
        self.names = list(self.spec)
        self.obs_fields = tuple(obs_fields)
        self.reward, self.terminated, self.truncated = reward, terminated, truncated
        for name in (*self.obs_fields, reward, terminated, truncated):
            if name not in self.spec:
                raise ValueError(f"field {name!r} is not in the spec")
        # One row per (step, env) position, row (t % T) * N + e of a flat array, gathered
        # with one flat index array, and one zero row after them (row ``capacity``): a
        # gather pads the positions outside an episode by pointing them there.
        self._flat = {name: np.zeros((capacity + 1, *shape), dtype=dt)
                      for name, (dt, shape) in self.spec.items()}
        self.columns = {name: c[:capacity].reshape(self.T, num_envs, *c.shape[1:])
                        for name, c in self._flat.items()}
        self.final = np.zeros((self.T, num_envs), dtype=np.bool_)
        self.ep_start = np.zeros((self.T, num_envs), dtype=np.int64)
        self._final_flat = self.final.reshape(capacity)
        self._start_flat = self.ep_start.reshape(capacity)
        self.steps = 0  # steps written per env stream (all streams in lockstep)
        # the last row ended its episode (terminated/truncated, not a final-observation row)
        self._prev_done = np.zeros(num_envs, dtype=np.bool_)
        self._prev_final = np.zeros(num_envs, dtype=np.bool_)  # last row was a final-obs row
        self._cur_start = np.zeros(num_envs, dtype=np.int64)  # last row's episode start
        self._back = np.arange(-(frame_stack - 1), 1, dtype=np.int64)  # stack offsets
        self.rng = np.random.default_rng(seed)
        self._powers: Dict[Tuple[int, float], np.ndarray] = {}

    def __len__(self) -> int:
        return min(self.steps, self.T) * self.num_envs

    @property
    def oldest(self) -> int:
        """The oldest stored step (of every env stream)."""
        return max(0, self.steps - self.T)

    # ---- writing ----------------------------------------------------------------------

    def extend(self, **fields: Any) -> None:
        """One vector step (values ``[num_envs, *shape]``) or T steps ``[T, num_envs, *shape]``."""
        n_env = self.num_envs
        reward = np.asarray(fields[self.reward])
        vals = {name: np.asarray(fields[name]) for name in self.names}
        if reward.ndim == 1:  # one step
            vals = {name: v[None] for name, v in vals.items()}
        steps = vals[self.reward].shape[0]
        if steps == 0:
            return
        done = vals[self.terminated] | vals[self.truncated]  # [steps, N]
        final = np.empty((steps, n_env), dtype=np.bool_)
        final[0] = self._prev_done
        final[1:] = done[:-1]
        if (done & final).any():
            # A final-observation row's flags are the reset step's, ignored (it ends nothing):
            # step by step where such flags are set (not with gymnasium's autoreset).
            for i in range(steps):
                if i:
                    final[i] = done[i - 1]
                done[i] &= ~final[i]
        first = np.empty((steps, n_env), dtype=np.bool_)
        first[0] = self._prev_final | (self.steps == 0)
        first[1:] = final[:-1]
        t = self.steps + np.arange(steps, dtype=np.int64)
        start = np.where(first, t[:, None], -1)
        start[0] = np.where(first[0], self.steps, self._cur_start)
        np.maximum.accumulate(start, axis=0, out=start)
        self._prev_done, self._prev_final, self._cur_start = done[-1], final[-1], start[-1]
        begin = self.steps
        self.steps += steps
        if steps > self.T:  # only the newest T steps stay
            cut = steps - self.T
            vals = {name: v[cut:] for name, v in vals.items()}
            final, start, begin, steps = final[cut:], start[cut:], begin + cut, self.T
        row = begin % self.T
        head = min(steps, self.T - row)
        for dst, src in ((self.final, final), (self.ep_start, start),
                         *((self.columns[n], vals[n]) for n in self.names)):
            dst[row:row + head] = src[:head]
            if head < steps:
                dst[:steps - head] = src[head:]

    # ---- sampling ---------------------------------------------------------------------

    def sample(self, batch_size: int, n_step: int = 1, gamma: float = 0.99) -> Dict[str, torch.Tensor]:
        """n-step transitions from uniformly drawn valid starts (see ``nstep_at``)."""
        if batch_size <= 0 or n_step < 1 or not 0.0 <= gamma <= 1.0:
            raise ValueError("batch_size > 0, n_step >= 1 and gamma in [0, 1] are required")
        t, e = self._draw(batch_size, self.oldest, self.steps - 1, self.valid_transition)
        return self._nstep(t, e, n_step, gamma)

    def sample_sequences(self, batch_size: int, length: int, burn_in: int = 0,
                         episode_end: str = "pad") -> Dict[str, torch.Tensor]:
        """Windows of ``burn_in + length`` steps from uniformly drawn valid starts."""
        if batch_size <= 0 or length < 1 or burn_in < 0 or burn_in + length > self.T:
            raise ValueError("batch_size > 0, length >= 1, burn_in >= 0 and "
                             "burn_in + length <= capacity // num_envs are required")
        if episode_end == "pad":
            valid = self.valid_sequence_start
        elif episode_end == "drop":
            def valid(t: np.ndarray, e: np.ndarray) -> np.ndarray:
                ok = self.valid_sequence_start(t, e)
                ok[ok] = self._drop_ok(t[ok], e[ok], length)
                return ok
        else:
            raise ValueError(f"episode_end must be 'pad' or 'drop', got {episode_end!r}")
        t, e = self._draw(batch_size, self.oldest, self.steps, valid)
        return self._sequences(t, e, length, burn_in)

    def nstep_at(self, rbuf: Any, keys: Any, n_step: int = 1,
                 gamma: float = 0.99) -> Dict[str, torch.Tensor]:
        """The n-step batch for the start keys of reverie EpisodeBuffer ``rbuf`` (e.g.
        batch.indices); its ``"indices"`` are those keys."""
        keys = _as_int64(keys)
        t, e = reverie_key_to_step(rbuf, keys)
        out = self.nstep_at_steps(t, e, n_step, gamma)
        out["indices"] = torch.from_numpy(keys)
        return out

    def sequences_at(self, rbuf: Any, keys: Any, length: int,
                     burn_in: int = 0) -> Dict[str, torch.Tensor]:
        """The sequence batch for the start keys (the first learning steps) of reverie
        EpisodeBuffer ``rbuf``; its ``"indices"`` are those keys."""
        keys = _as_int64(keys)
        t, e = reverie_key_to_step(rbuf, keys)
        out = self.sequences_at_steps(t, e, length, burn_in)
        out["indices"] = torch.from_numpy(keys)
        return out

    def nstep_at_steps(self, t: np.ndarray, e: np.ndarray, n_step: int = 1,
                       gamma: float = 0.99) -> Dict[str, torch.Tensor]:
        """The n-step batch starting at steps ``t`` of envs ``e``."""
        return self._nstep(np.asarray(t, dtype=np.int64), np.asarray(e, dtype=np.int64),
                           n_step, gamma)

    def sequences_at_steps(self, t: np.ndarray, e: np.ndarray, length: int,
                           burn_in: int = 0) -> Dict[str, torch.Tensor]:
        """The sequence batch starting at steps ``t`` of envs ``e``."""
        return self._sequences(np.asarray(t, dtype=np.int64), np.asarray(e, dtype=np.int64),
                               length, burn_in)

    # ---- validity ---------------------------------------------------------------------

    def key_of(self, t: np.ndarray, e: np.ndarray) -> np.ndarray:
        """This buffer's own key of step ``t`` of env ``e`` (what its ``sample`` reports)."""
        return t * self.num_envs + e

    def _slots(self, t: np.ndarray, e: np.ndarray) -> np.ndarray:
        return (t % self.T) * self.num_envs + e

    def _window(self, t: np.ndarray, e: np.ndarray, first: int,
                stop: int) -> Tuple[np.ndarray, np.ndarray]:
        """Steps t + i and their flat slots, [B, stop - first] for i in [first, stop)."""
        offsets = np.arange(first, stop, dtype=np.int64)
        ts = t[:, None] + offsets
        slots = self._slots(t, e)[:, None] + offsets * self.num_envs
        np.subtract(slots, self.capacity, out=slots, where=slots >= self.capacity)
        np.add(slots, self.capacity, out=slots, where=slots < 0)
        return ts, slots

    def _complete(self, t: np.ndarray, slots: np.ndarray) -> np.ndarray:
        """Whether the stacks of rows (steps ``t``, flat ``slots``) are complete."""
        if self.frame_stack == 1:
            return t >= self.oldest
        return np.maximum(t - (self.frame_stack - 1), self._start_flat[slots]) >= self.oldest

    def valid_transition(self, t: np.ndarray, e: np.ndarray) -> np.ndarray:
        """Valid n-step starts: stored transition rows whose next row is stored, whose stack
        is complete."""
        slots = self._slots(t, e)
        ok = (t >= self.oldest) & (t + 1 < self.steps) & ~self._final_flat[slots]
        return ok & self._complete(t, slots)

    def valid_sequence_start(self, t: np.ndarray, e: np.ndarray) -> np.ndarray:
        """Valid sequence starts ("pad"): stored transition rows with a complete stack."""
        slots = self._slots(t, e)
        ok = (t >= self.oldest) & (t < self.steps) & ~self._final_flat[slots]
        return ok & self._complete(t, slots)

    def _draw(self, batch_size: int, lo: int, hi: int,
              valid: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
        """``batch_size`` (step, env) pairs uniform over the valid ones among steps
        [lo, hi): draw all, redraw the invalid ones together until none is left."""
        if hi <= lo:
            raise ValueError("no transition can be sampled yet")
        rng, n_env = self.rng, self.num_envs
        t = rng.integers(lo, hi, batch_size)
        e = rng.integers(0, n_env, batch_size)
        bad = np.flatnonzero(~valid(t, e))
        rounds = 0
        while bad.size:
            rounds += 1
            if rounds > 32:  # few valid starts: draw from the list of all of them
                tt, ee = np.divmod(np.arange(lo * n_env, hi * n_env, dtype=np.int64), n_env)
                ok = np.flatnonzero(valid(tt, ee))
                if not ok.size:
                    raise ValueError("no transition can be sampled yet")
                pick = ok[rng.integers(0, ok.size, bad.size)]
                t[bad], e[bad] = tt[pick], ee[pick]
                break
            t[bad] = rng.integers(lo, hi, bad.size)
            e[bad] = rng.integers(0, n_env, bad.size)
            bad = bad[~valid(t[bad], e[bad])]
        return t, e

    # ---- gathering --------------------------------------------------------------------

    def _obs_index(self, t: np.ndarray, slots: np.ndarray, e: np.ndarray) -> np.ndarray:
        """Flat slots of the observations of rows (t, e): ``slots`` itself, or with
        ``frame_stack = k > 1`` the stacks ``[..., k]`` (oldest first; positions before the
        episode's first row repeat it)."""
        if self.frame_stack == 1:
            return slots
        st = np.maximum(t[..., None] + self._back, self._start_flat[slots][..., None])
        return (st % self.T) * self.num_envs + e[..., None]

    def _gather(self, obs_index: np.ndarray, slots: np.ndarray) -> Dict[str, np.ndarray]:
        """Every field at ``slots`` (obs fields at ``obs_index``); np.take along axis 0, the
        fastest numpy gather (2-3x a fancy index for rows of a few dozen bytes)."""
        return {name: np.take(self._flat[name], obs_index if name in self.obs_fields else slots,
                              axis=0) for name in self.names}

    def _nstep(self, t: np.ndarray, e: np.ndarray, n: int, gamma: float) -> Dict[str, torch.Tensor]:
        ts, grid = self._window(t, e, 0, n)  # [B, n]: steps s, s+1, ... of env e
        term = self._flat[self.terminated][grid]
        done = term | self._flat[self.truncated][grid]
        # step i counts if step i+1 is stored (the write head) and no step before it ended
        go = ts + 1 < self.steps
        go[:, 1:] &= ~done[:, :-1]
        counts = np.logical_and.accumulate(go, axis=1)
        powers = self._powers.get((n, gamma))
        if powers is None:  # 1, g, g*g, ... (n + 1 of them), by repeated multiplication
            powers = self._powers[n, gamma] = np.cumprod(np.r_[1.0, np.full(n, gamma)])
        rewards = self._flat[self.reward][grid].astype(np.float64)
        ret = (np.where(counts, rewards, 0.0) * powers[:n]).sum(axis=1)
        m = counts.sum(axis=1)
        discount = np.where((counts & term).any(axis=1), 0.0, powers[m])
        boot = t + m
        slots = grid[:, 0]
        out = self._gather(self._obs_index(t, slots, e), slots)
        boot_slots = self._slots(boot, e)
        boot_index = self._obs_index(boot, boot_slots, e)
        for name in self.obs_fields:
            out["next_" + name] = np.take(self._flat[name], boot_index, axis=0)
        out["return"] = ret.astype(np.float32)
        out["discount"] = discount.astype(np.float32)
        out["indices"] = self.key_of(t, e)
        return {k: torch.from_numpy(v) for k, v in out.items()}

    def _forward(self, ts: np.ndarray, done: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """For learning rows ``ts`` [B, L] (s, s+1, ...) and their done flags: (transition
        rows of s's episode, its final-observation row), both [B, L]."""
        present = ts < self.steps
        go = present.copy()
        go[:, 1:] &= ~done[:, :-1]
        trans = np.logical_and.accumulate(go, axis=1)
        final = np.zeros_like(trans)
        final[:, 1:] = present[:, 1:] & trans[:, :-1] & done[:, :-1]
        return trans, final

    def _drop_ok(self, t: np.ndarray, e: np.ndarray, length: int) -> np.ndarray:
        """Whether every learning row of each start is a transition row of its episode."""
        ts, grid = self._window(t, e, 0, length)
        done = self._flat[self.terminated][grid] | self._flat[self.truncated][grid]
        return np.logical_and.reduce(self._forward(ts, done)[0], axis=1)

    def _sequences(self, t: np.ndarray, e: np.ndarray, length: int,
                   burn_in: int) -> Dict[str, torch.Tensor]:
        ts, grid = self._window(t, e, -burn_in, length)  # [B, burn_in + length]
        done = self._flat[self.terminated][grid] | self._flat[self.truncated][grid]
        trans, final = self._forward(ts[:, burn_in:], done[:, burn_in:])
        if burn_in:
            # back from s: w_t belongs if w_{t+1} belongs and is not its episode's first
            # row, and w_t is stored
            after, after_slots = ts[:, 1:burn_in + 1], grid[:, 1:burn_in + 1]
            ok = (ts[:, :burn_in] >= self.oldest) & (self._start_flat[after_slots] != after)
            back = np.logical_and.accumulate(ok[:, ::-1], axis=1)[:, ::-1]
            trans = np.concatenate([back, trans], axis=1)
            final = np.concatenate([np.zeros_like(back), final], axis=1)
        mask = trans
        obs_index = self._obs_index(ts, grid, np.broadcast_to(e[:, None], ts.shape))
        if self.frame_stack > 1:
            mask = trans & self._complete(ts, grid)
        # positions outside the episode read the zero row: gather and pad in one pass
        keep = mask | final
        slots = np.where(keep, grid, self.capacity)
        if self.frame_stack > 1:
            obs_index = np.where(keep[..., None], obs_index, self.capacity)
        else:
            obs_index = slots
        out = self._gather(obs_index, slots)
        out["mask"] = mask
        out["indices"] = self.key_of(t, e)
        return {k: torch.from_numpy(v) for k, v in out.items()}
