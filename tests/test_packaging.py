"""Promise 1: the native module needs no torch (and no GPU) to load."""

from __future__ import annotations

import subprocess
import sys

import reverie
from reverie import _core


def test_core_loads_without_torch():
    # Load the compiled module on its own in a fresh interpreter where importing torch
    # fails: it must not need torch (tensors cross by the buffer protocol and DLPack).
    code = (
        "import sys, importlib.machinery, importlib.util\n"
        "sys.modules['torch'] = None\n"
        f"path = {_core.__file__!r}\n"
        "loader = importlib.machinery.ExtensionFileLoader('reverie._core', path)\n"
        "spec = importlib.util.spec_from_file_location('reverie._core', path, loader=loader)\n"
        "mod = importlib.util.module_from_spec(spec)\n"
        "loader.exec_module(mod)\n"
        "assert isinstance(mod.cuda_built(), bool)\n"
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "print(sorted(mod.dtype_names()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "bfloat16" in out.stdout and "float32" in out.stdout


def test_public_names():
    assert isinstance(reverie.cuda_built(), bool)
    assert reverie.__version__
    for name in reverie.__all__:
        assert hasattr(reverie, name)
