"""Unit tests of the public ReplayBuffer API: writing, reading, sampling, specs and state."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from keys import fifo_insertion, fifo_key
from reference import ReferenceBuffer, assert_batches_equal, assert_tensor_equal

import reverie as rv

ALL_DTYPES = ["bool", "uint8", "int8", "int16", "int32", "int64", "float16", "bfloat16",
              "float32", "float64"]
TORCH_OF = {
    "bool": torch.bool, "uint8": torch.uint8, "int8": torch.int8, "int16": torch.int16,
    "int32": torch.int32, "int64": torch.int64, "float16": torch.float16,
    "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64,
}


def random_values(dtype: str, shape, gen: torch.Generator) -> torch.Tensor:
    """Random values of a reverie dtype, as a torch tensor, covering the dtype's range."""
    td = TORCH_OF[dtype]
    if td == torch.bool:
        return torch.rand(shape, generator=gen) > 0.5
    if not td.is_floating_point:
        info = torch.iinfo(td)
        return torch.randint(info.min, info.max, shape, generator=gen, dtype=torch.int64).to(td)
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * 100).to(td)


def transitions(n: int, seed: int = 0) -> dict:
    """n transitions of a small W1-like spec, as numpy arrays with a leading axis."""
    rng = np.random.default_rng(seed)
    return {
        "obs": rng.standard_normal((n, 3)).astype(np.float32),
        "action": rng.integers(0, 4, n).astype(np.int64),
        "reward": rng.standard_normal(n).astype(np.float32),
        "done": rng.random(n) > 0.8,
    }


def item(values: dict, i: int) -> dict:
    return {k: v[i] for k, v in values.items()}


# ---- construction, add, extend, len, repr ------------------------------------------------


def test_new_buffer_is_empty_and_unbuilt():
    buf = rv.ReplayBuffer(10, seed=1)
    assert len(buf) == 0
    assert buf.capacity == 10
    assert buf.spec == {}
    assert buf.columns == {}
    assert buf.stale_updates == 0
    assert buf.seed == 1
    assert isinstance(buf.sampler, rv.Uniform)
    assert "capacity=10" in repr(buf) and "size=0" in repr(buf)


def test_default_seed_is_random_and_reported():
    a, b = rv.ReplayBuffer(4), rv.ReplayBuffer(4)
    assert isinstance(a.seed, int) and 0 <= a.seed < 2**64
    assert a.seed != b.seed  # 63 random bits each


def test_add_and_extend_grow_len_up_to_capacity():
    buf = rv.ReplayBuffer(5, seed=0)
    vals = transitions(9)
    for i in range(3):
        buf.add(**item(vals, i))
        assert len(buf) == i + 1
    buf.extend(**{k: v[3:5] for k, v in vals.items()})
    assert len(buf) == 5
    buf.extend(**{k: v[5:9] for k, v in vals.items()})
    assert len(buf) == 5 and buf.capacity == 5


def test_extend_with_zero_items_changes_nothing():
    buf = rv.ReplayBuffer(4, seed=0)
    buf.extend(**transitions(2))
    before = buf.state_dict()
    buf.extend(**{k: v[:0] for k, v in transitions(3).items()})
    assert len(buf) == 2
    assert buf.state_dict()["scalars"] == before["scalars"]


def test_repr_names_fields_and_sampler():
    buf = rv.ReplayBuffer(7, spec={"obs": rv.Field("float32", (2, 3))},
                          sampler=rv.Prioritized(alpha=0.5, beta=0.25, eps=0.0), seed=0)
    r = repr(buf)
    assert "capacity=7" in r and "obs: float32[2, 3]" in r
    assert "Prioritized(alpha=0.5, beta=0.25, eps=0.0)" in r
    buf.add(obs=np.zeros((2, 3), np.float32))
    assert "size=1" in repr(buf)


def test_sampler_object_is_copied_per_buffer():
    sampler = rv.Prioritized(alpha=0.5, beta=0.1)
    a = rv.ReplayBuffer(4, sampler=sampler, seed=0)
    b = rv.ReplayBuffer(4, sampler=sampler, seed=0)
    a.sampler.beta = 0.9
    assert b.sampler.beta == 0.1 and sampler.beta == 0.1


# ---- spec inference and explicit specs ---------------------------------------------------


