"""Issue 3, item 5: the rate limiter (min_size_to_sample, samples per insert with a
tolerance, blocking with timeouts, live changes, shared buffers).

Notation as in python/reverie/_limiter.py: I items inserted, S items sampled, spi the ratio,
D = I * spi - S, target D0 = spi * min_size_to_sample. A sample may start iff
I >= min_size and D >= D0 - tol; an insert iff I < min_size or D <= D0 + tol. Each check is
made before its call, so one call may overshoot the band by its own size.
"""

from __future__ import annotations

import math
import os
import pickle
import signal
import threading
import time

import numpy as np
import pytest

import reverie as rv

SPEC = {"x": rv.Field("int64"), "y": rv.Field("float32", (3,))}


def make(limiter: rv.RateLimiter, capacity: int = 100_000, sampler=None, **kw) -> rv.ReplayBuffer:
    return rv.ReplayBuffer(capacity, spec=SPEC, sampler=sampler, seed=0, rate_limiter=limiter, **kw)


def items(first: int, n: int) -> dict:
    x = np.arange(first, first + n, dtype=np.int64)
    return {"x": x, "y": np.repeat(x.astype(np.float32)[:, None], 3, axis=1)}


def counts(buf: rv.ReplayBuffer) -> tuple:
    """Everything a refused call must leave as it was."""
    c = buf.stats()
    return (len(buf), buf.rate_limiter.stats(), c.get("table.written"), c.get("table.sample_calls"),
            c.get("limiter.sampled"))


# ---- construction ------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(min_size_to_sample=0), ValueError, "min_size_to_sample must be >= 1, got 0"),
    (dict(min_size_to_sample=-5), ValueError, "min_size_to_sample must be >= 1"),
    (dict(min_size_to_sample=2.0), TypeError, "min_size_to_sample must be an int, got float"),
    (dict(min_size_to_sample=True), TypeError, "min_size_to_sample must be an int, got bool"),
    (dict(samples_per_insert=-1.0), ValueError, "samples_per_insert must be finite and >= 0"),
    (dict(samples_per_insert=math.inf), ValueError, "samples_per_insert must be finite"),
    (dict(samples_per_insert="2"), TypeError, "samples_per_insert must be a number, got str"),
    (dict(tolerance=math.nan), ValueError, "tolerance must be finite and >= 0, got nan"),
    (dict(tolerance=-0.5), ValueError, "tolerance must be finite and >= 0"),
    (dict(timeout=-1), ValueError, "timeout must be finite and >= 0, got -1"),
    (dict(timeout=math.nan), ValueError, "timeout must be finite"),
    (dict(timeout="1s"), TypeError, "timeout must be a number, got str"),
])
def test_bad_settings_are_refused(kwargs, error, message):
    with pytest.raises(error, match=message):
        rv.RateLimiter(**kwargs)


@pytest.mark.parametrize("bad", [3, {"min_size_to_sample": 10}, rv.Uniform()])
def test_rate_limiter_must_be_a_rate_limiter(bad):
    with pytest.raises(TypeError, match="rate_limiter must be a RateLimiter, got "):
        rv.ReplayBuffer(10, spec=SPEC, rate_limiter=bad)


def test_defaults_and_bad_live_changes():
    assert rv.RateLimiter().config() == {"min_size_to_sample": 1, "samples_per_insert": None,
                                         "tolerance": 2.0, "timeout": None}
    assert rv.RateLimiter(samples_per_insert=8).tolerance == 16.0  # 2 * max(1, spi)
    assert rv.RateLimiter(samples_per_insert=0.25).tolerance == 2.0
    buf = make(rv.RateLimiter(3, samples_per_insert=2.0, tolerance=5.0, timeout=1.5))
    before = buf.rate_limiter.config()
    assert before == {"min_size_to_sample": 3, "samples_per_insert": 2.0, "tolerance": 5.0,
                      "timeout": 1.5}
    lim = buf.rate_limiter
    for name, value, error in [("samples_per_insert", -1.0, ValueError),
                               ("samples_per_insert", math.nan, ValueError),
                               ("tolerance", math.inf, ValueError),
                               ("timeout", -0.1, ValueError),
                               ("tolerance", "big", TypeError)]:
        with pytest.raises(error, match=name):
            setattr(lim, name, value)
        assert lim.config() == before, f"a refused {name}={value!r} changed the settings"
    lim.timeout = None
    assert lim.timeout is None and lim.config()["timeout"] is None


