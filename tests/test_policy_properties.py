"""Property-based interleavings of add / extend / sample / update_priorities / get / version for
every allowed combination of writer x admission x remover x sampler (x metadata), checked
step by step against the plain-Python policy model (tests/policy_reference.py): the items
held, every sampled key and row, the metadata of batches and of get, stale-update counts,
refusals of batches the buffer cannot give, and every refused combination's error.
"""

from __future__ import annotations

import itertools
from typing import Any, Dict, List, Optional

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from policy_reference import PolicyModel

import reverie as rv
from reverie._table import Table

CAPACITY = 6
SCORES = [0.0, 0.25, 0.5, 0.5, 1.0, 2.0]  # ties on purpose
PRIORITIES = [0.25, 0.5, 1.5, 2.0, 3.0, 4.0]  # exact in fixed point (q = p with alpha 1, eps 0)

WRITERS = ["fifo", "reservoir", "keep_top_k", "keep_top_k_priority"]
ADMISSIONS = [None, "threshold", "callable"]
REMOVERS = [None, 1, 2]
SAMPLERS = ["uniform", "uniform_distinct", "prioritized"]


def allowed(writer: str, remover: Optional[int], sampler: str) -> bool:
    if writer == "reservoir" and remover is not None:
        return False  # the reservoir's k/n guarantee does not survive removals
    if writer == "keep_top_k_priority" and sampler != "prioritized":
        return False
    return True


COMBOS = [c for c in itertools.product(WRITERS, ADMISSIONS, REMOVERS, SAMPLERS) if allowed(c[0], c[2], c[3])]
REFUSED = [c for c in itertools.product(WRITERS, [None], REMOVERS, SAMPLERS) if not allowed(c[0], c[2], c[3])]


def keep_odd_or_big(row: Dict[str, Any]) -> bool:
    return bool(row["id"] % 2 == 1 or row["score"] >= 1.0)


def make(writer: str, admission: Optional[str], remover: Optional[int], sampler: str,
         metadata: bool, seed: int) -> "tuple[rv.ReplayBuffer, PolicyModel]":
    parts: Dict[str, Any] = {
        "fifo": rv.Fifo(), "reservoir": rv.Reservoir(), "keep_top_k": rv.KeepTopK(score="score"),
        "keep_top_k_priority": rv.KeepTopK(score="priority")}
    samplers: Dict[str, Any] = {"uniform": rv.Uniform(), "uniform_distinct": rv.Uniform(replacement=False),
                                "prioritized": rv.Prioritized(alpha=1.0, eps=0.0)}
    admit: Any = None
    if admission == "threshold":
        admit = rv.Threshold("score", 0.5)
    elif admission == "callable":
        admit = lambda b: (b["id"] % 2 == 1) | (b["score"] >= 1.0)  # noqa: E731
    spec = {"id": ("int64", ()), "score": ("float32", ()), "obs": ("float32", (2,))}
    buf = rv.ReplayBuffer(CAPACITY, spec, sampler=samplers[sampler], seed=seed, writer=parts[writer],
                          admit=admit, max_times_sampled=remover, metadata=metadata)
    model = PolicyModel(
        CAPACITY, seed, writer="keep_top_k" if writer.startswith("keep_top_k") else writer,
        score="priority" if writer == "keep_top_k_priority" else "score",
        threshold=0.5 if admission == "threshold" else None, threshold_field="score",
        keep=keep_odd_or_big if admission == "callable" else None, max_times=remover)
    return buf, model


def rows_of(first: int, scores: List[float]) -> Dict[str, np.ndarray]:
    i = np.arange(first, first + len(scores))
    return {"id": i.astype(np.int64), "score": np.asarray(scores, np.float32),
            "obs": np.stack([i, -i], 1).astype(np.float32)}


def as_rows(batch: Dict[str, np.ndarray]) -> List[Dict[str, Any]]:
    return [{k: v[j] for k, v in batch.items()} for j in range(len(batch["id"]))]


def held(buf: rv.ReplayBuffer) -> List[int]:
    keys = buf._table.stored_keys()
    return sorted(buf.get(keys)["id"].tolist()) if len(keys) else []


def check_same(buf: rv.ReplayBuffer, model: PolicyModel) -> None:
    assert len(buf) == len(model)
    assert held(buf) == sorted(int(it.row["id"]) for it in model.stored())
    assert sorted(buf._table.stored_keys().tolist()) == sorted(it.key for it in model.stored())
    assert buf.stale_updates == model.stale


def check_meta(meta: Dict[str, torch.Tensor], items: list, call: Optional[int]) -> None:
    """Batch metadata: per position, as the item's record was just before that draw (draws
    earlier in the same batch count); a get (call None) shows the records as they are."""
    times: Dict[int, int] = {}
    last: Dict[int, int] = {}
    for j, it in enumerate(items):
        assert meta["inserted"][j].item() == it.insertion
        assert meta["version"][j].item() == it.version
        assert meta["times_sampled"][j].item() == it.times + times.get(it.key, 0)
        assert meta["last_sampled"][j].item() == last.get(it.key, it.last)
        if call is not None:
            times[it.key] = times.get(it.key, 0) + 1
            last[it.key] = call


ops = st.lists(st.one_of(
    st.tuples(st.just("extend"), st.lists(st.sampled_from(SCORES), min_size=1, max_size=2 * CAPACITY + 1)),
    st.tuples(st.just("add"), st.sampled_from(SCORES)),
    st.tuples(st.just("sample"), st.integers(1, CAPACITY + 2)),
    st.tuples(st.just("update"), st.lists(st.sampled_from(PRIORITIES), min_size=1, max_size=CAPACITY)),
    st.tuples(st.just("get"), st.integers(0, 3)),
    st.tuples(st.just("version"), st.integers(0, 5)),
    st.tuples(st.just("fields"), st.integers(1, 2 * CAPACITY)),
), min_size=1, max_size=25)


