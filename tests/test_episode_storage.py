"""EpisodeBuffer with the rest of the library: state_dict, shared memory across processes,
the rate limiter, prioritized sequences and the stream-major column layout."""

from __future__ import annotations

import multiprocessing as mp

import numpy as np
import pytest
import torch

import reverie as rv

SPEC = {"obs": ("float32", (2,)), "action": ("int64", ()), "reward": ("float32", ()),
        "terminated": ("bool", ()), "truncated": ("bool", ())}
N = 4


def step(buf: rv.EpisodeBuffer, t: int) -> None:
    """One vector step: obs (env, t); env e's episodes end every 5 + e steps."""
    env = np.arange(N)
    ends = (t + 1) % (5 + env) == 0
    buf.extend(obs=np.stack([env, np.full(N, t)], 1).astype(np.float32),
               action=np.full(N, t, np.int64), reward=np.ones(N, np.float32),
               terminated=ends & (env % 2 == 0), truncated=ends & (env % 2 == 1))


def filled(steps: int = 50, **kwargs) -> rv.EpisodeBuffer:
    buf = rv.EpisodeBuffer(N * 16, SPEC, seed=3, num_envs=N, **kwargs)
    for t in range(steps):
        step(buf, t)
    return buf


def same(a: rv.Batch, b: rv.Batch) -> bool:
    return (a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
            and torch.equal(a.indices, b.indices))


@pytest.mark.parametrize("sampler", [rv.Uniform(), rv.Prioritized(alpha=0.7)])
def test_state_dict_restores_the_next_batches_and_the_streams(sampler):
    """After load_state_dict the copy draws what the original draws, and later writes
    continue each env's episode (the streams' last flags are part of the state)."""
    a = filled(sampler=sampler, frame_stack=2)
    if isinstance(sampler, rv.Prioritized):
        batch = a.sample(8)
        a.update_priorities(batch.indices, torch.arange(8.0) + 0.5)
    b = rv.EpisodeBuffer(N * 16, SPEC, sampler=sampler, num_envs=N, frame_stack=2)
    b.load_state_dict(a.state_dict())
    for t in range(50, 53):  # the streams go on identically
        step(a, t)
        step(b, t)
    for _ in range(5):
        assert same(a.sample(32, n_step=3, gamma=0.9), b.sample(32, n_step=3, gamma=0.9))
        assert same(a.sample_sequences(4, 6, burn_in=2), b.sample_sequences(4, 6, burn_in=2))


def test_state_dict_of_other_episode_options_is_refused_and_changes_nothing():
    a = filled()
    other = rv.EpisodeBuffer(N * 16, SPEC, seed=3, num_envs=N, frame_stack=2)
    for t in range(50):
        step(other, t)
    before = other.state_dict()
    with pytest.raises(ValueError, match="episode options"):
        other.load_state_dict(a.state_dict())
    after = other.state_dict()
    assert all(torch.equal(before["arrays"][k], after["arrays"][k]) for k in before["arrays"])
    assert before["scalars"] == after["scalars"]


def test_columns_are_stream_major():
    """Env e's rows are the slots [e * per, (e + 1) * per), per = capacity // num_envs, row
    t % per: a sequence of one env is one run of memory."""
    buf = filled(steps=20)
    obs = buf.columns["obs"].numpy().reshape(N, 16, 2)
    for e in range(N):
        for t in range(4, 20):
            assert obs[e, t % 16].tolist() == [e, t]


def _worker(buf: rv.EpisodeBuffer, out: mp.Queue) -> None:
    batch = buf.sample(16, n_step=2)
    env, t = batch.obs[:, 0], batch.obs[:, 1]
    out.put(bool(torch.equal(batch.next_obs[:, 0], env) and (batch.next_obs[:, 1] > t).all()))
    for t in range(50, 60):  # the worker is now the (one) writer
        step(buf, t)
    out.put(len(buf))


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_shared_episode_buffer_in_a_worker_process(method):
    """A shared EpisodeBuffer pickles as a handle; a worker samples n-step transitions and
    continues the streams; the parent sees its steps."""
    with rv.EpisodeBuffer(N * 16, SPEC, seed=1, num_envs=N, storage="shared") as buf:
        for t in range(50):
            step(buf, t)
        ctx = mp.get_context(method)
        out = ctx.Queue()
        p = ctx.Process(target=_worker, args=(buf, out))
        p.start()
        ok, size = out.get(timeout=60), out.get(timeout=60)
        p.join(60)
        assert p.exitcode == 0 and ok and size == N * 16
        newest = buf.columns["obs"].numpy().reshape(N, 16, 2)[:, 59 % 16, 1]
        assert (newest == 59).all()
        seq = buf.sample_sequences(8, 4)
        t = seq.obs[:, :, 1]
        assert ((t[:, 1:] - t[:, :-1] == 1) | ~seq.mask[:, 1:]).all()


def test_rate_limiter_counts_sampled_transitions():
    limiter = rv.RateLimiter(min_size_to_sample=N * 3, samples_per_insert=1.0, timeout=0)
    buf = rv.EpisodeBuffer(N * 16, SPEC, seed=0, num_envs=N, rate_limiter=limiter)
    for t in range(3):
        step(buf, t)
    buf.sample(4)
    assert buf.rate_limiter.stats()["sampled"] == 4
    with pytest.raises(TimeoutError):
        buf.sample_sequences(100, 2)  # far past the allowed samples per insert


