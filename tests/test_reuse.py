"""Reuse schedules on the item metadata: a minimum interval between draws of an item (in sample
calls or in items written; also across sampler threads), a bound on staleness in versions,
and recency weighting P(i) ~ (age + 1)^-a (KS and chi-square against the power law, the
exponent changed live), each composed with partitions, persistence and refusals."""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Dict, List

import numpy as np
import pytest
import torch
from scipy import stats

import reverie as rv

SPEC = {"x": ("int64", ())}


def test_no_item_is_drawn_twice_within_the_interval_in_calls():
    buf = rv.ReplayBuffer(200, SPEC, min_interval=4, seed=1)
    buf.extend(x=np.arange(200))
    last: Dict[int, int] = {}
    counts = np.zeros(200)
    for call in range(300):
        drawn = buf.sample(30)["x"].tolist()
        assert len(set(drawn)) == 30  # never twice in one batch
        for x in drawn:
            assert call - last.get(x, -10) >= 4
            last[x] = call
            counts[x] += 1
    # Uniform over the items allowed: no item is favoured (chi-square against equal counts).
    assert stats.chisquare(counts).pvalue > 1e-3


def test_the_interval_holds_across_sampler_threads():
    """Two threads sample at once; each item's successive draws (the previous draw's call,
    as the metadata reports it) are at least K calls apart."""
    buf = rv.ReplayBuffer(400, SPEC, min_interval=5, metadata=True, seed=2)
    buf.extend(x=np.arange(400))
    seen: Dict[int, List[int]] = defaultdict(list)
    lock = threading.Lock()

    def run() -> None:
        done = 0
        while done < 300:
            try:
                b = buf.sample(16)
            except ValueError as e:
                # A call numbered below every item's last claim finds nothing it may take (the
                # gate is monotone in the call number): a thread descheduled while the other ran
                # 30+ calls (a loaded machine) gets this documented error and samples again.
                assert "reuse rules allow" in str(e)
                continue
            done += 1
            with lock:
                for x, prev in zip(b["x"].tolist(), b.meta["last_sampled"].tolist()):
                    if prev >= 0:
                        seen[x].append(prev)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Each reported call is a real draw of the item; racing draws may report the same one
    # (the metadata keeps the largest call), so the distinct calls are compared.
    gaps = [b - a for calls in seen.values() for a, b in zip(sorted(set(calls)), sorted(set(calls))[1:])]
    assert gaps and min(gaps) >= 5


def test_the_interval_in_items_written():
    buf = rv.ReplayBuffer(1000, SPEC, min_interval=50, interval_unit="items", seed=3)
    buf.extend(x=np.arange(100))
    drawn_at: Dict[int, int] = {}
    written = 100
    for step in range(200):
        for x in buf.sample(8)["x"].tolist():
            assert written - drawn_at.get(x, -10**9) >= 50
            drawn_at[x] = written
        if step % 2:
            buf.extend(x=np.arange(written, written + 10))
            written += 10
    # With no writes, an item drawn once may not come back: the call runs out of items.
    still = rv.ReplayBuffer(10, SPEC, min_interval=1, interval_unit="items", seed=0)
    still.extend(x=np.arange(10))
    still.sample(10)
    with pytest.raises(ValueError, match="reuse rules"):
        still.sample(1)


def test_nothing_older_than_the_staleness_bound_is_drawn():
    buf = rv.ReplayBuffer(500, SPEC, max_staleness=2, seed=4)
    for v in range(10):
        buf.version = v
        buf.extend(x=np.full(50, v))
        got = set(buf.sample(64)["x"].tolist())
        assert got <= set(range(max(0, v - 2), v + 1))
        assert len(got) == min(3, v + 1)
    buf.version = 20  # every item too stale now
    with pytest.raises(ValueError, match="max_staleness 2 versions"):
        buf.sample(4)


def discrete_power_law(n: int, a: float) -> np.ndarray:
    p = (np.arange(n) + 1.0) ** -a
    return p / p.sum()