@pytest.mark.parametrize("writer, admission, remover, sampler", COMBOS,
                         ids=["-".join(str(x) for x in c) for c in COMBOS])
@settings(max_examples=25, deadline=None)
@given(ops=ops, metadata=st.booleans(), seed=st.integers(0, 2**32))
def test_interleavings_match_the_model(writer, admission, remover, sampler, ops, metadata, seed):
    buf, model = make(writer, admission, remover, sampler, metadata, seed)
    distinct = sampler == "uniform_distinct"
    next_id = 0
    sampled_keys: List[int] = []
    for op, arg in ops:
        if op in ("extend", "add"):
            batch = rows_of(next_id, arg if op == "extend" else [arg])
            next_id += len(batch["id"])
            want = model.offer(as_rows(batch))
            if op == "extend":
                got = buf.extend(**batch)
            else:
                got = buf.add(**{k: v[0] for k, v in batch.items()})
            assert got == want
        elif op == "sample":
            most: float = len(model)  # the largest batch the buffer can give now
            if not distinct and most:
                most = model.samples_left()  # infinite without a remover
            if most == 0 or arg > most:
                before = buf.stats()
                with pytest.raises(ValueError):
                    buf.sample(arg)
                assert held(buf) == sorted(int(it.row["id"]) for it in model.stored())
                assert buf.stats()["table.written"] == before["table.written"]
                continue
            call = buf.stats()["table.sample_calls"]
            b = buf.sample(arg)
            keys = b.indices.tolist()
            items = [model.item(k) for k in keys]
            assert None not in items, f"sampled keys {keys}, held {[it.key for it in model.stored()]}"
            if distinct:
                assert len(set(keys)) == len(keys)
            assert b["id"].tolist() == [int(it.row["id"]) for it in items]
            assert torch.equal(b["obs"], torch.tensor(np.stack([it.row["obs"] for it in items])))
            if metadata:
                check_meta(b.meta, items, call)
            else:
                assert b.meta is None
            if sampler == "prioritized":
                assert b.weights is not None and torch.isfinite(b.weights).all()
            model.sampled(keys, call)
            sampled_keys = keys
        elif op == "update":
            if sampler != "prioritized":
                with pytest.raises(ValueError, match="prioritized"):
                    buf.update_priorities(sampled_keys or [0], [1.0] * len(sampled_keys or [0]))
                continue
            keys = list(dict.fromkeys(sampled_keys))[:len(arg)]
            if not keys:
                continue
            prios = arg[:len(keys)]
            assert buf.update_priorities(keys, prios) == model.update(keys, prios)
        elif op == "get":
            stored = [it.key for it in model.stored()]
            if stored and arg < 3:
                keys = [stored[(arg * 7 + j) % len(stored)] for j in range(arg + 1)]
                g = buf.get(keys)
                items = [model.item(k) for k in keys]
                assert g["id"].tolist() == [int(it.row["id"]) for it in items]
                assert torch.equal(g["obs"], torch.tensor(np.stack([it.row["obs"] for it in items])))
                if metadata:
                    check_meta(g.meta, items, None)
            else:  # a key no longer (or never) stored
                gone = [k for k in sampled_keys if model.item(k) is None]
                key = gone[0] if gone else (1 << 20)
                with pytest.raises(IndexError):
                    buf.get([key])
        elif op == "version":
            buf.version = arg
            model.version = arg
        elif op == "fields":
            # In-place updates of the last sampled keys (some may have left since), with a
            # repeated key; the scored field only where no writer ranks by it.
            keys = (sampled_keys + sampled_keys[:1])[:arg]
            if not keys:
                continue
            obs = np.stack([np.arange(len(keys)) + 100.0 * arg, -np.ones(len(keys))], 1).astype(np.float32)
            values: Dict[str, Any] = {"obs": obs}
            if writer != "keep_top_k":
                values["score"] = np.full(len(keys), 0.25 * arg, np.float32)
            assert buf.update_fields(keys, **values) == model.update_fields(keys, **values)
        check_same(buf, model)


@pytest.mark.parametrize("writer, admission, remover, sampler", REFUSED,
                         ids=["-".join(str(x) for x in c) for c in REFUSED])
def test_refused_combinations_say_why(writer, admission, remover, sampler):
    with pytest.raises(ValueError) as err:
        make(writer, admission, remover, sampler, False, 0)
    message = str(err.value)
    if writer == "reservoir":
        assert "reservoir writer cannot be combined with max_times_sampled" in message
    else:
        assert "needs the prioritized sampler" in message


@pytest.mark.parametrize("writer", [{"kind": "reservoir"}, {"kind": "keep_top_k", "score": "reward"}])
def test_episode_tables_refuse_non_fifo_writers(writer):
    """EpisodeBuffer takes no writer (its view needs env streams in FIFO order); a
    configuration that asks for one anyway is refused by the table itself."""
    spec = {"obs": ("float32", (2,)), "reward": ("float32", ()), "terminated": ("bool", ()),
            "truncated": ("bool", ())}
    with pytest.raises(TypeError, match="writer"):
        rv.EpisodeBuffer(16, spec, writer=rv.Reservoir())
    config = dict(rv.EpisodeBuffer(16, spec, seed=0)._table.config)
    config["writer"] = writer
    with pytest.raises(ValueError, match=f"FIFO order: it cannot be combined with the {writer['kind']} writer"):
        Table.create(config)
