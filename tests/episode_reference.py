"""A small pure-Python model of reverie.EpisodeBuffer, for checking the real one against.

It follows the issue-4 API (the episode-buffer contract) with plain loops over keys and exact
float64 arithmetic, and no sampling: the tests ask it which starts are valid and what a batch
must hold for a given list of start keys.

- Every row ever written is kept (columnar, by id); `written` and `capacity` decide which
  ids are still stored: present(id) <=> 0 <= id < written and id >= written - capacity.
  Ids: the t-th step of env e has id t * num_envs + e (its insertion number). The model's
  methods take and return ids ("keys" in their names); the buffer's keys pack a slot and a
  generation instead (tests/keys.py): `ids(batch.indices)` and `keys(ids)` convert.
- final(key): the env's previous row key - N was a transition row (not itself a
  final-observation row) with terminated or truncated set. The flags of a final-observation
  row come from the env's reset step and are ignored, so they never make the next row final.
  Fixed at write time, like the real buffer's.
- first(key): key < N (the env's first row ever) or key - N is a final-observation row.
- `at(written)` gives a view of the same history with another `written` (the concurrency test
  uses it to ask what a sampler could have seen while a writer ran).
"""

from __future__ import annotations

import copy
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from keys import fifo_insertion, fifo_key

TRANSITION = "transition"
FINAL = "final"


