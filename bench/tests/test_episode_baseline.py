"""The numpy episode buffer of the benchmarks (reverie.bench.episode_baseline) computes what
rv.EpisodeBuffer computes, so that timing one against the other compares like with like.

First against a per-key model written straight from the API's definitions (present, final,
first, stacks, the n-step loop, the sequence window rules); then against reverie itself: the
same stream written to both, reverie's sampled start keys recomputed by the baseline, and
the set of starts each considers valid.

The model numbers the rows of the stream ``t * N_ENVS + e`` (step t of env e); reverie's
keys are turned into those positions only by ``reverie_key_to_step``, so that a change of
reverie's key encoding is adapted in that one function.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import pytest
import torch

from reverie.bench import episodes as E

N_ENVS = 3
CAPACITY = 3 * 40


def spec(frame: Tuple[int, ...] = (4,), dtype: Any = np.float32) -> Dict[str, Any]:
    return {
        "obs": (dtype, frame),
        "action": (np.float32, (2,)),
        "reward": (np.float32, ()),
        "terminated": (np.bool_, ()),
        "truncated": (np.bool_, ()),
    }


def chunks(sp: Dict[str, Any], steps: int, seed: int,
           stray_flags: bool = False) -> Iterator[Dict[str, np.ndarray]]:
    """A random stream of short episodes (1-8 steps, some truncated), cut into chunks of
    random lengths; single steps come without the time axis (one vector step).
    ``stray_flags``: flags also set at random rows, final-observation rows among them
    (whose flags are ignored)."""
    rng = np.random.default_rng(seed)
    term, trunc = E.episode_flags(steps, N_ENVS, rng, lengths=(1, 8), truncated_share=0.3)
    if stray_flags:
        term |= rng.random(term.shape) < 0.05
        trunc |= rng.random(term.shape) < 0.05
    data = {}
    for name, (dt, shape) in sp.items():
        if name in ("terminated", "truncated"):
            continue
        if np.dtype(dt) == np.uint8:
            data[name] = rng.integers(0, 256, (steps, N_ENVS, *shape), dtype=np.uint8)
        else:
            data[name] = rng.standard_normal((steps, N_ENVS, *shape)).astype(dt)
    data["terminated"], data["truncated"] = term, trunc
    done = 0
    while done < steps:
        k = int(min(rng.choice([1, 1, 2, 5, 17]), steps - done))
        part = {n: v[done:done + k] for n, v in data.items()}
        yield {n: v[0] for n, v in part.items()} if k == 1 else part
        done += k


# ---------------------------------------------------------------------------------------
# A per-key model of the API's definitions
# ---------------------------------------------------------------------------------------


class Model:
    def __init__(self, capacity: int, n_envs: int, frame_stack: int, names: List[str]) -> None:
        self.capacity, self.n, self.k, self.names = capacity, n_envs, frame_stack, names
        self.steps: List[Dict[str, np.ndarray]] = []

    def extend(self, **fields: Any) -> None:
        if np.ndim(fields["reward"]) == 1:
            fields = {n: np.asarray(v)[None] for n, v in fields.items()}
        for i in range(len(fields["reward"])):
            self.steps.append({n: np.array(v[i]) for n, v in fields.items()})

    @property
    def written(self) -> int:
        return len(self.steps) * self.n

    def present(self, key: int) -> bool:
        return 0 <= key < self.written and key >= self.written - self.capacity

    def row(self, key: int) -> Dict[str, np.ndarray]:
        t, e = divmod(key, self.n)
        return {name: self.steps[t][name][e] for name in self.names}

    def done(self, key: int) -> bool:
        """The row ends its episode: terminated or truncated, and not a final-observation
        row (whose flags are the reset step's, ignored)."""
        r = self.row(key)
        return (bool(r["terminated"]) or bool(r["truncated"])) and not self.final(key)

    def final(self, key: int) -> bool:
        return key - self.n >= 0 and self.done(key - self.n)

    def first(self, key: int) -> bool:
        return key < self.n or self.final(key - self.n)

    def stack_keys(self, key: int) -> List[int]:
        keys, j = [key], key
        for _ in range(self.k - 1):
            if not self.first(j):
                j -= self.n
            keys.append(j)
        return keys[::-1]

    def complete(self, key: int) -> bool:
        return all(self.present(j) for j in self.stack_keys(key))

    def transition(self, key: int) -> bool:
        return self.present(key) and not self.final(key)

    def obs(self, key: int) -> np.ndarray:
        if self.k == 1:
            return self.row(key)["obs"]
        return np.stack([self.row(j)["obs"] for j in self.stack_keys(key)])

    def full_row(self, key: int) -> Dict[str, np.ndarray]:
        r = self.row(key)
        r["obs"] = self.obs(key)
        return r

    def valid_nstep(self, s: int) -> bool:
        return self.transition(s) and self.present(s + self.n) and self.complete(s)

    def nstep(self, s: int, n_step: int, gamma: float) -> Dict[str, np.ndarray]:
        g, disc, m = 0.0, 1.0, 0
        for i in range(n_step):
            j = s + i * self.n
            if not self.present(j + self.n):
                break
            r = self.row(j)
            g += disc * float(r["reward"])
            disc *= gamma
            m = i + 1
            if r["terminated"]:
                disc = 0.0
                break
            if r["truncated"]:
                break
        out = self.full_row(s)
        out["next_obs"] = self.obs(s + m * self.n)
        out["return"] = np.float32(g)
        out["discount"] = np.float32(disc)
        return out

    def window(self, s: int, length: int, burn_in: int) -> Tuple[List[int], List[Optional[str]]]:
        """The window's keys and each one's state: "T" (a transition row of s's episode),
        "F" (its final-observation row) or None."""
        w = [s + (t - burn_in) * self.n for t in range(burn_in + length)]
        state: List[Optional[str]] = [None] * len(w)
        state[burn_in] = "T"
        for t in range(burn_in + 1, len(w)):
            if state[t - 1] != "T" or not self.present(w[t]):
                break
            state[t] = "F" if self.done(w[t - 1]) else "T"
        for t in range(burn_in - 1, -1, -1):
            if not (state[t + 1] == "T" and not self.first(w[t + 1]) and self.present(w[t])):
                break
            state[t] = "T"
        return w, state

    def valid_sequence(self, s: int, length: int, burn_in: int, drop: bool) -> bool:
        if not (self.transition(s) and self.complete(s)):
            return False
        if not drop:
            return True
        _, state = self.window(s, length, burn_in)
        return all(x == "T" for x in state[burn_in:])

    def sequence(self, s: int, length: int, burn_in: int,
                 zeros: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        w, state = self.window(s, length, burn_in)
        rows, mask = [], []
        for key, st in zip(w, state):
            m = st == "T" and self.complete(key)
            mask.append(m)
            rows.append(self.full_row(key) if m or st == "F" else zeros)
        out = {name: np.stack([r[name] for r in rows]) for name in self.names}
        out["mask"] = np.array(mask)
        return out


def build(frame_stack: int = 1, steps: int = 70, seed: int = 0, frame: Tuple[int, ...] = (4,),
          dtype: Any = np.float32, reverie: bool = False,
          stray_flags: bool = False) -> Tuple[Any, Any, Optional[Any]]:
    sp = spec(frame, dtype)
    model = Model(CAPACITY, N_ENVS, frame_stack, list(sp))
    base = E.NumpyEpisodeBuffer(CAPACITY, sp, N_ENVS, seed, frame_stack=frame_stack)
    rbuf = None
    if reverie:
        rv = pytest.importorskip("reverie")
        rbuf = rv.EpisodeBuffer(CAPACITY, spec=dict(sp), seed=seed, num_envs=N_ENVS,
                                frame_stack=frame_stack)
    for chunk in chunks(sp, steps, seed, stray_flags):
        model.extend(**chunk)
        base.extend(**chunk)
        if rbuf is not None:
            rbuf.extend(**chunk)
    return model, base, rbuf


def zeros_of(base: E.NumpyEpisodeBuffer, model: Model) -> Dict[str, np.ndarray]:
    return {name: np.zeros_like(model.full_row(model.written - 1)[name]) for name in base.names}


def check(got: Dict[str, torch.Tensor], want: Dict[str, np.ndarray]) -> None:
    for name, w in want.items():
        g = got[name].numpy()
        assert g.shape == w.shape, name
        if w.dtype.kind == "f":
            np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6, err_msg=name)
        else:
            np.testing.assert_array_equal(g, w, err_msg=name)


def stored_keys(model: Model) -> np.ndarray:
    return np.arange(max(0, model.written - model.capacity), model.written, dtype=np.int64)


# ---------------------------------------------------------------------------------------
# The baseline against the model
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("stray_flags", [False, True])
@pytest.mark.parametrize("frame_stack", [1, 3])
@pytest.mark.parametrize("steps", [12, 70])  # not yet full, and wrapped 1.75 laps
def test_nstep_matches_model(frame_stack: int, steps: int, stray_flags: bool) -> None:
    model, base, _ = build(frame_stack, steps, seed=steps + frame_stack, stray_flags=stray_flags)
    keys = stored_keys(model)
    t, e = np.divmod(keys, N_ENVS)
    valid = base.valid_transition(t, e)
    assert valid.tolist() == [model.valid_nstep(int(k)) for k in keys]
    starts = keys[valid]
    for n_step, gamma in ((1, 0.99), (3, 0.9), (5, 0.5)):
        got = base.nstep_at_steps(*np.divmod(starts, N_ENVS), n_step, gamma)
        assert got["indices"].tolist() == starts.tolist()
        want = [model.nstep(int(s), n_step, gamma) for s in starts]
        check(got, {name: np.stack([w[name] for w in want]) for name in want[0]})


@pytest.mark.parametrize("stray_flags", [False, True])
@pytest.mark.parametrize("frame_stack", [1, 3])
@pytest.mark.parametrize("burn_in", [0, 3])
@pytest.mark.parametrize("steps", [12, 70])
def test_sequences_match_model(frame_stack: int, burn_in: int, steps: int,
                               stray_flags: bool) -> None:
    model, base, _ = build(frame_stack, steps, seed=2 * steps + frame_stack,
                           stray_flags=stray_flags)
    keys = stored_keys(model)
    t, e = np.divmod(keys, N_ENVS)
    valid = base.valid_sequence_start(t, e)
    assert valid.tolist() == [model.valid_sequence(int(k), 6, burn_in, False) for k in keys]
    starts = keys[valid]
    got = base.sequences_at_steps(*np.divmod(starts, N_ENVS), 6, burn_in)
    zeros = zeros_of(base, model)
    want = [model.sequence(int(s), 6, burn_in, zeros) for s in starts]
    check(got, {name: np.stack([w[name] for w in want]) for name in want[0]})
    drop = got["mask"][:, burn_in:].numpy().all(axis=1)
    assert drop.tolist() == [model.valid_sequence(int(s), 6, burn_in, True) for s in starts]


def test_own_sampler_draws_every_valid_start_and_only_those() -> None:
    model, base, _ = build(3, 70, seed=5)
    valid_n = {int(k) for k in stored_keys(model) if model.valid_nstep(int(k))}
    drawn = {int(k) for _ in range(60) for k in base.sample(64, n_step=3).get("indices")}
    assert drawn == valid_n
    drop = {int(k) for k in stored_keys(model) if model.valid_sequence(int(k), 4, 2, True)}
    drawn = {int(k) for _ in range(60)
             for k in base.sample_sequences(64, 4, 2, "drop").get("indices")}
    assert drawn == drop


# ---------------------------------------------------------------------------------------
# The baseline against reverie (same stream, reverie's start keys)
# ---------------------------------------------------------------------------------------


def _reverie_keys(batch: Any) -> np.ndarray:
    return batch.indices.numpy().astype(np.int64)


def _model_keys(rbuf: Any, keys: np.ndarray) -> List[int]:
    """reverie's keys as the model numbers the same rows (step * N_ENVS + env)."""
    t, e = E.reverie_key_to_step(rbuf, keys)
    return (t * N_ENVS + e).tolist()


@pytest.mark.parametrize("stray_flags", [False, True])
@pytest.mark.parametrize("frame_stack,frame,dtype", [(1, (4,), np.float32),
                                                     (3, (2, 3), np.uint8)])
def test_nstep_matches_reverie(frame_stack: int, frame: Tuple[int, ...], dtype: Any,
                               stray_flags: bool) -> None:
    model, base, rbuf = build(frame_stack, 70, seed=7, frame=frame, dtype=dtype, reverie=True,
                              stray_flags=stray_flags)
    seen = set()
    for i in range(40):
        n_step, gamma = (3, 0.9) if i % 2 else (1, 0.99)
        b = rbuf.sample(64, n_step=n_step, gamma=gamma)
        keys = _reverie_keys(b)
        seen.update(_model_keys(rbuf, keys))
        assert not E.compare(E.as_dict(b), base.nstep_at(rbuf, keys, n_step, gamma))
    valid = {int(k) for k in stored_keys(model) if model.valid_nstep(int(k))}
    assert seen == valid  # reverie draws from the same set of valid starts


@pytest.mark.parametrize("frame_stack,frame,dtype", [(1, (4,), np.float32),
                                                     (3, (2, 3), np.uint8)])
@pytest.mark.parametrize("burn_in,episode_end,stray_flags",
                         [(0, "pad", False), (2, "pad", False), (2, "drop", False),
                          (2, "pad", True)])
def test_sequences_match_reverie(frame_stack: int, frame: Tuple[int, ...], dtype: Any,
                                 burn_in: int, episode_end: str, stray_flags: bool) -> None:
    model, base, rbuf = build(frame_stack, 70, seed=8, frame=frame, dtype=dtype, reverie=True,
                              stray_flags=stray_flags)
    seen = set()
    for _ in range(40):
        b = rbuf.sample_sequences(64, 5, burn_in=burn_in, episode_end=episode_end)
        keys = _reverie_keys(b)
        seen.update(_model_keys(rbuf, keys))
        assert not E.compare(E.as_dict(b), base.sequences_at(rbuf, keys, 5, burn_in))
    valid = {int(k) for k in stored_keys(model)
             if model.valid_sequence(int(k), 5, burn_in, episode_end == "drop")}
    assert seen == valid


def test_benchmark_checks_agree_on_benchmark_layout() -> None:
    """The in-run agreement checks, on a small version of the benchmark's own buffers."""
    pytest.importorskip("reverie")
    r = E.filled_episode_buffer("reverie", 4000, E.W1E_SPEC, 1, 3)
    n = E.filled_episode_buffer("numpy", 4000, E.W1E_SPEC, 1, 3)
    assert not E.check_nstep(r, n, 256, E.N_STEP, E.GAMMA)
    assert not E.check_sequences(r, n, E.SEQ_BATCH, E.SEQ_LENGTH)
    r3 = E.filled_w3("reverie", 800, 4)
    n3 = E.filled_w3("numpy", 800, 4)
    assert not E.check_nstep(r3, n3, 64, 1, E.GAMMA)
    assert not E.check_nstep(r3, n3, 64, 3, E.GAMMA)
