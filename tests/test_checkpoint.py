"""Tests of crash-safe checkpoints (reverie._checkpoint): exact restoration (the next 1000
batches equal the original's), atomic replacement under SIGKILL, and refusal of truncated,
corrupted and foreign files. Everything is compared exactly."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path
from typing import Any, Callable, Dict, List

import numpy as np
import pytest
import torch

import reverie as rv
from reverie import _checkpoint as ckpt

STEPS = 1000


# ---- helpers -----------------------------------------------------------------------------

def fill_transitions(buf: rv.ReplayBuffer, n: int, start: int = 0) -> None:
    for i in range(start, start + n, 50):
        k = np.arange(i, min(i + 50, start + n))
        buf.extend(obs=np.stack([k, -k, k * 2], 1).astype(np.float32),
                   action=k.astype(np.int64), reward=(k / 7).astype(np.float32),
                   done=(k % 11 == 0),
                   h=torch.from_numpy(np.stack([k, k + 1], 1).astype(np.float32)).bfloat16())


def fill_episodes(buf: rv.EpisodeBuffer, steps: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    n = buf.num_envs
    for t in range(steps):
        e = np.arange(n)
        buf.extend(obs=np.stack([e, np.full(n, t), np.ones(n)], 1).astype(np.float32),
                   pix=np.stack([e, np.full(n, t % 256), np.ones(n)], 1).astype(np.uint8),
                   action=(t * n + e).astype(np.int64), reward=(t + 1 + e / 4).astype(np.float32),
                   terminated=rng.random(n) < 0.05, truncated=rng.random(n) < 0.03)


def assert_batches_equal(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert torch.equal(a[name], b[name]), name
    assert torch.equal(a.indices, b.indices)
    if a.weights is None:
        assert b.weights is None
    else:
        assert torch.equal(a.weights, b.weights)


def assert_same_state(a: rv.ReplayBuffer, b: rv.ReplayBuffer) -> None:
    assert type(a) is type(b)
    assert b.storage == "memory"
    assert (len(a), a.capacity, a.seed, a.spec) == (len(b), b.capacity, b.seed, b.spec)
    assert a.sampler.config() == b.sampler.config()
    assert a.stats() == b.stats()
    assert a.stale_updates == b.stale_updates
    for name, col in a.columns.items():
        assert torch.equal(col, b.columns[name]), name
    if isinstance(a.sampler, rv.Prioritized):
        assert torch.equal(a.priorities(), b.priorities())
    if isinstance(a, rv.EpisodeBuffer):
        assert a._view == b._view
    # every state array: columns, stamps, priority leaves, episode flags, ...
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa.get("arrays", {})) == list(sb.get("arrays", {}))
    for name, t in sa.get("arrays", {}).items():
        assert torch.equal(t, sb["arrays"][name]), name


def draw(buf: rv.ReplayBuffer, step: Callable[[rv.ReplayBuffer, int], Any],
         steps: int = STEPS) -> List[Any]:
    return [step(buf, i) for i in range(steps)]


def uniform_step(buf: rv.ReplayBuffer, i: int) -> Any:
    return buf.sample(16)


def prioritized_step(buf: rv.ReplayBuffer, i: int) -> Any:
    batch = buf.sample(16)
    # Deterministic new priorities, some stale: the same updates on both buffers.
    buf.update_priorities(batch.indices, (batch.indices % 13).double() + 0.5 + i % 3)
    if i % 100 == 99:
        fill_transitions(buf, 7, start=10_000 + i)  # inserts between samples too
    return batch


def episode_step(buf: rv.ReplayBuffer, i: int) -> Any:
    if i % 2:
        batch = buf.sample(8, n_step=3, gamma=0.9)
    else:
        batch = buf.sample_sequences(4, 5, burn_in=2, episode_end="pad" if i % 4 else "drop")
    if isinstance(buf.sampler, rv.Prioritized):
        buf.update_priorities(batch.indices, (batch.indices % 5).double() + 0.25)
    return batch


def round_trip(buf: rv.ReplayBuffer, path: Path, step: Callable[[rv.ReplayBuffer, int], Any],
               **load_kwargs: Any) -> rv.ReplayBuffer:
    buf.save(path)
    restored = rv.ReplayBuffer.load(path, **load_kwargs)
    assert_same_state(buf, restored)
    for a, b in zip(draw(buf, step), draw(restored, step)):
        assert_batches_equal(a, b)
    assert_same_state(buf, restored)
    return restored


def transition_buffer(**kwargs: Any) -> rv.ReplayBuffer:
    buf = rv.ReplayBuffer(300, seed=7, **kwargs)
    fill_transitions(buf, 450)  # wrapped around
    return buf


# ---- exact restoration ---------------------------------------------------------------------

def test_round_trip_uniform_with_bfloat16(tmp_path: Path) -> None:
    buf = transition_buffer()
    assert buf.spec["h"].dtype == "bfloat16"
    for _ in range(5):
        buf.sample(8)  # the generator's position is restored too
    round_trip(buf, tmp_path / "u.rvckpt", uniform_step)


def test_round_trip_uniform_without_replacement(tmp_path: Path) -> None:
    buf = transition_buffer(sampler=rv.Uniform(replacement=False))
    restored = round_trip(buf, tmp_path / "u.rvckpt", uniform_step)
    assert restored.sampler.replacement is False


def test_round_trip_prioritized_with_updates(tmp_path: Path) -> None:
    buf = transition_buffer(sampler=rv.Prioritized(alpha=0.7, beta=0.5, eps=1e-3))
    for i in range(50):
        prioritized_step(buf, i)
    batch = buf.sample(64)
    fill_transitions(buf, 200, start=20_000)  # overwrites some sampled items
    assert buf.update_priorities(batch.indices, torch.ones(64)) > 0
    buf.sampler.beta = 0.75
    restored = round_trip(buf, tmp_path / "p.rvckpt", prioritized_step)
    assert restored.sampler.beta == 0.75


def test_round_trip_rate_limiter(tmp_path: Path) -> None:
    limiter = rv.RateLimiter(min_size_to_sample=100, samples_per_insert=4.0, tolerance=1e9,
                             timeout=0)
    buf = transition_buffer(rate_limiter=limiter)
    for _ in range(20):
        buf.sample(16)
    buf.rate_limiter.samples_per_insert = 2.0  # a live change: the offset is restored
    buf.save(tmp_path / "r.rvckpt")
    restored = rv.ReplayBuffer.load(tmp_path / "r.rvckpt")
    assert restored.rate_limiter.config() == buf.rate_limiter.config()
    assert restored.rate_limiter.stats() == buf.rate_limiter.stats()
    assert restored.stats() == buf.stats()
    for a, b in zip(draw(buf, uniform_step, 200), draw(restored, uniform_step, 200)):
        assert_batches_equal(a, b)
    # A limiter that must refuse: refuses the same way after the restore.
    strict = transition_buffer(rate_limiter=rv.RateLimiter(450, samples_per_insert=0.1,
                                                           tolerance=0.0, timeout=0))
    while strict.rate_limiter.can_sample():
        strict.sample(4)
    strict.save(tmp_path / "s.rvckpt")
    again = rv.ReplayBuffer.load(tmp_path / "s.rvckpt")
    assert not again.rate_limiter.can_sample()
    with pytest.raises(TimeoutError):
        again.sample(4)


@pytest.mark.parametrize("sampler", [rv.Uniform(), rv.Prioritized(alpha=0.6, beta=0.4)],
                         ids=["uniform", "prioritized"])
def test_round_trip_episodes_frame_stack(tmp_path: Path, sampler: Any) -> None:
    spec = {"obs": ("float32", (3,)), "pix": ("uint8", (3,)), "action": ("int64", ()),
            "reward": ("float32", ()), "terminated": ("bool", ()), "truncated": ("bool", ())}
    buf = rv.EpisodeBuffer(240, spec, sampler, seed=11, num_envs=3, obs_fields=("obs", "pix"),
                           frame_stack=2)
    fill_episodes(buf, 130)  # wrapped around (80 steps per env)
    for i in range(10):
        episode_step(buf, i)
    restored = round_trip(buf, tmp_path / "e.rvckpt", episode_step)
    assert isinstance(restored, rv.EpisodeBuffer)
    assert (restored.num_envs, restored.frame_stack, restored.obs_fields) == (3, 2, ("obs", "pix"))


def test_round_trip_shared_source(tmp_path: Path) -> None:
    spec = {"obs": ("float32", (3,)), "action": ("int64", ()), "reward": ("float32", ()),
            "done": ("bool", ()), "h": ("bfloat16", (2,))}
    with rv.ReplayBuffer(300, spec, rv.Prioritized(), seed=5, storage="shared") as buf:
        fill_transitions(buf, 450)
        restored = round_trip(buf, tmp_path / "s.rvckpt", prioritized_step)
        assert restored.storage == "memory" and restored.shared_name is None


def test_round_trip_unbuilt_and_empty(tmp_path: Path) -> None:
    rv.ReplayBuffer(10, sampler=rv.Prioritized(), seed=3).save(tmp_path / "a")
    a = rv.ReplayBuffer.load(tmp_path / "a")
    assert (len(a), a.capacity, a.seed, a.spec) == (0, 10, 3, {})
    a.add(x=1.0)  # its spec is inferred as for a new buffer
    assert len(a) == 1
    b = rv.ReplayBuffer(10, {"x": ("float32", ())}, seed=4)
    b.save(tmp_path / "b")
    restored = rv.ReplayBuffer.load(tmp_path / "b")
    assert len(restored) == 0 and restored.spec == b.spec
    restored.add(x=2.0)
    assert restored.sample(1)["x"].item() == 2.0


def test_restored_buffer_keeps_going(tmp_path: Path) -> None:
    """Adds after the restore land where the original's would (same keys, slots, samples)."""
    buf = transition_buffer(sampler=rv.Prioritized())
    restored = round_trip(buf, tmp_path / "k.rvckpt", prioritized_step)
    fill_transitions(buf, 123, start=50_000)
    fill_transitions(restored, 123, start=50_000)
    for a, b in zip(draw(buf, prioritized_step, 50), draw(restored, prioritized_step, 50)):
        assert_batches_equal(a, b)


