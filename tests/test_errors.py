"""Promise 3: bad input changes nothing.

Every public call validates all of its input first and raises TypeError / ValueError /
IndexError naming the field and the expected vs given value; afterwards the buffer is exactly
as before. "Exactly" is checked two ways after every error:
  - a full snapshot (len, spec, every state_dict tensor and counter, priorities(),
    stale_updates, beta) equals the one taken before the call, and equals that of a twin
    buffer that saw the same valid calls but never the bad one;
  - the next samples of the buffer equal the twin's (so not even the generator advanced).
"""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from keys import fifo_key
from reference import assert_batches_equal, assert_tensor_equal

import reverie as rv

CAP = 10
SPEC = {
    "obs": rv.Field("float32", (3,)),
    "act": rv.Field("int64"),
    "rew": rv.Field("float32"),
    "done": rv.Field("bool"),
    "small": rv.Field("int8"),
    "u": rv.Field("uint8"),
    "img": rv.Field("uint8", (2, 2)),
}
SAMPLERS = {
    "uniform": lambda: rv.Uniform(),
    "uniform_norep": lambda: rv.Uniform(replacement=False),
    "prioritized": lambda: rv.Prioritized(alpha=0.7, beta=0.5, eps=0.0),
}


def good_batch(n: int, start: int = 0) -> dict:
    k = np.arange(start, start + n)
    return {
        "obs": np.stack([k, -k, k * 0.5], axis=1).astype(np.float32),
        "act": k.astype(np.int64),
        "rew": (k * 0.25).astype(np.float32),
        "done": k % 3 == 0,
        "small": (k % 100 - 50).astype(np.int8),
        "u": (k % 256).astype(np.uint8),
        "img": np.repeat(k.astype(np.uint8), 4).reshape(n, 2, 2),
    }


def good_item(i: int) -> dict:
    return {name: v[0] for name, v in good_batch(1, i).items()}


def without(d: dict, name: str) -> dict:
    return {k: v for k, v in d.items() if k != name}


def replace(d: dict, **kw) -> dict:
    out = dict(d)
    out.update(kw)
    return out


def history(buf: rv.ReplayBuffer) -> None:
    """The same valid calls for a buffer and its twin: wraps the ring, samples, updates."""
    buf.extend(**good_batch(7))
    for i in range(7, 13):
        buf.add(**good_item(i))
    b = buf.sample(4)
    if buf.sampler.kind == "prioritized":
        buf.update_priorities(b.indices, torch.tensor([0.5, 1.5, 2.5, 3.5]))
        buf.update_priorities(fifo_key(np.array([0, 1]), CAP), [9.0, 9.0])  # overwritten: stale


def make_pair(kind: str, seed: int = 21):
    bufs = []
    for _ in range(2):
        buf = rv.ReplayBuffer(CAP, spec=SPEC, sampler=SAMPLERS[kind](), seed=seed)
        history(buf)
        bufs.append(buf)
    return bufs


@pytest.fixture(params=list(SAMPLERS))
def pair(request):
    return make_pair(request.param)


@pytest.fixture
def ppair():
    return make_pair("prioritized")


def snapshot(buf: rv.ReplayBuffer) -> dict:
    snap = {"len": len(buf), "spec": buf.spec, "stale": buf.stale_updates,
            "state": buf.state_dict(), "sampler": repr(buf.sampler)}
    if buf.sampler.kind == "prioritized" and buf.spec:
        snap["priorities"] = buf.priorities().clone()
        snap["beta"] = buf.sampler.beta
    return snap


