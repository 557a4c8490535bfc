"""Writes through method aliases: ``add = buf.add`` / ``ext = buf.extend`` taken at any time
(before the first write, after it, after the spec was given up front) store every item, for
every buffer class and storage. A real client once lost everything but the last call's rows:
50 extends of 1,000 rows through an alias taken before the first write left 1,000 items.
"""

from __future__ import annotations

import gc
import threading
import weakref

import numpy as np
import pytest
import torch

import reverie as rv

SPEC = {"obs": ("float32", (3,)), "action": ("int64", ()), "reward": ("float32", ()),
        "terminated": ("bool", ()), "truncated": ("bool", ())}


def rows(start: int, n: int) -> dict:
    i = np.arange(start, start + n)
    return {"obs": np.stack([i, -i, 2 * i], 1).astype(np.float32), "action": i.astype(np.int64),
            "reward": i.astype(np.float32), "terminated": np.zeros(n, bool),
            "truncated": np.zeros(n, bool)}


def one(i: int) -> dict:
    return {name: value[0] for name, value in rows(i, 1).items()}


def make(kind: str, tmp_path, spec) -> object:
    if kind == "memory":
        return rv.ReplayBuffer(100_000, spec, seed=0)
    if kind == "shared":
        return rv.ReplayBuffer(100_000, SPEC, seed=0, storage="shared")
    if kind == "memmap":
        return rv.ReplayBuffer(100_000, SPEC, seed=0, storage="memmap", path=tmp_path / "b.rvb")
    if kind == "episodes":
        return rv.EpisodeBuffer(100_000, spec, seed=0)
    if kind == "episodes-shared":
        return rv.EpisodeBuffer(100_000, SPEC, seed=0, storage="shared")
    if kind == "device-cpu":
        return rv.DeviceReplayBuffer(100_000, spec, seed=0, device="cpu")
    raise AssertionError(kind)


KINDS = ["memory", "shared", "memmap", "episodes", "episodes-shared", "device-cpu"]
INFERS = ["memory", "episodes", "device-cpu"]  # kinds that may leave the spec to the first write
# (kind, spec given up front): shared and memmap storage always need the spec.
CASES = [(kind, True) for kind in KINDS] + [(kind, False) for kind in INFERS]


def stored_actions(buf) -> list:
    return sorted(buf.columns["action"][: len(buf)].tolist())


@pytest.mark.parametrize(("kind", "given_spec"), CASES)
def test_extend_alias_taken_before_the_first_write_stores_everything(kind, given_spec, tmp_path):
    buf = make(kind, tmp_path, SPEC if given_spec else None)
    ext = buf.extend
    for call in range(50):
        ext(**rows(call * 1000, 1000))
    assert len(buf) == 50_000
    assert stored_actions(buf) == list(range(50_000))
    buf.close()


@pytest.mark.parametrize(("kind", "given_spec"), CASES)
def test_add_alias_taken_before_the_first_write_stores_everything(kind, given_spec, tmp_path):
    buf = make(kind, tmp_path, SPEC if given_spec else None)
    add = buf.add
    for i in range(10):
        add(**one(i))
    assert len(buf) == 10
    assert stored_actions(buf) == list(range(10))
    buf.close()


@pytest.mark.parametrize("kind", INFERS)
def test_aliases_taken_at_different_times_mix(kind, tmp_path):
    """Aliases from before and after the first write, the attribute itself, and the class's
    function, interleaved: every item is stored once."""
    buf = make(kind, tmp_path, None)
    early_add, early_ext = buf.add, buf.extend
    early_ext(**rows(0, 5))
    late_add, late_ext = buf.add, buf.extend
    early_add(**one(5))
    late_ext(**rows(6, 3))
    late_add(**one(9))
    buf.extend(**rows(10, 2))
    type(buf).extend(buf, **rows(12, 2))
    type(buf).add(buf, **one(14))
    assert len(buf) == 15
    assert stored_actions(buf) == list(range(15))


def test_alias_of_a_failed_first_write_infers_again():
    """A first write that fails leaves the buffer unbuilt; the same alias then infers the spec
    from the next write."""
    buf = rv.ReplayBuffer(100, seed=0)
    ext = buf.extend
    with pytest.raises(ValueError):
        ext(a=np.zeros(3, np.float32), b=np.zeros(4, np.float32))  # leading lengths differ
    assert len(buf) == 0 and buf.spec == {}
    ext(a=np.zeros((2, 5), np.float32))
    assert len(buf) == 2 and buf.spec["a"].shape == (5,)


def test_alias_after_close_raises_and_keeps_nothing():
    buf = rv.ReplayBuffer(100, seed=0)
    add = buf.add
    add(x=1)
    buf.close()
    with pytest.raises(ValueError, match="closed"):
        add(x=2)
    with pytest.raises(ValueError, match="closed"):
        buf.extend(x=np.arange(3))


def test_alias_follows_load_state_dict():
    """load_state_dict swaps in a new core; an alias taken before writes into it."""
    src = rv.ReplayBuffer(100, SPEC, seed=0)
    src.extend(**rows(0, 10))
    buf = rv.ReplayBuffer(100, SPEC, seed=0)
    ext = buf.extend
    ext(**rows(100, 5))
    buf.load_state_dict(src.state_dict())
    ext(**rows(10, 5))
    assert stored_actions(buf) == list(range(15))


def test_positional_arguments_are_refused_with_a_hint():
    buf = rv.ReplayBuffer(10, seed=0)
    with pytest.raises(TypeError, match="keyword arguments only"):
        buf.add(1)
    buf.add(x=1)
    with pytest.raises(TypeError, match="keyword arguments only"):
        buf.add(1)
    assert len(buf) == 1


def test_write_functions_keep_no_cycle():
    """The write functions reach the buffer through a weak reference: a buffer (and its
    shared-memory segment) is freed by reference counting alone, aliases or not."""
    buf = rv.ReplayBuffer(10, SPEC, seed=0, storage="shared")
    name = buf.shared_name
    add = buf.add
    add(**one(0))
    ref = weakref.ref(buf)
    gc.disable()
    try:
        del buf
        assert ref() is None
    finally:
        gc.enable()
    with pytest.raises(ValueError, match="no longer exists"):
        add(**one(1))
    import os

    assert not os.path.exists(f"/dev/shm/{name}")


def test_threads_writing_through_one_early_alias():
    """Several threads' first writes race through one alias taken before any write: one infers
    the spec, none is lost."""
    buf = rv.ReplayBuffer(100_000, seed=0)
    ext = buf.extend
    start = threading.Barrier(4)

    def writer(t: int) -> None:
        start.wait()
        for call in range(20):
            ext(action=torch.arange(100, dtype=torch.int64) + (t * 20 + call) * 100)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(buf) == 8000
    assert sorted(buf.columns["action"][:8000].tolist()) == list(range(8000))
