"""Tests of reverie.EpisodeBuffer (n-step transitions, frame stacks, sequences) against
tests/episode_reference.py.

Data encoding: row (env e, step t) has obs = (e, t, 1) float32, pix = (e, t % 256, 1) uint8,
action = its key t * N + e, reward = t + 1 + e / 4; a final-observation row's reward is 1000 (a
reset step's reward, which must never count). So a misplaced row, a row of another env or a
zero-filled position is visible in any obs field (the trailing 1 is absent only in zeros).

Tolerances: `return` and `discount` are float32 of a float64 computation: compared with
rtol 1e-6, atol 1e-6 (a float32 ulp is 6e-8 relative). Everything else exactly.
Statistical tests: Pearson chi-square (scipy.stats.chisquare), fixed seeds, pass at p > 1e-3.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Sequence

import numpy as np
import pytest
import torch
from episode_reference import EpisodeReference
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from keys import fifo_insertion
from scipy import stats

import reverie as rv

OBS_FIELDS = ("obs", "pix")
FINAL_REWARD = 1000.0
CLOSE = ("return", "discount")
RTOL = ATOL = 1e-6
P_MIN = 1e-3


def make_spec(reward_dtype: str = "float32") -> Dict[str, tuple]:
    return {"obs": ("float32", (3,)), "pix": ("uint8", (3,)), "action": ("int64", ()),
            "reward": (reward_dtype, ()), "terminated": ("bool", ()), "truncated": ("bool", ())}


# ---- data --------------------------------------------------------------------------------


def parse_layout(*envs: str) -> tuple:
    """Flags [T, N] from one string per env, a char per step: '.' plain, 'T' terminated,
    'R' truncated, 'B' both, 'F' the final-observation row (must follow T/R/B)."""
    rows = [e.replace(" ", "") for e in envs]
    steps = len(rows[0])
    assert all(len(r) == steps for r in rows)
    term = np.zeros((steps, len(rows)), bool)
    trunc = np.zeros((steps, len(rows)), bool)
    for e, row in enumerate(rows):
        for t, c in enumerate(row):
            assert (c == "F") == (t > 0 and row[t - 1] in "TRB"), (e, t, row)
            term[t, e] = c in "TB"
            trunc[t, e] = c in "RB"
    return term, trunc


def random_flags(rng: np.random.Generator, steps: int, num_envs: int, p_done: float) -> tuple:
    """Random episode ends; final-observation rows get the flags False (as a reset step)."""
    term = np.zeros((steps, num_envs), bool)
    trunc = np.zeros((steps, num_envs), bool)
    u = rng.random((steps, num_envs))
    kind = rng.integers(0, 3, (steps, num_envs))  # 0 terminated, 1 truncated, 2 both
    for e in range(num_envs):
        after_done = False
        for t in range(steps):
            if after_done:
                after_done = False
            elif u[t, e] < p_done:
                term[t, e] = kind[t, e] != 1
                trunc[t, e] = kind[t, e] != 0
                after_done = True
    return term, trunc


def make_steps(term: np.ndarray, trunc: np.ndarray, reward_dtype: str = "float32") -> dict:
    """Fields [T, N, *shape] of steps 0..T-1 (see the module docstring for the encoding)."""
    steps, n = term.shape
    t = np.arange(steps)[:, None] + np.zeros((1, n), np.int64)
    e = np.arange(n)[None, :] + np.zeros((steps, 1), np.int64)
    final = np.zeros((steps, n), bool)
    for i in range(1, steps):
        final[i] = (term[i - 1] | trunc[i - 1]) & ~final[i - 1]
    ones = np.ones_like(t)
    return {
        "obs": np.stack([e, t, ones], -1).astype(np.float32),
        "pix": np.stack([e, t % 256, ones], -1).astype(np.uint8),
        "action": (t * n + e).astype(np.int64),
        "reward": np.where(final, FINAL_REWARD, t + 1 + e / 4).astype(reward_dtype),
        "terminated": term.copy(),
        "truncated": trunc.copy(),
    }


def layout_steps(*envs: str) -> dict:
    return make_steps(*parse_layout(*envs))


def chunk(data: dict, start: int, stop: int) -> dict:
    return {k: v[start:stop] for k, v in data.items()}


class Pair:
    """A real EpisodeBuffer and its reference model, written together."""

    def __init__(self, capacity: int, *, num_envs: int = 1, frame_stack: int = 1,
                 sampler: Any = None, seed: int = 0, reward_dtype: str = "float32") -> None:
        spec = make_spec(reward_dtype)
        self.buf = rv.EpisodeBuffer(
            capacity, {n: rv.Field(dt, sh) for n, (dt, sh) in spec.items()}, sampler, seed,
            num_envs=num_envs, obs_fields=OBS_FIELDS, frame_stack=frame_stack)
        self.ref = EpisodeReference(capacity, spec, num_envs=num_envs, obs_fields=OBS_FIELDS,
                                    frame_stack=frame_stack)

    def write(self, data: dict, how: str = "chunk") -> None:
        """data: [T, N, ...]. how: 'chunk' (one time-major extend), 'step' (an extend per
        step, [N, ...]), 'add' (num_envs == 1: an add per step), 'torch' (tensors)."""
        steps = len(data["obs"])
        if how == "chunk":
            self.buf.extend(**data)
        elif how == "torch":
            self.buf.extend(**{k: torch.from_numpy(v) for k, v in data.items()})
        elif how == "step":
            for t in range(steps):
                self.buf.extend(**{k: v[t] for k, v in data.items()})
        else:
            assert how == "add"
            for t in range(steps):
                self.buf.add(**{k: v[t, 0] for k, v in data.items()})
        self.ref.extend(**data)


# ---- checks ------------------------------------------------------------------------------


def assert_fields(batch: rv.Batch, want: Dict[str, np.ndarray]) -> None:
    """The batch has exactly the wanted fields, with equal dtypes, shapes and values."""
    assert set(batch) == set(want)
    for name, w in want.items():
        got = batch[name]
        assert isinstance(got, torch.Tensor), name
        g = got.numpy()
        assert g.dtype == w.dtype and g.shape == w.shape, (name, g.dtype, g.shape, w.dtype, w.shape)
        if name in CLOSE:
            np.testing.assert_allclose(g, w, rtol=RTOL, atol=ATOL, err_msg=name)
        else:
            np.testing.assert_array_equal(g, w, err_msg=name)


def expected_by_unique(starts: np.ndarray, expect) -> Dict[str, np.ndarray]:
    uniq, inverse = np.unique(starts, return_inverse=True)
    want = expect(uniq)
    return {k: v[inverse.reshape(-1)] for k, v in want.items()}


def check_transitions(batch: rv.Batch, ref: EpisodeReference, n_step: int,
                      gamma: float) -> None:
    """Every start is valid per the reference and every field equals the reference's."""
    assert batch.indices.dtype == torch.int64
    starts = ref.ids(batch.indices)
    bad = sorted({int(s) for s in starts if not ref.valid_start(int(s))})
    assert not bad, f"invalid starts sampled: {bad} (valid: {ref.valid_starts()})"
    assert_fields(batch, expected_by_unique(
        starts, lambda u: ref.expected_transitions(u, n_step, gamma)))