# ---- min_size_to_sample --------------------------------------------------------------------


@pytest.mark.parametrize("sampler", [rv.Uniform(), rv.Prioritized()],
                         ids=["uniform", "prioritized"])
def test_min_size_fail_fast(sampler):
    buf = make(rv.RateLimiter(min_size_to_sample=10, timeout=0), sampler=sampler)
    for i in range(10):
        assert not buf.rate_limiter.can_sample(1)
        before = counts(buf)
        with pytest.raises(TimeoutError, match=r"min_size_to_sample.* and %d are so far" % i):
            buf.sample(4)
        assert counts(buf) == before, "a refused sample changed the buffer"
        buf.add(**{k: v[0] for k, v in items(i, 1).items()})
    assert buf.rate_limiter.can_sample(4)
    b = buf.sample(4)
    assert ((b.indices >= 0) & (b.indices < 10)).all()
    assert (b.x == b.indices).all()
    assert buf.rate_limiter.stats() == {"inserted": 10, "sampled": 4, "ratio": 0.4}


def test_blocked_sample_times_out():
    timeout = 0.4
    buf = make(rv.RateLimiter(min_size_to_sample=5, timeout=timeout))
    buf.extend(**items(0, 2))
    before = counts(buf)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match=r"waited .* s \(the rate limiter's timeout\).*"
                                           r"sampling starts once 5 items are inserted"):
        buf.sample(8)
    elapsed = time.monotonic() - t0
    assert timeout * 0.9 <= elapsed < timeout + 2.0
    assert counts(buf) == before


def test_blocked_insert_and_ratio_blocked_sample_time_out():
    timeout = 0.3
    buf = make(rv.RateLimiter(min_size_to_sample=4, samples_per_insert=1.0, tolerance=2.0,
                              timeout=timeout))
    # inserts are free until min_size, then allowed while D = I - S <= D0 + tol = 6
    buf.extend(**items(0, 4))
    buf.extend(**items(4, 3))  # D = 7 after this call: it overshot
    before = counts(buf)
    assert not buf.rate_limiter.can_insert()
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match=r"an insert of 2 items waited .*samples_per_insert=1 with "
                                           r"tolerance 2: 0 items sampled for 7 inserted"):
        buf.extend(**items(7, 2))
    assert timeout * 0.9 <= time.monotonic() - t0 < timeout + 2.0
    assert counts(buf) == before, "a refused insert wrote something"
    # samples are allowed while D >= D0 - tol = 2
    buf.sample(5)  # D = 2
    buf.sample(5)  # D = -3: overshot
    before = counts(buf)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match=r"a sample of 1 item waited .* 10 items sampled for 7 "
                                           r"inserted \(a sample of 1 needs more inserts"):
        buf.sample(1)
    assert timeout * 0.9 <= time.monotonic() - t0 < timeout + 2.0
    assert counts(buf) == before
    buf.extend(**items(7, 5))  # D = 2
    buf.sample(1)


