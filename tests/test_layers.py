"""The library's layers: no module imports one that imports it back (directly or through
others), counting imports inside functions and inside ``if TYPE_CHECKING:`` blocks too (an
annotation that names a module above is still a dependency on it)."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

PACKAGE = Path(__file__).resolve().parents[1] / "python" / "reverie"


def package_imports(path: Path, modules: Set[str]) -> Set[str]:
    """The package modules (names as in `modules`) that the module at `path` imports."""
    found: Set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = node.module or ""
                found.update(a.name for a in node.names if not base and a.name in modules)
                if base:
                    found.add(base.split(".")[0])
            elif node.module and node.module.startswith("reverie."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("reverie."))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), filename=str(path)))
    return {m for m in found if m in modules and m != path.stem}


def graph() -> Dict[str, Set[str]]:
    paths = {p.stem: p for p in PACKAGE.glob("_*.py") if p.stem != "__init__"}
    return {name: package_imports(p, set(paths)) for name, p in paths.items()}


def cycles(edges: Dict[str, Set[str]]) -> List[List[str]]:
    """Every elementary cycle's first appearance in a depth-first walk (enough to report)."""
    found: List[List[str]] = []
    state: Dict[str, int] = {}
    stack: List[str] = []

    def walk(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                found.append(stack[stack.index(m):] + [m])
            elif m not in state:
                walk(m)
        stack.pop()
        state[n] = 2

    for n in sorted(edges):
        if n not in state:
            walk(n)
    return found


def test_the_checker_sees_a_cycle_and_type_checking_imports(tmp_path: Path) -> None:
    (tmp_path / "_a.py").write_text("from ._b import x\n")
    (tmp_path / "_b.py").write_text("def f():\n    from . import _a\n")
    (tmp_path / "_c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                    "    from ._a import y\n")
    mods = {"_a", "_b", "_c"}
    edges = {m: package_imports(tmp_path / f"{m}.py", mods) for m in mods}
    assert edges == {"_a": {"_b"}, "_b": {"_a"}, "_c": {"_a"}}  # type-checking imports count
    assert cycles(edges) == [["_a", "_b", "_a"]]


def test_the_library_has_no_import_circle() -> None:
    edges = graph()
    assert len(edges) > 10 and "_buffer" in edges
    assert cycles(edges) == [], "modules that import each other back: " + "; ".join(
        " -> ".join(c) for c in cycles(edges))


def test_persistence_names_no_buffer_class() -> None:
    """Checkpoint, state and npz code work from the table's configuration and state."""
    for name in ("_checkpoint", "_state", "_persistence", "_npz_format"):
        source = (PACKAGE / f"{name}.py").read_text()
        tree = ast.parse(source)
        used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        assert not used & {"EpisodeBuffer", "DeviceReplayBuffer"}, name
        assert "isinstance(buf" not in source, name
