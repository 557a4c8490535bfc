"""storage="memmap": the whole buffer lives in a file, survives the process and reopens with
its index state (counters, stamps, priority tree, generator position)."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

import reverie as rv

SPEC = {"obs": ("float32", (3,)), "action": ("int64", ()), "reward": ("float32", ())}


def fill(buf: rv.ReplayBuffer, start: int, n: int) -> None:
    ids = np.arange(start, start + n)
    buf.extend(obs=np.stack([ids, ids, -ids], 1).astype(np.float32), action=ids,
               reward=ids.astype(np.float32))


def same(a: rv.Batch, b: rv.Batch) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a) and torch.equal(a.indices, b.indices) and (
        a.weights is None or torch.equal(a.weights, b.weights))


@pytest.mark.parametrize("sampler", [rv.Uniform(), rv.Prioritized(alpha=0.7, beta=0.5)])
def test_reopened_file_continues_exactly(tmp_path, sampler):
    """Close, reopen with only the path: the same items, priorities and generator position
    (the next 50 batches equal those of a memory twin that never closed)."""
    path = tmp_path / "buf.rvb"
    twin = rv.ReplayBuffer(1000, SPEC, sampler, seed=7)
    buf = rv.ReplayBuffer(1000, SPEC, sampler, seed=7, storage="memmap", path=path)
    for b in (buf, twin):
        fill(b, 0, 1500)  # wrapped
        batch = b.sample(64)
        if isinstance(sampler, rv.Prioritized):
            b.update_priorities(batch.indices, torch.arange(64.0) + 1.0)
            b.sampler.beta = 0.9
    buf.close()
    again = rv.ReplayBuffer(1000, sampler=sampler, storage="memmap", path=path)
    assert again.seed == 7 and len(again) == 1000 and again.spec == twin.spec
    if isinstance(sampler, rv.Prioritized):
        assert again.sampler.beta == 0.9
        assert torch.equal(again.priorities(), twin.priorities())
    for _ in range(50):
        assert same(again.sample(32), twin.sample(32))
    fill(again, 1500, 10)  # writing goes on where it stopped
    fill(twin, 1500, 10)
    assert same(again.sample(32), twin.sample(32))
    again.close()


def test_episode_buffer_reopens_its_streams(tmp_path):
    spec = {"obs": ("float32", (2,)), "reward": ("float32", ()), "terminated": ("bool", ()),
            "truncated": ("bool", ())}
    path = tmp_path / "episodes.rvb"

    def steps(buf, t0, t1):
        for t in range(t0, t1):
            env = np.arange(2)
            buf.extend(obs=np.stack([env, np.full(2, t)], 1).astype(np.float32),
                       reward=np.ones(2, np.float32), terminated=(t + 1) % (4 + env) == 0,
                       truncated=np.zeros(2, bool))

    twin = rv.EpisodeBuffer(64, spec, seed=1, num_envs=2, frame_stack=2)
    with rv.EpisodeBuffer(64, spec, seed=1, num_envs=2, frame_stack=2, storage="memmap",
                          path=path) as buf:
        steps(buf, 0, 20)
    steps(twin, 0, 40)
    with rv.EpisodeBuffer(64, num_envs=2, frame_stack=2, storage="memmap", path=path) as buf:
        steps(buf, 20, 40)  # the episodes in flight continue across the reopen
        for _ in range(10):
            assert same(buf.sample(16, n_step=3), twin.sample(16, n_step=3))
            assert same(buf.sample_sequences(4, 6), twin.sample_sequences(4, 6))


def test_one_buffer_per_file_and_settings_must_match(tmp_path):
    path = str(tmp_path / "buf.rvb")
    buf = rv.ReplayBuffer(100, SPEC, seed=3, storage="memmap", path=path)
    fill(buf, 0, 10)
    with pytest.raises(ValueError, match="in use by another buffer"):
        rv.ReplayBuffer(100, SPEC, seed=3, storage="memmap", path=path)
    buf.close()
    with pytest.raises(ValueError, match="capacity"):
        rv.ReplayBuffer(200, SPEC, storage="memmap", path=path)
    with pytest.raises(ValueError, match="seed"):
        rv.ReplayBuffer(100, SPEC, seed=4, storage="memmap", path=path)
    with pytest.raises(ValueError, match="spec"):
        rv.ReplayBuffer(100, {"obs": ("float32", (4,))}, storage="memmap", path=path)
    with pytest.raises(ValueError, match="sampler"):
        rv.ReplayBuffer(100, sampler=rv.Prioritized(), storage="memmap", path=path)
    with pytest.raises(ValueError, match="writer"):
        rv.ReplayBuffer(100, SPEC, seed=3, writer=rv.Reservoir(), storage="memmap", path=path)
    # The file describes itself (its configuration is in its header): no settings file.
    assert not os.path.exists(path + ".json")
    other = tmp_path / "other.rvb"
    other.write_bytes(b"not a table" * 100)
    with pytest.raises(ValueError, match="is not a reverie table"):
        rv.ReplayBuffer(100, SPEC, seed=3, storage="memmap", path=other)
    with pytest.raises(ValueError, match="needs path"):
        rv.ReplayBuffer(100, SPEC, storage="memmap")
    with pytest.raises(ValueError, match="needs spec"):
        rv.ReplayBuffer(100, storage="memmap", path=str(tmp_path / "new.rvb"))


def test_memmap_buffer_is_not_pickled(tmp_path):
    with rv.ReplayBuffer(10, SPEC, storage="memmap", path=tmp_path / "b.rvb") as buf:
        with pytest.raises(TypeError, match="reopen its path"):
            pickle.dumps(buf)


def test_a_file_larger_than_what_is_touched_stays_on_disk(tmp_path):
    """A 2 GB buffer file costs only the pages used: resident memory grows with the rows
    written, not with the capacity (the file is sparse until written)."""
    path = tmp_path / "big.rvb"
    code = textwrap.dedent(f"""
        import numpy as np, reverie as rv
        def rss():
            return int(open('/proc/self/statm').read().split()[1]) * 4096
        before = rss()
        buf = rv.ReplayBuffer(100_000_000, {{'obs': ('float32', (5,))}}, seed=0,
                              storage='memmap', path={str(path)!r})
        buf.extend(obs=np.ones((1000, 5), np.float32))
        assert buf.sample(8).obs.sum() == 40
        print(rss() - before)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert os.path.getsize(path) > 2_000_000_000
    assert int(out.stdout.strip()) < 200_000_000  # far below the 2.8 GB the file holds