@pytest.mark.parametrize("a", [0.5, 1.0, 2.0])
def test_sampled_ages_follow_the_power_law(a):
    n = 2000
    buf = rv.ReplayBuffer(n, SPEC, sampler=rv.Recency(exponent=a), seed=5)
    buf.extend(x=np.arange(n))
    ages = np.concatenate([n - 1 - buf.sample(500)["x"].numpy() for _ in range(80)])
    p = discrete_power_law(n, a)
    cdf = np.cumsum(p)
    # KS on the ages spread uniformly inside their unit cells (age + U[0, 1)) against the
    # law's piecewise-linear CDF, which is exact for the spread ages; and chi-square over the
    # first 20 ages and the rest pooled.
    spread = ages + np.random.default_rng(0).random(len(ages))
    below = np.r_[0.0, cdf]

    def law(x: np.ndarray) -> np.ndarray:
        k = np.clip(np.floor(x).astype(int), 0, n - 1)
        return below[k] + p[k] * np.clip(x - k, 0.0, 1.0)

    assert stats.kstest(spread, law).pvalue > 1e-3
    observed = np.bincount(ages, minlength=n)
    obs = np.r_[observed[:20], observed[20:].sum()]
    exp = np.r_[p[:20], p[20:].sum()] * len(ages)
    assert stats.chisquare(obs, exp).pvalue > 1e-3


def test_the_exponent_changes_live_and_survives_a_checkpoint(tmp_path):
    buf = rv.ReplayBuffer(1000, SPEC, sampler=rv.Recency(), seed=6)
    buf.extend(x=np.arange(1000))
    steep = np.mean(999 - buf.sample(4000)["x"].numpy())
    buf.sampler.exponent = 0.0  # uniform
    flat = np.mean(999 - buf.sample(4000)["x"].numpy())
    assert steep < 200 and 450 < flat < 550
    buf.sampler.exponent = 1.5
    buf.save(tmp_path / "r.rvr")
    again = rv.ReplayBuffer.load(tmp_path / "r.rvr")
    assert again.sampler.exponent == 1.5
    assert torch.equal(again.sample(64).indices, buf.sample(64).indices)


def test_recency_on_a_ring_that_wrapped_and_with_removals():
    buf = rv.ReplayBuffer(100, SPEC, sampler=rv.Recency(exponent=1.0), max_times_sampled=1, seed=7)
    buf.extend(x=np.arange(350))  # the ring holds 250..349
    drawn = buf.sample(60)["x"].tolist()
    assert len(set(drawn)) == 60 and min(drawn) >= 250  # consumed once, only held items
    assert len(buf) == 40


def test_rules_compose_with_partitions_and_state():
    buf = rv.PartitionedBuffer(100, {"task": ("int64", ()), "x": ("int64", ())}, key="task", min_interval=3,
                               max_staleness=0, seed=8)
    buf.version = 1
    buf.extend(task=np.arange(60) % 2, x=np.arange(60))
    last: Dict[int, int] = {}
    for call in range(20):
        b = buf.sample(8, mixture={0: 1.0, 1: 1.0})
        assert (b.partition == 0).sum() == 4
        for x in b["x"].tolist():
            assert call - last.get(x, -10) >= 3
            last[x] = call
    twin = rv.PartitionedBuffer(100, {"task": ("int64", ()), "x": ("int64", ())}, key="task", min_interval=3,
                                max_staleness=0)
    twin.load_state_dict(buf.state_dict())
    assert torch.equal(twin.sample(8).indices, buf.sample(8).indices)  # gates restored as well
    buf.version = 2
    with pytest.raises(ValueError, match="reuse rules"):
        buf.sample(2)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(min_interval=0), ValueError, "min_interval"),
    (dict(min_interval=2, interval_unit="steps"), ValueError, "interval_unit"),
    (dict(interval_unit="items"), ValueError, "min_interval"),
    (dict(max_staleness=-1), ValueError, "max_staleness"),
    (dict(sampler=rv.Recency(), writer=rv.Reservoir()), ValueError, "needs the FIFO writer"),
])
def test_bad_arguments_say_what_is_wrong(kwargs, error, match):
    with pytest.raises(error, match=match):
        rv.ReplayBuffer(10, SPEC, **kwargs)


def test_refused_parts():
    with pytest.raises(ValueError):
        rv.Recency(exponent=-1)
    with pytest.raises(ValueError, match="episode"):
        rv.EpisodeBuffer(10, num_envs=2, obs_fields=("obs",), sampler=rv.Recency(),
                         spec={"obs": ("float32", (2,)), "reward": ("float32", ()),
                               "terminated": ("bool", ()), "truncated": ("bool", ())})
