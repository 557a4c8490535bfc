"""Issue 3, item 4: buffers in POSIX shared memory, used from several processes.

- Workers started with multiprocessing (spawn and fork) and torch.multiprocessing (spawn)
  add, extend, sample and update priorities of a shared Uniform and a shared Prioritized
  buffer while the parent samples; afterwards the parent holds exactly every row once and
  sees the priorities the workers set.
- The buffer pickles as a small handle that attaches by name; memory buffers refuse to pickle.
- No leaked segments in /dev/shm: after close(), after garbage collection, after the creating
  process exits normally; attached processes and fork()ed children never unlink.
- A writer SIGKILLed in the middle of a write leaves no torn row sampleable and blocks no
  other process: later writers take its slots over, and a death inside the prioritized
  writer lock costs a tree repair, not a deadlock.

Worker functions are module-level (spawn pickles them by name) and this module does nothing
at import but define them. Row checks in workers use numpy only (no torch kernels in fork()ed
children).
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Set

import numpy as np
import pytest
import torch
import torch.multiprocessing as torch_mp
from keys import fifo_insertion, slot_of

import reverie as rv

SHM = Path("/dev/shm")

pytestmark = [
    pytest.mark.skipif(not SHM.is_dir(), reason="needs POSIX shared memory in /dev/shm"),
    # Python >= 3.12 warns when a process with threads (torch's, the gather pool) forks.
    pytest.mark.filterwarnings("ignore:This process .*is multi-threaded:DeprecationWarning"),
]

ENC = 1_000_000  # a row of writer w, number s, holds w * ENC + s in every element of obs
SMALL = {"wid": ("int32", ()), "seq": ("int64", ()), "obs": ("float64", (8,))}
BIG = {"wid": ("int64", ()), "seq": ("int64", ()), "obs": ("float64", (2048,))}  # 16 KiB rows
ALPHA, EPS = 0.7, 0.01
JOIN_S = 120  # generous: a 2-core machine starting spawn workers that import torch


def per_sampler() -> rv.Prioritized:
    return rv.Prioritized(alpha=ALPHA, beta=0.5, eps=EPS)


def rows(wid: int, first: int, n: int, width: int) -> Dict[str, np.ndarray]:
    """n items of writer `wid`, numbers first .. first + n - 1."""
    seq = np.arange(first, first + n, dtype=np.int64)
    code = (wid * ENC + seq).astype(np.float64)
    return {"wid": np.full(n, wid), "seq": seq,
            "obs": np.ascontiguousarray(np.repeat(code[:, None], width, axis=1))}


def cast(spec: dict, batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    return {k: v.astype(spec[k][0]) for k, v in batch.items()}


def check_rows(fields) -> None:
    """Every row is whole: its obs elements all encode its own (wid, seq)."""
    wid = np.asarray(fields["wid"]).astype(np.int64)
    seq = np.asarray(fields["seq"]).astype(np.int64)
    obs = np.asarray(fields["obs"])
    code = (wid * ENC + seq).astype(np.float64)
    bad = np.flatnonzero(~(obs == code[:, None]).all(axis=1))
    assert bad.size == 0, (f"torn rows at batch positions {bad[:8].tolist()}: wid "
                           f"{wid[bad[:8]].tolist()}, seq {seq[bad[:8]].tolist()}, obs[:, :3] "
                           f"{obs[bad[:8], :3].tolist()}")


def batch_np(batch) -> Dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in batch.items()}


def prio_of(keys: np.ndarray) -> np.ndarray:
    return 0.5 + (keys % 7) * 0.25


def our_segments() -> Set[str]:
    """This process's segments (names carry the creator's pid; other test runs may be busy)."""
    return {p.name for p in SHM.glob(f"reverie-{os.getpid()}-*")}


@pytest.fixture(autouse=True)
def no_leaked_segments():
    before = our_segments()
    yield
    gc.collect()
    leaked = our_segments() - before
    for name in leaked:  # clean up even when the test failed
        (SHM / name).unlink(missing_ok=True)
    assert not leaked, f"leaked shared-memory segments: {sorted(leaked)}"


@contextmanager
def reaped(procs: List) -> Iterator[None]:
    """Kills and reaps whatever is still running when the block ends (also on failure)."""
    try:
        yield
    finally:
        for p in procs:
            if p.pid is not None and p.exitcode is None:
                p.kill()
            if p.pid is not None:
                p.join(timeout=30)


def removed(name: str) -> bool:
    """Whether the segment is gone; removes it if not (so a failing test leaks nothing)."""
    path = SHM / name
    if not path.exists():
        return True
    path.unlink(missing_ok=True)
    return False


def python_env() -> Dict[str, str]:
    """The environment for a fresh interpreter that imports this reverie (an installed one, or
    the source tree through PYTHONPATH)."""
    env = dict(os.environ)
    src = str(Path(rv.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([src] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


# ---- workers: spawn, fork, torch.multiprocessing ---------------------------------------


def _worker(uni, per, wid, n_items, half_done, go, barrier):
    """Writes n_items rows into both buffers (single adds and extends), sampling and updating
    priorities on the way; then, once every worker has written, sets the priority of every
    key k with k % 2 == wid % 2 to prio_of(k). Worker 1 closes its handles, worker 2 just
    ends with them open."""
    rng = np.random.default_rng(100 + wid)
    seq = 0
    while seq < n_items:
        n = int(min(rng.integers(1, 17), n_items - seq))
        batch = cast(SMALL, rows(wid, seq, n, 8))
        for buf in (uni, per):
            if n == 1:
                buf.add(**{k: v[0] for k, v in batch.items()})
            else:
                buf.extend(**batch)
        seq += n
        if seq >= n_items // 2 and not half_done.is_set():
            half_done.set()
            assert go.wait(timeout=JOIN_S), "the parent never said go"
        if rng.random() < 0.3:
            for buf in (uni, per):
                check_rows(batch_np(buf.sample(16)))
            b = per.sample(16)
            check_rows(batch_np(b))
            per.update_priorities(b.indices, rng.uniform(0.1, 3.0, 16))
    barrier.wait(timeout=JOIN_S)  # every row is written: every key below 2 * n_items exists
    keys = np.arange(wid % 2, len(per), 2, dtype=np.int64)
    assert per.update_priorities(keys, prio_of(keys)) == 0
    if wid == 1:
        uni.close()
        per.close()


def run_workers(ctx) -> None:
    n_items = 1500
    total = 2 * n_items
    cap = total + 40  # no overwrites: every row must still be there at the end
    uni = rv.ReplayBuffer(cap, spec=SMALL, seed=1, storage="shared")
    per = rv.ReplayBuffer(cap, spec=SMALL, sampler=per_sampler(), seed=2, storage="shared")
    names = [uni.shared_name, per.shared_name]
    half = [ctx.Event(), ctx.Event()]
    go = ctx.Event()
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_worker, args=(uni, per, w, n_items, half[i], go, barrier))
             for i, w in enumerate((1, 2))]
    samples_mid_stream = 0
    with reaped(procs):
        for p in procs:
            p.start()
        deadline = time.monotonic() + JOIN_S
        while any(p.is_alive() for p in procs):
            assert time.monotonic() < deadline, "workers did not finish"
            for buf in (uni, per):
                if len(buf) > 0:
                    check_rows(batch_np(buf.sample(32)))
                    if 0 < len(buf) < total:
                        samples_mid_stream += 1
            if not go.is_set() and all(e.is_set() for e in half) and samples_mid_stream >= 5:
                go.set()  # the parent has sampled the half-written buffer; writers go on
            time.sleep(0.001)
        for p in procs:
            p.join(timeout=JOIN_S)
    assert [p.exitcode for p in procs] == [0, 0]
    assert samples_mid_stream >= 5
    # workers that closed their handles or just ended never unlink the creator's segments
    assert all((SHM / n).exists() for n in names)
    expected = sorted((w, s) for w in (1, 2) for s in range(n_items))
    for buf in (uni, per):
        assert len(buf) == total
        cols = buf.columns
        got = sorted(zip(cols["wid"][:total].tolist(), cols["seq"][:total].tolist()))
        assert got == expected  # every row exactly once
        check_rows({k: v[:total] for k, v in cols.items()})
        assert not cols["obs"][total:].any()  # the slots past the rows were never written
        check_rows(batch_np(buf.sample(64)))
    # priorities set in the workers are what the parent sees
    keys = np.arange(total)
    want = torch.from_numpy((prio_of(keys) + EPS) ** ALPHA)
    got = per.priorities()
    torch.testing.assert_close(got[:total], want, rtol=1e-6, atol=0)
    assert not got[total:].any()
    for buf in (uni, per):  # the creator goes on using them
        buf.add(wid=3, seq=0, obs=np.full(8, 3.0 * ENC))
        assert len(buf) == total + 1
        check_rows(batch_np(buf.sample(64)))
    uni.close()
    per.close()
    assert not any((SHM / n).exists() for n in names)


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_workers_write_sample_and_update(method):
    run_workers(mp.get_context(method))


def test_workers_torch_multiprocessing_spawn():
    run_workers(torch_mp.get_context("spawn"))


# ---- pickling ---------------------------------------------------------------------------


@pytest.mark.parametrize("capacity", [16, 1_000_000])
@pytest.mark.parametrize("sampler", [rv.Uniform, per_sampler])
def test_pickle_is_a_small_handle_that_attaches(capacity, sampler):
    buf = rv.ReplayBuffer(capacity, spec={"x": ("uint8", ()), "k": ("int64", ())},
                          sampler=sampler(), seed=3, storage="shared")
    buf.add(x=1, k=0)
    data = pickle.dumps(buf)
    assert len(data) < 4096
    twin = pickle.loads(data)
    assert twin.shared_name == buf.shared_name
    assert len(twin) == 1
    twin.add(x=2, k=1)  # written through the attached one, seen through the creator
    assert len(buf) == 2
    assert buf.columns["k"][:2].tolist() == [0, 1]
    buf.extend(x=np.array([3, 4], np.uint8), k=np.array([2, 3]))
    assert len(twin) == 4
    assert sorted(twin.sample(64).k.unique().tolist()) == [0, 1, 2, 3]
    if isinstance(buf.sampler, rv.Prioritized):
        twin.update_priorities([2], [5.0])
        assert buf.priorities()[2].item() == pytest.approx((5.0 + EPS) ** ALPHA, rel=1e-6)
    # an attached handle pickles too, to the same segment
    assert pickle.loads(pickle.dumps(twin)).shared_name == buf.shared_name
    twin.close()  # an attached handle never unlinks
    assert (SHM / buf.shared_name).exists()
    assert len(buf) == 4
    buf.close()


def test_memory_buffer_does_not_pickle():
    built = rv.ReplayBuffer(8, spec={"x": ("float32", ())})
    unbuilt = rv.ReplayBuffer(8)
    for buf in (built, unbuilt):
        with pytest.raises(TypeError, match="storage='shared'"):
            pickle.dumps(buf)


def test_attaching_to_a_closed_buffer_raises():
    buf = rv.ReplayBuffer(8, spec={"x": ("float32", ())}, storage="shared")
    buf.add(x=1.0)
    name = buf.shared_name
    data = pickle.dumps(buf)
    buf.close()
    with pytest.raises(ValueError, match=name):
        pickle.loads(data)


def test_pickling_a_closed_shared_buffer_says_it_is_closed():
    buf = rv.ReplayBuffer(8, spec={"x": ("float32", ())}, storage="shared")
    buf.close()
    with pytest.raises((ValueError, TypeError)) as err:
        pickle.dumps(buf)
    assert "closed" in str(err.value) and "storage='memory'" not in str(err.value)


def test_shared_needs_a_spec():
    with pytest.raises(ValueError, match="spec"):
        rv.ReplayBuffer(8, storage="shared")
    with pytest.raises(ValueError, match="storage"):
        rv.ReplayBuffer(8, spec={"x": ("float32", ())}, storage="disk")


# ---- no leaked segments ---------------------------------------------------------------


def test_close_unlinks():
    buf = rv.ReplayBuffer(8, spec={"x": ("float32", ())}, storage="shared")
    name = buf.shared_name
    assert name.startswith(f"reverie-{os.getpid()}-") and (SHM / name).exists()
    buf.close()
    assert not (SHM / name).exists()
    buf.close()  # idempotent


@pytest.mark.parametrize("cycle", [False, True])
def test_garbage_collection_unlinks(cycle):
    buf = rv.ReplayBuffer(8, spec={"x": ("float32", ())}, sampler=per_sampler(), storage="shared")
    buf.add(x=1.0)
    name = buf.shared_name
    if cycle:
        buf.cycle = buf  # only the cycle collector frees it
    del buf
    if cycle:
        assert (SHM / name).exists()
        gc.collect()
    assert not (SHM / name).exists()


def test_context_manager_unlinks():
    with rv.ReplayBuffer(8, spec={"x": ("float32", ())}, storage="shared") as buf:
        name = buf.shared_name
        assert (SHM / name).exists()
    assert not (SHM / name).exists()


CREATOR = textwrap.dedent("""
    import os, pickle, sys
    import numpy as np
    import reverie as rv
    buf = rv.ReplayBuffer(64, spec={"x": ("float32", (4,))}, storage="shared", seed=0)
    buf.extend(x=np.arange(12, dtype=np.float32).reshape(3, 4))
    if sys.argv[1] == "forks":
        # os.fork() children that close() or just exit (their interpreter exit runs the
        # finalizers of their copy of the creator object) never unlink
        for close in (True, False):
            pid = os.fork()
            if pid == 0:
                buf.add(x=np.full(4, 100.0 + close, np.float32))
                if close:
                    buf.close()
                sys.exit(0)
            assert os.waitpid(pid, 0)[1] == 0
            assert os.path.exists("/dev/shm/" + buf.shared_name), "a forked child unlinked it"
        handle = pickle.dumps(buf)
    else:
        holder = {"buf": buf}
        holder["self"] = holder  # only the cycle collector (never run here) would free it
        del buf
        handle = pickle.dumps(holder["buf"])
    print(handle.hex(), flush=True)
    sys.stdin.readline()  # exits normally, without close(), when told to
