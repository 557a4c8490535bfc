"""Checks that the kernel tests can fail: removes each barrier of kernels.h in turn.

Every line of cpp/include/reverie/kernels.h that is a barrier call (``b.Sync();`` or
``lanes.Sync();``) is deleted, one at a time, in a copy of the tree; the C++ tests are built
and run, plain and under TSan. A removal is caught when a kernel test (cpp/tests/test_kernels.cc)
fails, on a wrong result or on a divergent barrier that a wrong reduction caused (the host's
thread team reports it instead of hanging), or when TSan reports a race. Any other outcome
(another test failing, a timeout) is inconclusive. The table lists each removal and what
caught it.

    python3 cpp/tests/barrier_mutations.py [--jobs N] [--timeout S]

Exits 1 if a removal is not caught (or inconclusive), unless it is listed in KNOWN_UNCAUGHT
with the reason; 2 if the unmodified tree fails or a removal breaks the build.
Takes ~20 minutes on 2 cores (two builds per barrier); it is not part of CI.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KERNELS = Path("cpp/include/reverie/kernels.h")
BARRIER = re.compile(r"^\s*(b|lanes)\.Sync\(\);")
FUNCTION = re.compile(r"^REVERIE_HD \S+ (\w+)\(")

# Removals the tests cannot catch on a CPU, keyed by function and the code before the barrier.
KNOWN_UNCAUGHT = {
    ("UpdateProgram", "RefreshMinNode(a.tree.sums, a.tree.mins, layout, level, node);"):
        "the min refresh stores the same value to a node from several threads, so its stores "
        "are relaxed atomics that TSan does not report, and the stale read that the missing "
        "barrier allows needs an interleaving too narrow to hit",
}


def barriers(lines: list[str]) -> list[tuple[int, str, str]]:
    """(line index, enclosing function, last code line before it) of every barrier call."""
    found, function = [], "?"
    for i, line in enumerate(lines):
        m = FUNCTION.match(line)
        if m:
            function = m.group(1)
        if BARRIER.match(line):
            before = next(lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip() not in ("}", ""))
            found.append((i, function, before))
    return found


def run(cmd: list[str], cwd: Path, timeout: float, env: dict | None = None) -> tuple[int, str]:
    try:
        p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
        return p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired:
        return 124, "timed out"


KERNEL_TESTS = set(re.findall(r"^TEST\((\w+)\)", (ROOT / "cpp/tests/test_kernels.cc").read_text(), re.M))


def verdict(rc: int, out: str) -> tuple[bool, str]:
    """(caught, what happened)."""
    if rc == 0:
        return False, "passed"
    if "WARNING: ThreadSanitizer" in out:
        if "kernels.h" in out:
            return True, "TSan race"
        return False, "inconclusive, a TSan race outside kernels.h"
    failed = sorted(set(re.findall(r"^\[FAIL\] (\w+)", out, re.M)))
    kernel = [f for f in failed if f in KERNEL_TESTS]
    if kernel:
        return True, "failed: " + ", ".join(kernel)
    if failed:
        return False, "inconclusive, other tests failed: " + ", ".join(failed)
    return False, "inconclusive, " + ("timed out" if rc == 124 else f"exit {rc}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--timeout", type=float, default=300, help="seconds per test run")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="reverie-mutations-"))
    try:
        return check(work, args.jobs, args.timeout)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def check(work: Path, jobs: int, timeout: float) -> int:
    src = work / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns("build", ".git", "*.so", "__pycache__"))
    original = (src / KERNELS).read_text().splitlines(keepends=True)
    builds = {"plain": "", "tsan": "thread"}
    for name, sanitize in builds.items():
        rc, out = run(["cmake", "-S", str(src), "-B", str(work / name), "-G", "Ninja",
                       "-DCMAKE_BUILD_TYPE=RelWithDebInfo", "-DREVERIE_BUILD_PYTHON=OFF",
                       "-DREVERIE_BUILD_TESTS=ON", "-DREVERIE_CUDA=OFF", f"-DREVERIE_SANITIZE={sanitize}"],
                      src, 600)
        if rc != 0:
            print(out)
            return 2
    env = dict(os.environ, TSAN_OPTIONS="halt_on_error=1")
    sites = barriers(original)
    uncaught = []
    print(f"{len(sites)} barriers in {KERNELS}; each removed in turn (plain build | TSan build)")
    for index, (line, function, before) in enumerate([(-1, "(none)", "")] + sites):
        mutated = [x for i, x in enumerate(original) if i != line]
        (src / KERNELS).write_text("".join(mutated))
        results = []
        for name in builds:
            rc, out = run(["ninja", "-C", str(work / name), f"-j{jobs}", "reverie_tests"], src, 1800)
            if rc != 0:  # a removal that breaks the build tells nothing: stop
                print(f"the {name} build failed with line {line + 1} removed:\n{out[-2000:]}")
                return 2
            rc, out = run(["./reverie_tests"], work / name, timeout, env)
            results.append(verdict(rc, out))
        where = "no removal (baseline)" if line < 0 else f"{KERNELS.name}:{line + 1} {function}, after `{before}`"
        print(f"{index:2d}. {where}\n      {results[0][1]} | {results[1][1]}", flush=True)
        if line < 0:
            if any(what != "passed" for _, what in results):
                print("the unmodified tree must pass both builds")
                return 2
        elif not any(caught for caught, _ in results):
            reason = KNOWN_UNCAUGHT.get((function, before))
            if reason:
                print(f"      not caught, known: {reason}")
            else:
                uncaught.append(where)
    if uncaught:
        print("NOT CAUGHT:\n  " + "\n  ".join(uncaught))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
