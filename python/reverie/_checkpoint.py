"""Crash-safe checkpoints: a buffer streamed to one self-describing file and restored exactly.

File layout (format version 1; every integer little-endian)::

    magic          16 bytes  b"REVERIE\\x00CKPT\\r\\n\\x1a\\n"
    version        u32       the format version (1)
    header_len     u64       length of the JSON header
    header         JSON      utf-8: class, capacity, seed, sampler, spec, episode options,
                             counters (incl. the generator's position), rate limiter, priority
                             scale, and the sections' names, dtypes, shapes, offsets and sizes
    header_crc     u32       zlib.crc32 of the header bytes
    sections       raw       each starts at a multiple of 4096 bytes (zero padding between):
                             "column:<name>" per field ([capacity, *shape], raw little-endian
                             bytes, bfloat16 as its 16-bit pattern), "priorities" (the sum-tree
                             leaves, u64 [capacity]), "row_flags" and "stream_flags" (u8, an
                             EpisodeBuffer's episode state)
    footer         b"RVRCKEND", u32 section count, u32 crc32 per section, u32 crc32 of the
                   footer so far; written last, so a file without it is truncated

The header states the whole file's size, so a truncated file is told apart from a corrupted
one. ``save`` writes to a temporary file in the target's directory, fsyncs it, renames it over
the target and fsyncs the directory: a crash at any point leaves the previous checkpoint whole.
``load`` builds a new buffer and reads straight into its storage; it returns only once every
checksum matched.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import struct
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO, Dict, List, Optional, Tuple, Type, Union

import numpy as np

from ._buffer import ReplayBuffer
from ._episodes import EpisodeBuffer
from ._limiter import RateLimiter
from ._samplers import Prioritized, sampler_from_config
from ._spec import normalize_spec

MAGIC = b"REVERIE\x00CKPT\r\n\x1a\n"
FOOTER_MAGIC = b"RVRCKEND"
FORMAT_VERSION = 1
ALIGN = 4096
CHUNK = 64 << 20  # bytes per write/read call
PROGRESS_THRESHOLD = 256 << 20  # progress=None shows a bar from this many bytes on
_MAX_HEADER = 64 << 20
_PREAMBLE = struct.Struct("<16sIQ")  # magic, version, header length
_U32 = struct.Struct("<I")
_CLASSES: Dict[str, Type[ReplayBuffer]] = {"ReplayBuffer": ReplayBuffer,
                                           "EpisodeBuffer": EpisodeBuffer}

PathLike = Union[str, "os.PathLike[str]"]


def _kind(cls: type) -> str:
    """The checkpoint class name of a buffer class (user subclasses map to their base)."""
    if issubclass(cls, EpisodeBuffer):
        return "EpisodeBuffer"
    if issubclass(cls, ReplayBuffer):
        return "ReplayBuffer"
    raise TypeError(f"cls must be ReplayBuffer, EpisodeBuffer or a subclass, got {cls!r}")


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _check_host() -> None:
    if sys.byteorder != "little":
        raise NotImplementedError("reverie checkpoints are little-endian; this host is big-endian")


def _progress_bar(enabled: Optional[bool], total: int, desc: str) -> Any:
    if enabled is False or (enabled is None and total <= PROGRESS_THRESHOLD):
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is optional (the bench extra): no bar then
        return None
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024)


class _Crcs:
    """Running CRC32s computed on one worker thread, in submission order (zlib releases the
    GIL for large buffers, so checksumming overlaps the disk I/O of the next chunk)."""

    def __init__(self) -> None:
        self.values: Dict[str, int] = {}
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="reverie-crc")
        self._pending: List[Any] = []

    def add(self, name: str, chunk: memoryview) -> None:
        self.values.setdefault(name, 0)

        def job() -> None:
            self.values[name] = zlib.crc32(chunk, self.values[name])

        self._pending.append(self._pool.submit(job))
        if len(self._pending) > 1:  # the previous chunk's checksum is done when this returns
            self._pending.pop(0).result()

    def wait(self) -> Dict[str, int]:
        for fut in self._pending:
            fut.result()
        self._pending.clear()
        return self.values

    def close(self) -> None:
        self._pool.shutdown(wait=True)


# ---- save ---------------------------------------------------------------------------------

def _snapshot(buf: ReplayBuffer) -> Tuple[Dict[str, Any], List[Tuple[str, str, list, Any]]]:
    """The header fields and the sections (name, dtype, shape, uint8 array) of ``buf``."""
    core = buf._core
    sampler = buf.sampler.config()
    if isinstance(buf.sampler, Prioritized) and core is not None:
        sampler["beta"] = float(core.beta)  # as the core has it (another process may set it)
    limiter = buf.rate_limiter
    header: Dict[str, Any] = {
        "format": "reverie-checkpoint",
        "version": FORMAT_VERSION,
        "byte_order": "little",
        "class": _kind(type(buf)),
        "capacity": buf.capacity,
        "seed": buf.seed,
        "sampler": sampler,
        "options": {k: list(v) if isinstance(v, tuple) else v for k, v in buf._options().items()},
        "rate_limiter": None if limiter is None else limiter.config(),
        "spec": [[n, f.dtype, list(f.shape)] for n, f in buf.spec.items()],
        "counters": None,
        "priorities": None,
    }
    sections: List[Tuple[str, str, list, Any]] = []
    if core is None:
        return header, sections
    # Counters first: the columns then hold at least what they count.
    written, calls, stale, sampled, offset = core.get_counters()
    header["counters"] = {"written": written, "sample_calls": calls, "stale_updates": stale,
                          "sampled": sampled, "limiter_offset": offset}
    for i, (name, field) in enumerate(buf.spec.items()):
        col = core.column(i)  # a zero-copy view of the storage
        sections.append((f"column:{name}", field.dtype, list(col.shape), col))
    if core.prioritized:
        leaves, scale_exp, max_q = core.priority_state()
        header["priorities"] = {"scale_exp": int(scale_exp), "max_q": float(max_q)}
        sections.append(("priorities", "uint64", [buf.capacity], leaves))
    if isinstance(buf, EpisodeBuffer):
        flags, streams = core.episode_state()
        sections.append(("row_flags", "uint8", [buf.capacity], flags))
        sections.append(("stream_flags", "uint8", [len(streams)], streams))
    return header, sections


def _layout(header: Dict[str, Any], sections: List[Tuple[str, str, list, Any]]) -> bytes:
    """Fills in the sections' offsets and the file size; returns the encoded header."""
    entries: List[Dict[str, Any]] = [{"name": n, "dtype": dt, "shape": shape, "offset": 0, "nbytes": int(arr.nbytes)}
               for n, dt, shape, arr in sections]
    header["sections"] = entries
    header["footer_offset"] = header["file_bytes"] = 0
    # The offsets depend on the header's length, which depends on the offsets' digits:
    # iterate to the fixed point (two or three rounds).
    encoded = b""
    for _ in range(8):
        encoded = json.dumps(header, separators=(",", ":")).encode()
        pos = _align(_PREAMBLE.size + len(encoded) + _U32.size)
        for e in entries:
            e["offset"] = pos
            pos = _align(pos + e["nbytes"]) if e is not entries[-1] else pos + e["nbytes"]
        footer_bytes = len(FOOTER_MAGIC) + 4 * (len(entries) + 2)
        changed = header["footer_offset"] != pos or header["file_bytes"] != pos + footer_bytes
        header["footer_offset"], header["file_bytes"] = pos, pos + footer_bytes
        if not changed:
            return json.dumps(header, separators=(",", ":")).encode()
    return encoded  # pragma: no cover (the layout always settles)


