"""TrajectoryBuffer: ragged fields in a byte-bounded arena, batches in the packed, padded and
nested layouts, token budgets; against a pure-Python model (trajectory_reference.py)."""

from __future__ import annotations

import multiprocessing as mp
import threading
import time

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trajectory_reference import RAGGED, SPEC, ArenaModel, block_bytes, item_values

import reverie as rv

FORMS = ("list", "lengths", "offsets", "nested")


def make(capacity=64, arena_bytes=1 << 20, **kw):
    return rv.TrajectoryBuffer(capacity, SPEC, seed=3, arena_bytes=arena_bytes, **kw)


def write(buf, ids, lens, form="list"):
    """extend() with items `ids` of (prompt_len, response_len) `lens`, ragged values in `form`."""
    values = [item_values(i, pl, rl) for i, (pl, rl) in zip(ids, lens)]
    fields = {"item": torch.tensor(ids, dtype=torch.int64), "reward": torch.tensor(ids, dtype=torch.float32)}
    for name in RAGGED:
        items = [torch.from_numpy(v[name]) for v in values]
        if form == "list" or not items:
            fields[name] = items
        elif form == "nested":
            if items[0].ndim > 1:
                fields[name] = items  # jagged nested tensors hold one ragged dim; the pair field goes as a list
            else:
                fields[name] = torch.nested.nested_tensor(items, layout=torch.jagged)
        else:
            packed = torch.cat(items)
            lengths = torch.tensor([len(x) for x in items])
            if form == "lengths":
                fields[name] = rv.Packed(packed, lengths=lengths)
            else:
                fields[name] = rv.Packed(packed, offsets=torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)]))
    return buf.extend(**fields)


def check_item(batch, ids, lens_of, layout, sides=("left", "right")):
    """Every item of a batch is whole and its own, in `layout`."""
    groups = batch.groups
    prompt, response = groups["prompt"], groups["response"]
    for j, i in enumerate(ids):
        pl, rl = lens_of[i]
        want = item_values(i, pl, rl)
        assert prompt.lengths[j] == pl and response.lengths[j] == rl
        for name in RAGGED:
            g = prompt if name == "prompt_ids" else response
            L = pl if name == "prompt_ids" else rl
            if layout == "packed":
                a, b = int(g.cu_seqlens[j]), int(g.cu_seqlens[j + 1])
                got = batch[name][a:b]
                assert torch.equal(g.position_ids[a:b], torch.arange(L))
            elif layout == "nested":
                got = batch[name].unbind()[j] if batch[name].is_nested else batch[name][j]
            else:
                row = batch[name][j]
                T = row.shape[0]
                side = sides[0] if name == "prompt_ids" else sides[1]
                pad = SPEC[name].pad
                if side == "left":
                    got, rest = row[T - L:], row[:T - L]
                    assert torch.equal(g.attention_mask[j], torch.cat([torch.zeros(T - L), torch.ones(L)]).long())
                else:
                    got, rest = row[:L], row[L:]
                    assert torch.equal(g.attention_mask[j], torch.cat([torch.ones(L), torch.zeros(T - L)]).long())
                assert bool((rest == pad).all()), name
            np.testing.assert_array_equal(got.numpy(), want[name], err_msg=f"{name} of item {i}")


items_strategy = st.lists(st.tuples(st.integers(0, 12), st.integers(0, 40)), min_size=1, max_size=40)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=items_strategy, chunk=st.integers(1, 9), form=st.sampled_from(FORMS),
       layout=st.sampled_from(["packed", "padded", "nested"]), multiple=st.sampled_from([1, 8]))
def test_round_trip_in_every_layout(items, chunk, form, layout, multiple):
    buf = make()
    ids = list(range(len(items)))
    for a in range(0, len(items), chunk):
        write(buf, ids[a:a + chunk], items[a:a + chunk], form)
    assert len(buf) == len(items)
    keys = buf.keys()
    lens_of = dict(zip(ids, items))
    if layout == "nested":
        multiple = 1
    batch = buf.get(keys, layout=layout, pad_to_multiple_of=multiple)
    assert batch["item"].tolist() == ids  # oldest first
    check_item(batch, ids, lens_of, layout)
    if layout == "packed":
        for g, n in (("prompt", sum(p for p, _ in items)), ("response", sum(r for _, r in items))):
            cu = batch.groups[g].cu_seqlens
            padded_n = -(-n // multiple) * multiple
            assert batch["ids" if g == "response" else "prompt_ids"].shape[0] == padded_n
            assert cu[len(items)] == n and (len(cu) == len(items) + 2) == (padded_n > n)
            assert batch.groups[g].max_seqlen == max(p if g == "prompt" else r for p, r in items)
    if layout == "padded":
        T = batch["ids"].shape[1]
        assert T % multiple == 0 and T >= max(r for _, r in items)
        assert torch.equal(batch.attention_mask, torch.cat([batch.groups["prompt"].attention_mask,
                                                            batch.groups["response"].attention_mask], 1))
    sample = buf.sample(16, layout=layout)
    check_item(sample, sample["item"].tolist(), lens_of, layout)


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.tuples(st.integers(0, 30), st.integers(0, 200)), min_size=1, max_size=60),
       chunk=st.integers(1, 7), capacity=st.integers(1, 20), arena=st.integers(1200, 6000))