def test_cls_check(tmp_path: Path) -> None:
    transition_buffer().save(tmp_path / "r")
    with pytest.raises(TypeError, match="ReplayBuffer, which is not a EpisodeBuffer"):
        rv.EpisodeBuffer.load(tmp_path / "r")
    assert type(rv.ReplayBuffer.load(tmp_path / "r")) is rv.ReplayBuffer
    ep = rv.EpisodeBuffer(20, num_envs=2, seed=0, obs_fields=("obs", "pix"))
    fill_episodes(ep, 5)
    ep.save(tmp_path / "e")
    assert type(rv.ReplayBuffer.load(tmp_path / "e")) is rv.EpisodeBuffer

    class Mine(rv.ReplayBuffer):
        pass

    assert type(Mine.load(tmp_path / "r")) is Mine
    with pytest.raises(TypeError, match="which is not a Mine"):
        Mine.load(tmp_path / "e")


def test_progress_bar(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("tqdm")
    buf = transition_buffer()
    buf.save(tmp_path / "p", progress=True)
    rv.ReplayBuffer.load(tmp_path / "p", progress=True)
    err = capsys.readouterr().err
    assert "saving p" in err and "loading p" in err
    buf.save(tmp_path / "q")  # None: small, no bar
    rv.ReplayBuffer.load(tmp_path / "q", progress=False)
    assert "saving" not in capsys.readouterr().err


def test_format_is_self_describing(tmp_path: Path) -> None:
    buf = transition_buffer(sampler=rv.Prioritized())
    buf.save(tmp_path / "f")
    data = (tmp_path / "f").read_bytes()
    header = read_header(data)
    assert header["version"] == 2 and header["config"]["capacity"] == 300
    assert header["config"]["view"] is None and header["config"]["writer"] == {"kind": "fifo"}
    assert header["config"]["selector"]["kind"] == "prioritized"
    assert header["config"]["spec"][0] == ["obs", "float32", [3]]
    assert header["scalars"]["table.written"] == 450
    names = [s["name"] for s in header["sections"]]
    assert names == ["column:obs", "column:action", "column:reward", "column:done", "column:h",
                     "table.stamps", "priority.leaves"]
    for s in header["sections"]:
        assert s["offset"] % ckpt.ALIGN == 0
    obs = header["sections"][0]
    col = np.frombuffer(data, np.float32, 300 * 3, obs["offset"]).reshape(300, 3)
    assert np.array_equal(col, buf.columns["obs"].numpy())
    assert len(data) == header["file_bytes"]
    assert data[header["footer_offset"]:].startswith(ckpt.FOOTER_MAGIC)


# ---- atomic replacement ----------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import sys, time
    import reverie as rv
    from reverie import _checkpoint as ckpt
    ckpt.CHUNK = 8 << 20
    write = ckpt._write_all
    def slow_write(f, data):
        write(f, data)
        time.sleep(0.02)  # a slow disk: the parent kills this process mid-save
    ckpt._write_all = slow_write
    buf = rv.ReplayBuffer(2048, {"frame": ("uint8", (4, 200, 200))}, seed=1)
    buf.columns["frame"].fill_(9)  # 320 MB
    buf.add(frame=buf.columns["frame"][0])
    print("saving", flush=True)
    buf.save(sys.argv[1])
    print("saved", flush=True)
""")


def test_kill_mid_save_keeps_previous_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.rv"
    old = transition_buffer(sampler=rv.Prioritized())
    old.save(path)
    before = path.read_bytes()
    # The child imports reverie from wherever this process did (an installed wheel in CI,
    # the source tree with its built module in development).
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(rv.__file__)))
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        killed_at = -1
        while time.monotonic() < deadline and child.poll() is None:
            temps = list(tmp_path.glob(".ckpt.rv.tmp-*"))
            if temps:
                try:
                    size = temps[0].stat().st_size
                except FileNotFoundError:
                    size = 0
                if size > 32 << 20:
                    child.send_signal(signal.SIGKILL)
                    killed_at = size
                    break
            time.sleep(0.002)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    out, err = child.communicate()
    assert killed_at > 0, f"the child was not caught mid-save: {out!r} {err[-2000:]!r}"
    assert child.returncode == -signal.SIGKILL
    assert b"saved" not in out
    temps = list(tmp_path.glob(".ckpt.rv.tmp-*"))
    assert len(temps) == 1 and temps[0].stat().st_size < 330 << 20  # the torn temp file
    # The previous checkpoint is untouched and restores exactly.
    assert path.read_bytes() == before
    restored = rv.ReplayBuffer.load(path)
    assert_same_state(old, restored)
    for a, b in zip(draw(old, prioritized_step, 200), draw(restored, prioritized_step, 200)):
        assert_batches_equal(a, b)
    # The torn temp file is refused if someone tries it, and does not block the next save.
    with pytest.raises(ValueError, match="truncated"):
        rv.ReplayBuffer.load(temps[0])
    restored.save(path)
    again = rv.ReplayBuffer.load(path)
    assert_same_state(restored, again)


def test_failed_save_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c"
    buf = transition_buffer()
    buf.save(path)
    before = path.read_bytes()

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    fill_transitions(buf, 10, start=999)
    with pytest.raises(OSError, match="No space"):
        buf.save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]  # the temp file is removed
    with pytest.raises(FileNotFoundError):
        buf.save(tmp_path / "missing-dir" / "c")


# ---- refusal of bad files ----------------------------------------------------------------------

def read_header(data: bytes) -> Dict[str, Any]:
    magic, version, length = struct.unpack_from("<16sIQ", data)
    return json.loads(data[28:28 + length])


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    buf = rv.EpisodeBuffer(100, sampler=rv.Prioritized(), seed=1, num_envs=2,
                           obs_fields=("obs", "pix"))
    fill_episodes(buf, 70)
    path = tmp_path / "good.rvckpt"
    buf.save(path)
    return path


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_truncated_files_are_refused(saved: Path, tmp_path: Path) -> None:
    data = saved.read_bytes()
    header = read_header(data)
    sections = {s["name"]: s for s in header["sections"]}
    header_end = 28 + len(json.dumps(header, separators=(",", ":"))) + 4
    cuts = [16, 20, 27, 28, 28 + 10, header_end - 2, header_end, sections["column:obs"]["offset"],
            sections["column:pix"]["offset"] + 7, sections["priority.leaves"]["offset"] + 100,
            sections["episodes.stream_flags"]["offset"] + 1, header["footer_offset"],
            header["file_bytes"] - 1]
    for cut in cuts:
        path = write(tmp_path, f"cut{cut}", data[:cut])
        with pytest.raises(ValueError, match="truncated: expected") as info:
            rv.ReplayBuffer.load(path)
        assert str(path) in str(info.value), cut
    for cut in (0, 5, 15):  # not even the signature
        with pytest.raises(ValueError, match="not a reverie checkpoint"):
            rv.ReplayBuffer.load(write(tmp_path, f"cut{cut}", data[:cut]))
    with pytest.raises(ValueError, match="trailing data"):
        rv.ReplayBuffer.load(write(tmp_path, "long", data + b"\0"))
    rv.ReplayBuffer.load(saved)  # the original is fine


@pytest.mark.parametrize("section,what", [
    ("column:obs", "column 'obs'"), ("column:pix", "column 'pix'"),
    ("column:terminated", "column 'terminated'"), ("priority.leaves", "section 'priority.leaves'"),
    ("episodes.row_flags", "section 'episodes.row_flags'"), ("table.stamps", "section 'table.stamps'"),
    ("episodes.stream_flags", "section 'episodes.stream_flags'")])
def test_flipped_byte_names_the_section(saved: Path, tmp_path: Path, section: str,
                                        what: str) -> None:
    data = bytearray(saved.read_bytes())
    entry = next(s for s in read_header(bytes(data))["sections"] if s["name"] == section)
    data[entry["offset"] + entry["nbytes"] // 2] ^= 0x10
    with pytest.raises(ValueError, match=f"checksum mismatch in {what}"):
        rv.ReplayBuffer.load(write(tmp_path, "flipped", bytes(data)))


def test_corrupted_header_and_footer(saved: Path, tmp_path: Path) -> None:
    data = saved.read_bytes()
    header = read_header(data)
    bad = bytearray(data)
    bad[40] ^= 0x01  # inside the JSON header
    with pytest.raises(ValueError, match="checksum mismatch in the header"):
        rv.ReplayBuffer.load(write(tmp_path, "h", bytes(bad)))
    bad = bytearray(data)
    bad[header["footer_offset"] + 12] ^= 0x01  # a section's checksum
    with pytest.raises(ValueError, match="footer"):
        rv.ReplayBuffer.load(write(tmp_path, "f", bytes(bad)))
    bad = bytearray(data)
    bad[27] = 0x7F  # an absurd header length
    with pytest.raises(ValueError, match="header length"):
        rv.ReplayBuffer.load(write(tmp_path, "l", bytes(bad)))


def test_wrong_version_is_refused(saved: Path, tmp_path: Path) -> None:
    data = bytearray(saved.read_bytes())
    data[16:20] = struct.pack("<I", 1)
    with pytest.raises(ValueError, match="format version 1; this reverie reads version 2"):
        rv.ReplayBuffer.load(write(tmp_path, "v1", bytes(data)))


def test_foreign_files_are_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    npz = tmp_path / "arrays.npz"
    np.savez(npz, obs=np.zeros((10, 3), np.float32))
    pt = tmp_path / "state.pt"
    torch.save(transition_buffer().state_dict(), pt)
    foreign = [write(tmp_path, "random", rng.bytes(100_000)), npz, pt,
               write(tmp_path, "text", b"REVERIE checkpoint? no\n" * 10),
               write(tmp_path, "empty", b"")]
    for path in foreign:
        with pytest.raises(ValueError, match="is not a reverie checkpoint") as info:
            rv.ReplayBuffer.load(path)
        assert str(path) in str(info.value)
    with pytest.raises(FileNotFoundError):
        rv.ReplayBuffer.load(tmp_path / "nothing-here")


def test_inconsistent_header_is_refused(saved: Path, tmp_path: Path) -> None:
    """A header that passes its checksum but does not describe a valid buffer (written by a
    buggy tool) is refused as corrupted, not half-loaded."""
    data = saved.read_bytes()
    header = read_header(data)
    (_, _, length) = struct.unpack_from("<16sIQ", data)
    body = data[28 + length + 4:]

    def rewrite(change: Callable[[Dict[str, Any]], None]) -> Path:
        h = json.loads(json.dumps(header))
        change(h)
        enc = json.dumps(h, separators=(",", ":")).encode()
        assert len(enc) <= length
        enc = enc.ljust(length)  # JSON allows trailing spaces: offsets stay valid
        return write(tmp_path, "x", data[:28] + enc + struct.pack("<I", zlib.crc32(enc)) + body)

    with pytest.raises(ValueError, match="corrupted checkpoint"):
        rv.ReplayBuffer.load(rewrite(lambda h: h["scalars"].update({"table.written": -5})))
    with pytest.raises(ValueError, match="corrupted checkpoint"):
        rv.ReplayBuffer.load(rewrite(lambda h: h["scalars"].update({"table.written": 71})))  # not whole steps
    with pytest.raises(ValueError, match="corrupted checkpoint"):
        rv.ReplayBuffer.load(rewrite(lambda h: h["config"].update(capacity=99)))
    with pytest.raises(ValueError, match="corrupted checkpoint"):
        rv.ReplayBuffer.load(rewrite(lambda h: h["config"].pop("selector")))
    with pytest.raises(ValueError, match="corrupted checkpoint"):
        rv.ReplayBuffer.load(rewrite(lambda h: h["scalars"].update({"table.written": 2})))  # stamps disagree
    with pytest.raises(ValueError, match="corrupted checkpoint"):
        rv.ReplayBuffer.load(rewrite(lambda h: h["scalars"].pop("priority.max_q")))


def test_buffer_methods_save_and_load(tmp_path):
    """buf.save(path) / ReplayBuffer.load(path) / EpisodeBuffer.load(path): the public calls."""
    import reverie as rv

    buf = rv.ReplayBuffer(64, {"x": ("float32", (2,))}, rv.Prioritized(), seed=4)
    buf.extend(x=np.arange(200, dtype=np.float32).reshape(100, 2))
    buf.save(tmp_path / "a.rvck")
    back = rv.ReplayBuffer.load(tmp_path / "a.rvck")
    for _ in range(20):
        a, b = buf.sample(16), back.sample(16)
        assert torch.equal(a.x, b.x) and torch.equal(a.indices, b.indices)
    with pytest.raises(TypeError):
        rv.EpisodeBuffer.load(tmp_path / "a.rvck")


def test_save_while_a_thread_writes_is_loadable(tmp_path: Path) -> None:
    """Each chunk is checksummed and written from one staged copy: rows changing during the
    save cannot make the file disagree with its checksums (the file loads every time)."""
    import threading

    buf = rv.ReplayBuffer(4096, {"x": ("float32", (256,))}, seed=0)
    buf.extend(x=np.zeros((4096, 256), np.float32))
    stop = threading.Event()

    def write() -> None:
        i = 0
        while not stop.is_set():
            buf.extend(x=np.full((64, 256), i, np.float32))
            i += 1

    writer = threading.Thread(target=write)
    writer.start()
    try:
        for k in range(5):
            buf.save(tmp_path / f"c{k}")
            assert len(rv.ReplayBuffer.load(tmp_path / f"c{k}")) == 4096
    finally:
        stop.set()
        writer.join()


def test_stale_temp_files_of_dead_saves_are_removed(tmp_path: Path) -> None:
    """A temporary file left by a save whose process died is removed by the next save of the
    same path; one of a live process (a save in progress) is left alone."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".ckpt.tmp-{dead.pid}-0000"
    live = tmp_path / f".ckpt.tmp-{os.getpid()}-0000"
    stale.write_bytes(b"torn")
    live.write_bytes(b"in progress")
    buf = rv.ReplayBuffer(8, {"x": ("float32", ())}, seed=0)
    buf.extend(x=np.arange(8, dtype=np.float32))
    buf.save(tmp_path / "ckpt")
    assert not stale.exists() and live.exists()
