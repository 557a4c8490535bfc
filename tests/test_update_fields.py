"""In-place updates of stored fields (``buf.update_fields(keys, **fields)``): values per key or
one for all, the forms users pass (tensors, arrays, numbers, an alias), stale keys skipped and
counted, every refusal leaving the buffer unchanged, writers and views that index a field
refusing it, other processes of a shared buffer, and samplers racing an updater never seeing
an item half updated."""

from __future__ import annotations

import multiprocessing as mp
import threading
from typing import Any, Dict

import numpy as np
import pytest
import torch

import reverie as rv

SPEC = {"id": ("int64", ()), "adv": ("float32", ()), "logits": ("float32", (4,)), "label": ("int16", ())}


def rows(first: int, n: int) -> Dict[str, np.ndarray]:
    i = np.arange(first, first + n)
    return {"id": i.astype(np.int64), "adv": i.astype(np.float32),
            "logits": np.repeat(i[:, None], 4, 1).astype(np.float32), "label": (i % 7).astype(np.int16)}


def snapshot(buf: rv.ReplayBuffer) -> Dict[str, Any]:
    return {"columns": {k: v.clone() for k, v in buf.columns.items()}, "stats": buf.stats()}


def assert_unchanged(buf: rv.ReplayBuffer, before: Dict[str, Any]) -> None:
    for k, v in buf.columns.items():
        assert torch.equal(v, before["columns"][k]), k
    assert buf.stats() == before["stats"]


@pytest.fixture
def buf() -> rv.ReplayBuffer:
    b = rv.ReplayBuffer(16, SPEC, seed=0)
    b.extend(**rows(0, 10))
    return b


def test_values_per_key_and_one_for_all(buf):
    keys = buf.sample(5).indices
    ids = buf.get(keys)["id"]
    assert buf.update_fields(keys, adv=torch.arange(5, dtype=torch.float32) * 10) == 0
    got = buf.get(keys)
    assert got["adv"].tolist() == [0.0, 10.0, 20.0, 30.0, 40.0] or len(set(keys.tolist())) < 5
    assert torch.equal(got["id"], ids)  # other fields untouched
    one = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    assert buf.update_fields(keys, logits=one, label=3) == 0  # one item's shape, a number
    got = buf.get(keys)
    assert (got["logits"] == torch.from_numpy(one)).all() and (got["label"] == 3).all()


def test_a_repeated_key_keeps_the_last_value_and_aliases_work(buf):
    key = int(buf.sample(1).indices[0])
    update = buf.update_fields  # an alias taken once, as actor code does
    update([key, key, key], adv=np.array([1, 2, 3], np.float32))
    assert buf.get([key])["adv"].item() == 3.0
    update(torch.tensor([key]), adv=torch.tensor([7.5]))
    assert buf.get([key])["adv"].item() == 7.5
    rv.ReplayBuffer.update_fields(buf, [key], adv=np.array([8.0], np.float32))
    assert buf.get([key])["adv"].item() == 8.0


def test_stale_keys_are_skipped_and_counted(buf):
    old = buf.sample(8).indices
    buf.extend(**rows(10, 16))  # every slot written again
    fresh = buf.sample(4).indices
    assert buf.update_fields(torch.cat([old, fresh]), adv=np.full(12, -1.0, np.float32)) == 8
    assert buf.stale_updates == 8
    assert (buf.get(fresh)["adv"] == -1.0).all()
    held = buf.get(buf._table.stored_keys())
    assert (held["adv"] == -1.0).sum() == len(set(fresh.tolist()))  # nothing else touched


@pytest.mark.parametrize("call, error, match", [
    (lambda b, k: b.update_fields(k, nope=np.zeros(len(k), np.float32)), ValueError, "unknown field 'nope'"),
    (lambda b, k: b.update_fields(k, adv=np.zeros(len(k), np.float64)), TypeError, "expected dtype float32"),
    (lambda b, k: b.update_fields(k, adv=np.zeros(len(k) + 1, np.float32)), ValueError, "expected shape"),
    (lambda b, k: b.update_fields(k, logits=np.zeros((len(k), 3), np.float32)), ValueError, "expected shape"),
    (lambda b, k: b.update_fields(k, label=70000), ValueError, "does not fit"),
    (lambda b, k: b.update_fields(k, label=1.5), TypeError, "float"),
    (lambda b, k: b.update_fields(list(k) + [1 << 40], adv=np.zeros(len(k) + 1, np.float32)), IndexError,
     "position 3"),
    (lambda b, k: b.update_fields(np.array([0.5]), adv=1.0), TypeError, "integers"),
])
def test_bad_input_changes_nothing(buf, call, error, match):
    keys = buf.sample(3).indices.tolist()
    before = snapshot(buf)
    with pytest.raises(error, match=match):
        call(buf, keys)
    assert_unchanged(buf, before)


