"""Device buffers (ReplayBuffer(device="cuda") / DeviceReplayBuffer).

Every test runs on device="cpu", the same kernels (cpp/include/reverie/kernels.h) run on
host memory by the host backend; on "cpu-block", the host backend run as a GPU runs the
kernels (the tree programs on a block of threads with real barriers, sample and gather over
CUDA's grid); and on "cuda" where a GPU is present. The CPU ReplayBuffer
is the reference: with the same seed and the same calls, a device buffer must draw the same
indices, gather the same rows, compute the same weights and hold the same priority tree.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from scipy import stats

import reverie as rv

DEVICES = ["cpu", "cpu-block"] + (["cuda"] if rv.cuda_available() else [])
BLOCK_THREADS = 16  # of "cpu-block" (the C++ tests also run 512, a CUDA program's block)
needs_cuda = pytest.mark.skipif(not rv.cuda_available(), reason="needs a CUDA GPU and driver")
SPEC = {"obs": ("float32", (3,)), "action": ("int64", ()), "frame": ("uint8", (5,)), "done": ("bool", ())}


def items(n: int, start: int = 0) -> dict:
    k = np.arange(start, start + n)
    return {
        "obs": np.stack([k, k * 2, k * 3], axis=1).astype(np.float32),
        "action": k.astype(np.int64),
        "frame": (k[:, None] + np.arange(5)).astype(np.uint8),
        "done": (k % 3 == 0),
    }


def device_buffer(capacity: int, spec=SPEC, *, device: str, **kwargs) -> rv.DeviceReplayBuffer:
    if device == "cpu-block":
        return rv.DeviceReplayBuffer(capacity, spec, device="cpu", block_threads=BLOCK_THREADS, **kwargs)
    return rv.DeviceReplayBuffer(capacity, spec, device=device, **kwargs)


def pair(device: str, capacity: int, sampler=None, seed: int = 7):
    """A device buffer and the CPU reference, built alike."""
    dev = device_buffer(capacity, SPEC, sampler=sampler, seed=seed, device=device)
    ref = rv.ReplayBuffer(capacity, SPEC, sampler=sampler, seed=seed)
    return dev, ref


def assert_same_batch(got: rv.Batch, want: rv.Batch) -> None:
    assert torch.equal(got.indices.cpu(), want.indices)
    for name in want:
        assert torch.equal(got[name].cpu(), want[name]), name
    if want.weights is None:
        assert got.weights is None
    else:
        # On a GPU, expf/logf may differ from glibc's by an ulp or two of the log: up to a
        # few 1e-6 relative for weights of rare items.
        rtol = 1e-6 if got.weights.device.type == "cpu" else 1e-5
        torch.testing.assert_close(got.weights.cpu(), want.weights, rtol=rtol, atol=0)


def assert_same_tree(dev: rv.DeviceReplayBuffer, ref: rv.ReplayBuffer, exact: bool) -> None:
    got, want = dev.priorities().numpy(), ref.priorities().numpy()
    if exact:
        np.testing.assert_array_equal(got, want)
    else:  # pow on a GPU may differ from glibc's in the last bit: one tree unit apart
        np.testing.assert_allclose(got, want, rtol=1e-9)


# ---- equality with the CPU buffer ------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("capacity", [1, 7, 100])
def test_uniform_matches_cpu_buffer(device, capacity):
    dev, ref = pair(device, capacity)
    for start, n in [(0, 3), (3, 1), (4, 150), (154, 5)]:
        for buf in (dev, ref):
            buf.extend(**items(n, start))
        assert len(dev) == len(ref)
        for batch in (1, 5, 64):
            assert_same_batch(dev.sample(batch), ref.sample(batch))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("alpha", [0.6, 1.0, 0.5])
def test_prioritized_matches_cpu_buffer(device, alpha):
    sampler = rv.Prioritized(alpha=alpha, beta=0.4)
    dev, ref = pair(device, 50, sampler)
    rng = np.random.default_rng(0)
    exact = device != "cuda" or alpha in (0.5, 1.0)
    for step in range(12):
        for buf in (dev, ref):
            buf.extend(**items(9, 9 * step))
        b_dev, b_ref = dev.sample(32), ref.sample(32)
        assert_same_batch(b_dev, b_ref)
        prio = rng.exponential(2.0, 32).astype(np.float32)
        dev.update_priorities(b_dev.indices, torch.from_numpy(prio).to(dev.device))
        ref.update_priorities(b_ref.indices, prio)
        assert_same_tree(dev, ref, exact)
    dev.synchronize()
    assert dev.stale_updates == ref.stale_updates == 0


@pytest.mark.parametrize("device", DEVICES)
def test_large_rows_and_many_fields_match_cpu_buffer(device):
    """A field of 1200 bytes (a block per row on a GPU) among 18 (two gathers of <= 16)."""
    spec = {f"f{i}": ("float32", (300,)) if i == 3 else ("int16", (i + 1,)) for i in range(18)}
    sampler = rv.Prioritized(alpha=0.6, beta=0.4)
    dev = device_buffer(40, spec, sampler=sampler, seed=2, device=device)
    ref = rv.ReplayBuffer(40, spec, sampler=sampler, seed=2)
    rng = np.random.default_rng(1)
    for _ in range(4):
        data = {name: rng.standard_normal((25, 300)).astype(np.float32) if name == "f3"
                else rng.integers(-999, 999, (25, *shape)).astype(np.int16)
                for name, (_, shape) in spec.items()}
        for buf in (dev, ref):
            buf.extend(**data)
        got, want = dev.sample(33), ref.sample(33)
        assert_same_batch(got, want)
        prio = rng.exponential(2.0, 33)
        dev.update_priorities(got.indices, torch.from_numpy(prio).to(dev.device))
        ref.update_priorities(want.indices, prio)
        assert_same_tree(dev, ref, exact=device != "cuda")


@pytest.mark.parametrize("device", DEVICES)
def test_single_adds_and_beta_changes_match(device):
    sampler = rv.Prioritized(alpha=0.7, beta=0.5)
    dev, ref = pair(device, 16, sampler)
    for k in range(20):
        for buf in (dev, ref):
            buf.add(obs=np.full(3, k, np.float32), action=k, frame=np.full(5, k, np.uint8), done=k % 2 == 0)
    b_dev, b_ref = dev.sample(8), ref.sample(8)
    dev.update_priorities(b_dev.indices, torch.linspace(0.1, 4.0, 8).to(dev.device))
    ref.update_priorities(b_ref.indices, torch.linspace(0.1, 4.0, 8))
    dev.sampler.beta = ref.sampler.beta = 1.0
    assert_same_batch(dev.sample(8), ref.sample(8))


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(capacity=st.integers(1, 40), alpha=st.sampled_from([0.5, 1.0]),
       ops=st.lists(st.tuples(st.sampled_from(["extend", "sample", "update"]), st.integers(1, 60),
                              st.integers(0, 2**31)), min_size=1, max_size=12))
# Found by hypothesis: the update sets the only stored priority to 0, so both buffers refuse
# the next sample (seed 11 draws priority 0.0 for the update).
@example(capacity=1, alpha=0.5, ops=[("extend", 1, 0), ("sample", 1, 0), ("update", 1, 11), ("sample", 1, 0)])
def test_property_same_as_cpu_buffer(device, capacity, alpha, ops):
    """Random interleavings of extend / sample / update (with repeated and stale keys)."""
    sampler = rv.Prioritized(alpha=alpha, beta=0.6, eps=0.0)
    dev, ref = pair(device, capacity, sampler, seed=3)
    written, last = 0, None
    for op, n, r in ops:
        rng = np.random.default_rng(r)
        if op == "extend":
            for buf in (dev, ref):
                buf.extend(**items(n, written))
            written += n
        elif op == "sample" and written:
            if not ref.priorities().any():
                # Every stored priority is 0 (updates of 0.0): both refuse with the same error,
                # the device buffer at synchronize() (its sample does not wait for the GPU).
                cause = "cannot sample: every stored item has priority 0"
                with pytest.raises(ValueError, match=cause):
                    ref.sample(n)
                dev.sample(n)
                with pytest.raises(ValueError, match=cause):
                    dev.synchronize()
                # The device buffer's refused sample still took its call number (it cannot
                # know without waiting for the GPU), the CPU buffer's did not: their draws part
                # from here, so the sequence ends.
                return
            got, want = dev.sample(n), ref.sample(n)
            assert_same_batch(got, want)
            last = want.indices
        elif op == "update" and last is not None:
            keys = last[rng.integers(0, len(last), n)]  # repeats; maybe overwritten since
            prio = rng.choice([0.0, 0.5, 3.0, 1e6], n)
            dev.update_priorities(torch.as_tensor(keys).to(dev.device), torch.as_tensor(prio).to(dev.device))
            ref.update_priorities(keys, prio)
            dev.synchronize()
            assert_same_tree(dev, ref, exact=True)
    assert dev.stale_updates == ref.stale_updates


# ---- semantics the issue names ----------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_repeated_index_last_wins(device):
    buf = device_buffer(8, SPEC, sampler=rv.Prioritized(alpha=1.0, eps=0.0), seed=1, device=device)
    buf.extend(**items(8))
    keys = torch.tensor([3, 5, 3, 3, 5], device=buf.device)
    buf.update_priorities(keys, torch.tensor([1.0, 9.0, 2.0, 7.0, 4.0], device=buf.device))
    p = buf.priorities()
    assert p[3].item() == pytest.approx(7.0) and p[5].item() == pytest.approx(4.0)
    assert p[0].item() == pytest.approx(1.0)  # untouched: the initial max


@pytest.mark.parametrize("device", DEVICES)
def test_rescale_for_huge_priorities_matches_cpu(device):
    sampler = rv.Prioritized(alpha=1.0, beta=0.4, eps=0.0)
    dev, ref = pair(device, 64, sampler)
    for buf in (dev, ref):
        buf.extend(**items(64))
    keys = torch.arange(0, 64, 2)
    prio = torch.logspace(-3, 30, 32, dtype=torch.float64)  # forces the fixed-point scale down
    dev.update_priorities(keys.to(dev.device), prio.to(dev.device))
    ref.update_priorities(keys, prio)
    assert_same_tree(dev, ref, exact=True)
    assert_same_batch(dev.sample(64), ref.sample(64))


@pytest.mark.parametrize("device", DEVICES)
def test_zero_priority_never_sampled(device):
    buf = device_buffer(32, SPEC, sampler=rv.Prioritized(alpha=1.0, eps=0.0), seed=2, device=device)
    buf.extend(**items(32))
    zero = torch.arange(0, 32, 2, device=buf.device)
    buf.update_priorities(zero, torch.zeros(16, device=buf.device))
    drawn = torch.cat([buf.sample(256).indices.cpu() for _ in range(20)])
    assert (drawn % 2 == 1).all()


@pytest.mark.parametrize("device", DEVICES)
def test_prioritized_draws_follow_priorities_chi_square(device):
    """Counts over 200 x 512 stratified draws against P(i) = p_i / sum p (alpha = 1).
    Stratification makes counts less variable than multinomial, so the multinomial
    chi-square test is conservative; alpha = 1e-3 at a fixed seed."""
    buf = device_buffer(16, SPEC, sampler=rv.Prioritized(alpha=1.0, eps=0.0), seed=11, device=device)
    buf.extend(**items(16))
    prio = torch.arange(1, 17, dtype=torch.float64)
    buf.update_priorities(torch.arange(16, device=buf.device), prio.to(buf.device))
    counts = np.zeros(16)
    for _ in range(200):
        counts += np.bincount(buf.sample(512).indices.cpu().numpy(), minlength=16)
    expected = (prio / prio.sum()).numpy() * counts.sum()
    assert stats.chisquare(counts, expected).pvalue > 1e-3


@pytest.mark.parametrize("device", DEVICES)
def test_importance_weights_follow_per_definition(device):
    buf = device_buffer(10, SPEC, sampler=rv.Prioritized(alpha=1.0, beta=0.7, eps=0.0), seed=4, device=device)
    buf.extend(**items(10))
    prio = torch.arange(1, 11, dtype=torch.float64)
    buf.update_priorities(torch.arange(10, device=buf.device), prio.to(buf.device))
    batch = buf.sample(64)
    p = prio / prio.sum()
    w = (10 * p) ** -0.7
    w = w / w.max()
    torch.testing.assert_close(batch.weights.cpu().double(), w[batch.indices.cpu()], rtol=1e-6, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_stale_updates_are_counted_and_ignored(device):
    buf = device_buffer(4, SPEC, sampler=rv.Prioritized(alpha=1.0, eps=0.0), seed=5, device=device)
    buf.extend(**items(4))
    old = buf.sample(4).indices
    buf.extend(**items(4, 4))  # every sampled item is overwritten
    before = buf.priorities().clone()
    assert buf.update_priorities(old, torch.full((4,), 50.0, device=buf.device)) is None
    assert torch.equal(buf.priorities(), before)
    assert buf.stale_updates == 4


@pytest.mark.parametrize("device", DEVICES)
def test_extend_more_than_capacity_keeps_the_last(device):
    dev, ref = pair(device, 10)
    for buf in (dev, ref):
        buf.extend(**items(25))
        buf.extend(**items(13, 25))
    cols = dev.columns
    assert torch.equal(cols["action"], ref.columns["action"])
    assert_same_batch(dev.sample(30), ref.sample(30))


# ---- bad input changes nothing -----------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_bad_priority_on_device_is_reported_and_changes_nothing(device):
    buf = device_buffer(8, SPEC, sampler=rv.Prioritized(alpha=1.0), seed=6, device=device)
    buf.extend(**items(8))
    before = buf.priorities().clone()
    keys = torch.arange(4, device=buf.device)
    buf.update_priorities(keys, torch.tensor([1.0, float("nan"), 2.0, 3.0], device=buf.device))
    with pytest.raises(ValueError, match=r"priority nan at position 1.*whole update was ignored"):
        buf.synchronize()
    assert torch.equal(buf.priorities(), before)
    buf.synchronize()  # reported once
    buf.update_priorities(torch.tensor([0, 8], device=buf.device), torch.ones(2, device=buf.device))
    with pytest.raises(IndexError, match=r"index 8 at position 1 was never written"):
        buf.synchronize()
    assert torch.equal(buf.priorities(), before)
    buf.update_priorities(keys, torch.tensor([-1.0, 1.0, 1.0, 1.0], device=buf.device))
    with pytest.raises(ValueError, match="priority -1.0 at position 0"):
        buf.synchronize()


@pytest.mark.parametrize("device", DEVICES)
def test_bad_values_off_device_raise_at_once(device):
    buf = device_buffer(8, SPEC, sampler=rv.Prioritized(), seed=6, device=device)
    buf.extend(**items(8))
    before = buf.priorities().clone()
    with pytest.raises(ValueError, match="got inf at position 2"):
        buf.update_priorities(np.arange(3), np.array([1.0, 2.0, np.inf]))
    with pytest.raises(IndexError, match="index 9 at position 0 was never written"):
        buf.update_priorities([9], [1.0])
    with pytest.raises(ValueError, match="3 indices and 2 priorities"):
        buf.update_priorities([0, 1, 2], [1.0, 2.0])
    with pytest.raises(TypeError, match="indices must be integers"):
        buf.update_priorities(np.array([0.5]), [1.0])
    assert torch.equal(buf.priorities(), before)
    buf.synchronize()


@pytest.mark.parametrize("device", DEVICES)
def test_bad_writes_change_nothing(device):
    dev, ref = pair(device, 10)
    dev.extend(**items(4))
    good = items(2)
    with pytest.raises(TypeError, match="field 'obs': expected dtype torch.float32, got torch.float64"):
        dev.extend(**{**good, "obs": good["obs"].astype(np.float64)})
    with pytest.raises(ValueError, match=r"field 'frame': expected shape \('N', 5\), got \(2, 4\)"):
        dev.extend(**{**good, "frame": good["frame"][:, :4]})
    with pytest.raises(ValueError, match="missing \\['done'\\]"):
        dev.extend(**{k: v for k, v in good.items() if k != "done"})
    with pytest.raises(ValueError, match="field 'action' has 3 items"):
        dev.extend(**{**good, "action": np.arange(3)})
    with pytest.raises(TypeError, match="cannot store a float in int64"):
        dev.add(obs=np.zeros(3, np.float32), action=1.5, frame=np.zeros(5, np.uint8), done=False)
    assert len(dev) == 4
    ref.extend(**items(4))
    assert_same_batch(dev.sample(16), ref.sample(16))


@pytest.mark.parametrize("device", DEVICES)
def test_all_zero_priorities_are_reported(device):
    buf = device_buffer(4, SPEC, sampler=rv.Prioritized(alpha=1.0, eps=0.0), seed=6, device=device)
    buf.extend(**items(4))
    buf.update_priorities(torch.arange(4, device=buf.device), torch.zeros(4, device=buf.device))
    batch = buf.sample(3)
    assert (batch.indices.cpu() == -1).all() and (batch.weights.cpu() == 0).all()
    with pytest.raises(ValueError, match="cannot sample: every stored item has priority 0"):
        buf.synchronize()


def test_argument_errors():
    with pytest.raises(ValueError, match="capacity must be > 0"):
        rv.DeviceReplayBuffer(0, device="cpu")
    with pytest.raises(ValueError, match="sample with replacement"):
        rv.DeviceReplayBuffer(4, SPEC, sampler=rv.Uniform(replacement=False), device="cpu")
    with pytest.raises(ValueError, match="device must be"):
        rv.DeviceReplayBuffer(4, SPEC, device="meta")
    buf = rv.DeviceReplayBuffer(4, SPEC, device="cpu")
    with pytest.raises(ValueError, match="the buffer is empty"):
        buf.sample(2)
    with pytest.raises(ValueError, match="needs a prioritized sampler"):
        buf.update_priorities([0], [1.0])
    with pytest.raises(ValueError, match="batch_size must be > 0"):
        buf.sample(0)
    with pytest.raises(ValueError, match="at least one element"):
        rv.DeviceReplayBuffer(4, {"x": ("float32", (0,))}, device="cpu")
    for bad in (0, 3, 2048):
        with pytest.raises(ValueError, match="block_threads must be a power of two"):
            rv.DeviceReplayBuffer(4, SPEC, device="cpu", block_threads=bad)
    with pytest.raises(ValueError, match="block_threads is for device='cpu'"):
        rv.DeviceReplayBuffer(4, SPEC, device="cuda", block_threads=32)
    with pytest.raises(ValueError, match="do not take rate_limiter"):
        rv.ReplayBuffer(4, SPEC, device="cuda", rate_limiter=rv.RateLimiter(min_size_to_sample=1))
    with pytest.raises(ValueError, match="EpisodeBuffer has no GPU-resident form"):
        rv.EpisodeBuffer(4, device="cuda")


def test_spec_is_inferred_from_the_first_write():
    buf = rv.DeviceReplayBuffer(6, device="cpu", seed=0)
    with pytest.raises(TypeError):
        buf.extend(obs=np.zeros((2, 3), np.float32), bad=object())
    assert buf.spec == {} and len(buf) == 0
    buf.extend(obs=torch.ones(2, 3), n=np.array([1, 2]))
    assert buf.spec == {"obs": rv.Field("float32", (3,)), "n": rv.Field("int64", ())}
    assert torch.equal(buf.sample(4).obs, torch.ones(4, 3))


@pytest.mark.skipif(rv.cuda_available(), reason="checks the message on machines without CUDA")
def test_cuda_device_without_gpu_says_why():
    with pytest.raises(RuntimeError, match="needs a CUDA GPU and driver|has no CUDA kernels"):
        rv.ReplayBuffer(16, SPEC, device="cuda")
    assert rv.cuda_available() is False


def test_cpu_device_is_the_ordinary_buffer():
    buf = rv.ReplayBuffer(16, SPEC, device="cpu")
    assert type(buf) is rv.ReplayBuffer


def test_close_and_context_manager():
    with rv.DeviceReplayBuffer(8, SPEC, sampler=rv.Prioritized(), device="cpu") as buf:
        buf.extend(**items(8))
        assert len(buf) == 8
    assert len(buf) == 0
    with pytest.raises(ValueError, match="the buffer is empty"):
        buf.sample(1)


@pytest.mark.parametrize("device", DEVICES)
def test_all_stale_update_changes_nothing_even_with_large_eps(device):
    sampler = rv.Prioritized(alpha=1.0, eps=5.0)
    dev, ref = pair(device, 4, sampler)
    for buf in (dev, ref):
        buf.extend(**items(4))
    old = ref.sample(4).indices
    for buf in (dev, ref):
        buf.extend(**items(4, 4))
        buf.update_priorities(old.to(buf.device) if buf is dev else old, torch.zeros(4).to(buf.device) if buf is dev else torch.zeros(4))
        buf.extend(**items(2, 8))  # new items get the running max: must be the CPU's
    assert_same_tree(dev, ref, exact=True)


# ---- concurrency ---------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_threads_add_sample_and_update_together(device):
    buf = device_buffer(256, SPEC, sampler=rv.Prioritized(), seed=9, device=device)
    buf.extend(**items(16))
    errors: list = []

    def writer(t: int) -> None:
        try:
            for k in range(50):
                buf.extend(**items(4, 10_000 * t + 4 * k))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    def learner() -> None:
        try:
            for _ in range(50):
                b = buf.sample(32)
                buf.update_priorities(b.indices, torch.rand(32, device=buf.device))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(2)]
    threads += [threading.Thread(target=learner) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    buf.synchronize()
    assert len(buf) == 256 and buf._core.written == 16 + 2 * 50 * 4
    # Every stored row is one that some writer wrote, whole.
    cols = buf.columns
    a = cols["action"].numpy()
    np.testing.assert_array_equal(cols["obs"].numpy(), np.stack([a, 2 * a, 3 * a], 1).astype(np.float32))
    leaves = buf._leaves()
    assert (leaves > 0).all()


# ---- host buffer -> device: staging and prefetch -------------------------------------------


def test_prefetched_batches_are_the_unprefetched_ones():
    def make():
        buf = rv.ReplayBuffer(100, SPEC, sampler=rv.Prioritized(), seed=12)
        buf.extend(**items(100))
        return buf

    a, b = make(), make()
    plain = [a.sample(16) for _ in range(6)]
    staged = [b.sample(16, device="cpu", prefetch=True) for _ in range(6)]
    for got, want in zip(staged, plain):
        assert_same_batch(got, want)
    # A different batch size drops the prefetched batch (it used up one draw).
    assert b.sample(8, device="cpu").indices.shape == (8,)
    b.close()


def test_staging_errors():
    buf = rv.ReplayBuffer(10, SPEC, seed=0)
    buf.extend(**items(10))
    with pytest.raises(ValueError, match="exclude each other"):
        buf.sample(2, out={}, device="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="torch sees no CUDA device"):
            buf.sample(2, device="cuda")


# ---- GPU only --------------------------------------------------------------------------------


@needs_cuda
def test_cuda_batches_live_on_the_device_and_need_no_sync():
    buf = rv.ReplayBuffer(1000, SPEC, sampler=rv.Prioritized(), seed=0, device="cuda")
    assert isinstance(buf, rv.DeviceReplayBuffer)
    data = {k: torch.as_tensor(v).cuda() for k, v in items(1000).items()}
    buf.extend(**data)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(5):
            batch = buf.sample(256)
            buf.update_priorities(batch.indices, batch.obs[:, 0].abs() + 1)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(t.is_cuda for t in batch.values()) and batch.indices.is_cuda and batch.weights.is_cuda
    buf.synchronize()


@needs_cuda
def test_cuda_matches_reference_at_large_capacity():
    sampler = rv.Prioritized(alpha=1.0, beta=0.4)
    cap = 1 << 21
    dev = rv.DeviceReplayBuffer(cap, {"x": ("float32", ())}, sampler=sampler, seed=1, device="cuda")
    ref = rv.ReplayBuffer(cap, {"x": ("float32", ())}, sampler=sampler, seed=1)
    x = torch.arange(cap + 1000, dtype=torch.float32)
    dev.extend(x=x.cuda())
    ref.extend(x=x)
    for _ in range(4):
        got, want = dev.sample(4096), ref.sample(4096)
        assert_same_batch(got, want)
        prio = torch.rand(4096, dtype=torch.float64) * 10
        dev.update_priorities(got.indices, prio.cuda())
        ref.update_priorities(want.indices, prio)
    assert_same_tree(dev, ref, exact=True)


@needs_cuda
def test_cuda_calls_on_different_streams_are_ordered():
    buf = rv.DeviceReplayBuffer(4096, {"x": ("float32", (64,))}, seed=3, device="cuda")
    side = torch.cuda.Stream()
    x = torch.randn(4096, 64, device="cuda")
    buf.extend(x=x)  # default stream
    with torch.cuda.stream(side):
        batch = buf.sample(4096)  # waits for the extend, without the host waiting
        got = batch.x.clone()
    torch.cuda.synchronize()
    assert torch.equal(got, x[batch.indices % 4096])


@needs_cuda
def test_host_buffer_to_cuda_with_prefetch_matches_plain_samples():
    def make():
        buf = rv.ReplayBuffer(500, SPEC, sampler=rv.Prioritized(), seed=12)
        buf.extend(**items(500))
        return buf

    a, b = make(), make()
    for _ in range(5):
        want = a.sample(64)
        got = b.sample(64, device="cuda", prefetch=True)
        assert got.obs.is_cuda and got.weights.is_cuda and not got.indices.is_cuda
        assert_same_batch(got, want)
    b.close()


# ---- the buffer protocol: get, state_dict, spec, len (issue 13) -----------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sampler", [None, rv.Prioritized(alpha=0.7)], ids=["uniform", "prioritized"])
def test_get_returns_the_sampled_rows_and_refuses_stale_keys(device, sampler):
    dev, ref = pair(device, 10, sampler)  # not a power of two: keys are not insertion numbers
    for b in (dev, ref):
        b.extend(**items(23))
    batch = dev.sample(32)
    got = dev.get(batch.indices)
    assert got.weights is None and got.meta is None
    assert torch.equal(got.indices.cpu(), batch.indices.cpu())
    for name in SPEC:
        assert torch.equal(got[name], batch[name]), name
        assert got[name].device == batch[name].device
    want = ref.get(batch.indices.cpu())  # the CPU buffer agrees, key for key
    for name in SPEC:
        assert torch.equal(got[name].cpu(), want[name]), name
    old = batch.indices.cpu()[0].item()
    dev.extend(**items(10, 100))  # every item overwritten
    with pytest.raises(IndexError, match=f"index {old} at position 1 is no longer stored"):
        dev.get([dev.sample(1).indices.cpu().item(), old])
    with pytest.raises(IndexError, match="never written"):
        dev.get([10**6])
    with pytest.raises(TypeError, match="integers"):
        dev.get(np.array([0.5]))
    assert dev.get([]).indices.numel() == 0


@pytest.mark.parametrize("device", DEVICES)
def test_host_keys_of_a_lapped_ring_update_priorities(device):
    """Keys past the first lap of a capacity that is not a power of two are above `written`
    (generation bits above the slot bits): they are keys all the same."""
    dev, ref = pair(device, 6, rv.Prioritized(alpha=1.0, eps=0.0))
    for b in (dev, ref):
        b.extend(**items(7))
    batch = ref.sample(16)
    assert (batch.indices >= 7).any()
    dev.sample(16)
    prio = np.arange(16) + 1.0
    dev.update_priorities(batch.indices.numpy(), prio)
    ref.update_priorities(batch.indices.numpy(), prio)
    dev.synchronize()
    assert_same_tree(dev, ref, exact=device != "cuda")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sampler", [None, rv.Prioritized(alpha=0.6, beta=0.5)], ids=["uniform", "prioritized"])
def test_state_dict_continues_on_the_cpu_exactly(device, sampler):
    dev = device_buffer(12, SPEC, sampler=sampler, seed=3, device=device)
    assert dev.state_dict()["config"]["spec"] == [["obs", "float32", [3]], ["action", "int64", []],
                                                   ["frame", "uint8", [5]], ["done", "bool", []]]
    assert dev.state_dict()["scalars"]["table.written"] == 0
    unbuilt = rv.DeviceReplayBuffer(12, device="cpu", seed=3)  # spec not known yet
    assert "arrays" not in unbuilt.state_dict() and unbuilt.state_dict()["config"]["spec"] == []
    dev.extend(**items(30))
    for _ in range(5):
        b = dev.sample(8)
        if sampler is not None:
            dev.update_priorities(b.indices, (b["action"] % 5).double() + 0.5)
    state = dev.state_dict()
    assert state["format"] == "reverie-state" and state["config"]["writer"] == {"kind": "fifo"}
    cpu = rv.ReplayBuffer(12, SPEC, sampler=sampler, seed=99)
    cpu.load_state_dict(state)  # adopts the device buffer's seed
    assert len(cpu) == len(dev) == 12 and cpu.spec == dev.spec
    for i in range(200):
        want = dev.sample(8)
        assert_same_batch(want, cpu.sample(8))
        if sampler is not None:
            prio = (want["action"].cpu() % 7).double() + 0.25
            dev.update_priorities(want.indices, prio.to(want.indices.device))
            cpu.update_priorities(want.indices.cpu(), prio)
        if i % 50 == 49:
            dev.extend(**items(3, 1000 + i))
            cpu.extend(**items(3, 1000 + i))


def test_device_buffers_say_what_they_do_not_do():
    dev = device_buffer(8, SPEC, device="cpu")
    for name in ("load_state_dict", "save", "load", "stats", "version"):
        assert not hasattr(dev, name), name
    assert "no ``load_state_dict``" in rv.DeviceReplayBuffer.state_dict.__doc__
