"""PartitionedBuffer: per-batch counts (exact: largest remainder every call; stochastic:
chi-square against the multinomial), weight changes at the next call (other threads and
processes), weight 0 and empty partitions, batch.partition, partitions declared and made on
first use with their bound, different parts per partition, the importance-weight rule, keys
of several partitions in one get / update call, determinism, checkpoints and state_dict,
shared memory with a second process, the rate limiter, and interleavings against a
plain-Python model (hypothesis)."""

from __future__ import annotations

import math
import multiprocessing as mp
import threading
from typing import Dict, List

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

import reverie as rv

SPEC = {"task": ("int64", ()), "id": ("int64", ()), "x": ("float32", (3,))}


def rows(tasks, first: int = 0) -> Dict[str, np.ndarray]:
    tasks = np.asarray(tasks, np.int64)
    i = np.arange(first, first + len(tasks))
    return {"task": tasks, "id": i.astype(np.int64), "x": np.stack([i, -i, tasks], 1).astype(np.float32)}


def largest_remainder(weights: List[float], batch: int) -> List[int]:
    total = sum(weights)
    share = [batch * w / total for w in weights]
    counts = [math.floor(s) for s in share]
    order = sorted(range(len(weights)), key=lambda p: -(share[p] - counts[p]) if weights[p] > 0 else 1.0)
    k = 0
    while sum(counts) < batch:
        p = order[k % len(order)]
        if weights[p] > 0:
            counts[p] += 1
        k += 1
    return counts


def make(**kw) -> rv.PartitionedBuffer:
    kw.setdefault("seed", 0)
    return rv.PartitionedBuffer(kw.pop("capacity", 1000), SPEC, key="task", **kw)


def filled(values=(0, 1, 2, 3), n: int = 200, **kw) -> rv.PartitionedBuffer:
    buf = make(**kw)
    buf.extend(**rows(np.repeat(values, n)))
    return buf


# ---- counts -------------------------------------------------------------------------------------


def test_a_25_75_mix_of_256_is_64_192_every_call():
    buf = filled((0, 1))
    buf.mixture = {0: 0.25, 1: 0.75}
    for _ in range(50):
        part = buf.sample(256).partition
        assert (part == 0).sum() == 64 and (part == 1).sum() == 192


@pytest.mark.parametrize("weights, batch", [([1, 1, 1], 256), ([0.1, 0.2, 0.3, 0.4], 7), ([5, 0, 1, 3], 100),
                                            ([1, 1, 1, 1], 2), ([0.3, 0.3, 0.4], 1), ([2, 1, 1, 2], 255)])
def test_exact_counts_are_the_largest_remainder_rounding(weights, batch):
    values = list(range(len(weights)))
    buf = filled(values)
    buf.mixture = dict(zip(values, weights))
    want = largest_remainder(weights, batch)
    for _ in range(20):
        part = buf.sample(batch).partition
        assert [(part == v).sum().item() for v in values] == want
        assert torch.equal(part, torch.sort(part).values)  # items come in partition order


def test_stochastic_counts_are_multinomial():
    """Chi-square over the total counts of 400 calls of 64 against p = w / sum(w), and the
    per-call counts vary (p > 0.001)."""
    buf = filled((0, 1, 2), mode="stochastic", seed=3)
    w = np.array([0.2, 0.3, 0.5])
    buf.mixture = {0: 0.2, 1: 0.3, 2: 0.5}
    totals = np.zeros(3)
    per_call = set()
    for _ in range(400):
        part = buf.sample(64).partition.numpy()
        c = np.bincount(part, minlength=3)
        totals += c
        per_call.add(tuple(c))
    assert stats.chisquare(totals, totals.sum() * w).pvalue > 1e-3
    assert len(per_call) > 20


def test_without_a_mixture_partitions_weigh_by_their_sizes():
    buf = make()
    buf.extend(**rows([0] * 100 + [1] * 300))
    part = buf.sample(200).partition
    assert (part == 0).sum() == 50 and (part == 1).sum() == 150
    assert buf.mixture is None


def test_per_call_mixture_and_a_weight_change_at_the_next_call():
    buf = filled((0, 1, 2))
    buf.mixture = {0: 1.0}
    assert (buf.sample(32).partition == 0).all()
    assert (buf.sample(32, mixture={2: 1.0}).partition == 2).all()  # this call only
    assert (buf.sample(32).partition == 0).all()

    def change():
        buf.mixture = {1: 1.0}

    t = threading.Thread(target=change)
    t.start()
    t.join()
    assert (buf.sample(32).partition == 1).all()
    buf.mixture = None
    assert set(buf.sample(300).partition.tolist()) == {0, 1, 2}