def test_eviction_by_bytes_matches_the_model(sizes, chunk, capacity, arena):
    sizes = [s for s in sizes if block_bytes(*s) <= arena]
    if not sizes:
        return
    buf = make(capacity=capacity, arena_bytes=arena)
    model = ArenaModel(capacity, arena)
    ids = list(range(len(sizes)))
    for a in range(0, len(sizes), chunk):
        stored = write(buf, ids[a:a + chunk], sizes[a:a + chunk])
        model.write(sizes[a:a + chunk], ids[a:a + chunk])
        assert stored == len(ids[a:a + chunk])
        stats = buf.stats()
        assert stats["arena_used_bytes"] <= arena
        assert stats["arena_held_bytes"] == sum(model.held_bytes.values())
        assert stats["arena_evicted"] == model.evicted
        assert stats["tokens_held"] == {"prompt": sum(sizes[i][0] for i in model.held),
                                        "response": sum(sizes[i][1] for i in model.held)}
        assert len(buf) == len(model.held)
        batch = buf.get(buf.keys())
        assert batch["item"].tolist() == model.held
        check_item(batch, model.held, dict(zip(ids, sizes)), "packed")


def test_a_call_larger_than_the_arena_keeps_its_newest_items():
    buf = make(capacity=100, arena_bytes=2048)
    sizes = [(4, 30)] * 20  # 16 + 240 + 120 + 120 = 496 bytes each: 4 fit
    assert write(buf, list(range(20)), sizes) == 20
    assert buf.get(buf.keys())["item"].tolist() == [16, 17, 18, 19]
    assert buf.stats()["arena_evicted"] == 16


def test_token_budget():
    buf = make(capacity=200)
    rng = np.random.default_rng(0)
    sizes = [(int(rng.integers(1, 10)), int(rng.integers(1, 60))) for _ in range(150)]
    write(buf, list(range(150)), sizes)
    lens_of = dict(enumerate(sizes))
    for budget in (1, 50, 300, 2000):
        for layout in ("packed", "padded"):
            batch = buf.sample(max_tokens=budget, layout=layout)
            total = int(batch.groups["prompt"].lengths.sum() + batch.groups["response"].lengths.sum())
            assert total <= budget or len(batch.indices) == 1
            assert len(batch.indices) == len(batch["item"]) == len(batch.lengths)
            check_item(batch, batch["item"].tolist(), lens_of, layout)
    # Full: a large budget takes many items and nearly fills it.
    batch = buf.sample(max_tokens=2000)
    total = int(batch.groups["prompt"].lengths.sum() + batch.groups["response"].lengths.sum())
    assert 2000 - 70 <= total <= 2000
    # With a batch size the draws are bounded by it.
    assert len(buf.sample(4, max_tokens=10**6).indices) == 4


def test_same_seed_same_batches():
    def run():
        buf = make(capacity=50)
        write(buf, list(range(40)), [(i % 5, i % 13) for i in range(40)])
        return [buf.sample(8)["item"].tolist() for _ in range(3)] + \
               [buf.sample(max_tokens=100)["item"].tolist() for _ in range(3)]
    assert run() == run()


def test_prioritized_and_max_times_sampled():
    buf = make(capacity=30, sampler=rv.Prioritized(alpha=1.0, beta=1.0))
    write(buf, list(range(10)), [(2, 3)] * 10)
    batch = buf.sample(8)
    assert batch.weights is not None and batch.weights.shape == (8,)
    keys = buf.keys()
    pr = torch.zeros(len(keys))
    pr[3] = 1.0
    buf.update_priorities(keys, pr)
    # Only the item with a non-zero priority is drawn now.
    again = buf.sample(6)
    assert set(again["item"].tolist()) == {int(buf.get(keys[3:4])["item"][0])}

    once = make(capacity=30, max_times_sampled=1)
    write(once, list(range(6)), [(1, 5)] * 6)
    before = once.stats()["arena_held_bytes"]
    got = once.sample(6, layout="padded")
    assert sorted(got["item"].tolist()) == list(range(6))
    assert len(once) == 0 and once.stats()["arena_held_bytes"] == 0 < before
    with pytest.raises(ValueError, match="max_times_sampled"):
        write(once, [9], [(1, 1)])
        once.sample(max_tokens=10)


def snapshot(buf):
    keys = buf.keys()
    got = buf.get(keys) if len(keys) else None
    stats = {k: v for k, v in buf.stats().items()}
    return keys.tolist(), None if got is None else {k: v.clone() for k, v in got.items()}, stats


