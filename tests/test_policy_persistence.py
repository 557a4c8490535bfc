"""Every policy survives every way a buffer is kept or shared:

- checkpoint (save/load), state_dict/load_state_dict, npz (to_npz/from_npz) and memmap
  (close, reopen the path): the restored buffer makes exactly the next 1000 sample batches
  (keys, rows, weights, metadata) and the next 1000 admission/eviction decisions (extend's
  counts and every counter) of a twin that was never interrupted (same seed, same calls);
- shared memory: a writer process and the parent sampling at once, with each policy; what
  the table holds afterwards is what the policy says it must hold.

Worker functions are module-level (spawn pickles them by name).
"""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path
from typing import Any, Callable, Dict, List

import numpy as np
import pytest
import torch
from memory_reference import ArchiveModel

import reverie as rv

SPEC = {"id": ("int64", ()), "score": ("float32", ()), "obs": ("float32", (3,)), "cls": ("int16", ()), "cell": ("int32", ())}
CAPACITY = 64


def policy_kwargs(name: str) -> Dict[str, Any]:
    return {
        "reservoir": dict(writer=rv.Reservoir()),
        "reservoir_threshold": dict(writer=rv.Reservoir(), admit=rv.Threshold("score", 0.3)),
        "top_k_mts_meta": dict(writer=rv.KeepTopK(score="score"), max_times_sampled=2, metadata=True),
        "top_k_priority": dict(writer=rv.KeepTopK(score="priority"), sampler=rv.Prioritized(alpha=0.6)),
        "fifo_consume_distinct": dict(max_times_sampled=1, sampler=rv.Uniform(replacement=False)),
        "fifo_meta_prioritized": dict(metadata=True, sampler=rv.Prioritized(), admit=rv.Threshold("score", 0.2)),
        "class_balanced_meta": dict(writer=rv.ClassBalanced(label="cls", max_classes=16), metadata=True),
        "class_balanced_prioritized": dict(writer=rv.ClassBalanced(label="cls"), sampler=rv.Prioritized(),
                                           admit=rv.Threshold("score", 0.1)),
        "archive_meta": dict(writer=rv.KeyedArchive(key="cell", score="score", tiebreak="id"), metadata=True),
        "archive_prioritized": dict(writer=rv.KeyedArchive(key="cell", score="score", tiebreak_order="max"),
                                    sampler=rv.Prioritized()),
        "fifo_pins_prioritized": dict(writer=rv.Fifo(pins=True), sampler=rv.Prioritized(), metadata=True),
        "reservoir_pins": dict(writer=rv.Reservoir(pins=True)),
        "quotas_prioritized": dict(writer=rv.Quotas(group="cls", max_groups=8), sampler=rv.Prioritized()),
    }[name]


POLICIES = ["reservoir", "reservoir_threshold", "top_k_mts_meta", "top_k_priority",
            "fifo_consume_distinct", "fifo_meta_prioritized", "class_balanced_meta",
            "class_balanced_prioritized", "archive_meta", "archive_prioritized", "fifo_pins_prioritized",
            "reservoir_pins", "quotas_prioritized"]


def pins(buf: rv.ReplayBuffer) -> bool:
    return bool(getattr(buf.writer, "pins", False))


def rows(first: int, n: int) -> Dict[str, np.ndarray]:
    i = np.arange(first, first + n)
    score = ((i * 2654435761) % 1000 / 1000.0).astype(np.float32)  # distinct-ish, spread
    cls = np.where(i % 10 < 6, 0, i % 5)  # imbalanced: class 0 most of the stream
    return {"id": i.astype(np.int64), "score": score,
            "obs": np.stack([i, -i, 2 * i], 1).astype(np.float32), "cls": cls.astype(np.int16),
            "cell": (i * 7919 % 97).astype(np.int32)}


def step(buf: rv.ReplayBuffer, i: int) -> Dict[str, Any]:
    """One step of the continuation: offer 3 items, sample 4, update their priorities."""
    out: Dict[str, Any] = {"stored": buf.extend(**rows(10_000 + 3 * i, 3))}
    if pins(buf):  # pins and releases along the way (never all: 64 slots)
        if i % 50 == 7:
            out["pin"] = buf.pin(buf.keys()[-2:])
        if i % 50 == 33:
            out["unpin"] = buf.unpin(buf.keys()[:3])
        out["pinned"] = buf.pinned
    n = min(4, len(buf))
    if n:
        b = buf.sample(n)
        out["keys"] = b.indices.tolist()
        out["ids"] = b["id"].tolist()
        out["obs"] = b["obs"].clone()
        out["weights"] = None if b.weights is None else b.weights.clone()
        out["meta"] = None if b.meta is None else {k: v.tolist() for k, v in b.meta.items()}
        if isinstance(buf._sampler, rv.Prioritized):
            buf.update_priorities(b.indices, (b["id"] % 7).double() + 0.5)
    out["stats"] = buf.stats()
    return out