def test_sample_waits_for_the_first_add_when_the_spec_is_inferred():
    buf = rv.ReplayBuffer(100, seed=0, rate_limiter=rv.RateLimiter(min_size_to_sample=2,
                                                                   timeout=10.0))
    got: list = []

    def learner():
        try:
            got.append(buf.sample(4).x)
        except BaseException as e:  # noqa: B036 - checked below
            got.append(e)

    t = threading.Thread(target=learner, daemon=True)
    t.start()
    time.sleep(0.2)
    buf.add(x=1)
    buf.add(x=2)
    t.join(10)
    assert not t.is_alive()
    if isinstance(got[0], BaseException):
        raise got[0]
    assert set(got[0].tolist()) <= {1, 2}


# ---- ratio control -----------------------------------------------------------------------


@pytest.mark.parametrize("spi, tolerance, batch, n_insert, min_size", [
    (2.0, 64.0, 32, 8, 64),
    (0.25, 2.0, 32, 16, 10),   # a sample of 32 for every 128 inserts
    (8.0, 0.0, 16, 1, 1),      # zero tolerance: two inserts of 1, a sample of 16, ...
    (1.0, None, 64, 64, 200),  # the default tolerance (2) is much smaller than the batch
])
def test_ratio_single_thread_fail_fast(spi, tolerance, batch, n_insert, min_size):
    """A loop that inserts when can_insert() and samples when can_sample(): one of them is
    always allowed, can_* agree with what the calls do, and the ratio stays in its band."""
    lim = rv.RateLimiter(min_size, samples_per_insert=spi, tolerance=tolerance, timeout=0)
    buf = make(lim, capacity=1000)
    lim = buf.rate_limiter
    tol = lim.tolerance
    # The tolerance plus one call's overshoot: an insert of n pushes D up by spi * n, a
    # sample of B pulls it down by B.
    above, below = tol + spi * n_insert, tol + batch
    band = max(above, below)
    d0 = spi * min_size
    rng = np.random.default_rng(0)
    inserted = sampled = 0
    worst = 0.0  # the largest |D - D0| seen
    while inserted < 20_000:
        can_i, can_s = lim.can_insert(), lim.can_sample(batch)
        assert can_i or can_s, f"stuck at I={inserted} S={sampled}"
        if rng.random() < 0.5:  # try one at random first: no preference for either side
            order = ("insert", "sample")
        else:
            order = ("sample", "insert")
        for op in order:
            if op == "insert":
                if can_i:
                    buf.extend(**items(inserted, n_insert))
                    inserted += n_insert
                    break
                before = counts(buf)
                with pytest.raises(TimeoutError):
                    buf.extend(**items(inserted, n_insert))
                assert counts(buf) == before
            else:
                if can_s:
                    buf.sample(batch)
                    sampled += batch
                    break
                before = counts(buf)
                with pytest.raises(TimeoutError):
                    buf.sample(batch)
                assert counts(buf) == before
        if inserted >= min_size:
            d = inserted * spi - sampled
            assert d0 - below <= d <= d0 + above, f"D = {d}, D0 = {d0} at I={inserted} S={sampled}"
            worst = max(worst, abs(d - d0))
        else:
            assert sampled == 0
    stats = lim.stats()
    assert (stats["inserted"], stats["sampled"]) == (inserted, sampled)
    # S / I = spi - D / I, and |D| <= D0 + worst <= D0 + band
    assert worst <= band
    assert stats["ratio"] == pytest.approx(spi, abs=(d0 + worst) / inserted + 1e-12)
    assert abs(stats["ratio"] - spi) <= 0.02 * spi


