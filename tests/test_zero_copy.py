"""Promise 2: zero-copy. A sampled batch is gathered once into memory its tensors own; `out=`
tensors are filled in place; `columns` are views of the storage itself."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch
from reference import assert_tensor_equal

import reverie as rv

ALL = {
    "b": rv.Field("bool", (3,)), "u8": rv.Field("uint8", (4, 2)), "i8": rv.Field("int8"),
    "i16": rv.Field("int16", (2,)), "i32": rv.Field("int32"), "i64": rv.Field("int64", (1,)),
    "f16": rv.Field("float16", (2, 2)), "bf16": rv.Field("bfloat16", (3,)),
    "f32": rv.Field("float32", (5,)), "f64": rv.Field("float64"),
}


def filled(sampler=None, capacity: int = 16, n: int = 20, seed: int = 0) -> rv.ReplayBuffer:
    buf = rv.ReplayBuffer(capacity, spec=ALL, sampler=sampler or rv.Uniform(), seed=seed)
    gen = torch.Generator().manual_seed(seed)
    values = {}
    for name, f in ALL.items():
        shape = (n, *f.shape)
        if f.dtype == "bool":
            values[name] = torch.rand(shape, generator=gen) > 0.5
        elif f.torch_dtype.is_floating_point:
            values[name] = torch.randn(shape, generator=gen).to(f.torch_dtype)
        else:
            values[name] = torch.randint(0, 100, shape, generator=gen).to(f.torch_dtype)
    buf.extend(**values)
    return buf


def owns_exactly_its_memory(t: torch.Tensor) -> bool:
    return (t._base is None and t.storage_offset() == 0 and t.is_contiguous()
            and t.untyped_storage().nbytes() == t.numel() * t.element_size())


@pytest.mark.parametrize("prioritized", [False, True])
@pytest.mark.parametrize("batch", [1, 7, 300])
def test_sampled_tensors_own_exactly_their_memory(prioritized, batch):
    buf = filled(rv.Prioritized() if prioritized else None)
    b = buf.sample(batch)
    cols = buf.columns
    for name, t in b.items():
        assert owns_exactly_its_memory(t), (
            f"{name} ({t.dtype}): _base={t._base is not None}, storage "
            f"{t.untyped_storage().nbytes()} bytes for {t.numel() * t.element_size()}")
        assert t.dtype == ALL[name].torch_dtype
        # not aliasing the storage: its memory lies outside the column
        col = cols[name]
        lo, hi = col.data_ptr(), col.data_ptr() + col.numel() * col.element_size()
        assert not lo <= t.data_ptr() < hi
    assert owns_exactly_its_memory(b.indices)
    if prioritized:
        assert owns_exactly_its_memory(b.weights)
    # every field of a batch has its own allocation
    ptrs = [t.data_ptr() for t in b.values()] + [b.indices.data_ptr()]
    assert len(set(ptrs)) == len(ptrs)


def test_sampled_tensors_survive_the_buffer_and_later_writes():
    buf = filled()
    b = buf.sample(50)
    rows = {name: buf.columns[name][b.indices % buf.capacity].clone() for name in ALL}
    buf.extend(**{name: torch.zeros((buf.capacity, *f.shape), dtype=f.torch_dtype) for name, f in ALL.items()})
    del buf
    gc.collect()
    for name, t in b.items():
        assert_tensor_equal(t, rows[name], name)


def test_sampled_tensors_are_writable_and_independent():
    buf = filled()
    a, c = buf.sample(8), buf.sample(8)
    before = buf.columns["f32"].clone()
    a.f32.fill_(42.0)
    assert_tensor_equal(buf.columns["f32"], before)
    assert not (c.f32 == 42.0).all()


@pytest.mark.parametrize("prioritized", [False, True])
def test_out_tensors_are_filled_in_place(prioritized):
    sampler = rv.Prioritized(alpha=0.5) if prioritized else rv.Uniform()
    buf = filled(sampler, seed=3)
    twin = filled(sampler, seed=3)
    out = {name: torch.full((33, *f.shape), 7).to(f.torch_dtype) for name, f in ALL.items()}
    ptrs = {name: t.data_ptr() for name, t in out.items()}
    b = buf.sample(33, out=out)
    ref = twin.sample(33)
    assert_tensor_equal(b.indices, ref.indices)
    for name in ALL:
        assert b[name] is out[name]
        assert b[name].data_ptr() == ptrs[name]
        assert_tensor_equal(out[name], ref[name], name)
        # and the rows are the stored rows of the keys
        assert_tensor_equal(out[name], buf.columns[name][b.indices % buf.capacity], name)
    # reused for the next batch
    b2 = buf.sample(33, out=out)
    ref2 = twin.sample(33)
    for name in ALL:
        assert b2[name].data_ptr() == ptrs[name]
        assert_tensor_equal(out[name], ref2[name], name)


def test_out_tensors_may_be_views_into_a_larger_contiguous_block():
    """A contiguous slice of a bigger tensor (e.g. a preallocated pinned arena) is fine: the
    batch is written exactly there and nowhere else."""
    buf = rv.ReplayBuffer(10, spec={"x": rv.Field("int32", (2,))}, seed=0)
    buf.extend(x=np.arange(20, dtype=np.int32).reshape(10, 2))
    arena = torch.full((10, 2), -1, dtype=torch.int32)
    b = buf.sample(4, out={"x": arena[3:7]})
    assert (arena[:3] == -1).all() and (arena[7:] == -1).all()
    assert_tensor_equal(arena[3:7], buf.columns["x"][b.indices % 10])


@pytest.mark.parametrize("name", list(ALL))
def test_columns_alias_storage(name):
    buf = filled(capacity=16, n=5)
    c1 = buf.columns[name]
    c2 = buf.columns[name]
    assert c1.data_ptr() == c2.data_ptr()
    assert tuple(c1.shape) == (16, *ALL[name].shape)
    assert c1.dtype == ALL[name].torch_dtype
    assert c1.is_contiguous()
    # writes through the view are what sample returns
    one = torch.ones(ALL[name].shape).to(c1.dtype)
    for slot in range(5):
        c1[slot] = one if slot % 2 else torch.zeros_like(one)
    b = buf.sample(100)
    for j, key in enumerate(b.indices.tolist()):
        want = one if key % 2 else torch.zeros_like(one)
        assert_tensor_equal(b[name][j], want, f"{name} key {key}")
    # and new rows written by add appear in the old view
    row = {n: torch.full(f.shape, 1).to(f.torch_dtype) for n, f in ALL.items()}
    buf.add(**row)
    assert_tensor_equal(c2[5], row[name])


def test_columns_views_outlive_the_buffer_object():
    buf = filled(n=4)
    col = buf.columns["f64"]
    want = col[:4].clone()
    del buf
    gc.collect()
    assert_tensor_equal(col[:4], want)  # the view keeps the storage alive


def test_columns_writes_survive_state_dict():
    buf = filled(n=4)
    buf.columns["i32"][2] = 12345
    state = buf.state_dict()
    assert state["arrays"]["column:i32"][2].item() == 12345
    assert state["arrays"]["column:i32"].data_ptr() != buf.columns["i32"].data_ptr()  # a copy