@pytest.mark.parametrize("np_dtype,name", [
    (np.bool_, "bool"), (np.uint8, "uint8"), (np.int8, "int8"), (np.int16, "int16"),
    (np.int32, "int32"), (np.int64, "int64"), (np.float16, "float16"),
    (np.float32, "float32"), (np.float64, "float64"),
])
def test_spec_inferred_from_numpy(np_dtype, name):
    buf = rv.ReplayBuffer(4, seed=0)
    buf.add(x=np.zeros((2, 5), dtype=np_dtype), s=np_dtype(1))
    assert buf.spec == {"x": rv.Field(name, (2, 5)), "s": rv.Field(name, ())}
    assert buf.columns["x"].dtype == TORCH_OF[name]
    assert tuple(buf.columns["x"].shape) == (4, 2, 5)


@pytest.mark.parametrize("name", ALL_DTYPES)
def test_spec_inferred_from_torch(name):
    buf = rv.ReplayBuffer(4, seed=0)
    buf.add(x=torch.zeros((3, 1, 2), dtype=TORCH_OF[name]))
    assert buf.spec == {"x": rv.Field(name, (3, 1, 2))}
    assert buf.columns["x"].dtype == TORCH_OF[name]


def test_spec_inferred_from_python_scalars():
    buf = rv.ReplayBuffer(4, seed=0)
    buf.add(r=0.5, a=3, d=True)
    assert buf.spec == {"r": rv.Field("float32", ()), "a": rv.Field("int64", ()),
                        "d": rv.Field("bool", ())}
    b = buf.sample(1)
    assert b.r.dtype == torch.float32 and b.r.item() == 0.5
    assert b.a.dtype == torch.int64 and b.a.item() == 3
    assert b.d.dtype == torch.bool and b.d.item() is True


def test_spec_inferred_from_extend_drops_leading_axis():
    buf = rv.ReplayBuffer(8, seed=0)
    buf.extend(obs=torch.zeros(5, 4, 2, dtype=torch.bfloat16), r=np.zeros(5, np.float64),
               a=[1, 2, 3, 4, 5], f=[0.5, 1.5, 2.5, 3.5, 4.5])
    assert buf.spec == {"obs": rv.Field("bfloat16", (4, 2)), "r": rv.Field("float64", ()),
                        "a": rv.Field("int64", ()), "f": rv.Field("float32", ())}
    assert len(buf) == 5
    assert_tensor_equal(buf.columns["f"][:5], torch.tensor([0.5, 1.5, 2.5, 3.5, 4.5]))
    assert_tensor_equal(buf.columns["a"][:5], torch.arange(1, 6))


@pytest.mark.parametrize("dtype_like", [torch.float16, np.float16, np.dtype("float16"), "float16"])
def test_explicit_spec_dtype_forms(dtype_like):
    buf = rv.ReplayBuffer(3, spec={"x": rv.Field(dtype_like, (2,)), "y": (dtype_like, 3),
                                   "z": dtype_like}, seed=0)
    assert buf.spec == {"x": rv.Field("float16", (2,)), "y": rv.Field("float16", (3,)),
                        "z": rv.Field("float16", ())}
    assert len(buf) == 0
    assert set(buf.columns) == {"x", "y", "z"}


def test_explicit_spec_converts_python_numbers():
    spec = {"f16": rv.Field("float16"), "i8": rv.Field("int8"), "u8": rv.Field("uint8"),
            "b": rv.Field("bool"), "f64": rv.Field("float64", (2,)), "bf": rv.Field("bfloat16")}
    buf = rv.ReplayBuffer(4, spec=spec, seed=0)
    buf.add(f16=1.5, i8=-128, u8=255, b=False, f64=[0.25, 3], bf=2)
    buf.add(f16=True, i8=127, u8=0, b=True, f64=(1, True), bf=-0.5)
    cols = buf.columns
    assert_tensor_equal(cols["f16"][:2], torch.tensor([1.5, 1.0], dtype=torch.float16))
    assert_tensor_equal(cols["i8"][:2], torch.tensor([-128, 127], dtype=torch.int8))
    assert_tensor_equal(cols["u8"][:2], torch.tensor([255, 0], dtype=torch.uint8))
    assert_tensor_equal(cols["b"][:2], torch.tensor([False, True]))
    assert_tensor_equal(cols["f64"][:2], torch.tensor([[0.25, 3.0], [1.0, 1.0]], dtype=torch.float64))
    assert_tensor_equal(cols["bf"][:2], torch.tensor([2.0, -0.5], dtype=torch.bfloat16))