@pytest.mark.parametrize("bad, error, match", [
    (dict(ids=[torch.arange(3), torch.arange(2)], logp=[torch.zeros(3), torch.zeros(3)]), ValueError,
     "share their lengths"),
    (dict(ids=[torch.arange(3, dtype=torch.int32)] * 2), TypeError, "expected dtype int64"),
    (dict(ids=rv.Packed(torch.arange(5), lengths=[2, 2])), ValueError, "add up to 4"),
    (dict(ids=[torch.arange(10**4), torch.arange(1)], logp=[torch.zeros(10**4), torch.zeros(1)],
          pair=[torch.zeros(10**4, 2, dtype=torch.int16), torch.zeros(1, 2, dtype=torch.int16)]), ValueError,
     "more than the whole arena"),
    (dict(pair=[torch.zeros(3, 3, dtype=torch.int16), torch.zeros(2, 3, dtype=torch.int16)]), ValueError,
     "expected shape"),
    (dict(reward=torch.zeros(3)), ValueError, "items"),
    (dict(ids=rv.Packed(torch.arange(5), offsets=[1, 5])), ValueError, "start at 0"),
])
def test_bad_writes_change_nothing(bad, error, match):
    buf = make(capacity=8, arena_bytes=40_000)
    write(buf, [0, 1, 2], [(2, 3), (1, 4), (0, 0)])
    before = snapshot(buf)
    fields = {"item": torch.tensor([5, 6]), "reward": torch.zeros(2),
              "prompt_ids": [torch.zeros(1, dtype=torch.int32)] * 2,
              "ids": [torch.arange(3), torch.arange(2)], "logp": [torch.zeros(3), torch.zeros(2)],
              "pair": [torch.zeros(3, 2, dtype=torch.int16), torch.zeros(2, 2, dtype=torch.int16)]}
    fields.update(bad)
    with pytest.raises(error, match=match):
        buf.extend(**fields)
    after = snapshot(buf)
    assert after[0] == before[0] and after[2] == before[2]
    for k in before[1]:
        assert torch.equal(before[1][k], after[1][k])


def test_single_add_and_missing_fields():
    buf = make()
    add = buf.add  # an alias taken before the first write
    assert add(item=0, reward=1.0, prompt_ids=[1, 2], ids=torch.arange(3), logp=np.zeros(3, np.float32),
               pair=np.zeros((3, 2), np.int16)) == 1
    with pytest.raises(ValueError, match="missing ragged field 'logp'"):
        add(item=1, reward=1.0, prompt_ids=[1], ids=torch.arange(3), pair=np.zeros((3, 2), np.int16))
    got = buf.get(buf.keys(), layout="padded")
    assert got["prompt_ids"].tolist() == [[1, 2]] and got["ids"].tolist() == [[0, 1, 2]]
    assert len(buf) == 1


def test_declarations():
    with pytest.raises(ValueError, match="arena_bytes"):
        rv.TrajectoryBuffer(10, SPEC)
    with pytest.raises(ValueError, match="FIFO writer"):
        rv.TrajectoryBuffer(10, SPEC, arena_bytes=4096, writer=rv.Reservoir())
    with pytest.raises(ValueError, match="at least one ragged"):
        rv.TrajectoryBuffer(10, {"x": rv.Field("float32")}, arena_bytes=4096)
    with pytest.raises(ValueError, match="for ragged fields"):
        rv.Field("int64", (3,), group="response")
    buf = rv.ReplayBuffer(10, {"ids": rv.Field("int64", (None,))}, arena_bytes=4096)  # dispatches
    assert isinstance(buf, rv.TrajectoryBuffer)
    buf.extend(ids=[torch.arange(2), torch.arange(5)])  # a table of ragged fields only
    assert buf.sample(3).cu_seqlens.shape == (4,)
    with pytest.raises(ValueError, match="cannot pin"):
        buf.pin(buf.keys())
    assert buf.spec["ids"].ragged and buf.spec["ids"].group == "tokens"


def test_checkpoint_and_state_dict(tmp_path):
    buf = make(capacity=20, arena_bytes=3000)
    sizes = [(i % 4, (7 * i) % 50) for i in range(40)]
    write(buf, list(range(40)), sizes)
    buf.sample(4)
    buf.save(tmp_path / "t.rvb")
    loaded = rv.TrajectoryBuffer.load(tmp_path / "t.rvb")
    assert isinstance(loaded, rv.TrajectoryBuffer)
    assert loaded.keys().tolist() == buf.keys().tolist()
    a, b = buf.get(buf.keys(), layout="padded"), loaded.get(loaded.keys(), layout="padded")
    for k in a:
        assert torch.equal(a[k], b[k])
    assert loaded.stats() == buf.stats()
    # The same seed and calls draw the same from here on; writes continue the arena.
    assert loaded.sample(8)["item"].tolist() == buf.sample(8)["item"].tolist()
    write(buf, [100, 101], [(3, 40), (1, 1)])
    write(loaded, [100, 101], [(3, 40), (1, 1)])
    assert loaded.get(loaded.keys())["item"].tolist() == buf.get(buf.keys())["item"].tolist()
    state = buf.state_dict()
    fresh = make(capacity=20, arena_bytes=3000)
    fresh.load_state_dict(state)
    assert fresh.get(fresh.keys())["ids"].tolist() == buf.get(buf.keys())["ids"].tolist()


def _child_writes(handle, first, count):
    buf = handle  # unpickled: attached to the parent's segment
    for i in range(first, first + count):
        write(buf, [i], [(i % 3, i % 17)])


def test_shared_memory_writers_in_other_processes():
    buf = make(capacity=400, arena_bytes=1 << 16, storage="shared")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_child_writes, args=(buf, 1000 * (p + 1), 100)) for p in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert len(buf) == 200
    lens_of = {i: (i % 3, i % 17) for p in range(2) for i in range(1000 * (p + 1), 1000 * (p + 1) + 100)}
    batch = buf.sample(64, layout="padded")
    check_item(batch, batch["item"].tolist(), lens_of, "padded")
    buf.close()