def check_sequences(batch: rv.Batch, ref: EpisodeReference, length: int, burn_in: int,
                    episode_end: str) -> None:
    """Every start is valid per the reference and every field and the mask equal its."""
    assert batch.indices.dtype == torch.int64
    starts = ref.ids(batch.indices)
    bad = sorted({int(s) for s in starts
                  if not ref.sequence_valid(int(s), length, burn_in, episode_end)})
    assert not bad, f"invalid sequence starts sampled: {bad}"
    assert_fields(batch, expected_by_unique(
        starts, lambda u: ref.expected_sequences(u, length, burn_in)))


def check_storage(pair: Pair) -> None:
    """len and the stored rows (`columns`, single frames, stream-major slots) match the
    reference."""
    buf, ref = pair.buf, pair.ref
    assert len(buf) == min(ref.written, ref.capacity)
    cols = buf.columns
    assert set(cols) == set(ref.spec)
    keys = list(ref.stored_keys())
    slots = [ref.slot(k) for k in keys]
    for name, col in cols.items():
        assert tuple(col.shape) == (ref.capacity, *ref.spec[name][1])
        np.testing.assert_array_equal(col.numpy()[slots], ref.cols[name][keys], err_msg=name)


def transitions_by_start(pair: Pair, n_step: int, gamma: float,
                         batch_size: int = 512) -> Dict[int, Dict[str, np.ndarray]]:
    """Samples a batch, checks it against the reference; {start: {field: value}}."""
    batch = pair.buf.sample(batch_size, n_step=n_step, gamma=gamma)
    check_transitions(batch, pair.ref, n_step, gamma)
    out: Dict[int, Dict[str, np.ndarray]] = {}
    for i, s in enumerate(pair.ref.ids(batch.indices).tolist()):
        out.setdefault(s, {k: v[i].numpy() for k, v in batch.items()})
    return out


def sequences_by_start(pair: Pair, length: int, burn_in: int, episode_end: str,
                       batch_size: int = 512) -> Dict[int, Dict[str, np.ndarray]]:
    batch = pair.buf.sample_sequences(batch_size, length, burn_in=burn_in,
                                      episode_end=episode_end)
    check_sequences(batch, pair.ref, length, burn_in, episode_end)
    out: Dict[int, Dict[str, np.ndarray]] = {}
    for i, s in enumerate(pair.ref.ids(batch.indices).tolist()):
        out.setdefault(s, {k: v[i].numpy() for k, v in batch.items()})
    return out


def t_of(obs: np.ndarray) -> List[int]:
    """The step coordinate of obs values [..., 3] (-1 where the value is all zeros)."""
    obs = np.asarray(obs).reshape(-1, 3)
    return [int(o[1]) if o[2] == 1 else -1 for o in obs]


# ---- n-step transitions: hand-built layouts ----------------------------------------------


def test_termination_gives_discount_zero_and_no_bootstrap_beyond():
    """n=3, gamma=0.5 over '..TF...': returns stop at the terminal step; next obs is the
    final-observation row; the final-observation row is never a start."""
    pair = Pair(16)
    pair.write(layout_steps("..TF..."))
    by = transitions_by_start(pair, 3, 0.5)
    assert set(by) == {0, 1, 2, 4, 5}
    for s, ret, disc, nxt in [(0, 2.75, 0.0, 3), (1, 3.5, 0.0, 3), (2, 3.0, 0.0, 3),
                              (4, 8.0, 0.25, 6), (5, 6.0, 0.5, 6)]:
        assert by[s]["return"] == pytest.approx(ret, rel=RTOL), s
        assert by[s]["discount"] == disc, s
        assert t_of(by[s]["next_obs"]) == [nxt], s
        assert by[s]["action"] == s and t_of(by[s]["obs"]) == [s]


def test_truncation_bootstraps_from_final_observation():
    """'..RF...': returns stop at the truncated step, discount gamma**m, next obs = the final
    observation row."""
    pair = Pair(16)
    pair.write(layout_steps("..RF..."))
    by = transitions_by_start(pair, 3, 0.5)
    assert set(by) == {0, 1, 2, 4, 5}
    for s, ret, disc in [(0, 2.75, 0.125), (1, 3.5, 0.25), (2, 3.0, 0.5)]:
        assert by[s]["return"] == pytest.approx(ret, rel=RTOL), s
        assert by[s]["discount"] == disc, s
        assert t_of(by[s]["next_obs"]) == [3] and t_of(by[s]["next_pix"]) == [3]


def test_terminated_and_truncated_together_is_a_termination():
    """A step with both flags: discount 0 (terminated is checked first)."""
    pair = Pair(16)
    pair.write(layout_steps(".BF.."))
    by = transitions_by_start(pair, 3, 0.9)
    assert set(by) == {0, 1, 3}
    assert by[0]["return"] == pytest.approx(1 + 0.9 * 2, rel=RTOL) and by[0]["discount"] == 0
    assert t_of(by[0]["next_obs"]) == [2]


def test_write_head_bootstraps_from_newest_row():
    """Five plain rows, n=4: starts near the head use fewer steps and bootstrap from row 4."""
    pair = Pair(16)
    pair.write(layout_steps("....."))
    by = transitions_by_start(pair, 4, 0.5)
    assert set(by) == {0, 1, 2, 3}
    for s, ret, disc in [(0, 3.25, 0.0625), (1, 2 + 1.5 + 1.0, 0.125), (2, 5.0, 0.25),
                         (3, 4.0, 0.5)]:
        assert by[s]["return"] == pytest.approx(ret, rel=RTOL), s
        assert by[s]["discount"] == disc, s
        assert t_of(by[s]["next_obs"]) == [4], s


def test_final_observation_reward_and_flags_are_ignored():
    """A reset step's row (the final-observation row) with reward 1000 and terminated=True
    (whatever the reset gave): never a start, never summed, and the row after it starts a
    new episode normally (its flags do not make that row a final-observation row).
    Reading of the contract: 'its action, reward and flags are ... ignored'."""
    data = layout_steps("..TF...")
    data["terminated"][3, 0] = True
    pair = Pair(16)
    pair.write(data)
    by = transitions_by_start(pair, 3, 0.5)
    assert set(by) == {0, 1, 2, 4, 5}
    assert by[4]["return"] == pytest.approx(8.0, rel=RTOL) and by[4]["discount"] == 0.25