def test_spec_is_a_copy():
    buf = rv.ReplayBuffer(3, spec={"x": rv.Field("int32")}, seed=0)
    s = buf.spec
    s["y"] = rv.Field("int32")
    assert list(buf.spec) == ["x"]


# ---- every dtype round-trips -------------------------------------------------------------


@pytest.mark.parametrize("name,source", [(n, s) for n in ALL_DTYPES for s in ("numpy", "torch")
                                         if not (s == "numpy" and n == "bfloat16")])  # numpy: no bf16
@pytest.mark.parametrize("prioritized", [False, True])
def test_all_dtypes_round_trip(name, source, prioritized):
    gen = torch.Generator().manual_seed(ALL_DTYPES.index(name))
    cap, shape = 11, (2, 3, 2)
    n_add, n_ext = 4, 13  # wraps inside the extend
    values = random_values(name, (n_add + n_ext, *shape), gen)
    scalars = random_values(name, (n_add + n_ext,), gen)

    def conv(t):
        return t.numpy() if source == "numpy" else t

    sampler = rv.Prioritized(alpha=0.7, beta=0.5) if prioritized else rv.Uniform()
    buf = rv.ReplayBuffer(cap, sampler=sampler, seed=3)
    for i in range(n_add):
        buf.add(v=conv(values[i].clone()), s=conv(scalars[i].clone()))
    buf.extend(v=conv(values[n_add:].clone()), s=conv(scalars[n_add:].clone()))
    assert buf.spec == {"v": rv.Field(name, shape), "s": rv.Field(name, ())}
    written = n_add + n_ext
    assert len(buf) == cap

    # storage: slot k % cap holds item k for the last `cap` keys
    cols = buf.columns
    for key in range(written - cap, written):
        assert_tensor_equal(cols["v"][key % cap], values[key], f"v[{key}]")
        assert_tensor_equal(cols["s"][key % cap], scalars[key], f"s[{key}]")

    batch = buf.sample(64)
    assert batch.v.dtype == TORCH_OF[name] and tuple(batch.v.shape) == (64, *shape)
    assert batch.s.dtype == TORCH_OF[name] and tuple(batch.s.shape) == (64,)
    for j, key in enumerate(batch.indices.tolist()):
        n = fifo_insertion(key, cap)
        assert written - cap <= n < written
        assert_tensor_equal(batch.v[j], values[n], f"sampled v key {key}")
        assert_tensor_equal(batch.s[j], scalars[n], f"sampled s key {key}")


def test_non_contiguous_inputs_are_stored_in_logical_order():
    buf = rv.ReplayBuffer(6, spec={"x": rv.Field("int32", (2, 3))}, seed=0)
    base_np = np.arange(4 * 3 * 2, dtype=np.int32).reshape(4, 3, 2)
    buf.extend(x=base_np.transpose(0, 2, 1))  # strided numpy
    base_t = torch.arange(100, 100 + 3 * 2, dtype=torch.int32).reshape(3, 2)
    buf.add(x=base_t.t())  # strided torch
    buf.add(x=torch.arange(200, 212, dtype=torch.int32).reshape(2, 6)[:, ::2])  # sliced
    cols = buf.columns["x"]
    for i in range(4):
        assert_tensor_equal(cols[i], torch.from_numpy(np.ascontiguousarray(base_np[i].T)))
    assert_tensor_equal(cols[4], base_t.t().contiguous())
    assert_tensor_equal(cols[5], torch.arange(200, 212, dtype=torch.int32).reshape(2, 6)[:, ::2].contiguous())


def test_input_arrays_are_copied_not_referenced():
    buf = rv.ReplayBuffer(3, seed=0)
    x = np.ones(4, np.float32)
    t = torch.ones(4)
    buf.add(x=x, t=t)
    x[:] = 7
    t[:] = 7
    assert_tensor_equal(buf.columns["x"][0], torch.ones(4))
    assert_tensor_equal(buf.columns["t"][0], torch.ones(4))