def test_concurrent_writers_and_samplers_never_see_a_torn_item():
    buf = make(capacity=256, arena_bytes=30_000)
    lens_of = {}
    errors = []
    stop = threading.Event()
    rng = np.random.default_rng(1)
    plan = {w: [(int(rng.integers(0, 8)), int(rng.integers(1, 120))) for _ in range(300)] for w in range(2)}
    for w in range(2):
        for k, s in enumerate(plan[w]):
            lens_of[w * 10_000 + k] = s

    def writer(w):
        try:
            for k in range(0, 300, 3):
                write(buf, [w * 10_000 + k + j for j in range(3)], plan[w][k:k + 3])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    def sampler():
        try:
            while not stop.is_set():
                if len(buf) == 0:
                    continue
                for layout in ("packed", "padded"):
                    b = buf.sample(16, layout=layout)
                    check_item(b, b["item"].tolist(), lens_of, layout)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    samplers = [threading.Thread(target=sampler) for _ in range(2)]
    writers = [threading.Thread(target=writer, args=(w,)) for w in range(2)]
    for t in samplers + writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in samplers:
        t.join()
    assert not errors, errors[0]
    assert buf.stats()["arena_evicted"] > 0  # the arena turned over many times
    assert buf.stats()["arena_used_bytes"] <= 30_000


# ---- groups -------------------------------------------------------------------------------

GROUP_SPEC = {
    "prompt": rv.Field("int64"),
    "member": rv.Field("int64"),
    "reward": rv.Field("float32"),
    "prompt_ids": rv.Field("int32", (None,), group="prompt"),
    "ids": rv.Field("int64", (None,), group="response"),
    "advantages": rv.Field("float32", (None,), group="response"),
}


def group_buffer(capacity=64, arena_bytes=1 << 16, **kw):
    return rv.TrajectoryBuffer(capacity, GROUP_SPEC, seed=5, arena_bytes=arena_bytes, **kw)


def add_group(buf, prompt, lens, rewards=None, advantages=None):
    g = len(lens)
    rewards = torch.arange(g, dtype=torch.float32) if rewards is None else torch.as_tensor(rewards, dtype=torch.float32)
    adv = [torch.full((n,), 1.0) for n in lens] if advantages is None else advantages
    return buf.add_group(prompt=prompt, member=torch.arange(g), reward=rewards,
                         prompt_ids=torch.full((3,), prompt, dtype=torch.int32),  # one prompt for all members
                         ids=[prompt * 1000 + torch.arange(n) for n in lens], advantages=adv)


def check_groups(batch, sizes_of):
    at = 0
    prompts = batch["prompt"].tolist()
    for size in batch.group_sizes.tolist():
        p = prompts[at]
        assert size == sizes_of[p]
        assert prompts[at:at + size] == [p] * size
        assert batch["member"][at:at + size].tolist() == list(range(size))
        at += size
    assert at == len(prompts)
    for j, p in enumerate(prompts):
        a, b = int(batch.cu_seqlens[j]), int(batch.cu_seqlens[j + 1])
        assert torch.equal(batch["ids"][a:b], p * 1000 + torch.arange(b - a))
        assert batch["prompt_ids"][3 * j:3 * j + 3].tolist() == [p] * 3


def test_groups_are_stored_drawn_and_evicted_whole():
    buf = group_buffer(capacity=40, arena_bytes=6000)
    sizes_of = {}
    model = ArenaModel(40, 6000)
    rng = np.random.default_rng(2)
    for p in range(60):
        g = int(rng.integers(1, 7))
        lens = [int(x) for x in rng.integers(1, 40, g)]
        sizes_of[p] = g
        assert add_group(buf, p, lens) == g
        # The model of arena.h with this block layout: prompt ids int32, ids int64 + advantages f32.
        model_items = [(3, n) for n in lens]
        model.write_blocks([_block(n) for n in lens], list(range(p * 10, p * 10 + g)), group=True)
        assert len(buf) == len(model.held)
        held = buf.get(buf.keys())
        counts = {}
        for q in held["prompt"].tolist():
            counts[q] = counts.get(q, 0) + 1
        assert all(counts[q] == sizes_of[q] for q in counts)  # no partial group is ever held
        assert buf.group_stats()["groups_held"] == len(counts)
        del model_items
    batch = buf.sample_groups(5)
    assert len(batch.group_sizes) == 5
    check_groups(batch, sizes_of)
    padded = buf.sample_groups(3, layout="padded")
    assert padded["ids"].shape[0] == int(padded.group_sizes.sum())


def _block(response_len):
    def run(n, size):
        return (n * size + 7) // 8 * 8
    return max(8, run(3, 4) + run(response_len, 8) + run(response_len, 4))


def test_group_errors_change_nothing():
    buf = group_buffer(capacity=8, arena_bytes=4096)
    add_group(buf, 1, [5, 6])
    before = snapshot(buf)
    with pytest.raises(ValueError, match="half the arena"):
        add_group(buf, 2, [200, 200])
    with pytest.raises(ValueError, match="capacity"):
        add_group(buf, 3, [1] * 9)
    with pytest.raises(ValueError, match="share their lengths"):
        buf.add_group(prompt=4, member=torch.arange(2), reward=torch.zeros(2), prompt_ids=torch.zeros(3, dtype=torch.int32),
                      ids=[torch.arange(2), torch.arange(3)], advantages=[torch.zeros(2), torch.zeros(2)])
    after = snapshot(buf)
    assert after[0] == before[0] and after[2] == before[2]


