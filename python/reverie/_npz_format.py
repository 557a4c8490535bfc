"""The npz export format's names and its readers, shared by the npz and Minari modules."""

from __future__ import annotations

import json
import os
import zipfile
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

from ._spec import Field

FORMAT = "reverie-npz"
FORMAT_VERSION = 2
META = "__reverie__"
KEYS = "__keys__"
STATE = "__state__:"


def gather_rows(buf: Any, slots: np.ndarray) -> Dict[str, np.ndarray]:
    """{field: array [n, *shape]} of the given slots (copies; bfloat16 as its int16 bits)."""
    index = torch.from_numpy(np.asarray(slots, dtype=np.int64))
    out = {}
    for name, column in buf.columns.items():
        rows = column.index_select(0, index)
        if rows.dtype == torch.bfloat16:
            rows = rows.view(torch.int16)
        out[name] = rows.numpy()
    return out


def field_value(field: Field, array: np.ndarray) -> Any:
    """An array as the value extend() takes for ``field`` (bfloat16 from its int16 bits)."""
    if field.dtype == "bfloat16":
        if array.dtype == np.int16:
            return torch.from_numpy(np.ascontiguousarray(array)).view(torch.bfloat16)
        return torch.from_numpy(np.asarray(array, dtype=np.float32)).to(torch.bfloat16)
    return array


def read_npz(path: "str | os.PathLike[str]") -> Tuple[Dict[str, np.ndarray], Optional[Dict[str, Any]]]:
    """All arrays of the file and its reverie metadata (None for a plain npz)."""
    with open(os.fspath(path), "rb") as f:  # closed here even when numpy fails midway
        try:
            data = np.load(f, allow_pickle=False)
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
            raise ValueError(f"{path}: not a readable .npz archive ({type(e).__name__}: {e})") from None
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError(f"{path}: a single .npy array, not an .npz archive of fields")
        try:
            with data:
                arrays = {name: data[name] for name in data.files}
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
            raise ValueError(f"{path}: a damaged .npz archive ({type(e).__name__}: {e})") from None
    if not arrays:
        raise ValueError(f"{path}: the archive holds no arrays")
    meta = None
    if META in arrays:
        try:
            meta = json.loads(str(arrays.pop(META)[()]))
        except (ValueError, TypeError) as e:
            raise ValueError(f"{path}: its {META} entry is not valid JSON ({e})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError(f"{path}: its {META} entry is not reverie npz metadata")
        if meta.get("version") != FORMAT_VERSION:
            raise ValueError(f"{path}: reverie npz format version {meta.get('version')}; this "
                             f"reverie reads version {FORMAT_VERSION}")
    return arrays, meta