def warm_up(buf: rv.ReplayBuffer) -> None:
    """Fills past capacity with evictions, removals and priority updates on the way."""
    buf.version = 3
    for i in range(12):
        buf.extend(**rows(i * 20, 20))
        if i % 3 == 2:
            buf.version += 1
        b = buf.sample(min(8, len(buf)))
        if isinstance(buf._sampler, rv.Prioritized):
            buf.update_priorities(b.indices, (b["id"] % 5).double() + 0.25)
        if pins(buf) and i == 3:
            assert buf.pin(buf.keys()[::4]) == 16
        if pins(buf) and i == 9:
            buf.unpin(buf.keys()[::3])
    if pins(buf):
        assert 0 < buf.pinned < CAPACITY


def assert_same_future(restored: rv.ReplayBuffer, twin: rv.ReplayBuffer, steps: int = 1000) -> None:
    assert restored.stats() == twin.stats()
    assert len(restored) == len(twin)
    assert restored.version == twin.version
    for i in range(steps):
        a, b = step(restored, i), step(twin, i)
        for k in ("stored", "keys", "ids", "meta", "stats", "pin", "unpin", "pinned"):
            assert a.get(k) == b.get(k), f"step {i}: {k} differs: {a.get(k)} != {b.get(k)}"
        if "obs" in a:
            assert torch.equal(a["obs"], b["obs"]), f"step {i}"
            if a["weights"] is not None:
                assert torch.equal(a["weights"], b["weights"]), f"step {i}"
    keys_a, keys_b = restored._table.stored_keys(), twin._table.stored_keys()
    assert np.array_equal(keys_a, keys_b)
    assert torch.equal(restored.get(keys_a)["obs"], twin.get(keys_b)["obs"])


def fresh(policy: str, **kw: Any) -> rv.ReplayBuffer:
    return rv.ReplayBuffer(CAPACITY, SPEC, seed=17, **policy_kwargs(policy), **kw)


def via_checkpoint(buf: rv.ReplayBuffer, tmp: Path) -> rv.ReplayBuffer:
    buf.save(tmp / "buf.rvb")
    return rv.ReplayBuffer.load(tmp / "buf.rvb")


def via_state_dict(buf: rv.ReplayBuffer, tmp: Path) -> rv.ReplayBuffer:
    state = buf.state_dict()
    policy = buf._test_policy  # type: ignore[attr-defined]
    other = rv.ReplayBuffer(CAPACITY, SPEC, seed=1, **policy_kwargs(policy))  # another seed: adopted
    other.load_state_dict(state)
    return other


def via_npz(buf: rv.ReplayBuffer, tmp: Path) -> rv.ReplayBuffer:
    rv.to_npz(buf, tmp / "buf.npz")
    return rv.from_npz(tmp / "buf.npz")


ROUTES: Dict[str, Callable[[rv.ReplayBuffer, Path], rv.ReplayBuffer]] = {
    "checkpoint": via_checkpoint, "state_dict": via_state_dict, "npz": via_npz}


@pytest.mark.parametrize("route", sorted(ROUTES))
@pytest.mark.parametrize("policy", POLICIES)
def test_restored_policy_continues_exactly(policy, route, tmp_path):
    buf = fresh(policy)
    buf._test_policy = policy  # type: ignore[attr-defined]
    warm_up(buf)
    restored = ROUTES[route](buf, tmp_path)
    twin = fresh(policy)
    warm_up(twin)
    assert type(restored) is rv.ReplayBuffer
    assert restored._writer.config() == twin._writer.config()
    assert_same_future(restored, twin)


@pytest.mark.parametrize("policy", POLICIES)
def test_memmap_reopen_restores_the_policy_state(policy, tmp_path):
    path = tmp_path / "buf.mm"
    buf = fresh(policy, storage="memmap", path=path)
    warm_up(buf)
    buf.close()
    reopened = rv.ReplayBuffer(CAPACITY, storage="memmap", path=path)  # all from the file
    twin = fresh(policy)
    warm_up(twin)
    assert reopened._writer.config() == twin._writer.config()
    assert_same_future(reopened, twin, steps=300)
    reopened.close()
    other = {"writer": rv.KeepTopK(score="id")} if "fifo" in policy else {"writer": rv.Fifo()}
    with pytest.raises(ValueError, match="other settings than this call's: writer"):
        rv.ReplayBuffer(CAPACITY, SPEC, storage="memmap", path=path, **other)  # named: must match


# ---- shared memory: a writer process and a sampling parent ---------------------------------


def _writer(buf: rv.ReplayBuffer, first: int, n: int, go: Any) -> None:
    go.wait()
    buf.version = 9
    for i in range(first, first + n, 25):
        buf.extend(**rows(i, 25))


def _sampler(buf: rv.ReplayBuffer, n: int, out: Any) -> None:
    ids: List[int] = []
    for _ in range(n):
        try:
            ids += buf.sample(5)["id"].tolist()
        except ValueError:  # drained (consume-once) or empty for a moment
            pass
    out.put(ids)