def test_weight_zero_is_never_drawn_and_empty_partitions_error_or_skip():
    buf = make(declared={0: rv.Partition(50), 1: rv.Partition(50), 2: rv.Partition(50)})
    buf.extend(**rows([0] * 20 + [1] * 20))
    buf.mixture = {0: 1.0, 1: 0.0, 2: 1.0}
    with pytest.raises(ValueError, match="partition 2 has mixture weight 1 but holds no items"):
        buf.sample(8)
    calls = buf.stats()["partitions.calls"]
    assert buf.stats()["partitions.calls"] == calls  # the refused call left nothing behind
    skip = make(declared={0: rv.Partition(50), 1: rv.Partition(50), 2: rv.Partition(50)}, empty="skip")
    skip.extend(**rows([0] * 20 + [1] * 20))
    skip.mixture = {0: 1.0, 1: 0.0, 2: 1.0}
    for _ in range(20):
        assert (skip.sample(8).partition == 0).all()
    skip.mixture = {1: 0.0, 2: 1.0}
    with pytest.raises(ValueError, match="weight 0 or holds no items"):
        skip.sample(8)


def test_bad_mixtures_are_refused_and_change_nothing():
    buf = filled((0, 1))
    buf.mixture = {0: 1.0, 1: 3.0}
    for bad, error in [({0: -1.0}, ValueError), ({0: float("nan")}, ValueError), ({0: 0.0, 1: 0.0}, ValueError),
                       ({5: 1.0}, ValueError), ({0: "x"}, TypeError), ([1, 2], TypeError)]:
        with pytest.raises(error):
            buf.mixture = bad
        assert buf.mixture == {0: 1.0, 1: 3.0}
    with pytest.raises(ValueError, match="does not exist"):
        buf.sample(4, mixture={9: 1.0})


# ---- partitions ---------------------------------------------------------------------------------


def test_batch_partition_is_each_items_key_value():
    buf = filled((3, 8, 5))
    b = buf.sample(100)
    assert torch.equal(b.partition, b["task"])
    g = buf.get(b.indices)
    assert torch.equal(g.partition, b["task"]) and torch.equal(g["id"], b["id"])
    assert buf.partitions == [3, 8, 5]  # in order of first write


def test_declared_partitions_come_first_and_the_bound_holds():
    buf = make(declared={10: rv.Partition(5)}, max_partitions=3, capacity=7)
    assert buf.partitions == [10]
    buf.extend(**rows([1, 2, 10, 1]))
    assert buf.partitions == [10, 1, 2] and buf.partition_sizes() == {10: 1, 1: 2, 2: 1}
    before = buf.stats()
    with pytest.raises(ValueError, match="at most 3 can be made"):
        buf.extend(**rows([1, 4, 10]))
    assert buf.stats() == before and len(buf) == 4
    strict = make(declared={0: rv.Partition(5)}, on_new="error")
    with pytest.raises(ValueError, match="not declared"):
        strict.extend(**rows([0, 1]))
    assert len(strict) == 0


def test_each_partition_has_its_own_capacity_and_parts():
    buf = rv.PartitionedBuffer(
        20, {"task": ("int64", ()), "id": ("int64", ()), "score": ("float32", ())}, key="task", seed=1,
        declared={0: rv.Partition(5, writer=rv.KeepTopK(score="score")),
                  1: rv.Partition(8, sampler=rv.Prioritized(alpha=1.0, eps=0.0)),
                  2: rv.Partition(4, max_times_sampled=1)})
    n = 60
    ids = np.arange(n)
    buf.extend(task=ids % 3, id=ids, score=(ids * 37 % 11).astype(np.float32))
    held = buf.get(buf._table.stored_keys())
    per = {v: sorted(held["id"][held.partition == v].tolist()) for v in (0, 1, 2)}
    top = sorted(sorted(range(0, n, 3), key=lambda i: (i * 37 % 11, i))[-5:])
    assert per[0] == top  # keep-top-k by score
    assert per[1] == list(range(1, n, 3))[-8:]  # FIFO, capacity 8
    assert per[2] == list(range(2, n, 3))[-4:]
    b = buf.sample(4, mixture={2: 1.0})  # consume once: those 4 leave
    assert buf.partition_sizes()[2] == 4 - len(set(b["id"].tolist()))