""")


@pytest.mark.parametrize("how", ["forks", "cycle"])
def test_creator_process_exit_unlinks(how):
    """A process that creates a shared buffer and exits normally without close() removes the
    segment (also when the buffer is in a reference cycle, and after fork()ed children of it
    closed their copy or exited); a process still attached (this one) keeps the data."""
    proc = subprocess.Popen([sys.executable, "-c", CREATOR, how], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=python_env())
    try:
        line = proc.stdout.readline()
        assert line, proc.communicate(timeout=60)[1][-3000:]
        handle = pickle.loads(bytes.fromhex(line.strip()))
        name = handle.shared_name
        assert name.startswith(f"reverie-{proc.pid}-")
        assert (SHM / name).exists()
        _, err = proc.communicate("\n", timeout=60)
        assert proc.returncode == 0, err[-3000:]
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.wait()
    assert removed(name)
    # mapped here still: the data outlives the name
    rows_in = 3 + (2 if how == "forks" else 0)
    assert len(handle) == rows_in
    x = handle.columns["x"][:rows_in]
    assert x[:3].flatten().tolist() == list(range(12))
    assert sorted(x[3:, 0].tolist()) == ([100.0, 101.0] if how == "forks" else [])
    handle.add(x=np.ones(4, np.float32))
    assert len(handle.sample(8)["x"]) == 8
    handle.close()


_KEPT: List = []  # buffers a worker keeps alive until it exits (a fork()ed copy per worker)


def _create_and_keep(names, cycle: bool) -> None:
    buf = rv.ReplayBuffer(8, spec={"x": ("float32", ())}, storage="shared")
    buf.add(x=1.0)
    names.put(buf.shared_name)
    if cycle:
        buf.cycle = buf
    else:
        _KEPT.append(buf)
    # returns normally; the buffer is still referenced when the process ends


@pytest.mark.parametrize("cycle", [False, True], ids=["global", "cycle"])
def test_forked_worker_that_creates_a_buffer_unlinks_at_exit(cycle):
    """A fork-started worker that creates a shared buffer and returns normally (the buffer still
    referenced, from a global or a cycle) should leave no segment behind, as a spawned worker
    or a plain process does (test_creator_process_exit_unlinks)."""
    ctx = mp.get_context("fork")
    names = ctx.Queue()
    p = ctx.Process(target=_create_and_keep, args=(names, cycle))
    with reaped([p]):
        p.start()
        name = names.get(timeout=JOIN_S)
        p.join(timeout=JOIN_S)
    assert p.exitcode == 0
    assert name.startswith(f"reverie-{p.pid}-")
    assert removed(name), f"/dev/shm/{name} outlived its creator (a fork()ed worker that exited)"


# ---- fork()ed children of the creator ---------------------------------------------------


def _close_forked_copy(buf) -> None:
    buf.add(x=7.0)
    buf.close()  # the child's copy of the creator object: unmaps, must not unlink
    del buf
    gc.collect()


def test_forked_child_close_does_not_unlink():
    buf = rv.ReplayBuffer(16, spec={"x": ("float64", ())}, sampler=per_sampler(),
                          storage="shared")
    name = buf.shared_name
    p = mp.get_context("fork").Process(target=_close_forked_copy, args=(buf,))
    with reaped([p]):
        p.start()
        p.join(timeout=JOIN_S)
    assert p.exitcode == 0
    assert (SHM / name).exists()
    assert len(buf) == 1 and buf.sample(4)["x"].tolist() == [7.0] * 4
    buf.close()
    assert not (SHM / name).exists()


# ---- SIGKILL mid-write ------------------------------------------------------------------

VICTIM, LIVE, PARENT = 1, 2, 9
KILL_CAP = 48  # slots; rows of 16 KiB
KILL_BATCH = 16  # rows per extend: 256 KiB copied per write


def _ring_victim(buf, wid, started) -> None:
    """Extends big rows forever (cycling through prebuilt batches so nearly all of its time is
    spent inside extend) until it is killed."""
    batches = [rows(wid, i * KILL_BATCH, KILL_BATCH, 2048) for i in range(7)]
    buf.extend(**batches[-1])
    started.set()
    while True:
        for b in batches:
            buf.extend(**b)


def _live_writer(buf, wid, progress, stop) -> None:
    """Extends fresh rows until told to stop, then one more lap and a bit."""
    seq = 0
    while not stop.is_set():
        buf.extend(**rows(wid, seq, KILL_BATCH, 2048))
        seq += KILL_BATCH
        progress.value = seq
    for _ in range(KILL_CAP // KILL_BATCH + 2):
        buf.extend(**rows(wid, seq, KILL_BATCH, 2048))
        seq += KILL_BATCH
    progress.value = seq
    buf.close()


def start_and_kill(ctx, buf, rng: random.Random, max_delay_s: float) -> None:
    started = ctx.Event()
    p = ctx.Process(target=_ring_victim, args=(buf, VICTIM, started))
    with reaped([p]):
        p.start()
        assert started.wait(timeout=JOIN_S), "the victim never started writing"
        time.sleep(rng.uniform(0, max_delay_s))
        os.kill(p.pid, signal.SIGKILL)
        p.join(timeout=JOIN_S)  # reaped: its WRITING stamps now belong to a dead process
    assert p.exitcode == -signal.SIGKILL


def unsampled_slots(buf, draws: int = KILL_CAP * 48) -> Set[int]:
    """Samples every slot many times over (checking each row); returns the slots never
    returned: those a dead writer left half-written."""
    seen = np.zeros(buf.capacity, dtype=bool)
    for _ in range(draws // 256):
        b = buf.sample(256)
        check_rows(batch_np(b))
        seen[slot_of(b.indices.numpy(), buf.capacity)] = True
    return set(np.flatnonzero(~seen).tolist())


def torn_slots(buf) -> Set[int]:
    """Slots whose stored bytes (read raw, bypassing the commit stamps) are not one whole row."""
    cols = {k: v.numpy() for k, v in buf.columns.items()}
    code = (cols["wid"] * ENC + cols["seq"]).astype(np.float64)
    return set(np.flatnonzero(~(cols["obs"] == code[:, None]).all(axis=1)).tolist())


def check_tree_matches_leaves(buf, batch: int = 1 << 14) -> None:
    """Stratified draws follow the stored priorities: over every prefix of slots, the number
    of draws is within 2 of batch * (prefix mass / total mass). A tree whose inner sums
    disagree with its leaves (a half-applied update) breaks this."""
    leaves = buf.priorities()
    assert (leaves > 0).all(), f"committed rows without priority: {torch.nonzero(leaves == 0)}"
    keys = buf.sample(batch).indices
    counts = torch.bincount(slot_of(keys, buf.capacity), minlength=buf.capacity).double()
    expected = leaves / leaves.sum() * batch
    gap = (counts.cumsum(0) - expected.cumsum(0)).abs().max().item()
    assert gap <= 2.0, f"draws deviate from the priorities by {gap} items over a prefix"


@pytest.mark.parametrize("sampler", [rv.Uniform, per_sampler], ids=["uniform", "prioritized"])
def test_sigkill_mid_write(sampler):
    ctx = mp.get_context("fork")  # fast to start many times; spawn is covered above
    rng = random.Random(1234)
    buf = rv.ReplayBuffer(KILL_CAP, spec=BIG, sampler=sampler(), seed=5, storage="shared")
    buf.extend(**rows(PARENT, 0, KILL_CAP, 2048))  # every slot committed before the kills
    # (a) kills with no other writer: whatever the victim left half-written is never drawn
    hits, rounds, seen_torn = 0, 0, 0
    while rounds < 5 or (hits == 0 and rounds < 30):
        start_and_kill(ctx, buf, rng, max_delay_s=0.003)
        rounds += 1
        missing = unsampled_slots(buf)  # checks every sampled row
        torn = torn_slots(buf)
        assert torn <= missing, f"torn slots {sorted(torn - missing)} were sampled"
        hits += bool(missing)
        seen_torn += bool(torn)
        assert len(buf) == KILL_CAP
    assert hits >= 1, f"no kill of {rounds} landed inside a write"
    # (b) a live writer runs through two more kills and over every slot the dead left
    progress = ctx.Value("q", 0)
    stop = ctx.Event()
    live = ctx.Process(target=_live_writer, args=(buf, LIVE, progress, stop))
    with reaped([live]):
        live.start()
        deadline = time.monotonic() + JOIN_S
        while progress.value == 0:
            assert time.monotonic() < deadline and live.is_alive(), "the live writer never wrote"
            check_rows(batch_np(buf.sample(8)))
        for _ in range(2):
            start_and_kill(ctx, buf, rng, max_delay_s=0.003)
            check_rows(batch_np(buf.sample(64)))
        after_kills = progress.value
        while progress.value < after_kills + 3 * KILL_CAP:  # laps over every slot
            assert time.monotonic() < deadline and live.is_alive(), "the live writer is stuck"
            check_rows(batch_np(buf.sample(8)))
        stop.set()
        live.join(timeout=JOIN_S)
    assert live.exitcode == 0
    # (c) the live writer's last lap holds every slot, each sampleable and whole
    final = progress.value
    cols = buf.columns
    assert (cols["wid"] == LIVE).all()
    assert sorted(cols["seq"].tolist()) == list(range(final - KILL_CAP, final))
    assert torn_slots(buf) == set()
    assert unsampled_slots(buf) == set()
    b = buf.sample(256)
    ids = torch.from_numpy(fifo_insertion(b.indices.numpy(), buf.capacity))
    assert len(set((b.seq - ids).tolist())) == 1  # consecutive insertions, consecutive rows
    assert len(buf) == KILL_CAP
    if isinstance(buf.sampler, rv.Prioritized):
        check_tree_matches_leaves(buf)
        assert buf.update_priorities(b.indices, torch.rand(256, dtype=torch.float64) + 0.1) == 0
        check_tree_matches_leaves(buf)
    buf.close()


PRIO_CAP = 8192
PRIO_UPDATES = 400_000  # one update_priorities call: tens of ms, nearly all under the lock


def _prio_victim(buf, started) -> None:
    """Updates priorities in huge calls forever: nearly all its time is inside the writer
    lock, so a kill most likely lands there."""
    rng = np.random.default_rng(7)
    keys = rng.integers(0, PRIO_CAP, PRIO_UPDATES).astype(np.int64)
    calls = [(keys, rng.uniform(0.5, 2.0, PRIO_UPDATES)) for _ in range(2)]
    started.set()
    while True:
        for k, p in calls:
            buf.update_priorities(k, p)


def _prio_bystander(buf, progress, stop) -> None:
    """Takes the writer lock over and over (updates and adds) until told to stop."""
    rng = np.random.default_rng(8)
    i = 0
    while not stop.is_set():
        b = buf.sample(32)
        buf.update_priorities(b.indices, rng.uniform(0.5, 2.0, 32))
        buf.add(x=float(i))
        i += 1
        progress.value = i


def test_sigkill_inside_the_priority_lock():
    """Processes killed while holding the robust writer lock (inside update_priorities): the
    next locker repairs the tree; nobody deadlocks; sampling and updates stay right."""
    ctx = mp.get_context("fork")
    rng = random.Random(99)
    buf = rv.ReplayBuffer(PRIO_CAP, spec={"x": ("float32", ())}, sampler=per_sampler(), seed=6,
                          storage="shared")
    buf.extend(x=np.arange(PRIO_CAP, dtype=np.float32))
    progress = ctx.Value("q", 0)
    stop = ctx.Event()
    bystander = ctx.Process(target=_prio_bystander, args=(buf, progress, stop))
    with reaped([bystander]):
        bystander.start()
        for r in range(5):
            started = ctx.Event()
            victim = ctx.Process(target=_prio_victim, args=(buf, started))
            with reaped([victim]):
                victim.start()
                assert started.wait(timeout=JOIN_S)
                time.sleep(rng.uniform(0.005, 0.06))
                os.kill(victim.pid, signal.SIGKILL)
                victim.join(timeout=JOIN_S)
            assert victim.exitcode == -signal.SIGKILL
            # sampling works right after the kill (samplers take no lock)
            assert len(buf.sample(64)["x"]) == 64
            # the next locker (alternately this process and the bystander) repairs
            if r % 2 == 0:
                b = buf.sample(16)
                buf.update_priorities(b.indices, np.full(16, 1.5))
            seen = progress.value
            deadline = time.monotonic() + JOIN_S
            while progress.value < seen + 3:
                assert time.monotonic() < deadline and bystander.is_alive(), "bystander blocked"
                time.sleep(0.002)
        stop.set()
        bystander.join(timeout=JOIN_S)
    assert bystander.exitcode == 0
    assert len(buf) == PRIO_CAP
    check_tree_matches_leaves(buf)
    keys = buf.sample(1024).indices
    assert buf.update_priorities(keys, torch.rand(1024, dtype=torch.float64) + 0.1) == 0
    buf.add(x=-1.0)
    check_tree_matches_leaves(buf)
    buf.close()