def test_ring_wraparound_single_env():
    """capacity 6, 20 steps: only keys 14..19 stored; n-step windows cross the slot boundary
    (slot 5 -> slot 0); `columns` hold key k at slot k % 6."""
    pair = Pair(6)
    pair.write(layout_steps("....TF....RF........"), how="step")
    check_storage(pair)
    by = transitions_by_start(pair, 3, 0.5)
    assert set(by) == {14, 15, 16, 17, 18}
    assert by[16]["return"] == pytest.approx(17 + 9 + 4.75, rel=RTOL)
    assert by[16]["discount"] == 0.125 and t_of(by[16]["next_obs"]) == [19]
    assert by[17]["return"] == pytest.approx(18 + 9.5, rel=RTOL) and by[17]["discount"] == 0.25
    assert pair.buf.columns["obs"][19 % 6, 1] == 19


def test_ring_wraparound_three_envs():
    """3 envs, 3 steps per stream, 10 steps: keys 21..29 stored; starts are t = 7, 8 of
    envs without an episode end in between."""
    pair = Pair(9, num_envs=3)
    pair.write(layout_steps("..........", "......TF..", "........RF"))
    check_storage(pair)
    by = transitions_by_start(pair, 2, 0.9)
    # env 0: t 7, 8; env 1: row t=7 is the final-observation row -> t 8; env 2: t 7, 8
    # (t 8 truncated, next row t 9 its final observation).
    assert set(by) == {21, 23, 24, 25, 26}


def test_next_obs_is_the_same_envs_next_row():
    """3 envs with different episode layouts: next_<field> of every obs field encodes the
    same env and a later step of it; with n=1 exactly t + 1."""
    pair = Pair(60, num_envs=3)
    pair.write(layout_steps("........", "..TF....", ".RF..BF."))
    for n_step in (1, 3):
        batch = pair.buf.sample(1024, n_step=n_step, gamma=0.9)
        check_transitions(batch, pair.ref, n_step, 0.9)
        for field in OBS_FIELDS:
            now, nxt = batch[field].numpy(), batch["next_" + field].numpy()
            np.testing.assert_array_equal(now[:, 0], nxt[:, 0])  # env
            np.testing.assert_array_equal(now[:, 2], 1)
            np.testing.assert_array_equal(nxt[:, 2], 1)
            step = nxt[:, 1].astype(int) - now[:, 1].astype(int)
            assert (step == 1).all() if n_step == 1 else ((step >= 1) & (step <= 3)).all()
        ids = pair.ref.ids(batch.indices)
        np.testing.assert_array_equal(batch["action"].numpy(), ids)
        np.testing.assert_array_equal(batch["obs"].numpy()[:, 0], ids % 3)


def test_add_extend_step_and_torch_inputs_store_the_same():
    """add (num_envs 1), per-step extend, time-major extend and torch tensors: same rows."""
    data = layout_steps("...TF....RF...")
    pairs = []
    for how in ("add", "step", "chunk", "torch"):
        pair = Pair(10, seed=3)
        pair.write(data, how)
        check_storage(pair)
        pairs.append(pair)
    cols = [p.buf.columns for p in pairs]
    for c in cols[1:]:
        assert all(torch.equal(c[k], cols[0][k]) for k in cols[0])


def test_add_needs_a_single_env():
    """add() on a 3-env buffer is refused; nothing is stored."""
    pair = Pair(9, num_envs=3)
    step = {k: v[0, 0] for k, v in layout_steps(".", ".", ".").items()}
    with pytest.raises((ValueError, TypeError), match="add|num_envs|env"):
        pair.buf.add(**step)
    assert len(pair.buf) == 0


def test_spec_inferred_from_first_vector_step():
    """No spec: the first extend ([num_envs, *shape] values) fixes per-env-step fields."""
    data = layout_steps(".....", "..TF.")
    buf = rv.EpisodeBuffer(10, num_envs=2, obs_fields=OBS_FIELDS, seed=0)
    buf.extend(**{k: v[0] for k, v in data.items()})
    assert buf.spec["obs"] == rv.Field("float32", (3,))
    assert buf.spec["reward"] == rv.Field("float32", ())
    assert buf.spec["terminated"] == rv.Field("bool", ())
    buf.extend(**chunk(data, 1, 5))
    ref = EpisodeReference(10, make_spec(), num_envs=2, obs_fields=OBS_FIELDS)
    ref.extend(**data)
    check_transitions(buf.sample(256, n_step=2, gamma=0.9), ref, 2, 0.9)


def test_spec_inference_refuses_missing_flags_and_stays_unbuilt():
    """An inferring first extend without `truncated` fails naming it; a correct one works."""
    data = layout_steps("..", "..")
    buf = rv.EpisodeBuffer(10, num_envs=2, obs_fields=OBS_FIELDS, seed=0)
    with pytest.raises(ValueError, match="truncated"):
        buf.extend(**{k: v[0] for k, v in data.items() if k != "truncated"})
    assert len(buf) == 0
    buf.extend(**{k: v[0] for k, v in data.items()})
    assert len(buf) == 2


def test_float64_rewards():
    """A float64 reward field: returns still come out float32 and match the reference."""
    pair = Pair(20, num_envs=2, reward_dtype="float64")
    pair.write(make_steps(*random_flags(np.random.default_rng(5), 12, 2, 0.3), "float64"))
    check_transitions(pair.buf.sample(512, n_step=3, gamma=0.97), pair.ref, 3, 0.97)


def test_weights_only_with_prioritized_sampling():
    """Uniform: batch.weights is None; Prioritized: float32 [B] in (0, 1] (for sequences too)."""
    data = layout_steps("......", "..TF..")
    uniform = Pair(12, num_envs=2)
    uniform.write(data)
    assert uniform.buf.sample(8).weights is None
    assert uniform.buf.sample_sequences(8, 2).weights is None
    prio = Pair(12, num_envs=2, sampler=rv.Prioritized())
    prio.write(data)
    for batch in (prio.buf.sample(8), prio.buf.sample_sequences(8, 2)):
        w = batch.weights
        assert w.dtype == torch.float32 and tuple(w.shape) == (8,)
        assert ((w > 0) & (w <= 1)).all()


# ---- frame stacking ----------------------------------------------------------------------


def test_frame_stack_repeats_the_first_frame_at_episode_starts():
    """k=3 over '..TF...': stacks (by step) of starts and next obs; an episode's first frame
    fills the older positions."""
    pair = Pair(16, frame_stack=3)
    pair.write(layout_steps("..TF..."))
    by = transitions_by_start(pair, 1, 0.9)
    assert set(by) == {0, 1, 2, 4, 5}
    stacks = {0: ([0, 0, 0], [0, 0, 1]), 1: ([0, 0, 1], [0, 1, 2]), 2: ([0, 1, 2], [1, 2, 3]),
              4: ([4, 4, 4], [4, 4, 5]), 5: ([4, 4, 5], [4, 5, 6])}
    for s, (now, nxt) in stacks.items():
        assert by[s]["obs"].shape == (3, 3) and by[s]["pix"].shape == (3, 3)
        assert t_of(by[s]["obs"]) == now and t_of(by[s]["next_obs"]) == nxt, s
        assert t_of(by[s]["pix"]) == now and t_of(by[s]["next_pix"]) == nxt, s


