"""The library never imports its benchmarks: no module ``python/reverie/_*.py`` nor
``python/reverie/__init__.py`` imports ``reverie.bench`` (statically, by parsing their
imports, and at run time, by importing reverie in a fresh interpreter)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "python" / "reverie"
LIBRARY = sorted(PACKAGE.glob("_*.py")) + [PACKAGE / "__init__.py"]


def bench_imports(path: Path) -> List[str]:
    """Each import of reverie.bench in the module at ``path``, as 'line N: what'."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        names: List[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: "from . import bench", "from .bench import x"
                base = "reverie" + ("." + node.module if node.module else "")
            else:
                base = node.module or ""
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                names = [node.args[0].value]
        found += [f"line {node.lineno}: {n}" for n in names
                  if n == "reverie.bench" or n.startswith("reverie.bench.")]
    return found


def test_the_library_modules_are_there() -> None:
    assert (PACKAGE / "__init__.py").is_file() and len(LIBRARY) > 5, LIBRARY


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: p.name)
def test_no_library_module_imports_the_benchmarks(path: Path) -> None:
    assert not bench_imports(path), f"{path.name} imports the benchmarks: {bench_imports(path)}"


def test_the_checker_sees_every_form_of_import(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text("import reverie.bench\nfrom reverie.bench import runner\nfrom . import bench\n"
                   "from .bench.harness import Cell\nimport importlib\n"
                   "importlib.import_module('reverie.bench.gpu')\nimport reverie.benchmarks\n")
    assert [f.split(":")[0] for f in bench_imports(src)] == [
        "line 1", "line 2", "line 2", "line 3", "line 4", "line 4", "line 6"]


def test_importing_reverie_loads_no_benchmark_module() -> None:
    code = ("import sys, reverie; "
            "print(sorted(m for m in sys.modules if m.startswith('reverie.bench')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout
