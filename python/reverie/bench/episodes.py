"""Episode-buffer benchmarks (issue 4): ``python -m reverie.bench --workloads episodes``.

reverie's ``EpisodeBuffer`` against the numpy episode buffer people write (arrays laid
out ``[T, num_envs, ...]`` as in Stable-Baselines3's ``ReplayBuffer`` with ``n_envs``; obs
stored once; every sampler vectorized, no Python loop per item), all measured in this one
process, each cell the median of several repeats with the implementations in turns (as in
the rest of ``reverie.bench``):

- W1 episodes: fields obs f32[17], action f32[6], reward f32, terminated, truncated; 8 envs,
  capacity 1M (quick: 100k), filled one and a quarter laps with random episodes of 100-1000
  steps (a quarter of them truncated). n-step ``sample(256, n_step=3, gamma=0.99)`` in
  samples/s, and ``sample_sequences(32, 80)`` (episode_end="pad") in sequences/s. Target:
  sequences >= 10x numpy.
- W3 frames with dedup: obs u8[84,84] single frames, ``frame_stack=4``, capacity 50k (quick:
  10k), 8 envs. Resident memory (RSS growth of a fresh process creating and filling it) of
  the EpisodeBuffer against the naive layout, a plain ``rv.ReplayBuffer`` holding obs and
  next_obs as full u8[4,84,84] stacks (target <= 0.3x), and the numpy dedup buffer; and
  sample(32) / sample(256) throughput of the three, in samples/s and gathered GB/s counting
  the obs and next_obs stacks (2 x 28,224 bytes per sample).

Before timing, each pair of episode buffers (filled with the same stream) is checked to
agree: the numpy buffer recomputes reverie's sampled batch from reverie's start keys.
"""

from __future__ import annotations

import gc
import time
from functools import partial
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from . import baselines as bl
from . import runner as R
from .concurrency import Cell, _md, stats

NUM_ENVS = 8
N_STEP, GAMMA = 3, 0.99
SEQ_BATCH, SEQ_LENGTH = 32, 80
FRAME = (84, 84)
FRAME_STACK = 4
SEQUENCE_TARGET = 10.0  # reverie sequences/s over numpy's, at least
MEMORY_TARGET = 0.3  # EpisodeBuffer RSS over the naive ReplayBuffer's, at most
EPISODE_LENGTHS = (100, 1000)  # transitions per episode, uniform
TRUNCATED_SHARE = 0.25  # episodes that end truncated rather than terminated
EXTRA_LAP = 0.25  # fill one lap and this much more: the ring has wrapped, the head is inside

W1E_SPEC: bl.Spec = {
    "obs": (np.float32, (17,)),
    "action": (np.float32, (6,)),
    "reward": (np.float32, ()),
    "terminated": (np.bool_, ()),
    "truncated": (np.bool_, ()),
}
W3E_SPEC: bl.Spec = {  # one frame per env step; samples stack FRAME_STACK of them
    "obs": (np.uint8, FRAME),
    "action": (np.int64, ()),
    "reward": (np.float32, ()),
    "terminated": (np.bool_, ()),
    "truncated": (np.bool_, ()),
}
W3_NAIVE_SPEC: bl.Spec = {  # the same transitions as full stacks, next_obs stored apart
    "obs": (np.uint8, (FRAME_STACK, *FRAME)),
    "action": (np.int64, ()),
    "reward": (np.float32, ()),
    "next_obs": (np.uint8, (FRAME_STACK, *FRAME)),
    "terminated": (np.bool_, ()),
    "truncated": (np.bool_, ()),
}
STACK_BYTES = FRAME_STACK * FRAME[0] * FRAME[1]
SAMPLE_BYTES = 2 * STACK_BYTES  # obs + next_obs stacks gathered per W3 sample

KINDS = ("reverie", "numpy", "naive")
LABELS = {"reverie": "reverie EpisodeBuffer", "numpy": "numpy episode buffer",
          "naive": "reverie ReplayBuffer, full stacks"}


# ---------------------------------------------------------------------------------------
# The numpy baseline
# ---------------------------------------------------------------------------------------


class NumpyEpisodeBuffer:
    """An episode replay buffer in numpy, written the way people write one.

    Columns are ``[T, num_envs, *shape]`` arrays (T = capacity // num_envs steps per env
    stream; Stable-Baselines3's ReplayBuffer layout with ``n_envs``), each observation stored
    once. Row convention, keys and every sampling rule follow ``rv.EpisodeBuffer``
    (gymnasium's NEXT_STEP autoreset: after a terminated/truncated row comes the episode's
    final-observation row, whose obs is the final observation; key of step t of env e is
    ``t * num_envs + e``, its row ``t % T``). Two per-row columns are kept at write time:
    ``final`` (the row is a final-observation row) and ``ep_start`` (the step at which the
    row's episode began), so validity, stacks and episode masks are array arithmetic.

    All sampling is vectorized over the batch: starts are drawn uniformly over the stored
    (step, env) pairs and invalid ones redrawn together (rejection sampling, uniform over
    the valid starts); n-step returns come from a ``[B, n]`` index grid with cumulative
    done masks; sequences from a ``[B, L]`` window grid. Batches are dicts of torch tensors
    (``torch.from_numpy`` of freshly gathered arrays) with ``"indices"`` holding the keys.
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
        self.spec = bl._normalize(spec)
        self.names = list(self.spec)
        self.obs_fields = tuple(obs_fields)
        self.reward, self.terminated, self.truncated = reward, terminated, truncated
        for name in (*self.obs_fields, reward, terminated, truncated):
            if name not in self.spec:
                raise ValueError(f"field {name!r} is not in the spec")
        # One row per key slot (key % capacity = (t % T) * N + e), gathered with one flat
        # index array, and one zero row after them (slot ``capacity``): a gather pads the
        # positions outside an episode by pointing them there.
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

    def nstep_at(self, keys: Any, n_step: int = 1, gamma: float = 0.99) -> Dict[str, torch.Tensor]:
        """The n-step batch for the given start keys (e.g. ``rv`` batch.indices)."""
        t, e = self._split(keys)
        return self._nstep(t, e, n_step, gamma)

    def sequences_at(self, keys: Any, length: int, burn_in: int = 0) -> Dict[str, torch.Tensor]:
        """The sequence batch for the given start keys (the first learning steps)."""
        t, e = self._split(keys)
        return self._sequences(t, e, length, burn_in)

    # ---- validity ---------------------------------------------------------------------

    def _split(self, keys: Any) -> Tuple[np.ndarray, np.ndarray]:
        keys = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
        return np.divmod(keys.astype(np.int64), self.num_envs)

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
        out["indices"] = t * self.num_envs + e
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
        out["indices"] = t * self.num_envs + e
        return {k: torch.from_numpy(v) for k, v in out.items()}


# ---------------------------------------------------------------------------------------
# Data: random episodes under the NEXT_STEP convention
# ---------------------------------------------------------------------------------------


def episode_flags(steps: int, num_envs: int, rng: np.random.Generator,
                  lengths: Tuple[int, int] = EPISODE_LENGTHS,
                  truncated_share: float = TRUNCATED_SHARE) -> Tuple[np.ndarray, np.ndarray]:
    """(terminated, truncated) ``[steps, num_envs]`` of back-to-back random episodes: an
    episode of L transitions takes L rows, the last with one flag set, then its
    final-observation row (flags clear), then the next episode."""
    term = np.zeros((steps, num_envs), dtype=np.bool_)
    trunc = np.zeros((steps, num_envs), dtype=np.bool_)
    lo, hi = lengths
    for e in range(num_envs):  # a few thousand episodes per env: data generation, untimed
        n = rng.integers(lo, hi + 1, size=steps // (lo + 1) + 2)
        last = np.cumsum(n + 1) - 2  # row of each episode's last transition
        last = last[last < steps]
        cut = rng.random(last.size) < truncated_share
        term[last[~cut], e] = True
        trunc[last[cut], e] = True
    return term, trunc


def stream(spec: bl.Spec, steps: int, num_envs: int, seed: int, chunk: int = 1024,
           pool_steps: Optional[int] = None) -> Iterator[Dict[str, np.ndarray]]:
    """Time-major chunks ``[<= chunk, num_envs, ...]`` of a random episode stream of
    ``steps`` steps. The flags are drawn for the whole stream; the other fields come from
    ``pool_steps`` random steps (default: all of them), cycled (large frames: repeated data
    copy as fast as fresh ones and save generating gigabytes)."""
    rng = np.random.default_rng(seed)
    term, trunc = episode_flags(steps, num_envs, rng)
    other = {k: v for k, v in spec.items() if k not in ("terminated", "truncated")}
    pool_steps = steps if pool_steps is None else min(pool_steps, steps)
    cols = R.make_columns(other, pool_steps * num_envs, rng)
    pool = {k: v.reshape(pool_steps, num_envs, *v.shape[1:]) for k, v in cols.items()}
    done = 0
    while done < steps:
        k = min(chunk, steps - done)
        p = done % pool_steps
        k = min(k, pool_steps - p)
        out = {name: v[p:p + k] for name, v in pool.items()}
        out["terminated"] = term[done:done + k]
        out["truncated"] = trunc[done:done + k]
        yield out
        done += k


def fill_steps(capacity: int, num_envs: int = NUM_ENVS) -> int:
    """Steps per env written before timing: one lap and ``EXTRA_LAP`` more."""
    return capacity // num_envs + int(capacity // num_envs * EXTRA_LAP)


def make_episode_buffer(impl: str, capacity: int, spec: bl.Spec, frame_stack: int = 1,
                        seed: int = 0, num_envs: int = NUM_ENVS) -> Any:
    """An empty reverie EpisodeBuffer or numpy baseline (impl "reverie" / "numpy")."""
    if impl == "numpy":
        return NumpyEpisodeBuffer(capacity, spec, num_envs, seed, frame_stack=frame_stack)
    import reverie as rv

    return rv.EpisodeBuffer(capacity, spec=dict(spec), seed=seed, num_envs=num_envs,
                            frame_stack=frame_stack)


def filled_episode_buffer(impl: str, capacity: int, spec: bl.Spec, frame_stack: int = 1,
                          seed: int = 0, pool_steps: Optional[int] = None,
                          num_envs: int = NUM_ENVS) -> Any:
    """A buffer of ``impl`` written ``fill_steps`` steps of the seeded episode stream."""
    buf = make_episode_buffer(impl, capacity, spec, frame_stack, seed, num_envs)
    gc.disable()
    try:
        for chunk in stream(spec, fill_steps(capacity, num_envs), num_envs, seed,
                            pool_steps=pool_steps):
            buf.extend(**chunk)
    finally:
        gc.enable()
    gc.collect()
    if len(buf) != capacity:
        raise RuntimeError(f"{impl}: holds {len(buf)} of {capacity} rows")
    return buf


W3_POOL_STEPS = 256  # distinct random steps of frames, cycled when filling W3


def filled_w3(kind: str, capacity: int, seed: int = 0) -> Any:
    """A W3 buffer: "reverie"/"numpy" episode buffers (frame_stack 4) or "naive", a plain
    rv.ReplayBuffer of full obs/next_obs stacks (an ``R.Adapter``)."""
    if kind == "naive":
        blocks = R.fill_blocks(W3_NAIVE_SPEC, capacity, np.random.default_rng(seed))
        return R.build_filled("reverie", capacity, W3_NAIVE_SPEC, False, blocks, seed)
    return filled_episode_buffer(kind, capacity, W3E_SPEC, FRAME_STACK, seed, W3_POOL_STEPS)


# ---------------------------------------------------------------------------------------
# Agreement: the baseline recomputes reverie's batch from reverie's start keys
# ---------------------------------------------------------------------------------------


def compare(got: Mapping[str, torch.Tensor], want: Mapping[str, torch.Tensor],
            rtol: float = 1e-6) -> List[str]:
    """The fields of ``want`` on which ``got`` differs (float fields within ``rtol``)."""
    bad = []
    for name, w in want.items():
        g = got.get(name)
        if g is None or tuple(g.shape) != tuple(w.shape) or g.dtype != w.dtype:
            bad.append(f"{name} (got {None if g is None else (tuple(g.shape), g.dtype)}, "
                       f"want {tuple(w.shape), w.dtype})")
        elif w.dtype.is_floating_point:
            if not torch.allclose(g, w, rtol=rtol, atol=rtol):
                bad.append(f"{name} (max |diff| {float((g - w).abs().max()):.3g})")
        elif not torch.equal(g, w):
            bad.append(f"{name} ({int((g != w).sum())} elements differ)")
    return bad


def _as_dict(batch: Any) -> Dict[str, torch.Tensor]:
    out = dict(batch)
    out["indices"] = batch.indices
    return out


def check_nstep(rbuf: Any, nbuf: NumpyEpisodeBuffer, batch_size: int, n_step: int,
                gamma: float) -> List[str]:
    """Differences between reverie's n-step batch and the baseline's for the same starts
    (and starts the baseline holds invalid)."""
    b = rbuf.sample(batch_size, n_step=n_step, gamma=gamma)
    bad = compare(_as_dict(b), nbuf.nstep_at(b.indices, n_step, gamma))
    t, e = nbuf._split(b.indices)
    if not nbuf.valid_transition(t, e).all():
        bad.append("starts the baseline holds invalid")
    return bad


def check_sequences(rbuf: Any, nbuf: NumpyEpisodeBuffer, batch_size: int, length: int,
                    burn_in: int = 0, episode_end: str = "pad") -> List[str]:
    b = rbuf.sample_sequences(batch_size, length, burn_in=burn_in, episode_end=episode_end)
    want = nbuf.sequences_at(b.indices, length, burn_in)
    bad = compare(_as_dict(b), want)
    t, e = nbuf._split(b.indices)
    ok = nbuf.valid_sequence_start(t, e)
    if episode_end == "drop":
        ok &= want["mask"][:, burn_in:].numpy().all(axis=1)
    if not ok.all():
        bad.append("starts the baseline holds invalid")
    return bad


# ---------------------------------------------------------------------------------------
# Cells
# ---------------------------------------------------------------------------------------


def measure(ops: Dict[str, Callable[[], Any]], units: float, s: R.Settings) -> Dict[str, Any]:
    """``R.measure`` (median of repeats, in turns), with min and max."""
    return {k: stats(v["repeats"]) for k, v in R.measure(ops, units, s).items()}


def unavailable() -> Optional[str]:
    """Why the section cannot run (None when it can): it needs ``reverie.EpisodeBuffer``."""
    try:
        import reverie as rv
    except Exception as exc:  # ImportError, or a broken build raising something else
        return f"reverie not importable ({type(exc).__name__}: {exc})".splitlines()[0]
    if not hasattr(rv, "EpisodeBuffer"):
        return "this reverie build has no EpisodeBuffer"
    return None


def cells() -> int:
    """Progress steps this section reports."""
    return 3 + 2 + 2 + 3 + 3


def run_w1(s: R.Settings, prog: R.Progress) -> List[Cell]:
    """W1 episodes: n-step sample(256) and sequences 32 x 80, reverie vs numpy."""
    cap = s.w1_capacity
    bufs = {}
    for impl in ("reverie", "numpy"):
        prog.note(f"episodes W1 {impl}: filling {cap:,}")
        bufs[impl] = filled_episode_buffer(impl, cap, W1E_SPEC, 1, s.seed)
    prog.note("episodes W1: checking reverie against the baseline")
    agree = {"n-step": check_nstep(bufs["reverie"], bufs["numpy"], 256, N_STEP, GAMMA),
             "sequences": check_sequences(bufs["reverie"], bufs["numpy"], SEQ_BATCH, SEQ_LENGTH)}
    out = []
    prog.note(f"episodes W1: n-step sample 256 (n={N_STEP})")
    cell = Cell("W1", f"n-step sample 256 (n={N_STEP})", "samples/s")
    cell.values = measure({k: partial(b.sample, 256, n_step=N_STEP, gamma=GAMMA)
                           for k, b in bufs.items()}, 256, s)
    cell.extra = {"ratio": cell.ratio("reverie", "numpy"), "target": None,
                  "disagreements": agree["n-step"]}
    out.append(cell)
    prog.advance(2)
    prog.note(f"episodes W1: sequences {SEQ_BATCH} x {SEQ_LENGTH}")
    cell = Cell("W1", f"sequences {SEQ_BATCH} x {SEQ_LENGTH} (pad)", "sequences/s")
    cell.values = measure({k: partial(b.sample_sequences, SEQ_BATCH, SEQ_LENGTH)
                           for k, b in bufs.items()}, SEQ_BATCH, s)
    cell.extra = {"ratio": cell.ratio("reverie", "numpy"), "target": SEQUENCE_TARGET,
                  "disagreements": agree["sequences"]}
    out.append(cell)
    prog.advance(2)
    del bufs
    gc.collect()
    return out


def run_w3(s: R.Settings, prog: R.Progress) -> List[Cell]:
    """W3 dedup: sample(32) and sample(256) of the three buffers, in GB/s of stacks."""
    cap = s.w3_capacity
    bufs: Dict[str, Any] = {}
    for kind in KINDS:
        prog.note(f"episodes W3 {kind}: filling {cap:,}")
        bufs[kind] = filled_w3(kind, cap, s.seed)
    prog.note("episodes W3: checking reverie against the baseline")
    agree = check_nstep(bufs["reverie"], bufs["numpy"], 64, 1, GAMMA)
    out = []
    for n in (32, 256):
        prog.note(f"episodes W3: sample {n}")
        cell = Cell("W3", f"sample {n}", "GB/s")
        cell.values = measure({k: partial(bufs[k].sample, n) for k in KINDS},
                              n * SAMPLE_BYTES / 1e9, s)
        cell.extra = {"ratio": cell.ratio("reverie", "numpy"),
                      "ratio_vs_naive": cell.ratio("reverie", "naive"),
                      "bytes_per_sample": SAMPLE_BYTES, "disagreements": agree}
        out.append(cell)
        prog.advance(3)
    del bufs
    gc.collect()
    return out


def memory_probe(kind: str, capacity: int, seed: int = 0) -> Dict[str, int]:
    """RSS growth from creating and filling a W3 buffer of ``kind`` (run in a fresh process).

    The source data (cycled blocks) and the imports exist before the first reading.
    """
    import reverie  # noqa: F401  (its import is not the buffer's memory)

    rng = np.random.default_rng(seed)
    if kind == "naive":
        blocks = R.fill_blocks(W3_NAIVE_SPEC, capacity, rng)
        gc.collect()
        before = R._rss_bytes()
        buf: Any = R.build_filled("reverie", capacity, W3_NAIVE_SPEC, False, blocks, seed)
        stored = capacity * R.item_bytes(W3_NAIVE_SPEC)
    else:
        chunks = list(stream(W3E_SPEC, fill_steps(capacity), NUM_ENVS, seed,
                             pool_steps=W3_POOL_STEPS))
        gc.collect()
        before = R._rss_bytes()
        buf = make_episode_buffer(kind, capacity, W3E_SPEC, FRAME_STACK, seed)
        for chunk in chunks:
            buf.extend(**chunk)
        stored = capacity * R.item_bytes(W3E_SPEC)
    gc.collect()
    after = R._rss_bytes()
    assert len(buf) == capacity
    return {"rss_growth": after - before, "stored": stored}


def run_memory(s: R.Settings, prog: R.Progress) -> Dict[str, Any]:
    """``memory_probe`` in a fresh interpreter per kind."""
    out: Dict[str, Any] = {}
    for kind in KINDS:
        prog.note(f"episodes memory: {kind}")
        out[kind] = R.probe_in_subprocess("reverie.bench.episodes", "memory_probe",
                                          (kind, s.w3_capacity, s.seed), 600)
        prog.advance()
    return out


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------


def _num(x: float) -> str:
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if x >= scale:
            return f"{x / scale:.3g}{suffix}"
    return f"{x:.3g}"


def _rate(v: Optional[Dict[str, Any]], unit: str) -> str:
    """'1.2M/s [1.1M-1.3M]', or for GB/s also samples/s."""
    if v is None:
        return "-"
    if unit == "GB/s":
        per = v["value"] * 1e9 / SAMPLE_BYTES
        return (f"{v['value']:.2f} GB/s [{v['min']:.2f}-{v['max']:.2f}], "
                f"{_num(per)} samples/s")
    return f"{_num(v['value'])}/s [{_num(v['min'])}-{_num(v['max'])}]"


def _ratio(r: Optional[float], target: Optional[float] = None, most: bool = False) -> str:
    if r is None:
        return "-"
    text = f"{r:.3g}x"
    if target is not None:
        meets = r <= target if most else r >= target
        text += f" ({'meets' if meets else 'misses'} {'<=' if most else '>='} {target:g}x)"
    return text


def table(cells_: Sequence[Cell], memory: Mapping[str, Any], s: R.Settings) -> str:
    """The section's tables and notes."""
    lines: List[str] = []
    w1 = [c for c in cells_ if c.section == "W1"]
    w3 = [c for c in cells_ if c.section == "W3"]
    if w1:
        lines.append(f"Episodes, W1 fields, {NUM_ENVS} envs, capacity "
                     f"{R.human_count(s.w1_capacity)} (median [min-max])")
        lines += _md(["metric", "reverie EpisodeBuffer", "numpy episode buffer",
                      "reverie/numpy"],
                     [[c.metric, _rate(c.values.get("reverie"), c.unit),
                       _rate(c.values.get("numpy"), c.unit),
                       _ratio(c.extra.get("ratio"), c.extra.get("target"))] for c in w1])
    if w3:
        lines.append("")
        lines.append(f"Episodes, W3 frames u8{list(FRAME)} x frame_stack {FRAME_STACK}, "
                     f"{NUM_ENVS} envs, capacity {R.human_count(s.w3_capacity)}; GB/s of "
                     f"obs + next_obs stacks ({SAMPLE_BYTES:,} bytes per sample)")
        lines += _md(["metric", "reverie EpisodeBuffer (dedup)", "numpy dedup",
                      "ReplayBuffer (full stacks)", "reverie/numpy", "reverie/ReplayBuffer"],
                     [[c.metric] + [_rate(c.values.get(k), c.unit) for k in KINDS]
                      + [_ratio(c.extra.get("ratio")), _ratio(c.extra.get("ratio_vs_naive"))]
                      for c in w3])
    if memory:
        naive = memory.get("naive", {}).get("rss_growth")
        lines.append("")
        lines.append(f"Memory, W3 buffer of {s.w3_capacity:,} steps, RSS growth of a fresh "
                     "process creating and filling it:")
        for kind in KINDS:
            m = memory.get(kind)
            if m is None:
                continue
            if "error" in m:
                lines.append(f"  {LABELS[kind]}: failed ({m['error']})")
                continue
            rel = ""
            if naive and kind != "naive":
                target = MEMORY_TARGET if kind == "reverie" else None
                rel = (f"; {_ratio(m['rss_growth'] / naive, target, most=True)} "
                       "the full-stacks ReplayBuffer")
            lines.append(f"  {LABELS[kind]}: {m['rss_growth'] / 1e6:.0f} MB = "
                         f"{m['rss_growth'] / m['stored']:.2f}x its stored bytes{rel}")
    bad = {f"{c.section} {c.metric}": c.extra["disagreements"]
           for c in cells_ if c.extra.get("disagreements")}
    if cells_:
        lines.append("reverie's batches recomputed by the numpy buffer from reverie's start keys: "
                     + ("agree" if not bad else "DIFFER: " + "; ".join(
                         f"{k}: {', '.join(v)}" for k, v in bad.items())))
    lines.append(f"each figure: median of {s.repeats} repeats of {s.budget_s / s.repeats:.2g} s "
                 f"per implementation, in turns, after {s.warmup_s:g} s warm-up; buffers "
                 f"written {1 + EXTRA_LAP:g} laps of random episodes of "
                 f"{EPISODE_LENGTHS[0]}-{EPISODE_LENGTHS[1]} steps "
                 f"({TRUNCATED_SHARE:.0%} truncated) before timing")
    return "\n".join(lines)


def run(s: R.Settings, prog: R.Progress) -> Tuple[List[Cell], Dict[str, Any]]:
    """Runs the section; returns the cells and their JSON form."""
    t0 = time.perf_counter()
    memory = run_memory(s, prog)  # first, while this process is small
    out = run_w1(s, prog)
    out += run_w3(s, prog)
    text = table(out, memory, s)
    naive = memory.get("naive", {}).get("rss_growth")
    mem_ratio = {k: (m["rss_growth"] / naive if naive and "rss_growth" in m else None)
                 for k, m in memory.items() if k != "naive"}
    result = {
        "settings": {"num_envs": NUM_ENVS, "w1_capacity": s.w1_capacity,
                     "w3_capacity": s.w3_capacity, "n_step": N_STEP, "gamma": GAMMA,
                     "sequence_batch": SEQ_BATCH, "sequence_length": SEQ_LENGTH,
                     "frame_stack": FRAME_STACK, "episode_lengths": list(EPISODE_LENGTHS),
                     "truncated_share": TRUNCATED_SHARE, "laps": 1 + EXTRA_LAP,
                     "repeats": s.repeats, "budget_s": s.budget_s, "warmup_s": s.warmup_s,
                     "sequence_target": SEQUENCE_TARGET, "memory_target": MEMORY_TARGET},
        "cells": [c.as_dict() for c in out],
        "memory": memory,
        "memory_ratio_vs_naive": mem_ratio,
        "elapsed_s": time.perf_counter() - t0,
        "report": text,
    }
    return out, result