def _write_all(f: BinaryIO, data: Any) -> None:
    view = memoryview(data).cast("B")
    while view:
        n = f.write(view)
        view = view[n:]


def _pad_to(f: BinaryIO, pos: int, target: int) -> int:
    if target > pos:
        _write_all(f, bytes(target - pos))
    return target


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a directory; the rename is done
    finally:
        os.close(fd)


def _remove_stale_temps(directory: str, base: str) -> None:
    """Removes temporary files of earlier saves of `base` whose process no longer runs (a save
    killed midway); those of live processes (a save in progress) are left alone."""
    prefix = f".{base}.tmp-"
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if not name.startswith(prefix):
            continue
        try:
            pid = int(name[len(prefix):].split("-")[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            try:
                os.unlink(os.path.join(directory, name))
            except OSError:
                pass
        except (ValueError, PermissionError, OSError):
            continue


def save(buf: ReplayBuffer, path: PathLike, *, progress: Optional[bool] = None) -> None:
    """Writes ``buf`` to ``path`` atomically (see the module docstring for the format).

    The columns are streamed from the buffer's storage in chunks (no copy of them is made);
    the file is written as a temporary file next to ``path``, fsynced, and renamed over it.
    Save when no other thread or process is writing to the buffer: a checkpoint taken while
    items are added may mix old and new rows.

    Args:
        buf: a ReplayBuffer or EpisodeBuffer (any storage).
        path: the checkpoint file; an existing one is replaced only once the new one is whole.
        progress: show a tqdm bar: True, False, or None (when the checkpoint exceeds 256 MiB).

    Raises:
        ValueError: the buffer is closed.
        OSError: the file could not be written (the previous checkpoint is then untouched).
    """
    _check_host()
    if not isinstance(buf, ReplayBuffer):
        raise TypeError(f"save() takes a ReplayBuffer or EpisodeBuffer, got {type(buf).__name__}")
    buf._check_open()
    path = os.fspath(path)
    core = buf._core
    # The counters are taken when no write is in flight (writes in flight would be saved as
    # whole rows); a write still unfinished after 2 s is a writer that died mid-write.
    give_up = time.monotonic() + 2.0
    while core is not None and core.claimed != core.written:
        if time.monotonic() > give_up:
            raise ValueError(
                f"cannot save: {core.claimed - core.written} items have been in the middle of "
                "being written for 2 s (a writer process died mid-write, leaving them "
                "half-written); a checkpoint would restore them as whole rows")
        time.sleep(0.0005)
    header, sections = _snapshot(buf)
    encoded = _layout(header, sections)
    directory = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    _remove_stale_temps(directory, base)
    tmp = os.path.join(directory, f".{base}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    total = sum(int(arr.nbytes) for *_, arr in sections)
    bar = _progress_bar(progress, total, f"saving {base}")
    crcs = _Crcs()
    try:
        with open(tmp, "xb", buffering=0) as f:
            _write_all(f, _PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(encoded)))
            _write_all(f, encoded)
            _write_all(f, _U32.pack(zlib.crc32(encoded)))
            pos = _PREAMBLE.size + len(encoded) + _U32.size
            # Each chunk is copied to a staging buffer first and both checksummed and written
            # from there, so a row that changes meanwhile cannot make the checksum disagree
            # with the bytes on disk. Two buffers alternate: the checksum of one runs while
            # the other is filled and written.
            staging = [np.empty(CHUNK, np.uint8), np.empty(CHUNK, np.uint8)]
            turn = 0
            for entry, (name, _, _, arr) in zip(header["sections"], sections):
                pos = _pad_to(f, pos, entry["offset"])
                raw = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
                crcs.values[name] = 0
                for start in range(0, len(raw), CHUNK):
                    n = min(CHUNK, len(raw) - start)
                    stage = staging[turn][:n]
                    turn ^= 1
                    np.copyto(stage, raw[start:start + n])
                    chunk = stage.data
                    crcs.add(name, chunk)
                    _write_all(f, chunk)
                    if bar is not None:
                        bar.update(len(chunk))
                pos += len(raw)
            _pad_to(f, pos, header["footer_offset"])
            values = crcs.wait()
            footer = FOOTER_MAGIC + struct.pack(f"<{len(sections) + 1}I", len(sections),
                                                *(values[name] for name, *_ in sections))
            _write_all(f, footer + _U32.pack(zlib.crc32(footer)))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(directory)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    finally:
        crcs.close()
        if bar is not None:
            bar.close()


# ---- load ---------------------------------------------------------------------------------

def _read_exact(f: io.RawIOBase, n: int, path: str, what: str) -> bytes:
    data = b""
    while len(data) < n:  # a raw read may return less than asked for
        part = f.read(n - len(data))
        if not part:
            break
        data += part
    if len(data) != n:
        raise ValueError(f"{path}: truncated: expected {n} bytes of {what}, got {len(data)}")
    return data


def _read_header(f: io.RawIOBase, path: str, size: int) -> Dict[str, Any]:
    pre = _read_exact(f, min(size, _PREAMBLE.size), path, "preamble")
    if len(pre) < len(MAGIC) or pre[:len(MAGIC)] != MAGIC:
        raise ValueError(f"{path} is not a reverie checkpoint (it does not start with reverie's "
                         "checkpoint signature)")
    if len(pre) < _PREAMBLE.size:
        raise ValueError(f"{path}: truncated: expected at least {_PREAMBLE.size} bytes, the file "
                         f"has {size}")
    _, version, header_len = _PREAMBLE.unpack(pre)
    if version != FORMAT_VERSION:
        raise ValueError(f"{path} is a reverie checkpoint of format version {version}; this "
                         f"reverie reads version {FORMAT_VERSION} (use the reverie that wrote it)")
    if header_len > _MAX_HEADER:
        raise ValueError(f"{path}: corrupted checkpoint: header length {header_len} is implausible")
    want = _PREAMBLE.size + header_len + _U32.size
    if size < want:
        raise ValueError(f"{path}: truncated: expected at least {want} bytes (preamble and "
                         f"header), the file has {size}")
    encoded = _read_exact(f, header_len, path, "header")
    (crc,) = _U32.unpack(_read_exact(f, _U32.size, path, "header checksum"))
    if zlib.crc32(encoded) != crc:
        raise ValueError(f"{path}: checksum mismatch in the header: the file is corrupted")
    try:
        header = json.loads(encoded)
    except ValueError as e:
        raise ValueError(f"{path}: corrupted checkpoint: the header is not JSON ({e})") from None
    if not isinstance(header, dict) or header.get("format") != "reverie-checkpoint":
        raise ValueError(f"{path}: corrupted checkpoint: the header is not a reverie header")
    if header.get("byte_order") != "little":
        raise ValueError(f"{path}: unsupported byte order {header.get('byte_order')!r}")
    return header


def _read_footer(f: io.RawIOBase, path: str, header: Dict[str, Any]) -> Dict[str, int]:
    names = [e["name"] for e in header["sections"]]
    n = len(names)
    f.seek(int(header["footer_offset"]))
    footer = _read_exact(f, len(FOOTER_MAGIC) + 4 * (n + 2), path, "footer")
    body, (crc,) = footer[:-4], _U32.unpack(footer[-4:])
    if body[:len(FOOTER_MAGIC)] != FOOTER_MAGIC or zlib.crc32(body) != crc:
        raise ValueError(f"{path}: corrupted checkpoint: the footer (section checksums) is "
                         "damaged")
    count, *values = struct.unpack(f"<{n + 1}I", body[len(FOOTER_MAGIC):])
    if count != n:
        raise ValueError(f"{path}: corrupted checkpoint: the footer lists {count} sections, "
                         f"the header {n}")
    return dict(zip(names, values))


def _target_class(kind: str, cls: Optional[type], path: str) -> Type[ReplayBuffer]:
    stored = _CLASSES.get(kind)
    if stored is None:
        raise ValueError(f"{path}: checkpoint of an unknown buffer class {kind!r}")
    if cls is None:
        return stored
    if not isinstance(cls, type):
        raise TypeError(f"cls must be a buffer class, got {cls!r}")
    if _kind(cls) == kind:
        return cls  # the class itself, or a user subclass of it
    if issubclass(stored, cls):
        return stored  # e.g. ReplayBuffer.load of an EpisodeBuffer checkpoint
    raise TypeError(f"{path} holds a {kind}, which is not a {cls.__name__}; load it with "
                    f"{kind}.load")


def _read_section(f: io.RawIOBase, path: str, entry: Dict[str, Any], dest: np.ndarray,
                  crcs: _Crcs, bar: Any) -> None:
    raw = dest.reshape(-1).view(np.uint8).data
    if len(raw) != entry["nbytes"]:
        raise ValueError(f"{path}: corrupted checkpoint: section '{entry['name']}' has "
                         f"{entry['nbytes']} bytes, the spec needs {len(raw)}")
    f.seek(entry["offset"])
    name = entry["name"]
    crcs.values[name] = 0
    for start in range(0, len(raw), CHUNK):
        chunk = raw[start:start + CHUNK]
        got = 0
        while got < len(chunk):
            n = f.readinto(chunk[got:])
            if not n:
                raise ValueError(
                    f"{path}: truncated: expected {entry['nbytes']} bytes in section '{name}', "
                    f"the file ends after {start + got}")
            got += n
        crcs.add(name, chunk)
        if bar is not None:
            bar.update(len(chunk))


def _section_dtype(entry: Dict[str, Any], want: str, path: str) -> None:
    if entry["dtype"] != want:
        raise ValueError(f"{path}: corrupted checkpoint: section '{entry['name']}' has dtype "
                         f"{entry['dtype']}, expected {want}")


def _fill(buf: ReplayBuffer, f: io.RawIOBase, path: str, header: Dict[str, Any],
          expected: Dict[str, int], progress: Optional[bool]) -> None:
    """Reads the sections into ``buf``'s new core and sets its state once all checksums match."""
    core = buf._core
    entries = {e["name"]: e for e in header["sections"]}
    want = [f"column:{n}" for n in buf.spec]
    if core.prioritized:
        want.append("priorities")
    if isinstance(buf, EpisodeBuffer):
        want += ["row_flags", "stream_flags"]
    if list(entries) != want:
        raise ValueError(f"{path}: corrupted checkpoint: sections {list(entries)}, expected {want}")
    counters = header["counters"]
    written, calls, stale, sampled = (int(counters[k]) for k in
                                      ("written", "sample_calls", "stale_updates", "sampled"))
    offset = float(counters["limiter_offset"])
    if min(written, calls, stale, sampled) < 0:
        raise ValueError(f"{path}: corrupted checkpoint: negative counters {counters}")
    if isinstance(buf, EpisodeBuffer) and written % buf.num_envs:
        raise ValueError(f"{path}: corrupted checkpoint: {written} rows written, not whole steps "
                         f"of num_envs={buf.num_envs} envs")

    extra: Dict[str, np.ndarray] = {}
    dests: List[Tuple[Dict[str, Any], np.ndarray]] = []
    for i, (name, field) in enumerate(buf.spec.items()):
        entry = entries[f"column:{name}"]
        _section_dtype(entry, field.dtype, path)
        dests.append((entry, core.column(i)))  # read straight into the new storage
    if core.prioritized:
        extra["priorities"] = np.empty(buf.capacity, dtype=np.uint64)
    if isinstance(buf, EpisodeBuffer):
        extra["row_flags"] = np.empty(buf.capacity, dtype=np.uint8)
        extra["stream_flags"] = np.empty(buf.num_envs, dtype=np.uint8)
    for name, arr in extra.items():
        _section_dtype(entries[name], arr.dtype.name, path)
        dests.append((entries[name], arr))

    total = sum(int(e["nbytes"]) for e, _ in dests)
    bar = _progress_bar(progress, total, f"loading {os.path.basename(path)}")
    crcs = _Crcs()
    try:
        for entry, dest in dests:
            _read_section(f, path, entry, dest, crcs, bar)
        got = crcs.wait()
    finally:
        crcs.close()
        if bar is not None:
            bar.close()
    for entry, _ in dests:
        name = entry["name"]
        if got[name] != expected[name]:
            what = f"column '{name[7:]}'" if name.startswith("column:") else f"section '{name}'"
            raise ValueError(f"{path}: checksum mismatch in {what}: the file is corrupted")

    # Every byte is verified: install the state (the counters first: the core then checks that
    # only slots holding items have priorities).
    if isinstance(buf, EpisodeBuffer):
        core.set_episode_state(extra["row_flags"], extra["stream_flags"])
    core.set_counters(written, calls, stale, sampled, offset)
    if core.prioritized:
        pr = header["priorities"]
        try:
            core.set_priority_state(extra["priorities"], int(pr["scale_exp"]), float(pr["max_q"]))
        except ValueError as e:
            raise ValueError(f"{path}: corrupted checkpoint: {e}") from None


def load(path: PathLike, *, progress: Optional[bool] = None,
         cls: Optional[type] = None) -> ReplayBuffer:
    """Restores a buffer written by ``save``: it samples exactly what the saved one would have.

    The buffer is rebuilt with the saved class, capacity, spec, sampler (and its beta), seed,
    episode options and rate limiter, in this process's memory (storage="memory", whatever
    the saved buffer's storage was); then the file is read straight into its storage and every
    section's checksum is verified before the counters, priorities and episode state are set.

    Args:
        path: a checkpoint file.
        progress: show a tqdm bar: True, False, or None (when the checkpoint exceeds 256 MiB).
        cls: the class expected (``ReplayBuffer.load`` passes its class): the checkpoint must
            hold that class (a user subclass is built as itself) or a subclass of it.

    Returns:
        A new ReplayBuffer or EpisodeBuffer.

    Raises:
        ValueError: the file is not a reverie checkpoint, is of another format version, is
            truncated or corrupted (a checksum mismatch names the section).
        TypeError: the checkpoint holds another class than ``cls``.
        OSError: the file cannot be read.
    """
    _check_host()
    path = os.fspath(path)
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        header = _read_header(f, path, size)
        try:
            return _load_from(f, path, size, header, progress, cls)
        except (KeyError, IndexError, AttributeError) as e:
            raise ValueError(f"{path}: corrupted checkpoint: malformed header "
                             f"({type(e).__name__}: {e})") from None


def _load_from(f: io.RawIOBase, path: str, size: int, header: Dict[str, Any],
               progress: Optional[bool], cls: Optional[type]) -> ReplayBuffer:
    file_bytes = int(header["file_bytes"])
    if size < file_bytes:
        raise ValueError(f"{path}: truncated: expected {file_bytes} bytes, the file has {size} "
                         "(an interrupted copy or save?)")
    if size > file_bytes:
        raise ValueError(f"{path}: corrupted checkpoint: expected {file_bytes} bytes, the file "
                         f"has {size} (trailing data)")
    target = _target_class(header["class"], cls, path)
    expected = _read_footer(f, path, header)
    try:
        sampler = sampler_from_config(dict(header["sampler"]))
        spec = (normalize_spec({n: (dt, tuple(shape)) for n, dt, shape in header["spec"]})
                if header["spec"] else {})
        limiter = header["rate_limiter"]
        limiter = None if limiter is None else RateLimiter(**limiter)
        options = dict(header["options"])
        if "obs_fields" in options:
            options["obs_fields"] = tuple(options["obs_fields"])
        if header["counters"] is None and (spec or header["sections"]):
            raise ValueError("an unbuilt buffer's checkpoint has a spec or data")
        buf = target(int(header["capacity"]), spec or None, sampler, int(header["seed"]),
                     rate_limiter=limiter, storage="memory", **options)
    except ValueError as e:
        raise ValueError(f"{path}: corrupted checkpoint: {e}") from None
    except TypeError as e:
        raise ValueError(f"{path}: corrupted checkpoint: malformed header ({e})") from None
    if header["counters"] is None:
        return buf  # saved before its first item: nothing more to restore
    try:
        _fill(buf, f, path, header, expected, progress)
    except BaseException:
        buf.close()  # drop the partial buffer
        raise
    return buf