def test_an_empty_buffer_refuses_keys_and_accepts_none():
    for b, says in ((rv.ReplayBuffer(4, SPEC), "never written"), (rv.ReplayBuffer(4), "empty")):
        assert b.update_fields([], adv=1.0) == 0
        with pytest.raises(IndexError, match=says):
            b.update_fields([0], adv=1.0)


@pytest.mark.parametrize("writer", [rv.Fifo(), rv.Reservoir(), rv.KeepTopK(score="adv")])
def test_every_writer(writer):
    b = rv.ReplayBuffer(8, SPEC, writer=writer, seed=1)
    b.extend(**rows(0, 30))
    keys = b._table.stored_keys()
    assert b.update_fields(keys, logits=np.full((len(keys), 4), 9.0, np.float32)) == 0
    assert (b.get(keys)["logits"] == 9.0).all()


def test_a_ranked_or_indexed_field_is_refused_with_the_reason():
    top = rv.ReplayBuffer(8, SPEC, writer=rv.KeepTopK(score="adv"), seed=1)
    top.extend(**rows(0, 20))
    keys = top._table.stored_keys()
    before = snapshot(top)
    with pytest.raises(ValueError, match="keep_top_k writer ranks"):
        top.update_fields(keys, logits=np.zeros((len(keys), 4), np.float32), adv=np.zeros(len(keys), np.float32))
    assert_unchanged(top, before)
    ep = rv.EpisodeBuffer(8, num_envs=1, obs_fields=("obs",), seed=0)
    step = {"obs": np.zeros((1, 2), np.float32), "action": np.zeros(1, np.int64),
            "reward": np.ones(1, np.float32), "terminated": np.zeros(1, bool), "truncated": np.zeros(1, bool)}
    for _ in range(4):
        ep.extend(**step)
    keys = ep._table.stored_keys()
    with pytest.raises(ValueError, match="episode boundaries"):
        ep.update_fields(keys, terminated=True)
    assert ep.update_fields(keys, reward=np.arange(4, dtype=np.float32)) == 0  # rewards may change
    assert ep.get(keys)["reward"].tolist() == [0.0, 1.0, 2.0, 3.0]
    out = ep.sample(64, n_step=1, gamma=0.9)
    assert set(out["return"].tolist()) <= {0.0, 1.0, 2.0}  # the last step has no next obs yet


def test_updates_survive_a_checkpoint(tmp_path, buf):
    keys = buf._table.stored_keys()
    buf.update_fields(keys, adv=np.full(len(keys), 5.0, np.float32))
    buf.save(tmp_path / "b.rvr")
    loaded = rv.ReplayBuffer.load(tmp_path / "b.rvr")
    assert (loaded.get(keys)["adv"] == 5.0).all()


def _update_in_child(buf: rv.ReplayBuffer, keys: list) -> None:
    buf.update_fields(keys, label=np.full(len(keys), 6, np.int16))


def test_another_process_updates_a_shared_buffer():
    b = rv.ReplayBuffer(32, SPEC, storage="shared", seed=0)
    try:
        b.extend(**rows(0, 20))
        keys = b._table.stored_keys()[:10].tolist()
        p = mp.get_context("spawn").Process(target=_update_in_child, args=(b, keys))
        p.start()
        p.join(120)
        assert p.exitcode == 0
        assert (b.get(keys)["label"] == 6).all()
        assert (b.get(b._table.stored_keys()[10:])["label"] != 6).any()
    finally:
        b.close()


def test_samplers_racing_an_updater_never_see_a_half_updated_item():
    """Each update rewrites whole rows of 1 KiB (all elements one value); a sampler or get
    that copied a row while it changed would see two values in it."""
    width = 256
    b = rv.ReplayBuffer(512, {"v": ("float32", (width,)), "w": ("float32", (width,))}, seed=0)
    b.extend(v=np.zeros((512, width), np.float32), w=np.zeros((512, width), np.float32))
    keys = b._table.stored_keys()
    stop = threading.Event()
    torn = []

    def updater() -> None:
        value = 0.0
        while not stop.is_set():
            value += 1.0
            b.update_fields(keys, v=np.full(width, value, np.float32), w=np.full(width, -value, np.float32))

    def sampler() -> None:
        for i in range(400):
            batch = b.sample(128) if i % 2 else b.get(keys[:128])
            v, w = batch["v"], batch["w"]
            rows_ok = (v.min(1).values == v.max(1).values) & (w.min(1).values == w.max(1).values) & (v[:, 0] == -w[:, 0])
            if not bool(rows_ok.all()):
                torn.append(i)

    t = threading.Thread(target=updater)
    t.start()
    samplers = [threading.Thread(target=sampler) for _ in range(2)]
    for s in samplers:
        s.start()
    for s in samplers:
        s.join()
    stop.set()
    t.join()
    assert torn == []
    assert b.stats()["table.stale_updates"] == 0
