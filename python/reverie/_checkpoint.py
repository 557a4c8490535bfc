"""Crash-safe checkpoints: a table streamed to one self-describing file and restored exactly.

File layout (format version 2; every integer little-endian)::

    magic          16 bytes  b"REVERIE\\x00CKPT\\r\\n\\x1a\\n"
    version        u32       the format version (2)
    header_len     u64       length of the JSON header
    header         JSON      utf-8: the table's configuration (config.h: capacity, spec, seed,
                             writer, sampler, admission, remover, metadata, view, rate
                             limiter), its state scalars (counters incl. the generator's
                             position, and every part's), and the sections' names, dtypes,
                             shapes, offsets and sizes
    header_crc     u32       zlib.crc32 of the header bytes
    sections       raw       each starts at a multiple of 4096 bytes (zero padding between):
                             every state array of the table (part.h) by name: "column:<name>"
                             per field ([capacity, *shape], raw little-endian bytes, bfloat16 as
                             its 16-bit pattern), "table.stamps", and each part's arrays
                             ("priority.leaves", "episodes.row_flags", "reservoir.inserted",
                             "keep_top_k.score", "meta.sampled", ...)
    footer         b"RVRCKEND", u32 section count, u32 crc32 per section, u32 crc32 of the
                   footer so far; written last, so a file without it is truncated

The header states the whole file's size, so a truncated file is told apart from a corrupted
one. ``save`` writes to a temporary file in the target's directory, fsyncs it, renames it over
the target and fsyncs the directory: a crash at any point leaves the previous checkpoint whole.
``load`` builds a new table and reads straight into its memory; it hands it over only once
every checksum matched and the core accepted the state. Nothing here knows buffer classes:
the caller builds the table from the configuration and wraps it.
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
from typing import Any, BinaryIO, Callable, Dict, List, Optional, Tuple, Union

import numpy as np

from ._table import StateArray, Table

MAGIC = b"REVERIE\x00CKPT\r\n\x1a\n"
FOOTER_MAGIC = b"RVRCKEND"
FORMAT_VERSION = 2
ALIGN = 4096
CHUNK = 64 << 20  # bytes per write/read call
PROGRESS_THRESHOLD = 256 << 20  # progress=None shows a bar from this many bytes on
_MAX_HEADER = 64 << 20
_PREAMBLE = struct.Struct("<16sIQ")  # magic, version, header length
_U32 = struct.Struct("<I")
PathLike = Union[str, "os.PathLike[str]"]


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

def _snapshot(table: Optional[Table], config: Dict[str, Any]) -> Tuple[Dict[str, Any], List[Tuple[str, str, list, Any]]]:
    """The header fields and the sections (name, dtype, shape, array) of a table."""
    header: Dict[str, Any] = {
        "format": "reverie-checkpoint",
        "version": FORMAT_VERSION,
        "byte_order": "little",
        "config": config,
        "scalars": None,
    }
    if table is None:
        return header, []
    # Scalars first: the arrays then hold at least what they count.
    header["scalars"] = table.scalars()
    sections = [(a.name, a.dtype, list(a.shape), a.data) for a in table.state_arrays()]
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


def save(table: Optional[Table], config: Dict[str, Any], path: PathLike, *,
         progress: Optional[bool] = None) -> None:
    """Writes `table` (None: a buffer not built yet, of configuration `config`) to ``path``
    atomically (see the module docstring for the format).

    The arrays are streamed from the table's memory in chunks; the file is written as a
    temporary file next to ``path``, fsynced, and renamed over it. Save when no other thread
    or process is writing to the table: a checkpoint taken while items are added may mix old
    and new rows.

    Args:
        table: the table, or None.
        config: its configuration, live settings as they are now.
        path: the checkpoint file; an existing one is replaced only once the new one is whole.
        progress: show a tqdm bar: True, False, or None (when the checkpoint exceeds 256 MiB).

    Raises:
        ValueError: writes have been in flight for 2 s (a writer died mid-write).
        OSError: the file could not be written (the previous checkpoint is then untouched).
    """
    _check_host()
    path = os.fspath(path)
    core = None if table is None else table.core
    # The state is taken when no write is in flight (writes in flight would be saved as
    # whole rows); a write still unfinished after 2 s is a writer that died mid-write.
    give_up = time.monotonic() + 2.0
    while core is not None and core.claimed != core.written:
        if time.monotonic() > give_up:
            raise ValueError(
                f"cannot save: {core.claimed - core.written} items have been in the middle of "
                "being written for 2 s (a writer process died mid-write, leaving them "
                "half-written); a checkpoint would restore them as whole rows")
        time.sleep(0.0005)
    header, sections = _snapshot(table, config)
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


def _fill(table: Table, f: io.RawIOBase, path: str, header: Dict[str, Any],
          expected: Dict[str, int], progress: Optional[bool],
          before_restore: Callable[[Table], None]) -> None:
    """Reads the sections into the new table and restores its state once all checksums
    match."""
    entries = {e["name"]: e for e in header["sections"]}
    arrays: List[StateArray] = table.state_arrays()
    want = [a.name for a in arrays]
    if list(entries) != want:
        raise ValueError(f"{path}: corrupted checkpoint: sections {list(entries)}, expected {want}")
    dests: List[Tuple[Dict[str, Any], np.ndarray]] = []
    for a in arrays:
        entry = entries[a.name]
        _section_dtype(entry, a.dtype, path)
        if list(entry["shape"]) != list(a.shape):
            raise ValueError(f"{path}: corrupted checkpoint: section '{a.name}' has shape "
                             f"{entry['shape']}, expected {list(a.shape)}")
        dests.append((entry, a.data))  # read straight into the new table's memory
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
    # Every byte is verified: the core checks the state and rebuilds what derives from it.
    before_restore(table)
    try:
        table.restore(header["scalars"])
    except ValueError as e:
        raise ValueError(f"{path}: corrupted checkpoint: {e}") from None


def load(path: PathLike, *, check: Callable[[Dict[str, Any]], None],
         before_restore: Callable[[Table, Dict[str, Any]], None],
         progress: Optional[bool] = None) -> Tuple[Dict[str, Any], Optional[Table]]:
    """Restores a table written by ``save``: it samples and decides exactly as the saved one
    would have.

    Returns the saved configuration and a new table of it (in this process's memory), or
    None for a buffer saved before its first item. ``check(config)`` runs first (it may
    refuse the file, e.g. for holding another buffer class); the file is then read straight
    into the table's state arrays, every section's checksum verified,
    ``before_restore(table, config)`` called (e.g. to configure a rate limiter), and the core
    restores the state.

    Raises:
        ValueError: the file is not a reverie checkpoint, is of another format version, is
            truncated or corrupted (a checksum mismatch names the section).
        TypeError: from ``check``.
        OSError: the file cannot be read.
    """
    _check_host()
    path = os.fspath(path)
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        header = _read_header(f, path, size)
        try:
            return _load_from(f, path, size, header, progress, check, before_restore)
        except (KeyError, IndexError, AttributeError) as e:
            raise ValueError(f"{path}: corrupted checkpoint: malformed header "
                             f"({type(e).__name__}: {e})") from None


def _load_from(f: io.RawIOBase, path: str, size: int, header: Dict[str, Any],
               progress: Optional[bool], check: Callable[[Dict[str, Any]], None],
               before_restore: Callable[[Table, Dict[str, Any]], None]
               ) -> Tuple[Dict[str, Any], Optional[Table]]:
    file_bytes = int(header["file_bytes"])
    if size < file_bytes:
        raise ValueError(f"{path}: truncated: expected {file_bytes} bytes, the file has {size} "
                         "(an interrupted copy or save?)")
    if size > file_bytes:
        raise ValueError(f"{path}: corrupted checkpoint: expected {file_bytes} bytes, the file "
                         f"has {size} (trailing data)")
    expected = _read_footer(f, path, header)
    config = header["config"]
    if not isinstance(config, dict):
        raise ValueError(f"{path}: corrupted checkpoint: no configuration")
    check(config)
    if header["scalars"] is None:  # saved before its first item: nothing more to restore
        if config.get("spec") or header["sections"]:
            raise ValueError(f"{path}: corrupted checkpoint: an unbuilt buffer's checkpoint "
                             "has a spec or data")
        return config, None
    try:
        table = Table.create(config)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: corrupted checkpoint: {e}") from None
    _fill(table, f, path, header, expected, progress, lambda t: before_restore(t, config))
    return config, table