def test_ratio_blocking_threads():
    """One inserter and one sampler thread, both blocking: they advance together, and
    neither waits for ever."""
    spi, tol, batch, n_insert, min_size, total = 2.0, 64.0, 32, 16, 100, 24_000
    buf = make(rv.RateLimiter(min_size, samples_per_insert=spi, tolerance=tol, timeout=20.0),
               capacity=5000)
    lim = buf.rate_limiter
    d0 = spi * min_size
    # The sampler stops one call short of what the last insert allows, so it never blocks
    # at the end; and what it has sampled by then always lets the last insert in.
    sample_calls = math.floor((spi * total - d0 + tol) / batch)
    assert 2 * tol + spi * n_insert >= 2 * batch
    errors: list = []
    seen: list = []  # (I, S) observed after calls, from both threads

    def inserter():
        try:
            for first in range(0, total, n_insert):
                buf.extend(**items(first, n_insert))
                s = lim.stats()
                seen.append((s["inserted"], s["sampled"]))
        except BaseException as e:  # noqa: B036 - re-raised in the main thread
            errors.append(e)

    def sampler():
        try:
            for _ in range(sample_calls):
                b = buf.sample(batch)
                assert (b.x.view(-1, 1).float() == b.y).all()
                s = lim.stats()
                seen.append((s["inserted"], s["sampled"]))
        except BaseException as e:  # noqa: B036 - re-raised in the main thread
            errors.append(e)

    threads = [threading.Thread(target=sampler, daemon=True),
               threading.Thread(target=inserter, daemon=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "deadlock: a thread did not finish"
    if errors:
        raise errors[0]
    obs = np.array(seen, dtype=np.float64)
    ins, smp = obs[:, 0], obs[:, 1]
    # The band plus one call's overshoot, as single-threaded. Each thread's observation is
    # exact for its own counter; stats() reads I (committed) before S, and the other thread
    # can only move its counter within the limits, so the bounds hold at every observation.
    d = (ins * spi - smp)[ins >= min_size]
    assert d.max() <= d0 + tol + spi * n_insert, f"D reached {d.max()}, D0 = {d0}"
    assert d.min() >= d0 - tol - batch, f"D fell to {d.min()}, D0 = {d0}"
    # progress together: by half time a fair share was sampled already
    half = ins <= total / 2
    assert half.sum() > 10 and smp[half].max() >= spi * ins[half].max() - d0 - tol - batch
    stats = lim.stats()
    assert stats["inserted"] == total and stats["sampled"] == sample_calls * batch
    assert abs(stats["ratio"] - spi) <= 0.05 * spi


def drive_fail_fast(buf: rv.ReplayBuffer, until_inserted: int, batch: int, n_insert: int) -> None:
    """Insert or sample, whichever is allowed (sampling first), until `until_inserted`."""
    lim = buf.rate_limiter
    while lim.stats()["inserted"] < until_inserted:
        if lim.can_sample(batch):
            buf.sample(batch)
        elif lim.can_insert():
            first = lim.stats()["inserted"]
            buf.extend(**items(first, n_insert))
        else:
            raise AssertionError(f"neither sample nor insert allowed: {lim.stats()}")


@pytest.mark.parametrize("old, new", [(1.0, 4.0), (4.0, 1.0)])
def test_changed_ratio_applies_from_the_change_on(old, new):
    batch, n_insert = 32, 8
    buf = make(rv.RateLimiter(10, samples_per_insert=old, tolerance=64, timeout=0), capacity=1000)
    lim = buf.rate_limiter
    drive_fail_fast(buf, 4000, batch, n_insert)
    first = lim.stats()
    assert first["ratio"] == pytest.approx(old, rel=0.05)
    lim.samples_per_insert = new
    assert buf.rate_limiter.samples_per_insert == new
    drive_fail_fast(buf, 8000, batch, n_insert)
    last = lim.stats()
    ratio = (last["sampled"] - first["sampled"]) / (last["inserted"] - first["inserted"])
    assert ratio == pytest.approx(new, rel=0.05)


def test_raising_the_ratio_while_threads_run():
    """Blocking inserter and sampler threads; half way the inserter raises
    samples_per_insert from 1 to 4. Nobody deadlocks, the first half ran at 1, and from the
    change on the learner samples at least 4 items per insert. (That it should be about 4,
    not more, is test_changed_ratio_applies_from_the_change_on.)"""
    spi, new_spi, tol, batch, n_insert, min_size, total = 1.0, 4.0, 64.0, 32, 16, 100, 16_000
    buf = make(rv.RateLimiter(min_size, samples_per_insert=spi, tolerance=tol, timeout=20.0),
               capacity=4000)
    lim = buf.rate_limiter
    done = threading.Event()
    errors: list = []
    mid: dict = {}

    def inserter():
        try:
            for first in range(0, total, n_insert):
                if first == total // 2:  # half way: the "critic recovered", replay more
                    mid.update(lim.stats())
                    lim.samples_per_insert = new_spi
                buf.extend(**items(first, n_insert))
        except BaseException as e:  # noqa: B036 - re-raised in the main thread
            errors.append(e)

    def sampler():
        try:
            while not done.is_set():
                buf.sample(batch)
        except BaseException as e:  # noqa: B036 - re-raised in the main thread
            errors.append(e)

    threads = [threading.Thread(target=inserter, daemon=True),
               threading.Thread(target=sampler, daemon=True)]
    for t in threads:
        t.start()
    threads[0].join(60)
    end = lim.stats()
    done.set()
    lim.tolerance = 1e9  # lets the sampler's last call through (a settings change wakes it)
    threads[1].join(30)
    assert not any(t.is_alive() for t in threads), "deadlock: a thread did not finish"
    if errors:
        raise errors[0]
    assert end["inserted"] == total and mid["inserted"] == total // 2
    assert lim.samples_per_insert == new_spi
    # before the change: within the band of spi = 1 (plus slack for the reads of stats())
    d_mid = mid["inserted"] * spi - mid["sampled"]
    assert abs(d_mid - spi * min_size) <= tol + 2 * batch + 2 * n_insert
    # after: the last insert needed D <= D0 + tol at the new ratio
    after = (end["sampled"] - mid["sampled"]) / (end["inserted"] - mid["inserted"])
    assert after >= new_spi * 0.95, f"sampled {after:.2f} per insert after the change"


def start_learner(buf, batch):
    """A thread that samples `batch` once; `done` gets the time it returned, or its error."""
    done: list = []

    def learner():
        try:
            buf.sample(batch)
            done.append(time.monotonic())
        except BaseException as e:  # noqa: B036 - checked by the caller
            done.append(e)

    t = threading.Thread(target=learner, daemon=True)
    t.start()
    return t, done


def test_blocked_sampler_wakes_when_the_tolerance_changes():
    """A sampler blocked by the ratio returns soon after a change allows it, with no insert
    in between (the change itself wakes it)."""
    buf = make(rv.RateLimiter(1, samples_per_insert=1.0, tolerance=0.0, timeout=20.0))
    buf.extend(**items(0, 10))
    buf.sample(10)  # D = 0 < D0 - tol = 1: blocked
    lim = buf.rate_limiter
    assert not lim.can_sample(1)
    t, done = start_learner(buf, 5)
    time.sleep(0.3)
    assert t.is_alive() and not done, "the sample did not wait"
    assert lim.stats()["sampled"] == 10
    changed = time.monotonic()
    lim.tolerance = 5.0  # D = 0 >= 1 - 5
    t.join(10)
    assert not t.is_alive()
    assert not isinstance(done[0], BaseException), repr(done[0])
    assert done[0] - changed < 1.0, f"woke {done[0] - changed:.2f} s after the change"
    assert lim.stats() == {"inserted": 10, "sampled": 15, "ratio": 1.5}


def test_raising_the_ratio_reprices_only_new_inserts():
    """Raising samples_per_insert keeps the current error D - D0: a blocked sampler stays
    blocked (no burst of 3 * I samples for the history), and one new insert, now worth 4
    samples, lets it through."""
    buf = make(rv.RateLimiter(1, samples_per_insert=1.0, tolerance=0.0, timeout=20.0))
    buf.extend(**items(0, 10))
    buf.sample(10)  # D - D0 = -1 < -tol: blocked
    lim = buf.rate_limiter
    t, done = start_learner(buf, 5)
    time.sleep(0.2)
    lim.samples_per_insert = 4.0
    time.sleep(0.3)
    assert t.is_alive() and not done, "raising the ratio re-priced the history"
    assert not lim.can_sample(1)
    added = time.monotonic()
    buf.extend(**items(10, 1))  # D - D0 = -1 + 4 = 3 >= 0
    t.join(10)
    assert not t.is_alive()
    assert not isinstance(done[0], BaseException), repr(done[0])
    assert done[0] - added < 1.0
    assert lim.stats() == {"inserted": 11, "sampled": 15, "ratio": 15 / 11}
    # Lowering it back keeps the error too: 3 - 5 = -2 after that sample, so two inserts at
    # the old ratio of 1 are needed before the next.
    lim.samples_per_insert = 1.0
    assert not lim.can_sample(1)
    buf.extend(**items(11, 1))
    assert not lim.can_sample(1)
    buf.extend(**items(12, 1))
    assert lim.can_sample(1)


# ---- waiting: the GIL, Ctrl-C ---------------------------------------------------------------


@pytest.mark.parametrize("what", ["sample", "insert"])
def test_blocked_call_releases_the_gil(what):
    timeout = 0.5
    buf = make(rv.RateLimiter(4, samples_per_insert=1.0, tolerance=0.0, timeout=timeout))
    if what == "sample":
        call = lambda: buf.sample(1)  # noqa: E731 - min_size not reached
    else:
        buf.extend(**items(0, 8))  # D = 8 > D0 + tol = 4
        call = lambda: buf.extend(**items(8, 1))  # noqa: E731
    stop = threading.Event()
    ticks = [0]

    def beat():
        while not stop.is_set():
            ticks[0] += 1

    t = threading.Thread(target=beat, daemon=True)
    t.start()
    try:
        time.sleep(0.01)
        start = ticks[0]
        with pytest.raises(TimeoutError):
            call()
        during = ticks[0] - start
    finally:
        stop.set()
        t.join()
    # With the GIL held for the 0.5 s wait the heartbeat would get at most a tick or two
    # before the call. A free Python loop does millions per second.
    assert during > 10_000, f"only {during} heartbeat ticks during a {timeout} s wait"


@pytest.mark.parametrize("what", ["sample", "insert"])
def test_ctrl_c_interrupts_a_blocked_call(what):
    buf = make(rv.RateLimiter(4, samples_per_insert=1.0, tolerance=0.0, timeout=None))
    if what == "sample":
        call = lambda: buf.sample(1)  # noqa: E731
        unblock = lambda: buf.extend(**items(100, 8))  # noqa: E731
    else:
        buf.extend(**items(0, 8))
        call = lambda: buf.extend(**items(8, 1))  # noqa: E731
        unblock = lambda: buf.sample(8)  # noqa: E731
    before = counts(buf)
    fired: list = []

    def interrupt():
        fired.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGINT)

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(0.3, interrupt)
    # Should the interrupt not work, let the call through after 8 s instead of hanging.
    fallback = threading.Timer(8.0, unblock)
    try:
        timer.start()
        fallback.start()
        with pytest.raises(KeyboardInterrupt):
            call()
        returned = time.monotonic()
    finally:
        fallback.cancel()
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    assert returned - fired[0] < 1.0, f"interrupted {returned - fired[0]:.2f} s after SIGINT"
    assert counts(buf) == before, "an interrupted call changed the buffer"
    # still usable: the wait is over and nothing is stuck
    unblock()
    call()


# ---- state and processes ---------------------------------------------------------------------


def test_state_dict_keeps_the_limiter_and_the_sampled_count():
    lim = rv.RateLimiter(5, samples_per_insert=2.0, tolerance=7.0, timeout=0)
    a = make(lim, capacity=64)
    a.extend(**items(0, 20))
    for _ in range(3):
        a.sample(8)
    state = a.state_dict()
    assert state["config"]["rate_limiter"] == {"min_size_to_sample": 5, "samples_per_insert": 2.0,
                                               "tolerance": 7.0, "timeout": 0.0}
    assert state["scalars"]["limiter.sampled"] == 24
    assert state["scalars"]["table.written"] == 20

    b = make(rv.RateLimiter(5, samples_per_insert=2.0, tolerance=7.0, timeout=0), capacity=64)
    b.load_state_dict(state)
    assert b.rate_limiter.stats() == {"inserted": 20, "sampled": 24, "ratio": 1.2}
    assert b.state_dict()["scalars"]["limiter.sampled"] == 24
    # The restored count drives the limiter as it drove the original: D = 40 - 24 = 16 and
    # samples are allowed while D >= D0 - tol = 3, so two more samples of 8, then none.
    for buf in (a, b):
        buf.sample(8)
        buf.sample(8)
        assert not buf.rate_limiter.can_sample(8)
        with pytest.raises(TimeoutError, match="40 items sampled for 20 inserted"):
            buf.sample(8)
    # without a limiter the sampled count is still kept and restored
    c = rv.ReplayBuffer(64, spec=SPEC, seed=0)
    c.load_state_dict(state)
    assert c.rate_limiter is None
    assert c.state_dict()["scalars"]["limiter.sampled"] == 24
    assert c.state_dict()["config"]["rate_limiter"] is None


def test_shared_buffer_limiter_is_seen_by_an_attached_copy():
    lim = rv.RateLimiter(4, samples_per_insert=2.0, tolerance=8.0, timeout=0)
    owner = make(lim, capacity=256, storage="shared")
    name = owner.shared_name
    assert name and os.path.exists(f"/dev/shm/{name}")
    other = pickle.loads(pickle.dumps(owner))
    try:
        assert other.shared_name == name
        assert other.rate_limiter is not None
        assert other.rate_limiter.config() == owner.rate_limiter.config()
        # settings changed on either side are seen on the other
        other.rate_limiter.samples_per_insert = 3.0
        assert owner.rate_limiter.samples_per_insert == 3.0
        owner.rate_limiter.tolerance = 12.0
        assert other.rate_limiter.tolerance == 12.0
        owner.rate_limiter.timeout = 5.0
        assert other.rate_limiter.config() == {"min_size_to_sample": 4, "samples_per_insert": 3.0,
                                               "tolerance": 12.0, "timeout": 5.0}
        # so are the counts: inserts through one handle, samples through the other
        other.rate_limiter.timeout = 0.0
        with pytest.raises(TimeoutError, match="min_size_to_sample"):
            other.sample(1)
        owner.extend(**items(0, 4))
        assert other.rate_limiter.can_sample(1)
        other.sample(10)
        assert owner.rate_limiter.stats() == {"inserted": 4, "sampled": 10, "ratio": 2.5}
        # a sampler blocked on one handle is woken by an insert through the other. Now
        # D = 4 * 3 - 10 = 2 and samples need D >= D0 - tol = 12 - 12 = 0: one more of 3
        # leaves D = -1.
        other.sample(3)
        assert not owner.rate_limiter.can_sample(1)
        other.rate_limiter.timeout = 10.0
        done: list = []
        t = threading.Thread(target=lambda: done.append(other.sample(2)), daemon=True)
        t.start()
        time.sleep(0.2)
        assert t.is_alive()
        owner.add(x=4, y=np.zeros(3, np.float32))
        t.join(5)
        assert not t.is_alive() and len(done) == 1
        assert owner.rate_limiter.stats()["sampled"] == 15
    finally:
        other.close()
        assert os.path.exists(f"/dev/shm/{name}"), "a non-owner's close removed the segment"
        owner.close()
    assert not os.path.exists(f"/dev/shm/{name}")