def test_frame_stacks_stay_within_an_env():
    """3 envs, k=3: every frame of every stack (obs and next obs) is of the start's env."""
    pair = Pair(30, num_envs=3, frame_stack=3)
    pair.write(layout_steps(".......", "..TF...", "RF....."))
    batch = pair.buf.sample(512, n_step=2, gamma=0.9)
    check_transitions(batch, pair.ref, 2, 0.9)
    env = (pair.ref.ids(batch.indices) % 3)[:, None]
    for name in ("obs", "next_obs", "pix", "next_pix"):
        np.testing.assert_array_equal(batch[name].numpy()[:, :, 0], np.repeat(env, 3, 1))


def test_incomplete_stacks_at_the_oldest_rows_are_not_starts():
    """capacity 4, k=3: a start needs its two older frames stored, unless its episode starts
    within the stored rows."""
    pair = Pair(4, frame_stack=3)
    pair.write(layout_steps("........"))
    assert set(transitions_by_start(pair, 1, 0.9)) == {6}
    pair = Pair(4, frame_stack=3)
    pair.write(layout_steps("...TF..."))
    by = transitions_by_start(pair, 2, 0.9)
    assert set(by) == {5, 6}
    assert t_of(by[5]["obs"]) == [5, 5, 5] and t_of(by[6]["next_obs"]) == [5, 6, 7]


def test_frame_stack_stores_single_frames():
    """obs uint8 (84, 84), frame_stack=4: storage [capacity, 84, 84]; samples [B, 4, 84, 84]
    (and [B, T, 4, 84, 84] for sequences), frames of the right steps."""
    n, cap, steps = 2, 40, 12
    spec = {"obs": rv.Field("uint8", (84, 84)), "reward": rv.Field("float32"),
            "terminated": rv.Field("bool"), "truncated": rv.Field("bool")}
    buf = rv.EpisodeBuffer(cap, spec, seed=0, num_envs=n, frame_stack=4)
    assert tuple(buf.columns["obs"].shape) == (cap, 84, 84)
    frames = np.zeros((steps, n, 84, 84), np.uint8)
    frames[:, :, 0, 0] = np.arange(steps)[:, None]
    frames[:, :, 0, 1] = np.arange(n)[None, :]
    no = np.zeros((steps, n), bool)
    buf.extend(obs=frames, reward=np.ones((steps, n), np.float32), terminated=no, truncated=no)
    assert tuple(buf.columns["obs"].shape) == (cap, 84, 84)
    batch = buf.sample(8, n_step=1)
    assert tuple(batch["obs"].shape) == (8, 4, 84, 84)
    assert tuple(batch["next_obs"].shape) == (8, 4, 84, 84)
    for i, s in enumerate(fifo_insertion(batch.indices.numpy(), cap, n).tolist()):
        t, e = divmod(s, n)
        want = [max(t - 3 + j, 0) for j in range(4)]
        assert batch["obs"][i, :, 0, 0].tolist() == want
        assert batch["obs"][i, :, 0, 1].tolist() == [e] * 4
        assert batch["next_obs"][i, :, 0, 0].tolist() == [max(t - 2 + j, 0) for j in range(4)]
    seq = buf.sample_sequences(4, 3, burn_in=1)
    assert tuple(seq["obs"].shape) == (4, 4, 4, 84, 84)


# ---- sequences: hand-built layouts -------------------------------------------------------


def test_sequences_pad_and_drop():
    """'...TF...', length 3, burn_in 1: masks, zeros outside the episode, the final-observation
    row copied with mask False; 'drop' keeps only windows whose learning rows are all
    transitions of the episode."""
    pair = Pair(16)
    pair.write(layout_steps("...TF..."))
    pad = sequences_by_start(pair, 3, 1, "pad")
    assert set(pad) == {0, 1, 2, 3, 5, 6, 7}
    expect = {  # start: (mask, step of each position or -1 for zeros)
        0: ([0, 1, 1, 1], [-1, 0, 1, 2]),
        1: ([1, 1, 1, 1], [0, 1, 2, 3]),
        2: ([1, 1, 1, 0], [1, 2, 3, 4]),
        3: ([1, 1, 0, 0], [2, 3, 4, -1]),
        5: ([0, 1, 1, 1], [-1, 5, 6, 7]),
        6: ([1, 1, 1, 0], [5, 6, 7, -1]),
        7: ([1, 1, 0, 0], [6, 7, -1, -1]),
    }
    for s, (mask, steps) in expect.items():
        got = pad[s]
        assert got["mask"].tolist() == [bool(m) for m in mask], s
        assert t_of(got["obs"]) == steps and t_of(got["pix"]) == steps, s
        zero = np.array(steps) == -1
        for name in ("reward", "terminated", "truncated", "action"):
            assert not got[name][zero].any(), (s, name)
    assert pad[2]["reward"][3] == FINAL_REWARD  # the final-observation row, as stored
    assert pad[2]["terminated"].tolist() == [False, False, True, False]
    drop = sequences_by_start(pair, 3, 1, "drop")
    assert set(drop) == {0, 1, 5}


def test_sequences_burn_in_at_the_oldest_rows():
    """capacity 4, six rows: burn-in positions before the oldest stored row are zeros."""
    pair = Pair(4)
    pair.write(layout_steps("......"))
    pad = sequences_by_start(pair, 2, 2, "pad")
    assert set(pad) == {2, 3, 4, 5}
    masks = {2: [0, 0, 1, 1], 3: [0, 1, 1, 1], 4: [1, 1, 1, 1], 5: [1, 1, 1, 0]}
    for s, mask in masks.items():
        assert pad[s]["mask"].tolist() == [bool(m) for m in mask], s
    assert t_of(pad[2]["obs"]) == [-1, -1, 2, 3]
    assert set(sequences_by_start(pair, 2, 2, "drop")) == {2, 3, 4}