def test_reopen_after_a_writer_was_killed(tmp_path):
    """A process SIGKILLed while it writes a prioritized memmap buffer: the file reopens, the
    tree is rebuilt from its leaves, and every sampled row is whole."""
    path = tmp_path / "killed.rvb"
    code = textwrap.dedent(f"""
        import numpy as np, reverie as rv, sys
        buf = rv.ReplayBuffer(50_000, {{'a': ('int64', (8,))}}, rv.Prioritized(), seed=0,
                              storage='memmap', path={str(path)!r})
        print('ready', flush=True)
        i = 0
        while True:
            ids = np.arange(i, i + 512)
            buf.extend(a=np.repeat(ids[:, None], 8, 1))
            b = buf.sample(64)
            buf.update_priorities(b.indices, np.random.rand(64) + 0.1)
            i += 512
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env=env)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    buf = rv.ReplayBuffer(50_000, sampler=rv.Prioritized(), storage="memmap", path=path)
    assert len(buf) > 0
    for _ in range(20):
        a = buf.sample(256).a
        assert (a == a[:, :1]).all()  # whole rows: every column of a row is its id
    # Writing on past every slot, including one the dead writer left half-written (its pid
    # could belong to a live process by now: reopening empties such slots), never waits.
    import threading

    done = threading.Event()

    def write() -> None:
        ids = np.arange(60_000)
        buf.extend(a=np.repeat(ids[:, None], 8, 1))
        done.set()

    threading.Thread(target=write, daemon=True).start()
    assert done.wait(30), "a write after reopening hung on a dead writer's slot"
    assert (buf.sample(256).a >= 0).all()
    buf.close()


def test_reopened_file_keeps_its_rate_limiter(tmp_path):
    """The limiter's state lives in the file: reopened without rate_limiter=, the buffer
    shows and applies the file's limiter."""
    path = tmp_path / "limited.rvb"
    limiter = rv.RateLimiter(min_size_to_sample=4, samples_per_insert=1.0, tolerance=2,
                             timeout=0)
    with rv.ReplayBuffer(16, SPEC, seed=0, rate_limiter=limiter, storage="memmap",
                         path=path) as buf:
        fill(buf, 0, 6)
    with rv.ReplayBuffer(16, storage="memmap", path=path) as buf:
        assert buf.rate_limiter is not None
        assert buf.rate_limiter.config()["samples_per_insert"] == 1.0
        buf.sample(4)
        buf.sample(8)  # admitted (each check is made before its call), overshooting
        with pytest.raises(TimeoutError):
            buf.sample(1)  # 12 sampled for 6 inserted: refused at once (timeout 0)


def test_a_forked_child_does_not_keep_the_file_locked(tmp_path):
    """Forked children (e.g. DataLoader workers) close their copy of the file's descriptor:
    after the parent closes the buffer, the file can be opened again while they live."""
    path = tmp_path / "forked.rvb"
    buf = rv.ReplayBuffer(16, SPEC, seed=0, storage="memmap", path=path)
    fill(buf, 0, 4)
    pid = os.fork()
    if pid == 0:  # the child just lives a while
        time.sleep(3)
        os._exit(0)
    try:
        buf.close()
        with rv.ReplayBuffer(16, storage="memmap", path=path) as again:
            assert len(again) == 4
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