# ---- eviction order ----------------------------------------------------------------------


def stored_keys_by_slot(buf) -> list:
    """The stored items' keys, from the `k` field (which holds the insertion number)."""
    return [fifo_key(n, buf.capacity) for n in stored_ids_by_slot(buf)]


def stored_ids_by_slot(buf) -> list:
    """The stored items' insertion numbers, read back through the `k` field."""
    return buf.columns["k"][: len(buf)].tolist()


def test_eviction_single_adds():
    buf = rv.ReplayBuffer(5, seed=0)
    ref = ReferenceBuffer(5)
    for k in range(12):
        buf.add(k=k)
        ref.add({"k": np.int64(k)})
        assert len(buf) == len(ref)
        assert stored_keys_by_slot(buf) == [ref.key_of_slot(s) for s in range(len(ref))]
    # oldest first overwritten: slots hold items 10, 11, 7, 8, 9
    assert stored_ids_by_slot(buf) == [10, 11, 7, 8, 9]


def test_eviction_wraps_inside_one_extend():
    buf = rv.ReplayBuffer(5, seed=0)
    buf.extend(k=np.arange(3))
    buf.extend(k=np.arange(3, 7))  # slots 3, 4, 0, 1
    assert stored_ids_by_slot(buf) == [5, 6, 2, 3, 4]
    b = buf.sample(200)
    assert set(b.indices.tolist()) == {fifo_key(n, 5) for n in (2, 3, 4, 5, 6)}
    assert_tensor_equal(b.k, torch.from_numpy(fifo_insertion(b.indices.numpy(), 5)))


@pytest.mark.parametrize("prefill", [0, 2, 5, 7])
@pytest.mark.parametrize("n", [5, 6, 13, 27])
def test_extend_larger_than_capacity_keeps_the_last_items(prefill, n):
    cap = 5
    for prioritized in (False, True):
        sampler = rv.Prioritized() if prioritized else rv.Uniform()
        buf = rv.ReplayBuffer(cap, spec={"k": rv.Field("int64")}, sampler=sampler, seed=0)
        ref = ReferenceBuffer(cap, prioritized=prioritized)
        if prefill:
            buf.extend(k=np.arange(prefill))
            ref.extend({"k": np.arange(prefill)})
        buf.extend(k=np.arange(prefill, prefill + n))
        ref.extend({"k": np.arange(prefill, prefill + n)})
        assert len(buf) == cap
        assert stored_keys_by_slot(buf) == [ref.key_of_slot(s) for s in range(cap)]
        assert sorted(stored_ids_by_slot(buf)) == list(range(prefill + n - cap, prefill + n))
        # keys continue after the skipped ones
        buf.add(k=prefill + n)
        assert buf.columns["k"][(prefill + n) % cap].item() == prefill + n
        b = buf.sample(100)
        assert_tensor_equal(b.k, torch.from_numpy(fifo_insertion(b.indices.numpy(), cap)))
        assert set(b.indices.tolist()) <= {fifo_key(i, cap) for i in range(prefill + n + 1 - cap, prefill + n + 1)}
        if prioritized:
            assert buf.priorities().tolist() == [1.0] * cap


# ---- sampling, keys, Batch -----------------------------------------------------------------


def test_uniform_with_replacement_keys_and_rows():
    buf = rv.ReplayBuffer(8, seed=5)
    vals = transitions(13, seed=2)
    buf.extend(**vals)
    b = buf.sample(500)
    assert isinstance(b, rv.Batch) and isinstance(b, dict)
    assert b.indices.dtype == torch.int64 and tuple(b.indices.shape) == (500,)
    assert b.weights is None
    keys = b.indices.tolist()
    assert set(keys) == {fifo_key(n, 8) for n in range(5, 13)}  # 500 draws over 8 items: all appear
    assert len(set(keys)) < len(keys)  # with replacement: repeats
    for j, k in enumerate(keys):
        for name, v in vals.items():
            assert_tensor_equal(b[name][j], torch.from_numpy(np.asarray(v[fifo_insertion(k, 8)])), name)
            assert_tensor_equal(b[name][j], buf.columns[name][k % 8], name)