def test_importance_weights_follow_the_stated_rule():
    pr = rv.Prioritized(alpha=1.0, beta=0.5, eps=0.0)
    buf = make(declared={0: rv.Partition(50, sampler=pr), 1: rv.Partition(50, sampler=pr),
                         2: rv.Partition(50)})
    buf.extend(**rows([0] * 20 + [1] * 20 + [2] * 20))
    keys = buf._table.stored_keys()
    g = buf.get(keys)
    prio = (g["id"] % 7 + 1).double()
    prio[g.partition == 1] *= 10  # partition 1's priorities are all larger
    prioritized = g.partition < 2
    buf.update_priorities(keys[prioritized.numpy()], prio[prioritized])
    with pytest.raises(ValueError, match="prioritized sampler"):  # partition 2 samples uniformly
        buf.update_priorities(keys, prio)
    q = dict(zip(g["id"].tolist(), prio.tolist()))
    buf.mixture = {0: 1.0, 1: 1.0, 2: 1.0}
    b = buf.sample(300)
    q_min = min(v for i, v in q.items() if i < 40)  # over the prioritized partitions drawn
    for i, p, w in zip(b["id"].tolist(), b.partition.tolist(), b.weights.tolist()):
        want = 1.0 if p == 2 else (q_min / q[i]) ** 0.5
        assert w == pytest.approx(want, rel=1e-5)
    only1 = buf.sample(50, mixture={1: 1.0})  # q_min is partition 1's own now
    q1 = min(v for i, v in q.items() if 20 <= i < 40)
    assert only1.weights.tolist() == pytest.approx([(q1 / q[i]) ** 0.5 for i in only1["id"].tolist()], rel=1e-5)
    buf.set_beta(1.0)  # live, in every prioritized partition
    assert buf._core.live("selector")["beta"] == 1.0
    b = buf.sample(100, mixture={0: 1.0})
    q0 = min(v for i, v in q.items() if i < 20)
    assert b.weights.tolist() == pytest.approx([q0 / q[i] for i in b["id"].tolist()], rel=1e-5)


def test_keys_of_several_partitions_in_one_call():
    buf = filled((0, 1, 2), n=30, sampler=rv.Prioritized())
    b = buf.sample(60)
    assert buf.update_priorities(b.indices, torch.rand(60) + 0.1) == 0
    assert buf.update_fields(b.indices, x=torch.zeros(60, 3)) == 0
    assert (buf.get(b.indices)["x"] == 0).all()
    buf.extend(**rows([1] * 1000, 5000))  # partition 1 laps its ring: its keys go stale
    stale = int((b.partition == 1).sum())
    assert buf.update_priorities(b.indices, torch.ones(60)) == stale
    assert buf.stale_updates == stale
    before = buf.stats()
    with pytest.raises(IndexError, match="position 2"):
        buf.update_priorities(torch.cat([b.indices[b.partition == 0][:2], torch.tensor([1 << 50])]),
                              torch.ones(3))
    with pytest.raises(ValueError, match="partition key"):
        buf.update_fields(b.indices[:2], task=torch.zeros(2, dtype=torch.int64))
    assert buf.stats() == before


def test_same_seed_same_calls_same_batches():
    a, b = (filled((0, 1, 2, 3), mode="stochastic", seed=11) for _ in range(2))
    for buf in (a, b):
        buf.mixture = {0: 1, 1: 2, 2: 3, 3: 4}
    for _ in range(30):
        x, y = a.sample(33), b.sample(33)
        assert torch.equal(x.indices, y.indices) and torch.equal(x.partition, y.partition)


@pytest.mark.parametrize("how", ["checkpoint", "state_dict"])
def test_a_restored_buffer_continues_exactly(tmp_path, how):
    def build():
        return make(declared={0: rv.Partition(64, sampler=rv.Prioritized())}, mode="stochastic", seed=5,
                    capacity=32, metadata=True)

    def step(buf, i):
        buf.extend(**rows(np.array([0, 1, 2, i % 5]), 1000 + 4 * i))
        b = buf.sample(16)
        buf.update_priorities(b.indices[b.partition == 0], torch.ones(int((b.partition == 0).sum())) + i % 3)
        return b.indices.tolist(), b.partition.tolist(), b.meta["times_sampled"].tolist()

    orig, twin = build(), build()
    for buf in (orig, twin):
        buf.extend(**rows(np.arange(100) % 4))
        buf.mixture = {0: 1, 1: 1, 2: 2, 3: 1}
        for i in range(20):
            step(buf, i)
    if how == "checkpoint":
        orig.save(tmp_path / "p.rvr")
        restored = rv.PartitionedBuffer.load(tmp_path / "p.rvr")
    else:
        restored = build()
        restored.load_state_dict(orig.state_dict())
    assert restored.partitions == twin.partitions and restored.mixture == twin.mixture
    for i in range(20, 220):
        assert step(restored, i) == step(twin, i)


def _child(buf: rv.PartitionedBuffer, out) -> None:
    buf.extend(**rows([7] * 40, 10_000))  # a partition made in this process
    buf.mixture = {7: 1.0}
    out.put((buf.partitions, len(buf), buf.sample(8).partition.tolist()))