def test_group_filters_pass_rate_and_deficit():
    std = group_buffer(group_filter=rv.StdFilter("reward", eps=1e-6))
    assert add_group(std, 1, [3, 3, 3], rewards=[1, 1, 1]) == 0  # no spread: zero advantage, dropped
    assert add_group(std, 2, [3, 3, 3], rewards=[0, 1, 1]) == 3
    stats = std.group_stats()
    assert stats["offered"] == 2 and stats["kept"] == 1 and stats["pass_rate"] == 0.5 and stats["groups_held"] == 1
    assert std.deficit(4) == 6  # 3 more groups held are wanted; half of the generated ones pass
    assert std.deficit(1) == 0

    mean = group_buffer(group_filter=rv.MeanFilter("reward", 0.0, 1.0))
    assert add_group(mean, 1, [2, 2], rewards=[1, 1]) == 0  # all correct
    assert add_group(mean, 2, [2, 2], rewards=[0, 0]) == 0  # all wrong
    assert add_group(mean, 3, [2, 2], rewards=[0, 1]) == 2

    nz = group_buffer(group_filter=rv.NonZeroFilter("advantages"))
    assert add_group(nz, 1, [2, 3], advantages=[torch.zeros(2), torch.zeros(3)]) == 0
    assert add_group(nz, 2, [2, 3], advantages=[torch.zeros(2), torch.tensor([0.0, 0.5, 0.0])]) == 2

    seen = []
    custom = group_buffer(group_filter=lambda g: seen.append(sorted(g)) or bool(g["reward"].max() > 0.5))
    assert add_group(custom, 1, [1, 1], rewards=[0.2, 0.9]) == 2
    assert seen == [sorted(GROUP_SPEC)]
    with pytest.raises(ValueError, match="reads field 'score'"):
        add_group(group_buffer(group_filter=rv.StdFilter("score")), 1, [1, 1])


def test_concurrent_group_writers_never_leave_a_partial_group():
    buf = group_buffer(capacity=200, arena_bytes=40_000)
    sizes_of = {}
    rng = np.random.default_rng(4)
    plans = {w: [(w * 100_000 + k, [int(x) for x in rng.integers(1, 60, int(rng.integers(1, 9)))]) for k in range(120)]
             for w in range(2)}
    for w in plans:
        for p, lens in plans[w]:
            sizes_of[p] = len(lens)
    errors = []
    stop = threading.Event()

    def writer(w):
        try:
            for p, lens in plans[w]:
                add_group(buf, p, lens)
        except Exception as e:  # pragma: no cover
            errors.append(e)

    def sampler():
        try:
            while not stop.is_set():
                if buf.group_stats()["groups_held"] == 0:
                    continue
                check_groups(buf.sample_groups(4), sizes_of)
        except Exception as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(2)] + [threading.Thread(target=sampler)]
    for t in threads:
        t.start()
    for t in threads[:2]:
        t.join()
    stop.set()
    threads[2].join()
    assert not errors, errors[0]
    assert buf.stats()["arena_evicted"] > 0


def test_staleness_bound_and_rollout_quota():
    buf = group_buffer(max_staleness=1, metadata=True)
    for v in range(4):
        buf.version = v
        add_group(buf, v, [2, 2])
    buf.version = 3
    batch = buf.sample(32)
    assert set(batch["prompt"].tolist()) <= {2, 3}  # versions 2 and 3 only
    assert set(batch.meta["version"].tolist()) <= {2, 3}
    assert rv.rollout_quota(version=3, max_staleness=1, batch_size=8, started=20) == (1 + 3 + 1) * 8 - 20
    assert rv.rollout_quota(version=0, max_staleness=0, batch_size=8, started=20) == 0


# ---- presets and per-item scores ------------------------------------------------------------

PRESET_SPEC = {
    "reward": rv.Field("float32"),
    "prompt": rv.Field("int64", (None,), group="prompt"),
    "response": rv.Field("int64", (None,), group="response"),
    "logprobs": rv.Field("float32", (None,), group="response"),
    "advantages": rv.Field("float32", (None,), group="response"),
}


def preset_buffer():
    buf = rv.TrajectoryBuffer(16, PRESET_SPEC, seed=1, arena_bytes=1 << 16)
    buf.extend(reward=torch.tensor([1.0, 0.0]), prompt=[torch.tensor([11, 12]), torch.tensor([13])],
               response=[torch.tensor([21, 22, 23]), torch.tensor([24])],
               logprobs=[torch.tensor([-0.1, -0.2, -0.3]), torch.tensor([-0.4])],
               advantages=[torch.tensor([1.0, -2.0, 3.0]), torch.tensor([0.5])])
    return buf