@pytest.mark.parametrize("batch", [1, 3, 7, 8])
def test_uniform_without_replacement_distinct(batch):
    buf = rv.ReplayBuffer(8, sampler=rv.Uniform(replacement=False), seed=0)
    buf.extend(k=np.arange(11))
    for _ in range(30):
        keys = buf.sample(batch).indices.tolist()
        assert len(keys) == batch and len(set(keys)) == batch
        assert set(keys) <= set(range(3, 11))
    if batch == 8:
        assert sorted(keys) == list(range(3, 11))


def test_without_replacement_on_partly_filled_buffer():
    buf = rv.ReplayBuffer(100, sampler=rv.Uniform(replacement=False), seed=0)
    buf.extend(k=np.arange(6))
    b = buf.sample(6)
    assert sorted(b.indices.tolist()) == list(range(6))
    assert_tensor_equal(b.k, b.indices)


def test_uniform_only_draws_stored_items_of_a_partial_buffer():
    buf = rv.ReplayBuffer(1000, seed=0)
    buf.extend(k=np.arange(3))
    keys = buf.sample(3000).indices
    assert set(keys.tolist()) == {0, 1, 2}


def test_batch_access():
    buf = rv.ReplayBuffer(4, sampler=rv.Prioritized(), seed=0)
    buf.extend(**transitions(4))
    b = buf.sample(6)
    assert list(b) == ["obs", "action", "reward", "done"]
    assert b.obs is b["obs"]
    assert tuple(b.obs.shape) == (6, 3) and b.obs.dtype == torch.float32
    assert tuple(b.done.shape) == (6,) and b.done.dtype == torch.bool
    assert b.weights.dtype == torch.float32 and tuple(b.weights.shape) == (6,)
    with pytest.raises(AttributeError, match="nope"):
        _ = b.nope
    with pytest.raises(KeyError):
        b["nope"]
    moved = b.to(torch.float64)
    assert moved.obs.dtype == torch.float64 and moved.weights.dtype == torch.float64
    assert moved.indices is b.indices
    assert "obs" in repr(b)


def test_sample_accepts_numpy_int_batch_size():
    buf = rv.ReplayBuffer(4, seed=0)
    buf.add(x=1)
    assert len(buf.sample(np.int64(3)).indices) == 3


def test_same_seed_same_samples_different_seed_different():
    def run(seed):
        buf = rv.ReplayBuffer(50, seed=seed)
        buf.extend(k=np.arange(80))
        return [buf.sample(16).indices.tolist() for _ in range(5)]

    assert run(11) == run(11)
    assert run(11) != run(12)
    # successive calls draw differently
    first = run(11)
    assert first[0] != first[1]


# ---- prioritized basics --------------------------------------------------------------------


def test_new_items_get_running_max_priority():
    buf = rv.ReplayBuffer(6, sampler=rv.Prioritized(alpha=1.0, beta=1.0, eps=0.0), seed=0)
    buf.extend(k=np.arange(3))
    assert buf.priorities().tolist() == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    assert buf.update_priorities([0, 1], [4.0, 0.5]) == 0
    buf.add(k=3)
    assert buf.priorities().tolist() == pytest.approx([4.0, 0.5, 1.0, 4.0, 0.0, 0.0], rel=1e-12)
    buf.update_priorities([0], [0.25])  # the running max stays 4
    buf.add(k=4)
    assert buf.priorities()[4].item() == pytest.approx(4.0, rel=1e-12)


def test_update_priorities_repeated_key_last_wins_and_stale_counted():
    buf = rv.ReplayBuffer(4, sampler=rv.Prioritized(alpha=1.0, eps=0.0), seed=0)
    buf.extend(k=np.arange(4))
    assert buf.update_priorities(torch.tensor([1, 2, 1]), torch.tensor([5.0, 2.0, 3.0])) == 0
    assert buf.priorities()[1].item() == pytest.approx(3.0, rel=1e-12)
    buf.extend(k=np.arange(4, 6))  # keys 0, 1 overwritten by 4, 5
    stale = buf.update_priorities(np.array([0, 1, 2, 5, 0]), np.array([9.0, 9.0, 7.0, 6.0, 9.0]))
    assert stale == 3 and buf.stale_updates == 3
    # slot 0: key 4 (new, running max 5), slot 1: key 5 -> 6, slot 2: key 2 -> 7, slot 3: key 3
    assert buf.priorities().tolist() == pytest.approx([5.0, 6.0, 7.0, 1.0], rel=1e-12)
    # stale values did not raise the running max (9 was never applied)
    buf.add(k=6)
    assert buf.priorities()[2].item() == pytest.approx(7.0, rel=1e-12)