def test_prioritized_sequences_follow_sequence_priorities():
    """update_priorities with R2D2's sequence priority sets the start's priority: a start
    with a large priority is drawn far more often."""
    buf = filled(sampler=rv.Prioritized(alpha=1.0, beta=1.0, eps=0.0))
    first = buf.sample_sequences(16, 4)
    hot = first.indices == first.indices[0]  # a start may be drawn twice: mark every copy
    td = torch.zeros(16, 4)
    td[hot] = 100.0
    prio = rv.sequence_priority(td, first.mask, eta=0.9)
    assert torch.allclose(prio[hot], torch.tensor(100.0)) and (prio[~hot] == 0).all()
    buf.update_priorities(first.indices, prio + 1e-3)
    keys = torch.cat([buf.sample_sequences(64, 4).indices for _ in range(10)])
    assert (keys == first.indices[0]).float().mean() > 0.5


def test_state_dict_of_a_partly_filled_prioritized_multi_env_buffer():
    """Before the first lap the rows of 4 envs lie in 4 blocks of slots (stream-major); the
    state's priorities must be accepted there and only there."""
    a = rv.EpisodeBuffer(N * 16, SPEC, sampler=rv.Prioritized(), seed=2, num_envs=N)
    for t in range(3):
        step(a, t)
    state = a.state_dict()
    b = rv.EpisodeBuffer(N * 16, SPEC, sampler=rv.Prioritized(), num_envs=N)
    b.load_state_dict(state)
    assert same(a.sample(16), b.sample(16))
    leaves = state["arrays"]["priority.leaves"].clone()
    leaves[5] = 7  # env 0's sixth row: not written yet
    bad = dict(state, arrays=dict(state["arrays"], **{"priority.leaves": leaves}))
    with pytest.raises(ValueError, match="holds no item"):
        rv.EpisodeBuffer(N * 16, SPEC, sampler=rv.Prioritized(), num_envs=N).load_state_dict(bad)


def test_a_failed_sample_changes_nothing():
    """No valid start (episodes of 5 steps, drop, length 10): ValueError, and the next
    samples equal those of a twin that never made the call (the call number is taken back)."""
    a, b = filled(steps=30), filled(steps=30)
    with pytest.raises(ValueError, match="no sequence can be sampled"):
        a.sample_sequences(4, 10, episode_end="drop")
    assert same(a.sample(8, n_step=2), b.sample(8, n_step=2))
    assert a.rate_limiter is None and len(a) == len(b)


def test_rare_valid_starts_are_drawn_uniformly():
    """When random draws rarely hit a valid start (drop with length 999 in episodes of
    1000 steps: 2 valid starts per 1001 rows), the fallback lists the valid starts and draws
    among them: uniform, chi-square p > 1e-3 (fixed seed)."""
    from scipy import stats as scipy_stats

    buf = rv.EpisodeBuffer(4004, SPEC, seed=5, num_envs=1)
    ends = np.zeros(4004, bool)
    ends[999::1001] = True  # terminated every 1000 steps, then a final-observation row
    buf.extend(obs=np.zeros((4004, 1, 2), np.float32), action=np.zeros((4004, 1), np.int64),
               reward=np.ones((4004, 1), np.float32), terminated=ends[:, None],
               truncated=np.zeros((4004, 1), bool))
    keys = torch.cat([buf.sample_sequences(64, 999, episode_end="drop").indices
                      for _ in range(20)]).numpy()
    valid = sorted(set(keys.tolist()))
    assert valid == [0, 1, 1001, 1002, 2002, 2003, 3003, 3004][:len(valid)] and len(valid) == 8
    counts = np.array([(keys == k).sum() for k in valid])
    assert scipy_stats.chisquare(counts).pvalue > 1e-3


def test_two_writer_threads_take_turns():
    """Writers of an EpisodeBuffer take the writer lock in turn: two threads writing whole
    steps leave every env's rows in write order and consistent flags (no torn step)."""
    import threading

    buf = rv.EpisodeBuffer(N * 4096, SPEC, seed=0, num_envs=N)

    def writer(tag: float) -> None:
        for t in range(2000):
            buf.extend(obs=np.full((N, 2), tag, np.float32), action=np.full(N, t, np.int64),
                       reward=np.ones(N, np.float32), terminated=np.zeros(N, bool),
                       truncated=np.zeros(N, bool))

    threads = [threading.Thread(target=writer, args=(tag,)) for tag in (1.0, 2.0)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    obs = buf.columns["obs"].numpy().reshape(N, 4096, 2)
    assert len(buf) == N * 4000
    for e in range(1, N):  # a whole step is one writer's: every env got the same tag sequence
        assert np.array_equal(obs[e, :4000], obs[0, :4000])
    batch = buf.sample(64, n_step=3)
    assert torch.equal(batch.discount, torch.full((64,), 0.99**3, dtype=torch.float32))


def test_spec_inferred_from_a_block_of_steps():
    """The first extend may be T steps [T, num_envs, ...]: the spec drops both axes."""
    buf = rv.EpisodeBuffer(N * 8, num_envs=N)
    buf.extend(obs=np.zeros((3, N, 2), np.float32), action=np.zeros((3, N), np.int64),
               reward=np.zeros((3, N), np.float32), terminated=np.zeros((3, N), bool),
               truncated=np.zeros((3, N), bool))
    assert buf.spec["obs"].shape == (2,) and buf.spec["reward"].shape == ()
    assert len(buf) == 3 * N