def assert_same(a, b, path: str = "") -> None:
    """Deep equality of snapshots; tensors bit for bit."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor), path
        assert_tensor_equal(a, b, path)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{path}: keys {set(a)} != {set(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        assert math.isnan(b), path
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def assert_unchanged(buf, twin, before) -> None:
    """buf is exactly as before the bad call, and behaves exactly like its twin."""
    assert_same(snapshot(buf), before, "after error vs before")
    assert_same(snapshot(buf), snapshot(twin), "after error vs twin")
    if len(buf):
        for i in range(3):
            drawn = sample_both(buf, twin, 5)
            if drawn is None:
                break
            a, b = drawn
            if buf.sampler.kind == "prioritized":
                pr = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5]) * (i + 1)
                buf.update_priorities(a.indices, pr)
                twin.update_priorities(b.indices, pr)
        buf.add(**good_item(100))
        twin.add(**good_item(100))
        sample_both(buf, twin, 3)
        assert_same(snapshot(buf), snapshot(twin), "after more calls")


def sample_both(buf, twin, n):
    """Samples both; they must return equal batches, or both refuse with a ValueError."""
    try:
        a = buf.sample(n)
    except ValueError as error:
        with pytest.raises(ValueError) as twin_error:
            twin.sample(n)
        assert str(twin_error.value) == str(error)
        return None
    b = twin.sample(n)
    assert_batches_equal(a, b)
    return a, b


def check_error(buf, twin, call, exc, parts) -> None:
    """call(buf) raises exc whose message contains every one of parts; buf is unchanged."""
    before = snapshot(buf)
    with pytest.raises(exc) as info:
        call(buf)
    assert type(info.value) is exc, f"expected exactly {exc.__name__}, got {type(info.value).__name__}"
    message = str(info.value)
    for part in parts:
        assert part in message, f"message {message!r} does not mention {part!r}"
    assert_unchanged(buf, twin, before)


# ---- add / extend ----------------------------------------------------------------------------

WRITE_CASES = {
    # name: (call, exception, message parts)
    "unknown_field_add": (lambda b: b.add(**good_item(0), bogus=1.0), ValueError, ["'bogus'", "obs"]),
    "unknown_field_extend": (lambda b: b.extend(**good_batch(2), bogus=np.zeros(2)), ValueError,
                             ["'bogus'"]),
    "missing_field_add": (lambda b: b.add(**without(good_item(0), "act")), ValueError, ["'act'"]),
    "missing_field_extend": (lambda b: b.extend(**without(good_batch(3), "img")), ValueError,
                             ["'img'"]),
    "no_fields_add": (lambda b: b.add(), ValueError, ["missing field"]),
    "numpy_wrong_dtype_add": (lambda b: b.add(**replace(good_item(0), obs=np.zeros(3, np.float64))),
                              TypeError, ["'obs'", "float32", "float64"]),
    "numpy_wrong_dtype_extend": (lambda b: b.extend(**replace(good_batch(2), u=np.zeros(2, np.int8))),
                                 TypeError, ["'u'", "uint8", "int8"]),
    "numpy_scalar_wrong_dtype": (lambda b: b.add(**replace(good_item(0), act=np.int32(1))),
                                 TypeError, ["'act'", "int64", "int32"]),
    "torch_wrong_dtype_add": (lambda b: b.add(**replace(good_item(0), obs=torch.zeros(3, dtype=torch.float64))),
                              TypeError, ["'obs'", "float32", "float64"]),
    "torch_wrong_dtype_extend": (lambda b: b.extend(**replace(good_batch(2), rew=torch.zeros(2, dtype=torch.bfloat16))),
                                 TypeError, ["'rew'", "float32", "bfloat16"]),
    "torch_wrong_int_dtype": (lambda b: b.add(**replace(good_item(0), act=torch.tensor(1, dtype=torch.int32))),
                              TypeError, ["'act'", "int64", "int32"]),
    "torch_bool_into_uint8": (lambda b: b.add(**replace(good_item(0), u=torch.tensor(True))),
                              TypeError, ["'u'", "uint8", "bool"]),
    "wrong_shape_add": (lambda b: b.add(**replace(good_item(0), obs=np.zeros(4, np.float32))),
                        ValueError, ["'obs'", "(3,)", "(4,)"]),
    "wrong_ndim_add": (lambda b: b.add(**replace(good_item(0), img=np.zeros((1, 2, 2), np.uint8))),
                       ValueError, ["'img'", "(2, 2)", "(1, 2, 2)"]),
    "wrong_shape_torch_add": (lambda b: b.add(**replace(good_item(0), obs=torch.zeros(3, 1))),
                              ValueError, ["'obs'", "(3,)", "(3, 1)"]),
    "wrong_shape_extend": (lambda b: b.extend(**replace(good_batch(2), obs=np.zeros((2, 4), np.float32))),
                           ValueError, ["'obs'", "(3,)", "(2, 4)"]),
    "scalar_in_extend": (lambda b: b.extend(**replace(good_batch(2), act=5)),
                         ValueError, ["'act'"]),
    "extend_given_one_item": (lambda b: b.extend(**good_item(0)), ValueError, ["'obs'", "(3,)"]),
    "mismatched_lengths": (lambda b: b.extend(**replace(good_batch(2), rew=np.zeros(3, np.float32))),
                           ValueError, ["'rew'", "3", "2"]),
    "python_float_into_int": (lambda b: b.add(**replace(good_item(0), act=1.5)),
                              TypeError, ["'act'", "float", "int64"]),
    "python_float_into_uint8": (lambda b: b.add(**replace(good_item(0), u=2.0)),
                                TypeError, ["'u'", "float", "uint8"]),
    "python_float_list_into_int_extend": (lambda b: b.extend(**replace(good_batch(2), act=[1.0, 2.0])),
                                          TypeError, ["'act'", "float", "int64"]),
    "python_int_into_bool": (lambda b: b.add(**replace(good_item(0), done=1)),
                             TypeError, ["'done'", "int", "bool"]),
    "int8_too_large": (lambda b: b.add(**replace(good_item(0), small=128)),
                       ValueError, ["'small'", "128", "int8"]),
    "int8_too_small": (lambda b: b.add(**replace(good_item(0), small=-129)),
                       ValueError, ["'small'", "-129", "int8"]),
    "uint8_too_large": (lambda b: b.add(**replace(good_item(0), u=256)),
                        ValueError, ["'u'", "256", "uint8"]),
    "uint8_negative": (lambda b: b.add(**replace(good_item(0), u=-1)),
                       ValueError, ["'u'", "-1", "uint8"]),
    "int8_out_of_range_in_extend_list": (lambda b: b.extend(**replace(good_batch(3), small=[1, 2, 300])),
                                         ValueError, ["'small'", "300", "int8"]),
    "uint8_out_of_range_in_list": (lambda b: b.add(**replace(good_item(0), img=[[0, 1], [2, 256]])),
                                   ValueError, ["'img'", "256", "uint8"]),
    "int_beyond_int64": (lambda b: b.add(**replace(good_item(0), act=2**70)), ValueError, ["'act'"]),
    "string_value": (lambda b: b.add(**replace(good_item(0), rew="0.5")), TypeError, ["'rew'", "str"]),
    "none_value": (lambda b: b.add(**replace(good_item(0), rew=None)), TypeError, ["'rew'", "NoneType"]),
    "bad_value_after_good_ones": (lambda b: b.extend(**replace(good_batch(2), img=np.zeros((2, 2, 3), np.uint8))),
                                  ValueError, ["'img'", "(2, 2)", "(2, 2, 3)"]),
}


@pytest.mark.parametrize("case", list(WRITE_CASES))
def test_write_errors(pair, case):
    call, exc, parts = WRITE_CASES[case]
    buf, twin = pair
    check_error(buf, twin, call, exc, parts)


# ---- a failing first call must not fix the spec of an unbuilt buffer -----------------------

FIRST_CALL_CASES = {
    "add_int_beyond_int64": (lambda b: b.add(x=2**70), ValueError),
    "extend_mismatched_lengths": (lambda b: b.extend(a=np.zeros(3), c=np.zeros(4)), ValueError),
    "add_unsupported_dtype": (lambda b: b.add(x=np.zeros(2, np.complex64)), TypeError),
    "add_string": (lambda b: b.add(x="text"), TypeError),
    "extend_scalar": (lambda b: b.extend(x=1.0), ValueError),
    "add_nothing": (lambda b: b.add(), ValueError),
}


@pytest.mark.parametrize("case", list(FIRST_CALL_CASES))
def test_failed_first_call_leaves_buffer_unbuilt(case):
    call, exc = FIRST_CALL_CASES[case]
    buf = rv.ReplayBuffer(4, seed=0)
    with pytest.raises(exc):
        call(buf)
    assert buf.spec == {} and len(buf) == 0 and buf.columns == {}
    # the next, valid first call decides the spec
    buf.add(y=np.float32(1.0))
    assert buf.spec == {"y": rv.Field("float32", ())}
    assert buf.sample(2).y.tolist() == [1.0, 1.0]


# ---- construction ---------------------------------------------------------------------------


@pytest.mark.parametrize("capacity,exc", [
    (0, ValueError), (-5, ValueError), (np.int64(0), ValueError),
    (2.5, TypeError), (10.0, TypeError), ("10", TypeError), (True, TypeError), (None, TypeError),
])
def test_bad_capacity(capacity, exc):
    with pytest.raises(exc, match="capacity") as info:
        rv.ReplayBuffer(capacity)
    assert type(info.value) is exc
    if exc is ValueError:
        assert str(int(capacity)) in str(info.value)
    else:
        assert type(capacity).__name__ in str(info.value)
    with pytest.raises(exc, match="capacity"):
        rv.ReplayBuffer(capacity, sampler=rv.Prioritized(), spec=SPEC)


@pytest.mark.parametrize("seed,exc", [(-1, ValueError), (2**64, ValueError), (1.5, TypeError),
                                      ("1", TypeError)])
def test_bad_seed(seed, exc):
    with pytest.raises(exc, match="seed"):
        rv.ReplayBuffer(4, seed=seed)


@pytest.mark.parametrize("param", ["alpha", "beta", "eps"])
@pytest.mark.parametrize("value,exc", [(-0.1, ValueError), (float("nan"), ValueError),
                                       (float("inf"), ValueError), (-float("inf"), ValueError),
                                       ("0.5", TypeError), (True, TypeError), (None, TypeError)])
def test_bad_sampler_parameters(param, value, exc):
    with pytest.raises(exc) as info:
        rv.Prioritized(**{param: value})
    assert type(info.value) is exc
    assert param in str(info.value)
    if exc is ValueError:
        assert str(value) in str(info.value)


def test_bad_uniform_replacement():
    with pytest.raises(TypeError, match="replacement"):
        rv.Uniform(replacement=1)


@pytest.mark.parametrize("value,exc", [(-1.0, ValueError), (float("nan"), ValueError),
                                       (float("inf"), ValueError), ("1", TypeError)])
def test_bad_beta_on_a_live_buffer(ppair, value, exc):
    buf, twin = ppair

    def call(b):
        b.sampler.beta = value

    check_error(buf, twin, call, exc, ["beta"])
    assert buf.sampler.beta == 0.5


@pytest.mark.parametrize("spec,exc", [
    ({}, TypeError), ({"x": "complex64"}, TypeError), ({"x": ("float32", (-1,))}, ValueError),
({"": "float32"}, TypeError), ({1: "float32"}, TypeError),
    ({"x": "nope"}, TypeError), ([("x", "float32")], TypeError),
])
def test_bad_spec(spec, exc):
    with pytest.raises(exc):
        rv.ReplayBuffer(4, spec=spec)


def test_bad_field():
    with pytest.raises(TypeError, match="complex"):
        rv.Field(torch.complex64)
    with pytest.raises(ValueError, match="-2"):
        rv.Field("int8", (3, -2))


# ---- sample --------------------------------------------------------------------------------

SAMPLE_CASES = {
    "zero": (lambda b: b.sample(0), ValueError, ["batch_size", "0"]),
    "negative": (lambda b: b.sample(-3), ValueError, ["batch_size", "-3"]),
    "float": (lambda b: b.sample(2.0), TypeError, ["batch_size", "float"]),
    "bool": (lambda b: b.sample(True), TypeError, ["batch_size", "bool"]),
    "string": (lambda b: b.sample("4"), TypeError, ["batch_size", "str"]),
}


@pytest.mark.parametrize("case", list(SAMPLE_CASES))
def test_sample_errors(pair, case):
    call, exc, parts = SAMPLE_CASES[case]
    buf, twin = pair
    check_error(buf, twin, call, exc, parts)


@pytest.mark.parametrize("kind", list(SAMPLERS))
def test_sample_on_empty_buffer(kind):
    unbuilt = rv.ReplayBuffer(4, sampler=SAMPLERS[kind](), seed=0)
    with pytest.raises(ValueError, match="empty"):
        unbuilt.sample(1)
    assert len(unbuilt) == 0 and unbuilt.spec == {}
    buf = rv.ReplayBuffer(CAP, spec=SPEC, sampler=SAMPLERS[kind](), seed=3)
    twin = rv.ReplayBuffer(CAP, spec=SPEC, sampler=SAMPLERS[kind](), seed=3)
    check_error(buf, twin, lambda b: b.sample(2), ValueError, ["empty", "2"])
    buf.extend(**good_batch(3))
    twin.extend(**good_batch(3))
    assert_batches_equal(buf.sample(2), twin.sample(2))


def test_sample_too_many_without_replacement():
    buf, twin = make_pair("uniform_norep")
    check_error(buf, twin, lambda b: b.sample(CAP + 1), ValueError, [str(CAP + 1), str(CAP)])
    part_buf = rv.ReplayBuffer(CAP, spec=SPEC, sampler=rv.Uniform(replacement=False), seed=1)
    part_twin = rv.ReplayBuffer(CAP, spec=SPEC, sampler=rv.Uniform(replacement=False), seed=1)
    part_buf.extend(**good_batch(4))
    part_twin.extend(**good_batch(4))
    check_error(part_buf, part_twin, lambda b: b.sample(5), ValueError, ["5", "4"])
    assert len(part_buf.sample(4).indices.unique()) == 4


def test_sample_when_every_priority_is_zero(ppair):
    buf, twin = ppair
    for b in (buf, twin):
        b.update_priorities(fifo_key(np.arange(3, 13), CAP), torch.zeros(10))
    check_error(buf, twin, lambda b: b.sample(3), ValueError, ["priorit"])
    # check_error added one item (key 13) with the running max priority; add another: only
    # these two can be drawn
    buf.add(**good_item(50))
    twin.add(**good_item(50))
    a = buf.sample(64)
    assert_batches_equal(a, twin.sample(64))
    assert set(a.indices.tolist()) == {fifo_key(13, CAP), fifo_key(14, CAP)}


def test_prioritized_unbuilt_all_zero_after_eps0():
    buf = rv.ReplayBuffer(3, sampler=rv.Prioritized(alpha=1.0, eps=0.0), seed=0)
    buf.add(x=1.0)
    buf.update_priorities([0], [0.0])
    with pytest.raises(ValueError, match="priorit"):
        buf.sample(1)


# ---- out= ------------------------------------------------------------------------------------


def good_out(batch: int) -> dict:
    return {name: torch.zeros((batch, *f.shape), dtype=f.torch_dtype) for name, f in SPEC.items()}


OUT_CASES = {
    "missing_field": (lambda b: b.sample(4, out=without(good_out(4), "img")), ValueError, ["img"]),
    "extra_field": (lambda b: b.sample(4, out=replace(good_out(4), extra=torch.zeros(4))), ValueError,
                    ["extra"]),
    "wrong_dtype": (lambda b: b.sample(4, out=replace(good_out(4), obs=torch.zeros(4, 3, dtype=torch.float64))),
                    TypeError, ["'obs'", "float32", "float64"]),
    "wrong_shape": (lambda b: b.sample(4, out=replace(good_out(4), obs=torch.zeros(4, 4))),
                    ValueError, ["'obs'", "(4, 3)", "(4, 4)"]),
    "wrong_batch": (lambda b: b.sample(4, out=replace(good_out(4), rew=torch.zeros(5))),
                    ValueError, ["'rew'", "(4,)", "(5,)"]),
    "all_for_other_batch": (lambda b: b.sample(4, out=good_out(3)), ValueError, ["(4, 3)", "(3, 3)"]),
    "non_contiguous": (lambda b: b.sample(4, out=replace(good_out(4), obs=torch.zeros(3, 4).t())),
                       ValueError, ["'obs'", "contiguous"]),
    "not_a_tensor": (lambda b: b.sample(4, out=replace(good_out(4), obs=np.zeros((4, 3), np.float32))),
                     TypeError, ["'obs'", "ndarray"]),
}


@pytest.mark.parametrize("case", list(OUT_CASES))
def test_out_errors(pair, case):
    call, exc, parts = OUT_CASES[case]
    buf, twin = pair
    check_error(buf, twin, call, exc, parts)


def test_out_error_leaves_out_tensors_untouched(pair):
    buf, twin = pair
    out = replace(good_out(4), rew=torch.zeros(5))
    out["obs"].fill_(-7.0)
    with pytest.raises(ValueError):
        buf.sample(4, out=out)
    assert (out["obs"] == -7.0).all()


# ---- update_priorities ----------------------------------------------------------------------------

# The history wrote keys 0..12 into capacity 10, so keys 3..12 are stored, 0..2 stale.
UPDATE_CASES = {
    # 13 items written into 10 slots: insertion 13 (generation 1 of slot 3) is the next one
    "never_written": (lambda b: b.update_priorities([5, fifo_key(13, CAP)], [2.0, 2.0]), IndexError,
                      [str(fifo_key(13, CAP)), "never written", "generation 1 of slot 3", "13 items"]),
    "beyond_capacity": (lambda b: b.update_priorities([5, 13], [2.0, 2.0]), IndexError,
                        ["13", "slot 13", "capacity 10"]),
    "far_out_of_range": (lambda b: b.update_priorities([10**12], [1.0]), IndexError, [str(10**12)]),
    "other_shard": (lambda b: b.update_priorities([(3 << 55) | 5], [1.0]), IndexError,
                    ["shard 3", "shard 0"]),
    "negative": (lambda b: b.update_priorities([4, -1], [3.0, 1.0]), IndexError, ["-1"]),
    "negative_stale_mix": (lambda b: b.update_priorities([0, -5], [3.0, 1.0]), IndexError, ["-5"]),
    "nan": (lambda b: b.update_priorities([5, 6], [3.0, float("nan")]), ValueError, ["nan"]),
    "inf": (lambda b: b.update_priorities([5, 6], [3.0, float("inf")]), ValueError, ["inf"]),
    "negative_priority": (lambda b: b.update_priorities([5, 6], [3.0, -0.5]), ValueError, ["-0.5"]),
    "nan_torch": (lambda b: b.update_priorities(torch.tensor([5]), torch.tensor([float("nan")])),
                  ValueError, ["nan"]),
    "float_indices": (lambda b: b.update_priorities([5.0, 6.0], [1.0, 2.0]), TypeError, ["indices", "float"]),
    "float_tensor_indices": (lambda b: b.update_priorities(torch.tensor([5.0]), torch.tensor([1.0])),
                             TypeError, ["indices", "float"]),
    "bool_indices": (lambda b: b.update_priorities(np.array([True]), [1.0]), TypeError, ["indices", "bool"]),
    "string_priorities": (lambda b: b.update_priorities([5], ["1"]), TypeError, ["priorities"]),
    "length_mismatch": (lambda b: b.update_priorities([5, 6], [1.0, 2.0, 3.0]), ValueError, ["2", "3"]),
    "indices_2d": (lambda b: b.update_priorities([[5, 6]], [[1.0, 2.0]]), ValueError, ["1-D", "2-D"]),
    "priorities_scalar": (lambda b: b.update_priorities([5], 1.0), ValueError, ["priorities"]),
}


@pytest.mark.parametrize("case", list(UPDATE_CASES))
def test_update_priorities_errors(ppair, case):
    call, exc, parts = UPDATE_CASES[case]
    buf, twin = ppair
    check_error(buf, twin, call, exc, parts)


@pytest.mark.parametrize("kind", ["uniform", "uniform_norep"])
def test_update_priorities_on_uniform_buffer(kind):
    buf, twin = make_pair(kind)
    check_error(buf, twin, lambda b: b.update_priorities([5], [1.0]), ValueError, ["prioritized"])


def test_huge_finite_priority_is_refused_or_handled():
    """A finite priority whose (p + eps) ** alpha overflows float64 (1e200 ** 2): either a
    ValueError that changes nothing, or a stored, finite state in which that item takes every
    draw. Run in a subprocess: a broken state may crash the interpreter."""
    code = textwrap.dedent("""
        import math, numpy as np, reverie as rv
        def make():
            b = rv.ReplayBuffer(4, sampler=rv.Prioritized(alpha=2.0, beta=0.0, eps=0.0), seed=0)
            b.extend(x=np.arange(4.0))
            return b
        buf, twin = make(), make()
        try:
            buf.update_priorities([0], [1e200])
        except ValueError:
            assert buf.priorities().tolist() == twin.priorities().tolist()
            assert buf.sample(8).indices.tolist() == twin.sample(8).indices.tolist()
            print("REFUSED")
        else:
            p = buf.priorities().tolist()
            assert all(math.isfinite(v) for v in p), p
            assert buf.sample(8).indices.tolist() == [0] * 8, buf.sample(8).indices.tolist()
            print("HANDLED")
    """)
    python_dir = str(Path(rv.__file__).resolve().parents[1])
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": python_dir, "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"
    assert proc.stdout.strip() in ("REFUSED", "HANDLED")


# ---- load_state_dict ------------------------------------------------------------------------------


def foreign_state(kind: str = "prioritized", seed: int = 99) -> dict:
    """A valid state of another buffer: other contents and priorities (and by default another
    seed), so that a partial load would be visible."""
    other = rv.ReplayBuffer(CAP, spec=SPEC, sampler=SAMPLERS[kind](), seed=seed)
    other.extend(**good_batch(14, start=500))
    if kind == "prioritized":
        other.update_priorities(fifo_key(np.arange(4, 14), CAP), np.linspace(0.5, 5.0, 10))
    other.sample(3)
    return other.state_dict()


def corrupt(mutate, kind: str = "prioritized"):
    def call(b, seed=99):
        state = foreign_state(kind, seed)
        mutate(state)
        b.load_state_dict(state)
    return call


def set_key(d, path, value):
    for k in path[:-1]:
        d = d[k]
    d[path[-1]] = value


def del_key(d, path):
    for k in path[:-1]:
        d = d[k]
    del d[path[-1]]


LOAD_CASES = {
    "not_a_mapping": (lambda b: b.load_state_dict([1, 2]), ValueError, ["state"]),
    "wrong_version": (corrupt(lambda s: set_key(s, ["version"], 99)), ValueError, ["version"]),
    "wrong_format": (corrupt(lambda s: set_key(s, ["format"], "other")), ValueError, ["reverie-state"]),
    "capacity_mismatch": (corrupt(lambda s: set_key(s, ["config", "capacity"], 20)), ValueError,
                          ["capacity", "20", str(CAP)]),
    "spec_mismatch": (corrupt(lambda s: set_key(s, ["config", "spec"],
                                                [[n, "float64" if n == "obs" else d, sh]
                                                 for n, d, sh in s["config"]["spec"]])),
                      ValueError, ["spec"]),
    "writer_mismatch": (corrupt(lambda s: set_key(s, ["config", "writer"], {"kind": "reservoir"})),
                        ValueError, ["writer", "reservoir", "fifo"]),
    "column_wrong_dtype": (corrupt(lambda s: set_key(s, ["arrays", "column:obs"], s["arrays"]["column:obs"].double())),
                           ValueError, ["column:obs"]),
    "column_wrong_shape": (corrupt(lambda s: set_key(s, ["arrays", "column:img"], s["arrays"]["column:img"][:-1])),
                           ValueError, ["column:img"]),
    "column_missing": (corrupt(lambda s: del_key(s, ["arrays", "column:rew"])), ValueError, ["column:rew"]),
    "arrays_key_missing": (corrupt(lambda s: del_key(s, ["arrays"])), ValueError, []),
    "capacity_key_missing": (corrupt(lambda s: del_key(s, ["config", "capacity"])), ValueError, []),
    "priorities_missing": (corrupt(lambda s: del_key(s, ["arrays", "priority.leaves"])), ValueError,
                           ["priority.leaves"]),
    "written_negative": (corrupt(lambda s: set_key(s, ["scalars", "table.written"], -1)), ValueError, ["written"]),
    "stale_negative": (corrupt(lambda s: set_key(s, ["scalars", "table.stale_updates"], -3)), ValueError, ["stale"]),
    "leaves_truncated": (corrupt(lambda s: set_key(s, ["arrays", "priority.leaves"], s["arrays"]["priority.leaves"][:-1])),
                         ValueError, ["priority.leaves"]),
    "leaves_past_budget": (corrupt(lambda s: set_key(s, ["arrays", "priority.leaves"],
                                                     torch.full((CAP,), 2**62, dtype=torch.int64))),
                           ValueError, []),
    "max_q_nan": (corrupt(lambda s: set_key(s, ["scalars", "priority.max_q"], float("nan"))), ValueError, ["max"]),
    "leaves_for_unwritten_slots": (corrupt(lambda s: set_key(s, ["scalars", "table.written"], 3)), ValueError, []),
    "scalar_missing": (corrupt(lambda s: del_key(s, ["scalars", "table.sample_calls"])), ValueError,
                       ["table.sample_calls"]),
}


@pytest.mark.parametrize("case", list(LOAD_CASES))
@pytest.mark.parametrize("state_seed", ["same_seed", "other_seed"])
def test_load_state_dict_errors(ppair, case, state_seed):
    """The bad state comes from a buffer with the same seed as the target (no rebuild of the
    target needed) or another seed (the target must take the state's seed)."""
    call, exc, parts = LOAD_CASES[case]
    buf, twin = ppair
    seed = buf.seed if state_seed == "same_seed" else 99
    if case == "not_a_mapping":
        check_error(buf, twin, call, exc, parts)
    else:
        check_error(buf, twin, lambda b: call(b, seed), exc, parts)


@pytest.mark.parametrize("kind", ["uniform", "uniform_norep"])
def test_load_state_dict_errors_uniform(kind):
    buf, twin = make_pair(kind)
    check_error(buf, twin, corrupt(lambda s: None, kind="prioritized"), ValueError, ["prioritized", "uniform"])
    check_error(buf, twin, corrupt(lambda s: set_key(s, ["scalars", "table.written"], -2), kind=kind),
                ValueError, ["written"])


def test_load_state_dict_error_into_unbuilt_buffer():
    buf = rv.ReplayBuffer(CAP, sampler=rv.Prioritized(alpha=0.7, beta=0.5, eps=0.0), seed=5)
    state = foreign_state()
    state["arrays"]["priority.leaves"] = state["arrays"]["priority.leaves"][:-1]
    with pytest.raises(ValueError):
        buf.load_state_dict(state)
    assert buf.spec == {} and len(buf) == 0 and buf.seed == 5