def test_update_priorities_accepts_many_input_kinds():
    buf = rv.ReplayBuffer(4, sampler=rv.Prioritized(alpha=1.0, eps=0.0), seed=0)
    buf.extend(k=np.arange(4))
    buf.update_priorities([0, 1], [2, 3])  # python ints
    buf.update_priorities(np.array([2], np.int32), np.array([4.0], np.float32))
    buf.update_priorities(torch.tensor([3], dtype=torch.int16), torch.tensor([5.0], dtype=torch.bfloat16))
    buf.update_priorities(torch.tensor([], dtype=torch.int64), torch.tensor([]))
    buf.update_priorities([], [])
    assert buf.priorities().tolist() == pytest.approx([2.0, 3.0, 4.0, 5.0], rel=1e-12)


def test_prioritized_weights_and_sampled_rows():
    buf = rv.ReplayBuffer(5, sampler=rv.Prioritized(alpha=0.5, beta=0.7, eps=0.01), seed=0)
    ref = ReferenceBuffer(5, prioritized=True, alpha=0.5, beta=0.7, eps=0.01)
    buf.extend(k=np.arange(7))
    ref.extend({"k": np.arange(7)})
    pr = [0.0, 1.0, 3.0, 10.0, 0.2]
    keys = [ref.key_of(n) for n in range(2, 7)]
    buf.update_priorities(keys, pr)
    ref.update_priorities(keys, pr)
    b = buf.sample(200)
    assert_tensor_equal(b.k, torch.from_numpy(fifo_insertion(b.indices.numpy(), 5)))
    np.testing.assert_allclose(b.weights.numpy(), ref.weights(b.indices.tolist()), rtol=1e-6)
    assert b.weights.max().item() <= 1.0
    buf.sampler.beta = 0.0
    assert buf.sample(10).weights.tolist() == [1.0] * 10
    buf.sampler.beta = 1.0
    ref.beta = 1.0
    b = buf.sample(50)
    np.testing.assert_allclose(b.weights.numpy(), ref.weights(b.indices.tolist()), rtol=1e-6)


def test_priorities_requires_prioritized_sampler():
    buf = rv.ReplayBuffer(3, seed=0)
    with pytest.raises(ValueError, match="Prioritized"):
        buf.priorities()
    pbuf = rv.ReplayBuffer(3, sampler=rv.Prioritized(), seed=0)
    assert pbuf.priorities().tolist() == [0.0, 0.0, 0.0]


def test_huge_priority_ratio_keeps_small_priorities_small():
    """One priority 1e20 times the others: the others must stay (at most one unit) tiny,
    so that the large one takes essentially every draw."""
    buf = rv.ReplayBuffer(4, sampler=rv.Prioritized(alpha=1.0, beta=0.0, eps=0.0), seed=0)
    buf.extend(k=np.arange(4))
    buf.update_priorities([0, 1, 2, 3], [1.0, 1.0, 1.0, 1.0])
    buf.update_priorities([0], [1e20])
    p = buf.priorities()
    assert p[0].item() == pytest.approx(1e20, rel=1e-9)
    assert (p[1:] > 0).all() and (p[1:] <= 1e20 * 1e-9).all(), p.tolist()
    keys = buf.sample(1000).indices
    assert (keys == 0).sum().item() >= 999


@pytest.mark.parametrize("growth", [10.0, 1e3, 1e6, 1e12])
def test_growing_max_priority_rescales_exactly(growth):
    """A larger priority than any before rescales the fixed-point tree; the stored values of
    the others must keep their value (to the tree's resolution)."""
    buf = rv.ReplayBuffer(8, sampler=rv.Prioritized(alpha=1.0, beta=1.0, eps=0.0), seed=0)
    buf.extend(k=np.arange(8))
    base = [0.5, 1.0, 2.0, 3.0, 0.25, 0.75, 1.5, 0.0]
    buf.update_priorities(list(range(8)), base)
    buf.update_priorities([7], [growth])
    want = base[:7] + [growth]
    got = buf.priorities().tolist()
    for g, w in zip(got, want):
        assert abs(g - w) <= 1e-9 * w + growth * 2.0**-45, (got, want)