def test_trainer_presets():
    buf = preset_buffer()
    batch = buf.get(buf.keys(), layout="padded")
    verl = batch.for_trainer("verl")
    assert verl["input_ids"].tolist() == [[11, 12, 21, 22, 23], [0, 13, 24, 0, 0]]
    assert verl["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [0, 1, 1, 0, 0]]
    assert verl["position_ids"].tolist() == [[0, 1, 2, 3, 4], [0, 0, 1, 1, 1]]  # clip(cumsum(mask) - 1, 0)
    assert verl["response_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert torch.equal(verl["old_log_probs"], batch["logprobs"])
    trl = batch.for_trainer("trl")
    assert trl["completion_ids"].tolist() == [[21, 22, 23], [24, 0, 0]]
    assert trl["prompt_mask"].tolist() == [[1, 1], [0, 1]]
    assert torch.allclose(trl["advantages"], torch.tensor([2.0 / 3.0, 0.5]))
    orl = batch.for_trainer("openrlhf")
    assert orl["sequences"].tolist() == verl["input_ids"].tolist() and orl["action_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    with pytest.raises(ValueError, match="padded batch"):
        buf.get(buf.keys()).for_trainer("verl")
    with pytest.raises(ValueError, match="role 'logprobs' reads field 'old'"):
        batch.for_trainer("trl", logprobs="old")


def test_per_item_scores_become_priorities():
    buf = preset_buffer()
    keys = buf.keys()
    for layout in ("packed", "padded", "nested"):
        batch = buf.get(keys, layout=layout)
        assert torch.allclose(batch.per_item("advantages", "sum"), torch.tensor([2.0, 0.5]))
        assert torch.allclose(batch.per_item("advantages", "mean", abs=True), torch.tensor([2.0, 0.5]))
        assert torch.allclose(batch.per_item("advantages", "max"), torch.tensor([3.0, 0.5]))
    with pytest.raises(ValueError, match="fixed field"):
        batch.per_item("reward")
    prio = rv.TrajectoryBuffer(16, PRESET_SPEC, sampler=rv.Prioritized(alpha=1.0, beta=1.0), seed=2, arena_bytes=1 << 16)
    prio.extend(reward=torch.zeros(3), prompt=[torch.tensor([1])] * 3, response=[torch.tensor([1, 2])] * 3,
                logprobs=[torch.zeros(2)] * 3, advantages=[torch.tensor([0.0, 0.0]), torch.tensor([0.0, 4.0]),
                                                           torch.tensor([0.0, 0.0])])
    got = prio.get(prio.keys())
    prio.update_priorities(got.indices, got.per_item("advantages", "mean", abs=True))
    drawn = prio.sample(20)
    assert set(drawn.indices.tolist()) == {int(got.indices[1])}  # only the non-zero |A| item


def test_memmap_file_holds_the_arena(tmp_path):
    path = tmp_path / "traj.rvm"
    buf = make(capacity=16, arena_bytes=8192, storage="memmap", path=path)
    write(buf, list(range(10)), [(i % 3, 5 + i) for i in range(10)])
    want = buf.get(buf.keys(), layout="padded")
    buf.close()
    again = rv.TrajectoryBuffer(16, SPEC, arena_bytes=8192, storage="memmap", path=path)
    assert len(again) == 10
    got = again.get(again.keys(), layout="padded")
    for k in want:
        assert torch.equal(want[k], got[k]), k
    write(again, [10], [(1, 1)])
    assert len(again) == 11
    again.close()


def test_ragged_update_fields_in_place():
    buf = make(capacity=16)
    write(buf, [0, 1, 2], [(1, 3), (2, 2), (0, 4)])
    keys = buf.keys()
    new = [torch.tensor([-1.0, -2.0, -3.0]), torch.tensor([9.0, 8.0])]
    assert buf.update_fields(keys[:2], logp=new, reward=torch.tensor([5.0, 6.0])) == 0
    got = buf.get(keys)
    assert got["logp"][:5].tolist() == [-1.0, -2.0, -3.0, 9.0, 8.0]
    assert got["reward"].tolist() == [5.0, 6.0, 2.0]
    before = snapshot(buf)
    with pytest.raises(ValueError, match="keeps the item's lengths"):
        buf.update_fields(keys[:1], logp=[torch.zeros(2)])
    with pytest.raises(TypeError, match="expected dtype float32"):
        buf.update_fields(keys[:1], logp=[torch.zeros(3, dtype=torch.float64)])
    with pytest.raises(IndexError):
        buf.update_fields(torch.tensor([12345678]), logp=[torch.zeros(3)])
    after = snapshot(buf)
    for k in before[1]:
        assert torch.equal(before[1][k], after[1][k])
    # An item that left is skipped and counted.
    small = make(capacity=2)
    write(small, [0], [(1, 1)])
    old = small.keys()
    write(small, [1, 2], [(1, 1), (1, 1)])
    assert small.update_fields(old, logp=[torch.zeros(1)]) == 1


def test_ragged_updates_race_samplers():
    buf = make(capacity=64, arena_bytes=1 << 18)
    write(buf, list(range(40)), [(2, 30)] * 40)
    keys = buf.keys()
    buf.update_fields(keys, logp=rv.Packed(torch.full((40 * 30,), -1.0), lengths=[30] * 40))
    errors = []
    stop = threading.Event()

    def updater():
        try:
            for r in range(200):
                value = float(r)
                buf.update_fields(keys, logp=rv.Packed(torch.full((40 * 30,), value), lengths=[30] * 40))
        except Exception as e:  # pragma: no cover
            errors.append(e)

    def sampler():
        try:
            while not stop.is_set():
                b = buf.sample(8, layout="padded")
                for row in b["logp"]:
                    assert bool((row == row[0]).all()), row  # one update's values, never two
        except Exception as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=updater), threading.Thread(target=sampler)]
    for t in threads[1:]:
        t.start()
    threads[0].start()
    threads[0].join()
    stop.set()
    threads[1].join()
    assert not errors, errors[0]


def test_oldest_first_and_staleness_report():
    buf = group_buffer(capacity=24, arena_bytes=1 << 16, metadata=True, max_staleness=3)
    for v in range(8):
        buf.version = v
        add_group(buf, v, [2, 2, 2])
    # 24 items: prompts 0..7, 3 members each. The oldest held within the bound (versions >= 4).
    buf.version = 7
    oldest = buf.sample(4, order="oldest")
    assert oldest["prompt"].tolist() == [4, 4, 4, 5]
    buf.sample(16)
    report = buf.staleness()
    assert report["served"].sum() == 4 + 16 and report["served"][4:].sum() == 0
    # Evict by writing more: the evicted ones were versions 0.. at version 9.
    buf.version = 9
    for p in range(8, 12):
        add_group(buf, p, [2, 2, 2])
    assert report["evicted"].sum() == 0
    evicted = buf.staleness()["evicted"]
    assert evicted.sum() == 12 and evicted[9] == 3 and evicted[6] == 3


def test_rate_limiter_gates_ragged_samples():
    buf = make(capacity=32, rate_limiter=rv.RateLimiter(min_size_to_sample=4, timeout=1.0))
    write(buf, [0, 1], [(1, 2), (1, 3)])
    with pytest.raises(TimeoutError):
        buf.sample(2)
    got = []
    t = threading.Thread(target=lambda: got.append(rv.TrajectoryBuffer.sample(buf, 2, layout="padded")))
    t.start()
    write(buf, [2, 3], [(1, 2), (2, 2)])  # the waiting sample proceeds once 4 are held
    t.join(10)
    assert len(got) == 1 and got[0]["ids"].shape[0] == 2


def test_stale_wait_policy_and_npz_round_trip(tmp_path):
    buf = group_buffer(max_staleness=0, stale_wait=5.0)
    buf.version = 0
    add_group(buf, 1, [2, 2])
    buf.version = 1  # everything held is stale now
    t = threading.Timer(0.3, lambda: add_group(buf, 2, [3, 3]))
    t.start()
    got = buf.sample(4)  # waits for the fresh group
    t.join()
    assert set(got["prompt"].tolist()) == {2}
    drop = group_buffer(max_staleness=0)
    add_group(drop, 1, [2, 2])
    drop.version = 1
    with pytest.raises(ValueError, match="reuse rules"):
        drop.sample(2)
    # Per-token versions of a partial rollout: the oldest token's version per item.
    assert buf.get(buf.keys()).per_item("ids", "min").tolist()[:2] == [1000.0, 1000.0]

    src = make(capacity=8, arena_bytes=3000)
    write(src, list(range(20)), [(i % 3, 10 + 3 * i) for i in range(20)])
    rv.to_npz(src, tmp_path / "t.npz")
    back = rv.from_npz(tmp_path / "t.npz")
    assert isinstance(back, rv.TrajectoryBuffer)
    a, b = src.get(src.keys(), layout="padded"), back.get(back.keys(), layout="padded")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_consume_once_queue_loses_nothing_under_concurrent_writes():
    # max_times_sampled=1 with a writer turning the arena over: every item written is
    # delivered once, still held, or evicted unsampled (a copy that meets an eviction takes
    # its draw back instead of dropping the batch).
    buf = rv.TrajectoryBuffer(256, {"x": rv.Field("int64"), "ids": rv.Field("int32", (None,))}, seed=0,
                              arena_bytes=1 << 15, max_times_sampled=1)
    written = [0]
    stop = threading.Event()

    def writer():
        while not stop.is_set():
            n = written[0]
            buf.extend(x=torch.arange(n, n + 8), ids=rv.Packed(torch.zeros(8 * 32, dtype=torch.int32), lengths=[32] * 8))
            written[0] = n + 8

    t = threading.Thread(target=writer)
    t.start()
    delivered = []
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        try:
            delivered.extend(buf.sample(8)["x"].tolist())
        except ValueError:
            pass  # fewer than 8 samples left right now
    stop.set()
    t.join()
    held = buf.get(buf.keys())["x"].tolist() if len(buf) else []
    assert len(delivered) == len(set(delivered)) and not set(held) & set(delivered)
    assert len(delivered) + len(held) + buf.stats()["arena_evicted"] >= written[0]
    assert len(delivered) > 100


# ---- the archive of past successes (keyed archive writer) ------------------------------------

ARCHIVE_SPEC = {"uid": rv.Field("int64"), "reward": rv.Field("float32"),
                "ids": rv.Field("int64", (None,)), "logp": rv.Field("float32", (None,))}


def test_keyed_archive_of_trajectories_keeps_the_best_per_prompt_within_the_byte_bound():
    arc = rv.TrajectoryBuffer(16, ARCHIVE_SPEC, seed=0, arena_bytes=4096,
                              writer=rv.KeyedArchive(key="uid", score="reward"))
    assert arc.extend(uid=torch.tensor([1, 2, 1]), reward=torch.tensor([0.5, 0.2, 0.9]),
                      ids=[torch.arange(3), torch.arange(4), torch.arange(5)],
                      logp=[torch.zeros(3), torch.zeros(4), torch.ones(5)]) == 3
    assert arc.extend(uid=torch.tensor([1]), reward=torch.tensor([0.1]), ids=[torch.arange(9)],
                      logp=[torch.zeros(9)]) == 0  # worse than the held entry: dropped
    keys = arc.writer.lookup([1, 2, 3])
    assert keys[2] == -1
    got = arc.get(keys[:2])
    assert got["uid"].tolist() == [1, 2] and got.lengths.tolist() == [5, 4] and got["reward"][0] == pytest.approx(0.9)
    assert arc.stats()["arena_held_bytes"] == (5 * 8 + 24) + (4 * 8 + 16)  # the held blocks: 8-aligned runs
    # The byte bound evicts the least recently written entries whole; the keys leave too.
    for i in range(40):
        arc.extend(uid=torch.tensor([100 + i]), reward=torch.tensor([float(i)]), ids=[torch.arange(50)],
                   logp=[torch.zeros(50)])
        assert arc.stats()["arena_used_bytes"] <= 4096
    held = arc.get(arc.keys())["uid"].tolist()
    assert 1 not in held and held == sorted(held) and held[-1] == 139
    assert int(arc.writer.lookup([1])[0]) == -1 and int(arc.writer.lookup([139])[0]) >= 0
    with pytest.raises(ValueError, match="FIFO writer"):
        arc.add_group(uid=torch.tensor([5, 5]), reward=torch.zeros(2), ids=[torch.arange(1)] * 2,
                      logp=[torch.zeros(1)] * 2)


def test_refill_a_zero_advantage_group_from_the_archive():
    arc = rv.TrajectoryBuffer(16, ARCHIVE_SPEC, seed=0, arena_bytes=1 << 14,
                              writer=rv.KeyedArchive(key="uid", score="reward"))
    arc.extend(uid=torch.tensor([7]), reward=torch.tensor([1.0]), ids=[torch.tensor([70, 71])],
               logp=[torch.tensor([-0.5, -0.25])])
    group = {"uid": torch.full((4,), 7), "reward": torch.zeros(4),
             "ids": [torch.arange(3)] * 4, "logp": [torch.zeros(3)] * 4}
    keep = rv.StdFilter("reward")
    assert not keep(group)
    refilled = rv.refill_group(group, arc, 7, replace=1)
    assert keep(refilled)
    assert refilled["reward"].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert refilled["ids"][0].tolist() == [70, 71] and refilled["ids"][1].tolist() == [0, 1, 2]
    assert rv.refill_group(group, arc, 8)["reward"].tolist() == [0.0] * 4  # nothing archived for 8
    buf = group_buffer()
    buf_group = {"prompt": refilled["uid"], "member": torch.arange(4), "reward": refilled["reward"],
                 "prompt_ids": torch.zeros(3, dtype=torch.int32), "ids": refilled["ids"],
                 "advantages": [torch.zeros(len(x)) for x in refilled["ids"]]}
    assert buf.add_group(**buf_group) == 4


@settings(max_examples=30, deadline=None)
@given(offers=st.lists(st.tuples(st.integers(0, 6), st.integers(0, 9), st.integers(0, 60)), min_size=1, max_size=80),
       capacity=st.integers(2, 6), arena=st.integers(800, 3000))
def test_keyed_archive_invariants_under_byte_eviction(offers, capacity, arena):
    arc = rv.TrajectoryBuffer(capacity, ARCHIVE_SPEC, seed=0, arena_bytes=arena,
                              writer=rv.KeyedArchive(key="uid", score="reward"))
    for uid, score, n in offers:
        arc.extend(uid=torch.tensor([uid]), reward=torch.tensor([float(score)]),
                   ids=[torch.full((n,), uid)], logp=[torch.full((n,), float(score))])
        keys = arc.keys()
        got = arc.get(keys) if len(keys) else None
        stats = arc.stats()
        assert stats["arena_used_bytes"] <= arena and len(keys) <= capacity
        if got is None:
            continue
        uids = got["uid"].tolist()
        assert len(set(uids)) == len(uids)  # one entry per key
        assert arc.writer.lookup(uids).tolist() == keys.tolist()  # the index names exactly the held items
        for j, u in enumerate(uids):  # every item whole and its own
            a, b = int(got.cu_seqlens[j]), int(got.cu_seqlens[j + 1])
            assert bool((got["ids"][a:b] == u).all()) and bool((got["logp"][a:b] == got["reward"][j]).all())
        blocks = sum(max(8, -(-int(n) * 8 // 8) * 8 + -(-int(n) * 4 // 8) * 8) for n in got.lengths.tolist())
        assert stats["arena_held_bytes"] == blocks


def test_extend_forms_and_scalar_items():
    spec = {"ids": rv.Field("int64", (None,)), "w": rv.Field("bfloat16", (None,), group="tokens")}
    buf = rv.TrajectoryBuffer(8, spec, seed=0, arena_bytes=4096)
    buf.extend(ids=[np.arange(2), [5, 6, 7]], w=[torch.ones(2, dtype=torch.bfloat16), torch.zeros(3, dtype=torch.bfloat16)])
    got = buf.get(buf.keys())
    assert got["ids"].tolist() == [0, 1, 5, 6, 7] and got["w"].dtype == torch.bfloat16
    assert got["w"].float().tolist() == [1, 1, 0, 0, 0]
    with pytest.raises(ValueError, match="a scalar item"):
        buf.extend(ids=[torch.tensor(3)], w=[torch.ones(1, dtype=torch.bfloat16)])
    with pytest.raises(ValueError, match="a scalar item"):
        buf.extend(ids=[np.int64(3)], w=[torch.ones(1, dtype=torch.bfloat16)])
    assert len(buf) == 2
