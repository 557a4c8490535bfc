#!/usr/bin/env python3
"""A/B "no regression" check of the current build against the previous one (commit 1d8235c).

Issue 13 asks that W1 add/extend/sample(256), the W2 step at 100k and 1M, W3 sample(32/256)
and EpisodeBuffer sample/sample_sequences stay within 5% of the build before the table of
parts. This script measures each of those workloads in a fresh interpreter per (build,
round), the builds alternating (old, new, old, new, ...), for at least 5 rounds, and reports
each build's median over the rounds and the ratio new/old (rates: above 1 is faster), with a
flag where the new build is more than 5% slower (judged on the median of the per-round
ratios, each new run over the old run just before it, which cancels the machine's drift).

It is standalone: the library never imports it, and it imports nothing of reverie.bench
(the old build's benchmark modules have other names), only the public API both builds
share: ``ReplayBuffer(capacity, spec=..., sampler=..., seed=...)``, ``add``, ``extend``,
``sample``, ``update_priorities(batch.indices, priorities)``, ``EpisodeBuffer(capacity,
spec=..., seed=..., num_envs=...)`` with ``sample(B, n_step=, gamma=)`` and
``sample_sequences(B, length)``.

Setting up the old build (once; both builds compiled the same way, Release, no CUDA)::

    git -C /work/main worktree add /tmp/ab-old 1d8235c
    python3 -m venv /tmp/venv-old
    /tmp/venv-old/bin/pip install torch==2.13.0 numpy pybind11 scikit-build-core tqdm ninja cmake
    /tmp/venv-old/bin/pip install --no-build-isolation -C cmake.define.REVERIE_CUDA=OFF \\
        -C build-dir=/tmp/ab-build-old /tmp/ab-old

and the same with ``ab-new``/``venv-new`` for a pinned copy of the current commit (so that
edits made meanwhile in the work tree do not reach the "new" side half way through a run;
``--new`` defaults to this interpreter instead). Then::

    python bench/ab_previous.py --old /tmp/venv-old/bin/python --new /tmp/venv-new/bin/python

Workloads (sizes as in ``python -m reverie.bench``): W1 = MuJoCo-like transitions (obs
f32[17], action f32[6], reward f32, next_obs f32[17], done bool), buffers of 1M written one
lap; ``add`` of single transitions (fresh arrays and Python scalars, as an env loop hands
them out), ``extend(256)``, uniform ``sample(256)``. W2 = prioritized (alpha 0.6, beta 0.4,
eps 1e-6) step: ``sample(256)`` with weights + ``update_priorities(256)`` from a pool of
priority tensors, at 100k and 1M. W3 = Atari-like frames u8[4,84,84], capacity 50k (1.4 GB),
``sample(32)`` and ``sample(256)`` in gathered GB/s. Episodes = ``EpisodeBuffer`` of W1-like
episode fields (obs f32[17], action f32[6], reward, terminated, truncated), 8 envs, capacity
1M written 1.25 laps of random episodes of 100-1000 steps (a quarter truncated): n-step
``sample(256, n_step=3, gamma=0.99)`` and ``sample_sequences(32, 80)``.

Each child process fills its buffer, warms up for 0.2 s, then calls the operation for
``--seconds`` cut in 5 slices; its figure is the median of the slices.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

TOLERANCE = 0.05  # new may be at most 5% slower than old
WORKLOADS: Dict[str, Tuple[str, str]] = {  # name: (what, unit)
    "w1_add": ("W1 add (single items)", "items/s"),
    "w1_extend": ("W1 extend 256", "items/s"),
    "w1_sample": ("W1 sample 256", "batches/s"),
    "w2_step_100k": ("W2 step 256 @ 100k", "steps/s"),
    "w2_step_1m": ("W2 step 256 @ 1M", "steps/s"),
    "w3_sample_32": ("W3 sample 32 (cap 50k)", "GB/s"),
    "w3_sample_256": ("W3 sample 256 (cap 50k)", "GB/s"),
    "episodes_nstep": ("EpisodeBuffer n-step sample 256 (n=3)", "samples/s"),
    "episodes_sequences": ("EpisodeBuffer sequences 32 x 80", "sequences/s"),
}
DEFAULT_OLD = "/tmp/venv-old/bin/python"


# ---------------------------------------------------------------------------------------
# Child: one workload in this fresh interpreter
# ---------------------------------------------------------------------------------------


def _w1_spec() -> Dict[str, Any]:
    import numpy as np

    return {"obs": (np.float32, (17,)), "action": (np.float32, (6,)),
            "reward": (np.float32, ()), "next_obs": (np.float32, (17,)),
            "done": (np.bool_, ())}


def _columns(spec: Dict[str, Any], n: int, rng: Any) -> Dict[str, Any]:
    import numpy as np

    out = {}
    for name, (dt, shape) in spec.items():
        size = (n, *shape)
        if np.dtype(dt) == np.bool_:
            out[name] = rng.random(size) < 0.01
        elif np.dtype(dt).kind == "f":
            out[name] = rng.standard_normal(size, dtype=np.float32).astype(dt, copy=False)
        else:
            out[name] = rng.integers(0, 256, size, dtype=dt)
    return out


def _filled(rv: Any, capacity: int, spec: Dict[str, Any], sampler: Any, seed: int,
            block_rows: int = 65536) -> Any:
    """A buffer written one full lap from a block of distinct items (cycled)."""
    import numpy as np

    buf = rv.ReplayBuffer(capacity, spec=dict(spec), sampler=sampler, seed=seed)
    block = _columns(spec, min(capacity, block_rows), np.random.default_rng(seed))
    done = 0
    while done < capacity:
        k = min(len(block["obs"]), capacity - done)
        buf.extend(**{name: col[:k] for name, col in block.items()})
        done += k
    if len(buf) != capacity:
        raise RuntimeError(f"filled {len(buf)} of {capacity}")
    return buf


def _episode_stream(steps: int, num_envs: int, seed: int, chunk: int = 1024) -> Any:
    """Time-major chunks [<= chunk, num_envs, ...] of random episodes (100-1000 transitions,
    a quarter truncated), each episode's last transition followed by its final-observation
    row (flags clear)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    term = np.zeros((steps, num_envs), dtype=np.bool_)
    trunc = np.zeros((steps, num_envs), dtype=np.bool_)
    for e in range(num_envs):
        n = rng.integers(100, 1001, size=steps // 101 + 2)
        last = np.cumsum(n + 1) - 2
        last = last[last < steps]
        cut = rng.random(last.size) < 0.25
        term[last[~cut], e] = True
        trunc[last[cut], e] = True
    other = {"obs": (np.float32, (17,)), "action": (np.float32, (6,)), "reward": (np.float32, ())}
    cols = _columns(other, steps * num_envs, rng)
    pool = {k: v.reshape(steps, num_envs, *v.shape[1:]) for k, v in cols.items()}
    for lo in range(0, steps, chunk):
        hi = min(lo + chunk, steps)
        out = {k: v[lo:hi] for k, v in pool.items()}
        out["terminated"] = term[lo:hi]
        out["truncated"] = trunc[lo:hi]
        yield out


def _workload(name: str, seed: int) -> Tuple[Callable[[], Any], float]:
    """The operation to time and the units one call counts."""
    import numpy as np
    import torch

    import reverie as rv

    w1 = _w1_spec()
    if name.startswith("w1_"):
        buf = _filled(rv, 1_000_000, w1, rv.Uniform(), seed)
        rng = np.random.default_rng(seed + 1)
        fresh = _columns(w1, 1024, rng)
        if name == "w1_add":
            rows = [{k: (c[i].copy() if c.ndim > 1 else c[i].item()) for k, c in fresh.items()}
                    for i in range(1024)]
            def add_loop() -> None:
                # Looked up after the first write (the old build swaps its fast add in then)
                # and through buf, which this closure keeps alive (the new build's alias
                # alone does not).
                add = buf.add
                for row in rows:
                    add(**row)

            return add_loop, 1024.0
        if name == "w1_extend":
            batch = {k: v[:256] for k, v in fresh.items()}
            return (lambda: buf.extend(**batch)), 256.0
        return (lambda: buf.sample(256)), 1.0
    if name.startswith("w2_"):
        cap = 100_000 if name.endswith("100k") else 1_000_000
        buf = _filled(rv, cap, w1, rv.Prioritized(alpha=0.6, beta=0.4, eps=1e-6), seed)
        pool = np.random.default_rng(seed + 1).random((64, 256), dtype=np.float32) + np.float32(1e-3)
        rows = [torch.from_numpy(pool[i]) for i in range(64)]
        counter = [0]

        def step() -> None:
            counter[0] += 1
            b = buf.sample(256)
            buf.update_priorities(b.indices, rows[counter[0] & 63])

        return step, 1.0
    if name.startswith("w3_"):
        n = int(name.rsplit("_", 1)[1])
        spec = {"obs": (np.uint8, (4, 84, 84))}
        buf = _filled(rv, 50_000, spec, rv.Uniform(), seed, block_rows=2048)
        return (lambda: buf.sample(n)), n * 4 * 84 * 84 / 1e9
    if name.startswith("episodes_"):
        spec = {"obs": (np.float32, (17,)), "action": (np.float32, (6,)),
                "reward": (np.float32, ()), "terminated": (np.bool_, ()),
                "truncated": (np.bool_, ())}
        cap, envs = 1_000_000, 8
        ebuf = rv.EpisodeBuffer(cap, spec=spec, seed=seed, num_envs=envs)
        steps = cap // envs + cap // envs // 4
        for chunk in _episode_stream(steps, envs, seed):
            ebuf.extend(**chunk)
        if len(ebuf) != cap:
            raise RuntimeError(f"episode buffer holds {len(ebuf)} of {cap}")
        if name == "episodes_nstep":
            return (lambda: ebuf.sample(256, n_step=3, gamma=0.99)), 256.0
        return (lambda: ebuf.sample_sequences(32, 80)), 32.0
    raise ValueError(f"unknown workload {name!r}")


def child(name: str, seconds: float, seed: int, slices: int = 5) -> Dict[str, Any]:
    """Fills, warms up 0.2 s, then times ``seconds`` in ``slices``: the median rate."""
    import reverie as rv

    t0 = time.perf_counter()
    op, units = _workload(name, seed)
    setup = time.perf_counter() - t0

    def rate(budget: float) -> float:
        calls = 0
        start = time.perf_counter()
        while True:
            op()
            calls += 1
            now = time.perf_counter()
            if now - start >= budget:
                return calls * units / (now - start)

    rate(0.2)
    rates = [rate(seconds / slices) for _ in range(slices)]
    return {"workload": name, "rate": statistics.median(rates), "slices": rates,
            "setup_s": setup, "reverie": os.path.dirname(os.path.abspath(rv.__file__))}


# ---------------------------------------------------------------------------------------
# Parent: alternate the builds, collect, report
# ---------------------------------------------------------------------------------------


def run_child(python: str, name: str, seconds: float, seed: int, timeout: float) -> Dict[str, Any]:
    cmd = [python, os.path.abspath(__file__), "--child", name, "--seconds", str(seconds),
           "--seed", str(seed)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # each build its own
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                         cwd="/")  # not the repository root: no `python/` shadowing
    if res.returncode != 0:
        raise RuntimeError(f"{python} {name}: exit {res.returncode}\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _fmt(v: float, unit: str) -> str:
    if unit == "GB/s":
        return f"{v:.2f}"
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if v >= scale:
            return f"{v / scale:.3g}{suffix}"
    return f"{v:.3g}"


def verdict(ratio: float, tolerance: float = TOLERANCE) -> str:
    """'within 5%', 'SLOWER by 7% (over 5%)', or 'faster by 9%'."""
    if ratio < 1 - tolerance:
        return f"SLOWER by {1 - ratio:.0%} (over {tolerance:.0%})"
    if ratio > 1 + tolerance:
        return f"faster by {ratio - 1:.0%}"
    return f"within {tolerance:.0%}"


def report(results: Dict[str, Dict[str, List[float]]], labels: Tuple[str, str]) -> str:
    """The markdown table: per workload each build's median [min-max] over the rounds, the
    ratio of the medians new/old, and the per-round ratios (each new run over the old run
    just before it) with the verdict on their median: pairing the runs that ran next to each
    other cancels the machine's drift over the run (up to 2x on a shared machine), which
    the medians of the builds do not."""
    head = ["workload", "unit", f"old {labels[0]}", f"new {labels[1]}", "new/old (medians)",
            "per-round new/old: median [min-max]", "verdict (per-round median)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for name, by in results.items():
        what, unit = WORKLOADS[name]
        old, new = by["old"], by["new"]
        if not old or not new:
            continue
        mo, mn = statistics.median(old), statistics.median(new)
        paired = [b / a for a, b in zip(old, new)]
        ratio = mn / mo
        lines.append(
            f"| {what} | {unit} | {_fmt(mo, unit)} [{_fmt(min(old), unit)}-{_fmt(max(old), unit)}]"
            f" | {_fmt(mn, unit)} [{_fmt(min(new), unit)}-{_fmt(max(new), unit)}] | {ratio:.3f}"
            f" | {statistics.median(paired):.3f} [{min(paired):.3f}-{max(paired):.3f}]"
            f" | {verdict(statistics.median(paired))} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--old", default=DEFAULT_OLD, help="the previous build's interpreter")
    p.add_argument("--new", default=sys.executable, help="the current build's interpreter")
    p.add_argument("--old-label", default="1d8235c")
    p.add_argument("--new-label", default="current")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=1.0, help="timed seconds per child")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    p.add_argument("--json", default=None, help="write every figure here")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per child process")
    p.add_argument("--child", choices=list(WORKLOADS), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.seconds, args.seed)))
        return 0
    if args.rounds < 5:
        print(f"note: {args.rounds} rounds (issue 13 asks for at least 5)", file=sys.stderr)
    builds = {"old": args.old, "new": args.new}
    results: Dict[str, Dict[str, List[float]]] = {w: {"old": [], "new": []} for w in args.workloads}
    runs: List[Dict[str, Any]] = []
    t0 = time.perf_counter()
    for r in range(args.rounds):
        for name in args.workloads:
            for side in ("old", "new"):  # A B A B ...
                out = run_child(builds[side], name, args.seconds, args.seed, args.timeout)
                results[name][side].append(out["rate"])
                runs.append({"round": r, "build": side, **out})
                print(f"round {r + 1}/{args.rounds} {name:20s} {side}: "
                      f"{_fmt(out['rate'], WORKLOADS[name][1])} {WORKLOADS[name][1]} "
                      f"({out['reverie']}, setup {out['setup_s']:.1f} s)", file=sys.stderr,
                      flush=True)
    elapsed = time.perf_counter() - t0
    text = report(results, (args.old_label, args.new_label))
    text += (f"\n{args.rounds} rounds; each figure one fresh process ({args.seconds:g} s timed in "
             f"5 slices after 0.2 s warm-up, the slices' median); builds alternating old, new per "
             f"workload and round; old = {args.old}, new = {args.new}; total {elapsed:.0f} s")
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"builds": builds, "labels": [args.old_label, args.new_label],
                       "rounds": args.rounds, "seconds": args.seconds, "tolerance": TOLERANCE,
                       "results": results, "runs": runs, "elapsed_s": elapsed, "report": text},
                      f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