# ---- out= ------------------------------------------------------------------------------


@pytest.mark.parametrize("prioritized", [False, True])
def test_sample_into_out_tensors(prioritized):
    sampler = rv.Prioritized() if prioritized else rv.Uniform()
    buf = rv.ReplayBuffer(9, sampler=sampler, seed=4)
    twin = rv.ReplayBuffer(9, sampler=sampler, seed=4)
    vals = transitions(12, seed=3)
    vals["img"] = np.arange(12 * 2 * 5, dtype=np.uint8).reshape(12, 2, 5)
    buf.extend(**vals)
    twin.extend(**vals)
    out = {"obs": torch.full((16, 3), -1.0), "action": torch.zeros(16, dtype=torch.int64),
           "reward": torch.zeros(16), "done": torch.zeros(16, dtype=torch.bool),
           "img": torch.zeros(16, 2, 5, dtype=torch.uint8)}
    b = buf.sample(16, out=out)
    for name in out:
        assert b[name] is out[name]
    assert_batches_equal(b, twin.sample(16))


# ---- state_dict / load_state_dict ----------------------------------------------------------


def busy_buffer(prioritized: bool, seed: int = 7, alpha: float = 0.6) -> rv.ReplayBuffer:
    sampler = rv.Prioritized(alpha=alpha, beta=0.4, eps=1e-3) if prioritized else rv.Uniform()
    buf = rv.ReplayBuffer(10, sampler=sampler, seed=seed)
    vals = transitions(14, seed=1)
    vals["bf"] = torch.randn(14, 2, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    buf.extend(**vals)
    for i in range(3):
        b = buf.sample(4)
        if prioritized:
            buf.update_priorities(b.indices, torch.arange(4, dtype=torch.float64) * (i + 1))
    if prioritized:
        buf.update_priorities([4, 5], [1.0, 2.0])  # stale
    return buf


def draw(buf, n: int = 4, batch: int = 6) -> list:
    out = []
    for i in range(n):
        b = buf.sample(batch)
        out.append(b)
        if buf.sampler.kind == "prioritized":
            buf.update_priorities(b.indices, torch.linspace(0.1, 2.0, batch) * (i + 1))
    return out


@pytest.mark.parametrize("prioritized", [False, True])
@pytest.mark.parametrize("target", ["fresh", "other_seed", "same_seed_built"])
def test_state_round_trip_continues_identically(prioritized, target):
    original = busy_buffer(prioritized)
    state = original.state_dict()
    if target == "fresh":
        loaded = rv.ReplayBuffer(10, sampler=copy.copy(original.sampler), seed=999)
    elif target == "other_seed":
        loaded = busy_buffer(prioritized, seed=123)
    else:
        loaded = rv.ReplayBuffer(10, spec=original.spec, sampler=copy.copy(original.sampler), seed=7)
        loaded.extend(**{n: v[:2] for n, v in transitions(2, seed=9).items()},
                      bf=torch.zeros(2, 2, dtype=torch.bfloat16))
    loaded.load_state_dict(state)
    assert len(loaded) == len(original)
    assert loaded.seed == original.seed
    assert loaded.spec == original.spec
    assert loaded.stale_updates == original.stale_updates
    for name, col in original.columns.items():
        assert_tensor_equal(loaded.columns[name], col, name)
    if prioritized:
        assert_tensor_equal(loaded.priorities(), original.priorities())
    for a, b in zip(draw(original), draw(loaded)):
        assert_batches_equal(a, b)
    assert len(loaded) == len(original)
    # and the states agree again afterwards
    sa, sb = original.state_dict(), loaded.state_dict()
    assert sa["scalars"] == sb["scalars"]


def test_state_dict_is_a_copy():
    buf = busy_buffer(True)
    state = buf.state_dict()
    before = buf.columns["obs"].clone()
    state["arrays"]["column:obs"].fill_(123.0)
    state["arrays"]["priority.leaves"].fill_(0)
    assert_tensor_equal(buf.columns["obs"], before)
    assert (buf.priorities()[: len(buf)] > 0).all()


def test_state_of_empty_buffers():
    empty = rv.ReplayBuffer(5, seed=3)
    other = rv.ReplayBuffer(5, seed=4)
    other.load_state_dict(empty.state_dict())
    assert len(other) == 0
    spec_only = rv.ReplayBuffer(5, spec={"x": rv.Field("int16", (2,))}, seed=3)
    fresh = rv.ReplayBuffer(5, seed=8)
    fresh.load_state_dict(spec_only.state_dict())
    assert fresh.spec == spec_only.spec and len(fresh) == 0 and fresh.seed == 3
    fresh.add(x=np.array([1, 2], np.int16))
    spec_only.add(x=np.array([1, 2], np.int16))
    assert_batches_equal(fresh.sample(3), spec_only.sample(3))


@pytest.mark.parametrize("same_seed", [True, False])
def test_load_state_adopts_the_states_sampler_settings(same_seed):
    """The state carries alpha/beta/eps; a buffer loading it must continue as the original
    would (or refuse the state). Checked both when the seeds match and when they differ."""
    original = busy_buffer(True, seed=7, alpha=0.6)
    state = original.state_dict()
    target = rv.ReplayBuffer(10, spec=original.spec,
                             sampler=rv.Prioritized(alpha=1.0, beta=0.9, eps=0.5),
                             seed=7 if same_seed else 8)
    try:
        target.load_state_dict(state)
    except ValueError:
        assert len(target) == 0  # refused: nothing changed
        return
    for a, b in zip(draw(original, n=5), draw(target, n=5)):
        assert_batches_equal(a, b)
    assert_tensor_equal(target.priorities(), original.priorities())


@pytest.mark.parametrize("same_seed", [True, False])
def test_load_state_adopts_replacement_setting(same_seed):
    original = rv.ReplayBuffer(6, sampler=rv.Uniform(replacement=False), seed=2)
    original.extend(k=np.arange(6))
    target = rv.ReplayBuffer(6, spec=original.spec, sampler=rv.Uniform(replacement=True),
                             seed=2 if same_seed else 3)
    try:
        target.load_state_dict(original.state_dict())
    except ValueError:
        assert len(target) == 0
        return
    for _ in range(20):
        assert_batches_equal(original.sample(6), target.sample(6))


# ---- columns -----------------------------------------------------------------------------


def test_columns_views():
    buf = rv.ReplayBuffer(6, spec={"obs": rv.Field("float32", (2,)), "bf": rv.Field("bfloat16"),
                                   "d": rv.Field("bool")}, seed=0)
    cols = buf.columns
    assert tuple(cols["obs"].shape) == (6, 2) and cols["obs"].dtype == torch.float32
    assert tuple(cols["bf"].shape) == (6,) and cols["bf"].dtype == torch.bfloat16
    assert cols["d"].dtype == torch.bool
    buf.add(obs=np.array([1.0, 2.0], np.float32), bf=0.5, d=True)
    # the views taken before the add see it
    assert cols["obs"][0].tolist() == [1.0, 2.0]
    assert cols["bf"][0].item() == 0.5 and cols["d"][0].item() is True
    assert isinstance(buf.columns, dict) and buf.columns is not buf.columns


def test_a_sampler_shared_between_buffers_binds_to_each_separately():
    per = rv.Prioritized(alpha=0.6, beta=0.4)
    a = rv.ReplayBuffer(8, spec={"x": rv.Field("float32")}, sampler=per, seed=0)
    b = rv.ReplayBuffer(8, sampler=a.sampler, seed=0)  # unbuilt: no core yet
    b.sampler.beta = 0.9
    assert a.sampler.beta == 0.4 and b.sampler.beta == 0.9
    a.extend(x=np.arange(8, dtype=np.float32))
    b.extend(x=np.arange(8, dtype=np.float32))
    a.update_priorities(np.arange(8), np.arange(1, 9, dtype=np.float64))
    b.update_priorities(np.arange(8), np.arange(1, 9, dtype=np.float64))
    # Same seed and priorities: the weights differ only through beta.
    wa, wb = a.sample(16).weights, b.sample(16).weights
    assert not torch.equal(wa, wb)
    assert per.beta == 0.4  # the caller's object is a template, not bound to either buffer