@pytest.mark.parametrize("policy", POLICIES)
def test_shared_policy_with_a_writer_and_a_sampler_process(policy):
    ctx = mp.get_context("fork")
    buf = fresh(policy, storage="shared")
    buf.extend(**rows(0, 50))
    if pins(buf):
        assert buf.pin(buf.keys()[:10]) == 10  # ids 0..9 stay whatever the child writes
    go = ctx.Event()
    results = ctx.Queue()
    writer = ctx.Process(target=_writer, args=(buf, 50, 1000, go))
    sampler = ctx.Process(target=_sampler, args=(buf, 150, results))
    writer.start()
    sampler.start()
    go.set()
    mine: List[int] = []
    for _ in range(150):
        try:
            mine += buf.sample(5)["id"].tolist()
        except ValueError:
            pass
    theirs = results.get(timeout=120)
    writer.join(120)
    sampler.join(120)
    assert writer.exitcode == 0 and sampler.exitcode == 0
    offered = rows(0, 1050)
    keys = buf._table.stored_keys()
    held = buf.get(keys)
    ids = held["id"].numpy()
    stats = buf.stats()
    assert len(set(ids.tolist())) == len(ids) and set(ids.tolist()) <= set(range(1050))
    assert torch.equal(held["obs"], torch.from_numpy(offered["obs"][ids]))  # no torn rows
    if pins(buf):
        assert set(range(10)) <= set(ids.tolist()) and buf.pinned == 10
    if policy == "fifo_pins_prioritized":  # the other 54 slots hold the last 54 writes
        assert sorted(ids.tolist()) == list(range(10)) + list(range(1050 - (CAPACITY - 10), 1050))
    if policy.startswith("reservoir"):
        admitted = offered["score"] >= 0.3 if "threshold" in policy else np.ones(1050, bool)
        assert stats["reservoir.offers"] == int(admitted.sum())
        assert len(buf) == CAPACITY and admitted[ids].all()
        if "threshold" in policy:
            assert stats["threshold.dropped"] == int((~admitted).sum())
    if policy == "top_k_mts_meta":
        counts: Dict[int, int] = {}
        for i in mine + theirs:
            counts[i] = counts.get(i, 0) + 1
        assert max(counts.values()) <= 2  # never sampled a third time, across processes
        assert (held.meta["times_sampled"] < 2).all()
        assert not {i for i, c in counts.items() if c == 2} & set(ids.tolist())  # used up: gone
        assert stats["keep_top_k.offers"] == 1050
        assert stats["table.written"] == 1050 - stats["keep_top_k.rejected"]
    if policy == "fifo_consume_distinct":
        both = mine + theirs
        assert len(both) == len(set(both))  # consume-once: no item came back twice
        assert not set(both) & set(ids.tolist())  # and a sampled item is no longer held
        assert (ids >= 1050 - CAPACITY).all()  # the ring holds only the last `capacity` writes
    if "meta" in policy:
        written_by_child = torch.from_numpy(ids >= 50)
        assert torch.equal(held.meta["version"], torch.where(written_by_child, 9, 0))
    if policy == "top_k_priority":
        assert len(buf) == CAPACITY
    if policy.startswith("archive"):
        # What the archive's rule leaves after one writer's sequence of offers (the model).
        model = ArchiveModel(CAPACITY, tiebreak_min=policy == "archive_meta")
        for j in range(1050):
            tb = float(offered["id"][j]) if policy == "archive_meta" else 0.0
            model.offer(int(offered["cell"][j]), float(offered["score"][j]), tb, j)
        assert sorted(ids.tolist()) == sorted(e[3] for e in model.entries.values())
    if policy.startswith("quotas"):  # water-filling within 1, each group's newest items
        n = np.bincount(offered["cls"], minlength=5)
        held_counts = np.bincount(held["cls"].numpy(), minlength=5)
        tau = max(t for t in range(CAPACITY + 1) if np.minimum(n, t).sum() <= CAPACITY)
        assert (np.abs(held_counts - np.minimum(n, tau)) <= 1).all(), (held_counts, n, tau)
        for g in range(5):
            of_g = np.flatnonzero(offered["cls"] == g)
            assert sorted(ids[held["cls"].numpy() == g].tolist()) == of_g[len(of_g) - held_counts[g]:].tolist()
    if policy.startswith("class_balanced"):
        # Water-filling of what was offered (the sequence of offers is one writer's), within 1.
        admitted = offered["score"] >= 0.1 if "prioritized" in policy else np.ones(1050, bool)
        n = np.bincount(offered["cls"][admitted], minlength=5)
        held_counts = np.bincount(held["cls"].numpy(), minlength=5)
        assert buf.writer.counts() == {c: int(held_counts[c]) for c in range(5) if n[c]}
        assert buf.writer.offered() == {c: int(n[c]) for c in range(5) if n[c]}
        tau = max(t for t in range(CAPACITY + 1) if np.minimum(n, t).sum() <= CAPACITY)
        assert len(buf) == CAPACITY
        assert (np.abs(held_counts - np.minimum(n, tau)) <= 1).all(), (held_counts, n, tau)
    buf.close()