def test_sequences_burn_in_with_incomplete_stacks_is_masked_and_zero():
    """capacity 6, k=2, eight rows (2..7 stored): row 2 is stored but its stack needs row 1,
    so as burn-in it is masked and zero; it is no start either."""
    pair = Pair(6, frame_stack=2)
    pair.write(layout_steps("........"))
    pad = sequences_by_start(pair, 2, 2, "pad")
    assert set(pad) == {3, 4, 5, 6, 7}
    assert pad[3]["mask"].tolist() == [False, False, True, True]
    assert not pad[3]["obs"][:2].any() and not pad[3]["action"][:2].any()
    assert pad[4]["mask"].tolist() == [False, True, True, True]
    assert t_of(pad[4]["obs"][1]) == [2, 3] and pad[4]["obs"].shape == (4, 2, 3)
    assert pad[7]["mask"].tolist() == [True, True, True, False]


def test_sequences_three_envs_stay_in_their_stream():
    """3 envs: every non-zero position of a window is of the start's env, steps consecutive."""
    pair = Pair(60, num_envs=3)
    pair.write(layout_steps("..........", "...TF.....", ".RF....BF."))
    batch = pair.buf.sample_sequences(512, 4, burn_in=2)
    check_sequences(batch, pair.ref, 4, 2, "pad")
    obs = batch["obs"].numpy()
    for i, s in enumerate(pair.ref.ids(batch.indices).tolist()):
        e, t = s % 3, s // 3
        for pos in range(6):
            if obs[i, pos, 2] == 1:
                assert obs[i, pos, 0] == e and obs[i, pos, 1] == t + pos - 2


def test_single_row_sequences_but_no_transition():
    """One step written: no n-step transition can be sampled yet (ValueError); a 'pad'
    sequence of length 2 can (second position masked), a 'drop' one cannot."""
    pair = Pair(8)
    pair.write(layout_steps("."))
    with pytest.raises(ValueError, match="no transition can be sampled"):
        pair.buf.sample(4)
    by = sequences_by_start(pair, 2, 0, "pad", batch_size=4)
    assert set(by) == {0} and by[0]["mask"].tolist() == [True, False]
    with pytest.raises(ValueError):
        pair.buf.sample_sequences(4, 2, episode_end="drop")


def test_sample_before_any_write_fails():
    buf = rv.EpisodeBuffer(8, {n: rv.Field(dt, sh) for n, (dt, sh) in make_spec().items()},
                           obs_fields=OBS_FIELDS, seed=0)
    with pytest.raises(ValueError):
        buf.sample(4)
    with pytest.raises(ValueError):
        buf.sample_sequences(4, 2)


# ---- property tests ----------------------------------------------------------------------


@dataclass
class Scenario:
    num_envs: int
    per_env: int
    steps: int
    p_done: float
    flag_seed: int
    chunks: List[int]
    how: List[str]
    reward_dtype: str

    @property
    def capacity(self) -> int:
        return self.num_envs * self.per_env

    def data(self) -> dict:
        rng = np.random.default_rng(self.flag_seed)
        return make_steps(*random_flags(rng, self.steps, self.num_envs, self.p_done),
                          self.reward_dtype)

    def writes(self):
        """(start, stop, how) of each write, cycling through the drawn chunk sizes."""
        start = 0
        for size, how in itertools.cycle(zip(self.chunks, self.how)):
            if start >= self.steps:
                return
            stop = min(start + size, self.steps)
            if how == "add" and self.num_envs != 1:
                how = "step"
            yield start, stop, how
            start = stop


@st.composite
def scenarios(draw) -> Scenario:
    per_env = draw(st.integers(2, 20))
    chunks = draw(st.lists(st.integers(1, per_env + 3), min_size=1, max_size=6))
    return Scenario(
        num_envs=draw(st.integers(1, 3)),
        per_env=per_env,
        steps=draw(st.integers(1, 3 * per_env + 2)),
        p_done=draw(st.sampled_from([0.0, 0.15, 0.4, 0.8])),
        flag_seed=draw(st.integers(0, 2**32 - 1)),
        chunks=chunks,
        how=draw(st.lists(st.sampled_from(["chunk", "step", "add", "torch"]),
                          min_size=len(chunks), max_size=len(chunks))),
        reward_dtype=draw(st.sampled_from(["float32", "float64"])),
    )