class EpisodeReference:
    """Model of EpisodeBuffer(capacity, spec, num_envs=..., obs_fields=..., frame_stack=...).

    spec: {name: (dtype, per-env-step shape)}; obs fields hold one frame each.
    """

    def __init__(self, capacity: int, spec: Mapping[str, Tuple[Any, Sequence[int]]], *,
                 num_envs: int = 1, obs_fields: Sequence[str] = ("obs",), frame_stack: int = 1,
                 reward: str = "reward", terminated: str = "terminated",
                 truncated: str = "truncated") -> None:
        assert capacity % num_envs == 0 and frame_stack >= 1
        self.capacity = capacity
        self.num_envs = num_envs
        self.obs_fields = tuple(obs_fields)
        self.frame_stack = frame_stack
        self.reward, self.terminated, self.truncated = reward, terminated, truncated
        self.spec = {name: (np.dtype(dt), tuple(shape)) for name, (dt, shape) in spec.items()}
        self.cols: Dict[str, np.ndarray] = {
            name: np.zeros((0, *shape), dt) for name, (dt, shape) in self.spec.items()}
        self.is_final: List[bool] = []
        self.written = 0

    # ---- writing ------------------------------------------------------------------------

    def extend(self, **fields: Any) -> None:
        """One vector step ([N, *shape] per field) or T steps time-major ([T, N, *shape])."""
        n = self.num_envs
        new = {}
        for name, (dt, shape) in self.spec.items():
            arr = np.asarray(fields[name], dtype=dt)
            if arr.ndim == len(shape) + 1:
                arr = arr[None]
            assert arr.shape[1:] == (n, *shape), (name, arr.shape)
            new[name] = arr.reshape(-1, *shape)  # row t * N + e
        (rows,) = {len(a) for a in new.values()}
        for name, arr in new.items():
            self.cols[name] = np.concatenate([self.cols[name], arr])
        for key in range(self.written, self.written + rows):
            prev = key - n
            self.is_final.append(prev >= 0 and not self.is_final[prev] and self.done(prev))
        self.written += rows

    def at(self, written: int) -> "EpisodeReference":
        """The same history seen when only the first `written` rows had been written."""
        assert 0 <= written <= len(self.is_final)
        view = copy.copy(self)
        view.written = written
        return view

    # ---- the buffer's keys ------------------------------------------------------------

    def ids(self, keys: Any) -> Any:
        """The model's ids (insertion numbers) of the buffer's keys (an array or tensor)."""
        if hasattr(keys, "numpy"):
            keys = keys.numpy()
        return fifo_insertion(np.asarray(keys, dtype=np.int64), self.capacity, self.num_envs)

    def keys(self, ids: Any) -> Any:
        """The buffer's keys of model ids."""
        return fifo_key(np.asarray(ids, dtype=np.int64), self.capacity, self.num_envs)

    # ---- rows ---------------------------------------------------------------------------

    def present(self, key: int) -> bool:
        return 0 <= key < self.written and key >= self.written - self.capacity

    def slot(self, key: int) -> int:
        """Where a key lives in `columns`: stream-major, env e's rows at [e*per, (e+1)*per)."""
        per = self.capacity // self.num_envs
        return (key % self.num_envs) * per + (key // self.num_envs) % per

    def stored_keys(self) -> range:
        return range(max(0, self.written - self.capacity), self.written)

    def done(self, key: int) -> bool:
        return bool(self.cols[self.terminated][key]) or bool(self.cols[self.truncated][key])

    def final(self, key: int) -> bool:
        return self.is_final[key]

    def first(self, key: int) -> bool:
        return key < self.num_envs or self.is_final[key - self.num_envs]

    def transition(self, key: int) -> bool:
        return self.present(key) and not self.is_final[key]

    # ---- frame stacks -------------------------------------------------------------------

    def stack(self, key: int) -> List[int]:
        """The keys of the row's frame stack, oldest first; repeats the episode's first row."""
        keys = [key]
        cur = key
        for _ in range(self.frame_stack - 1):
            if not self.first(cur):
                cur -= self.num_envs
            keys.append(cur)
        return keys[::-1]

    def stack_complete(self, key: int) -> bool:
        return all(self.present(k) for k in self.stack(key))

    def out_shape(self, name: str) -> Tuple[int, ...]:
        shape = self.spec[name][1]
        if name in self.obs_fields and self.frame_stack > 1:
            return (self.frame_stack, *shape)
        return shape

    def value(self, name: str, key: int) -> np.ndarray:
        """A field of a row as a batch holds it (obs fields stacked when frame_stack > 1)."""
        if name in self.obs_fields and self.frame_stack > 1:
            return np.stack([self.cols[name][k] for k in self.stack(key)])
        return self.cols[name][key]

    def zeros(self, name: str) -> np.ndarray:
        return np.zeros(self.out_shape(name), self.spec[name][0])

    # ---- n-step transitions -------------------------------------------------------------

    def valid_start(self, s: int) -> bool:
        return self.transition(s) and self.present(s + self.num_envs) and self.stack_complete(s)

    def valid_starts(self) -> List[int]:
        return [s for s in self.stored_keys() if self.valid_start(s)]

    def n_step(self, s: int, n: int, gamma: float) -> Tuple[float, float, int, int]:
        """(G, discount, m, boot) exactly as the contract's pseudo-code, in float64."""
        big_n = self.num_envs
        reward = self.cols[self.reward]
        g, disc, m = 0.0, 1.0, 0
        for i in range(n):
            j = s + i * big_n
            if not self.present(j + big_n):
                break
            g += disc * float(reward[j])
            disc *= gamma
            m = i + 1
            if self.cols[self.terminated][j]:
                disc = 0.0
                break
            if self.cols[self.truncated][j]:
                break
        return g, disc, m, s + m * big_n

    def expected_transition(self, s: int, n: int, gamma: float) -> Dict[str, np.ndarray]:
        g, disc, _, boot = self.n_step(s, n, gamma)
        out = {name: self.value(name, s) for name in self.spec}
        for name in self.obs_fields:
            out["next_" + name] = self.value(name, boot)
        out["return"] = np.float32(g)
        out["discount"] = np.float32(disc)
        return out

    def expected_transitions(self, starts: Sequence[int], n: int,
                             gamma: float) -> Dict[str, np.ndarray]:
        """The batch (stacked along a new axis 0) for these start keys."""
        items = [self.expected_transition(int(s), n, gamma) for s in starts]
        return {name: np.stack([it[name] for it in items]) for name in items[0]}

    # ---- sequences ----------------------------------------------------------------------

    def window(self, s: int, length: int, burn_in: int) -> List[Tuple[int, Optional[str]]]:
        """[(key w_t, state)] for t in [0, burn_in + length); state is TRANSITION or FINAL for
        rows of s's episode, None for the rest."""
        big_n = self.num_envs
        total = burn_in + length
        keys = [s + (t - burn_in) * big_n for t in range(total)]
        state: List[Optional[str]] = [None] * total
        state[burn_in] = TRANSITION
        for t in range(burn_in + 1, total):
            if state[t - 1] != TRANSITION or not self.present(keys[t]):
                break
            state[t] = FINAL if self.done(keys[t - 1]) else TRANSITION
        for t in range(burn_in - 1, -1, -1):
            if self.first(keys[t + 1]) or not self.present(keys[t]):
                break
            state[t] = TRANSITION
        return list(zip(keys, state))

    def sequence_valid(self, s: int, length: int, burn_in: int, episode_end: str) -> bool:
        if not (self.transition(s) and self.stack_complete(s)):
            return False
        if episode_end == "pad":
            return True
        assert episode_end == "drop"
        return all(st == TRANSITION for _, st in self.window(s, length, burn_in)[burn_in:])

    def valid_sequence_starts(self, length: int, burn_in: int, episode_end: str) -> List[int]:
        return [s for s in self.stored_keys()
                if self.sequence_valid(s, length, burn_in, episode_end)]

    def expected_sequence(self, s: int, length: int, burn_in: int) -> Dict[str, np.ndarray]:
        window = self.window(s, length, burn_in)
        mask = [st == TRANSITION and self.stack_complete(k) for k, st in window]
        out: Dict[str, np.ndarray] = {}
        for name in self.spec:
            rows = []
            for (key, st), m in zip(window, mask):
                rows.append(self.value(name, key) if m or st == FINAL else self.zeros(name))
            out[name] = np.stack(rows)
        out["mask"] = np.array(mask, dtype=bool)
        return out

    def expected_sequences(self, starts: Sequence[int], length: int,
                           burn_in: int) -> Dict[str, np.ndarray]:
        items = [self.expected_sequence(int(s), length, burn_in) for s in starts]
        return {name: np.stack([it[name] for it in items]) for name in items[0]}