def test_a_second_process_makes_a_partition_and_sets_the_mixture():
    buf = make(storage="shared")
    try:
        buf.extend(**rows([0, 1] * 20))
        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        p = ctx.Process(target=_child, args=(buf, q))
        p.start()
        parts, n, drawn = q.get(timeout=120)
        p.join(120)
        assert p.exitcode == 0
        assert parts == [0, 1, 7] and n == 80 and drawn == [7] * 8
        assert buf.partitions == [0, 1, 7] and len(buf) == 80  # attached here at the next call
        assert (buf.sample(16).partition == 7).all()
        assert buf.mixture == {0: 0.0, 1: 0.0, 7: 1.0}
    finally:
        buf.close()


def test_memmap_reopen_keeps_partitions_and_mixture(tmp_path):
    path = tmp_path / "m.rv"
    buf = make(storage="memmap", path=path)
    buf.extend(**rows(np.arange(40) % 4))
    buf.mixture = {1: 1.0, 3: 1.0}
    buf.close()
    again = make(storage="memmap", path=path)
    assert again.partitions == [0, 1, 2, 3] and len(again) == 40
    assert set(again.sample(64).partition.tolist()) == {1, 3}
    again.close()


def test_one_rate_limiter_for_the_whole_buffer():
    limiter = rv.RateLimiter(min_size_to_sample=10, samples_per_insert=1.0, tolerance=4.0, timeout=0.0)
    buf = make(rate_limiter=limiter)
    buf.extend(**rows([0] * 5))
    with pytest.raises(TimeoutError):
        buf.sample(4)  # 5 items in all: below min_size_to_sample
    buf.extend(**rows([1] * 5, 5))  # 10 in all, over two partitions
    buf.sample(10)
    with pytest.raises(TimeoutError, match="10 items sampled for 10 inserted"):
        buf.sample(4)  # the ratio over the whole buffer
    buf.extend(**rows([2] * 20, 100))  # inserts into any partition count
    buf.sample(4)
    assert buf.stats()["limiter.sampled"] == 14


# ---- interleavings against a model -----------------------------------------------------------------


class Model:
    """Partitions as FIFO rings of `capacity`, made in order of first write; exact counts."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.parts: Dict[int, List[int]] = {}

    def extend(self, tasks: List[int], first: int) -> None:
        for j, t in enumerate(tasks):
            ring = self.parts.setdefault(t, [])
            ring.append(first + j)
            del ring[:-self.capacity]

    def counts(self, weights: Dict[int, float], batch: int) -> Dict[int, int]:
        values = list(self.parts)
        w = [weights.get(v, 0.0) for v in values]
        return dict(zip(values, largest_remainder(w, batch)))


@settings(max_examples=40, deadline=None)
@given(ops=st.lists(st.one_of(
    st.tuples(st.just("extend"), st.lists(st.integers(0, 4), min_size=1, max_size=12)),
    st.tuples(st.just("mix"), st.dictionaries(st.integers(0, 4), st.sampled_from([0.0, 0.5, 1.0, 3.0]),
                                              min_size=1, max_size=5)),
    st.tuples(st.just("sample"), st.integers(1, 20)),
), min_size=1, max_size=25), capacity=st.integers(1, 6))
def test_interleavings_match_the_model(ops, capacity):
    buf = make(capacity=capacity)
    model = Model(capacity)
    mixture: Dict[int, float] = {}
    next_id = 0
    for op, arg in ops:
        if op == "extend":
            assert buf.extend(**rows(arg, next_id)) == len(arg)
            model.extend(arg, next_id)
            next_id += len(arg)
        elif op == "mix":
            known = {v: w for v, w in arg.items() if v in model.parts}
            if not known or sum(known.values()) == 0:
                with pytest.raises(ValueError):
                    buf.mixture = arg
                continue
            if len(known) < len(arg):
                with pytest.raises(ValueError, match="does not exist"):
                    buf.mixture = arg
                continue
            buf.mixture = known
            mixture = known
        elif op == "sample":
            if not model.parts:
                with pytest.raises(ValueError):
                    buf.sample(arg)
                continue
            weights = mixture if mixture else {v: float(len(r)) for v, r in model.parts.items()}
            b = buf.sample(arg)
            want = model.counts(weights, arg)
            got = {v: int((b.partition == v).sum()) for v in model.parts}
            assert got == want
            for i, p in zip(b["id"].tolist(), b.partition.tolist()):
                assert i in model.parts[p]
        assert buf.partitions == list(model.parts)
        assert buf.partition_sizes() == {v: len(r) for v, r in model.parts.items()}