samplers = st.sampled_from([None, rv.Prioritized(alpha=0.6, beta=0.4)])
gammas = st.sampled_from([0.0, 0.5, 0.9, 1.0]) | st.floats(0.0, 1.0)
PROPERTY = settings(max_examples=100, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def build(sc: Scenario, frame_stack: int, sampler: Any, seed: int = 0):
    # The implementation refuses frame_stack > capacity // num_envs (not in the contract).
    frame_stack = min(frame_stack, sc.per_env)
    pair = Pair(sc.capacity, num_envs=sc.num_envs, frame_stack=frame_stack, sampler=sampler,
                seed=seed, reward_dtype=sc.reward_dtype)
    return pair, sc.data()


def reprioritize(buf: rv.EpisodeBuffer, batch: rv.Batch) -> None:
    """Prioritized buffers: new priorities in [0.5, 2] for the sampled starts (so every valid
    start keeps a probability >= 1 / (2.3 * valid), and a batch of 2000 still draws them all)."""
    if isinstance(buf.sampler, rv.Prioritized):
        keys = batch.indices.numpy()
        buf.update_priorities(keys, 0.5 + 1.5 * ((keys * 2654435761) % 1000) / 1000)


@PROPERTY
@given(sc=scenarios(), frame_stack=st.integers(1, 3), n_step=st.integers(1, 5), gamma=gammas,
       sampler=samplers)
def test_transitions_match_reference(sc, frame_stack, n_step, gamma, sampler):
    """After every write: storage, and a sampled batch, equal the reference's (prioritized:
    then the batch's priorities are updated); at the end a batch of 2000 holds only valid
    starts, and all of them when there are at most 100."""
    pair, data = build(sc, frame_stack, sampler)
    for start, stop, how in sc.writes():
        pair.write(chunk(data, start, stop), how)
        check_storage(pair)
        if pair.ref.valid_starts():
            batch = pair.buf.sample(64, n_step=n_step, gamma=gamma)
            check_transitions(batch, pair.ref, n_step, gamma)
            reprioritize(pair.buf, batch)
    valid = pair.ref.valid_starts()
    if not valid:
        with pytest.raises(ValueError, match="no transition can be sampled"):
            pair.buf.sample(8, n_step=n_step, gamma=gamma)
        return
    batch = pair.buf.sample(2000, n_step=n_step, gamma=gamma)
    check_transitions(batch, pair.ref, n_step, gamma)
    if len(valid) <= 100:  # uniform: P(a valid start missed) <= 100 * (1 - 1/100)^2000 < 1e-6
        assert set(pair.ref.ids(batch.indices).tolist()) == set(valid)


@PROPERTY
@given(sc=scenarios(), frame_stack=st.integers(1, 3), sampler=samplers,
       episode_end=st.sampled_from(["pad", "drop"]), data=st.data())
def test_sequences_match_reference(sc, frame_stack, sampler, episode_end, data):
    """Random windows (length, burn_in fitting a stream; pad and drop) equal the reference's;
    the set of sampled starts is the valid set."""
    length = data.draw(st.integers(1, sc.per_env), label="length")
    burn_in = data.draw(st.integers(0, sc.per_env - length), label="burn_in")
    pair, steps = build(sc, frame_stack, sampler)
    for start, stop, how in sc.writes():
        pair.write(chunk(steps, start, stop), how)
        if pair.ref.valid_sequence_starts(length, burn_in, episode_end):
            batch = pair.buf.sample_sequences(32, length, burn_in=burn_in,
                                              episode_end=episode_end)
            check_sequences(batch, pair.ref, length, burn_in, episode_end)
            reprioritize(pair.buf, batch)
    valid = pair.ref.valid_sequence_starts(length, burn_in, episode_end)
    if not valid:
        with pytest.raises(ValueError):
            pair.buf.sample_sequences(8, length, burn_in=burn_in, episode_end=episode_end)
        return
    batch = pair.buf.sample_sequences(2000, length, burn_in=burn_in, episode_end=episode_end)
    check_sequences(batch, pair.ref, length, burn_in, episode_end)
    if len(valid) <= 100:
        assert set(pair.ref.ids(batch.indices).tolist()) == set(valid)


# ---- statistics --------------------------------------------------------------------------


def chi_square_p(counts: np.ndarray, probs: np.ndarray) -> float:
    """p-value of counts ~ Multinomial(sum, probs) (no bin here expects fewer than 5)."""
    expected = probs / probs.sum() * counts.sum()
    assert expected.min() >= 5
    return float(stats.chisquare(counts, expected).pvalue)


def stat_pair(sampler: Any = None, steps: int = 31) -> Pair:
    pair = Pair(40, num_envs=2, sampler=sampler, seed=1234)
    pair.write(make_steps(*random_flags(np.random.default_rng(11), steps, 2, 0.2)))
    return pair


def draw_counts(draw, valid: Sequence[int], batches: int = 100) -> np.ndarray:
    """Counts of each of the `valid` starts (buffer keys) over the batches draw() returns."""
    pos = {s: i for i, s in enumerate(valid)}
    counts = np.zeros(len(valid))
    for _ in range(batches):
        for s in draw().indices.tolist():
            assert s in pos, f"invalid start {s}"
            counts[pos[s]] += 1
    return counts


def test_uniform_transitions_over_valid_starts():
    """51200 draws: every valid start equally likely (chi-square p > 1e-3)."""
    pair = stat_pair()
    valid = pair.ref.keys(pair.ref.valid_starts()).tolist()
    assert len(valid) > 20
    counts = draw_counts(lambda: pair.buf.sample(512, n_step=3), valid)
    assert chi_square_p(counts, np.ones(len(valid))) > P_MIN


def test_uniform_sequences_over_valid_starts():
    """51200 draws of 'drop' windows: uniform over the valid starts (chi-square p > 1e-3)."""
    pair = stat_pair()
    valid = pair.ref.keys(pair.ref.valid_sequence_starts(3, 2, "drop")).tolist()
    assert len(valid) > 10
    counts = draw_counts(
        lambda: pair.buf.sample_sequences(512, 3, burn_in=2, episode_end="drop"), valid)
    assert chi_square_p(counts, np.ones(len(valid))) > P_MIN


def priorities_for(valid: Sequence[int]) -> np.ndarray:
    """0 for the first start (never drawn), then 0.5, 1, 2, 4 cycling."""
    p = np.array([[0.5, 1.0, 2.0, 4.0][i % 4] for i in range(len(valid))])
    p[0] = 0.0
    return p


def test_prioritized_transitions_follow_priorities():
    """alpha=1, eps=0: after update_priorities on every valid start, draws are proportional
    to the priority (chi-square p > 1e-3); a zero priority is never drawn; weights with beta=1
    are proportional to 1 / priority within each batch (rtol 1e-5)."""
    pair = stat_pair(rv.Prioritized(alpha=1.0, beta=1.0, eps=0.0))
    valid = pair.ref.keys(pair.ref.valid_starts()).tolist()
    prio = priorities_for(valid)
    pair.buf.update_priorities(torch.tensor(valid), torch.from_numpy(prio))
    p_of = dict(zip(valid, prio))

    def draw():
        batch = pair.buf.sample(512, n_step=2, gamma=0.9)
        p = np.array([p_of[s] for s in batch.indices.tolist()])
        w = batch.weights.numpy().astype(np.float64)
        assert (w > 0).all() and (w <= 1 + 1e-6).all()
        np.testing.assert_allclose(w * p, (w * p)[0], rtol=1e-5)
        return batch

    counts = draw_counts(draw, valid)
    assert counts[0] == 0
    assert chi_square_p(counts[1:], prio[1:]) > P_MIN


def test_prioritized_sequences_follow_priorities():
    """Same for 'pad' sequence starts (here including the two newest rows, which are no
    n-step starts)."""
    pair = stat_pair(rv.Prioritized(alpha=1.0, beta=0.5, eps=0.0), steps=30)
    valid_ids = pair.ref.valid_sequence_starts(4, 1, "pad")
    assert {58, 59} <= set(valid_ids) and not {58, 59} & set(pair.ref.valid_starts())
    valid = pair.ref.keys(valid_ids).tolist()
    prio = priorities_for(valid)
    pair.buf.update_priorities(np.array(valid), prio)
    counts = draw_counts(lambda: pair.buf.sample_sequences(512, 4, burn_in=1), valid)
    assert counts[0] == 0
    assert chi_square_p(counts[1:], prio[1:]) > P_MIN


def test_new_rows_get_the_max_priority():
    """After lowering every valid start's priority to 0.25, newly written starts (max priority,
    here 1.0) are drawn 4x as often as each old one (chi-square p > 1e-3)."""
    pair = Pair(40, num_envs=2, sampler=rv.Prioritized(alpha=1.0, beta=0.4, eps=0.0), seed=9)
    data = layout_steps("." * 14, "." * 14)
    pair.write(chunk(data, 0, 10))
    old = pair.ref.keys(pair.ref.valid_starts()).tolist()
    pair.buf.update_priorities(np.array(old), np.full(len(old), 0.25))
    pair.write(chunk(data, 10, 14))
    valid = pair.ref.keys(pair.ref.valid_starts()).tolist()
    prio = np.array([0.25 if s in old else 1.0 for s in valid])
    counts = draw_counts(lambda: pair.buf.sample(512), valid)
    assert chi_square_p(counts, prio) > P_MIN


# ---- errors: bad calls change nothing ----------------------------------------------------


def twin_buffers() -> tuple:
    """Two 3-env buffers (capacity 30, 10 steps per stream), same seed, same 14 steps."""
    data = make_steps(*random_flags(np.random.default_rng(2), 14, 3, 0.3))
    bufs = []
    for _ in range(2):
        pair = Pair(30, num_envs=3, sampler=rv.Prioritized(), seed=42)
        pair.write(data)
        bufs.append(pair.buf)
    return bufs[0], bufs[1]


def assert_batches_equal(a: rv.Batch, b: rv.Batch) -> None:
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert torch.equal(a.indices, b.indices)
    assert (a.weights is None) == (b.weights is None)
    if a.weights is not None:
        assert torch.equal(a.weights, b.weights)


def assert_twins(a: rv.EpisodeBuffer, b: rv.EpisodeBuffer) -> None:
    """Same size, same stored bytes, and the same next samples."""
    assert len(a) == len(b)
    ca, cb = a.columns, b.columns
    assert set(ca) == set(cb) and all(torch.equal(ca[k], cb[k]) for k in ca)
    assert_batches_equal(a.sample(64, n_step=3, gamma=0.9), b.sample(64, n_step=3, gamma=0.9))
    assert_batches_equal(a.sample_sequences(16, 4, burn_in=2),
                         b.sample_sequences(16, 4, burn_in=2))


STEP = {k: v[0] for k, v in make_steps(*parse_layout("...", "...", "...")).items()}
STEPS = make_steps(*parse_layout("...", "...", "..."))


def with_(base: dict, **changes: Any) -> dict:
    out = dict(base)
    for k, v in changes.items():
        if v is None:
            del out[k]
        else:
            out[k] = v
    return out


BAD_CALLS = [  # (id, exception(s), message pattern, call)
    ("env-axis sizes differ", ValueError, "reward",
     lambda b: b.extend(**with_(STEP, reward=STEP["reward"][:2]))),
    ("env axis is not num_envs", ValueError, "num_envs",
     lambda b: b.extend(**{k: v[:2] for k, v in STEP.items()})),
    ("time lengths differ", ValueError, "reward",
     lambda b: b.extend(**with_(STEPS, reward=STEPS["reward"][:1]))),
    ("reward float64", (TypeError, ValueError), "reward",
     lambda b: b.extend(**with_(STEP, reward=STEP["reward"].astype(np.float64)))),
    ("terminated uint8", (TypeError, ValueError), "terminated",
     lambda b: b.extend(**with_(STEP, terminated=STEP["terminated"].astype(np.uint8)))),
    ("obs shape", ValueError, "obs",
     lambda b: b.extend(**with_(STEP, obs=np.zeros((3, 4), np.float32)))),
    ("missing truncated", ValueError, "truncated",
     lambda b: b.extend(**with_(STEP, truncated=None))),
    ("unknown field", ValueError, "bogus",
     lambda b: b.extend(**with_(STEP, bogus=np.zeros(3, np.float32)))),
    ("add with 3 envs", (TypeError, ValueError), "add|num_envs|env",
     lambda b: b.add(**{k: v[0] for k, v in STEP.items()})),
    ("n_step 0", ValueError, "n_step", lambda b: b.sample(8, n_step=0)),
    ("n_step float", (ValueError, TypeError), "n_step", lambda b: b.sample(8, n_step=2.5)),
    ("gamma < 0", ValueError, "gamma", lambda b: b.sample(8, gamma=-0.1)),
    ("gamma > 1", ValueError, "gamma", lambda b: b.sample(8, gamma=1.5)),
    ("gamma nan", ValueError, "gamma", lambda b: b.sample(8, gamma=math.nan)),
    ("batch_size 0", ValueError, "batch_size", lambda b: b.sample(0)),
    ("sequence batch_size 0", ValueError, "batch_size", lambda b: b.sample_sequences(0, 2)),
    ("length 0", ValueError, "length", lambda b: b.sample_sequences(8, 0)),
    ("burn_in < 0", ValueError, "burn_in", lambda b: b.sample_sequences(8, 2, burn_in=-1)),
    ("window longer than a stream", ValueError, "longer than an env stream holds",
     lambda b: b.sample_sequences(8, 8, burn_in=3)),
    ("bad episode_end", ValueError, "episode_end",
     lambda b: b.sample_sequences(8, 2, episode_end="truncate")),
]


@pytest.mark.parametrize("exc, pattern, call", [c[1:] for c in BAD_CALLS],
                         ids=[c[0] for c in BAD_CALLS])
def test_bad_call_raises_and_changes_nothing(exc, pattern, call):
    """The call raises naming what was wrong; afterwards the buffer equals a twin that never
    got the call (len, columns, next samples)."""
    a, b = twin_buffers()
    with pytest.raises(exc, match=pattern):
        call(a)
    assert_twins(a, b)


def test_longest_window_fits():
    """burn_in + length == capacity // num_envs is allowed (the boundary of the error)."""
    a, _ = twin_buffers()
    assert a.sample_sequences(8, 7, burn_in=3)["mask"].shape == (8, 10)


def spec_without(name: str, **changes: Any) -> dict:
    spec = {n: rv.Field(dt, sh) for n, (dt, sh) in make_spec().items() if n != name}
    spec.update(changes)
    return spec


BAD_CONSTRUCTORS = [  # (id, kwargs, exception(s), message pattern)
    ("capacity not a multiple", dict(capacity=10, num_envs=3), ValueError, "capacity|multiple"),
    ("num_envs 0", dict(num_envs=0), ValueError, "num_envs"),
    ("frame_stack 0", dict(frame_stack=0), ValueError, "frame_stack"),
    ("missing reward", dict(spec=spec_without("reward")), ValueError, "reward"),
    ("missing terminated", dict(spec=spec_without("terminated")), ValueError, "terminated"),
    ("missing truncated", dict(spec=spec_without("truncated")), ValueError, "truncated"),
    ("missing obs field", dict(spec=spec_without("pix")), ValueError, "pix"),
    ("renamed reward missing", dict(reward="rew"), ValueError, "rew"),
    ("terminated not bool", dict(spec=spec_without("", terminated=rv.Field("float32"))),
     (TypeError, ValueError), "terminated"),
    ("truncated not bool", dict(spec=spec_without("", truncated=rv.Field("uint8"))),
     (TypeError, ValueError), "truncated"),
    ("reward not float", dict(spec=spec_without("", reward=rv.Field("int32"))),
     (TypeError, ValueError), "reward"),
    ("reward not scalar", dict(spec=spec_without("", reward=rv.Field("float32", (2,)))),
     (TypeError, ValueError), "reward"),
]


@pytest.mark.parametrize("kwargs, exc, pattern", [c[1:] for c in BAD_CONSTRUCTORS],
                         ids=[c[0] for c in BAD_CONSTRUCTORS])
def test_bad_constructor_arguments(kwargs, exc, pattern):
    args = dict(capacity=12, spec=spec_without(""), num_envs=1, obs_fields=OBS_FIELDS)
    args.update(kwargs)
    capacity = args.pop("capacity")
    with pytest.raises(exc, match=pattern):
        rv.EpisodeBuffer(capacity, **args)


# ---- determinism -------------------------------------------------------------------------


def test_same_seed_same_calls_same_batches():
    """Two prioritized buffers, same seed and calls (writes, samples, priority updates):
    identical batches, weights and indices."""
    data = make_steps(*random_flags(np.random.default_rng(8), 40, 2, 0.2))
    pairs = [Pair(24, num_envs=2, frame_stack=2, sampler=rv.Prioritized(), seed=77)
             for _ in range(2)]
    out: List[List[rv.Batch]] = [[], []]
    for stop in range(5, 41, 5):
        for i, pair in enumerate(pairs):
            pair.write(chunk(data, stop - 5, stop))
            batch = pair.buf.sample(32, n_step=3, gamma=0.9)
            pair.buf.update_priorities(batch.indices, batch["action"].double() % 7 + 0.1)
            out[i].append(batch)
            out[i].append(pair.buf.sample_sequences(8, 3, burn_in=2))
    for a, b in zip(*out):
        assert_batches_equal(a, b)


# ---- concurrency -------------------------------------------------------------------------


def breakpoints(lo: int, hi: int, keys: range, capacity: int) -> List[int]:
    """Values of `written` in [lo, hi] at which present() of some key in `keys` changes (a
    key k becomes present at k + 1 and is overwritten at k + capacity + 1), and lo."""
    out = {lo}
    for k in keys:
        for w in (k + 1, k + capacity + 1):
            if lo < w <= hi:
                out.add(w)
    return sorted(out)


def item_matches(batch: rv.Batch, i: int, want: Dict[str, np.ndarray]) -> bool:
    for name, w in want.items():
        g = batch[name][i].numpy()
        if name in CLOSE:
            if not np.allclose(g, w, rtol=RTOL, atol=ATOL):
                return False
        elif g.dtype != w.dtype or not np.array_equal(g, w):
            return False
    return True


def test_concurrent_writer_and_samplers():
    """One writer extends for ~1.5 s while two threads sample transitions and sequences. Each
    sampled item must equal what the reference gives for some `written` between the rows
    published before the call and those possibly published by its end; no exceptions."""
    num_envs, cap, k, n_step, gamma = 2, 48, 2, 3, 0.9
    length, burn_in, max_chunk, total_steps = 4, 2, 3, 250_000
    steps = make_steps(*random_flags(np.random.default_rng(21), total_steps, num_envs, 0.1))
    pair = Pair(cap, num_envs=num_envs, frame_stack=k, seed=5)
    ref = pair.ref
    ref.extend(**steps)  # the whole history; views with ref.at(written)
    buf = pair.buf
    buf.extend(**chunk(steps, 0, 10))
    progress = [10 * num_envs]  # rows written by finished extends
    stop = threading.Event()
    failures: List[str] = []
    checked = {"transitions": 0, "sequences": 0}

    def writer() -> None:
        rng = np.random.default_rng(0)
        t = 10
        try:
            while not stop.is_set() and t < total_steps:
                c = int(rng.integers(1, max_chunk + 1))
                buf.extend(**chunk(steps, t, t + c))
                t = min(t + c, total_steps)
                progress[0] = t * num_envs
        except Exception as e:  # noqa: BLE001 - reported below
            failures.append(f"writer: {e!r}")

    def matches(kind: str, batch: rv.Batch, i: int, s: int, lo: int, hi: int) -> bool:
        if kind == "transitions":
            keys = range(s - k * num_envs, s + (n_step + 1) * num_envs + 1)
        else:
            keys = range(s - (burn_in + k) * num_envs, s + (length + 1) * num_envs + 1)
        for w in breakpoints(lo, hi, keys, cap):
            view = ref.at(w)
            if kind == "transitions":
                if view.valid_start(s) and item_matches(
                        batch, i, view.expected_transition(s, n_step, gamma)):
                    return True
            elif view.sequence_valid(s, length, burn_in, "pad") and item_matches(
                    batch, i, view.expected_sequence(s, length, burn_in)):
                return True
        return False

    def reader(kind: str) -> None:
        try:
            while not stop.is_set():
                lo = progress[0]
                if kind == "transitions":
                    batch = buf.sample(32, n_step=n_step, gamma=gamma)
                else:
                    batch = buf.sample_sequences(8, length, burn_in=burn_in)
                hi = min(progress[0] + max_chunk * num_envs, total_steps * num_envs)
                for i, s in enumerate(ref.ids(batch.indices).tolist()):
                    if not matches(kind, batch, i, s, lo, hi):
                        failures.append(f"{kind}: start {s} written in [{lo}, {hi}]: "
                                        f"{ {n: v[i].tolist() for n, v in batch.items()} }")
                checked[kind] += len(batch.indices)
        except Exception as e:  # noqa: BLE001 - reported below
            failures.append(f"{kind}: {e!r}")

    threads = [threading.Thread(target=writer)]
    threads += [threading.Thread(target=reader, args=(kind,)) for kind in checked]
    for th in threads:
        th.start()
    time.sleep(1.5)
    stop.set()
    for th in threads:
        th.join(timeout=30)
    assert not any(th.is_alive() for th in threads)
    assert not failures, failures[:5]
    assert progress[0] > 4 * cap, "the writer should have wrapped the ring several times"
    assert checked["transitions"] > 0 and checked["sequences"] > 0


# ---- R2D2 sequence priority --------------------------------------------------------------


@pytest.mark.parametrize("eta", [0.9, 0.5, 0.0, 1.0])
def test_sequence_priority_matches_a_loop(eta):
    """eta * max + (1 - eta) * mean of |td| over masked steps; 0 without masked steps
    (rtol 1e-5, float32)."""
    gen = torch.Generator().manual_seed(0)
    td = torch.rand(16, 7, generator=gen) * 3
    mask = torch.rand(16, 7, generator=gen) < 0.6
    mask[3] = False
    mask[5] = True
    got = rv.sequence_priority(td, mask, eta)
    want = []
    for b in range(16):
        vals = [float(td[b, t]) for t in range(7) if mask[b, t]]
        want.append(eta * max(vals) + (1 - eta) * sum(vals) / len(vals) if vals else 0.0)
    assert tuple(got.shape) == (16,)
    np.testing.assert_allclose(got.double().numpy(), want, rtol=1e-5, atol=1e-7)
    assert got[3] == 0


def test_sequence_priority_default_eta_is_0_9():
    td = torch.tensor([[1.0, 3.0, 2.0]])
    mask = torch.tensor([[True, True, False]])
    assert float(rv.sequence_priority(td, mask)[0]) == pytest.approx(0.9 * 3 + 0.1 * 2)
