"""Episode-buffer benchmarks (issue 4): ``python -m reverie.bench --workloads episodes``.

reverie's ``EpisodeBuffer`` against the numpy episode buffer people write (arrays laid
out ``[T, num_envs, ...]`` as in Stable-Baselines3's ``ReplayBuffer`` with ``n_envs``; obs
stored once; every sampler vectorized, no Python loop per item), all measured in this one
process, each cell the median of several rounds with the implementations in turns (the
shared harness, ``harness.py``):

- W1 episodes: fields obs f32[17], action f32[6], reward f32, terminated, truncated; 8 envs,
  capacity 1M (quick: 100k), filled one and a quarter laps with random episodes of 100-1000
  steps (a quarter of them truncated). n-step ``sample(256, n_step=3, gamma=0.99)`` in
  samples/s, and ``sample_sequences(32, 80)`` (episode_end="pad") in sequences/s. Target:
  sequences >= 10x numpy.
- W3 frames with dedup: obs u8[84,84] single frames, ``frame_stack=4``, capacity 50k (quick:
  10k), 8 envs. Resident memory (RSS growth of a fresh process creating and filling it) of
  the EpisodeBuffer against the naive layout, a plain ``rv.ReplayBuffer`` holding obs and
  next_obs as full u8[4,84,84] stacks (target <= 0.3x), and the numpy dedup buffer; and
  sample(32) / sample(256) throughput of the three, in samples/s and gathered GB/s counting
  the obs and next_obs stacks (2 x 28,224 bytes per sample).

Before timing, each pair of episode buffers (filled with the same stream) is checked to
agree: the numpy buffer (``episode_baseline.py``) recomputes reverie's sampled batch from
reverie's start keys.
"""

from __future__ import annotations

import gc
import time
from functools import partial
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from . import baselines as bl
from .episode_baseline import NumpyEpisodeBuffer, reverie_key_to_step
from .harness import (
    Cell,
    Progress,
    fmt_ratio,
    fmt_stats,
    human_count,
    measure_rates,
    probe_in_subprocess,
    ratio_column,
    rss_bytes,
    si,
    tabulate,
)
from .workloads import Settings, build_filled, fill_blocks, item_bytes, make_columns

__all__ = ["NumpyEpisodeBuffer", "check_nstep", "check_sequences", "compare", "episode_flags",
           "filled_episode_buffer", "filled_w3", "make_episode_buffer", "reverie_key_to_step",
           "run", "stream", "table", "unavailable"]


NUM_ENVS = 8
N_STEP, GAMMA = 3, 0.99
SEQ_BATCH, SEQ_LENGTH = 32, 80
FRAME = (84, 84)
FRAME_STACK = 4
SEQUENCE_TARGET = 10.0  # reverie sequences/s over numpy's, at least
MEMORY_TARGET = 0.3  # EpisodeBuffer RSS over the naive ReplayBuffer's, at most
EPISODE_LENGTHS = (100, 1000)  # transitions per episode, uniform
TRUNCATED_SHARE = 0.25  # episodes that end truncated rather than terminated
EXTRA_LAP = 0.25  # fill one lap and this much more: the ring has wrapped, the head is inside

W1E_SPEC: bl.Spec = {
    "obs": (np.float32, (17,)),
    "action": (np.float32, (6,)),
    "reward": (np.float32, ()),
    "terminated": (np.bool_, ()),
    "truncated": (np.bool_, ()),
}
W3E_SPEC: bl.Spec = {  # one frame per env step; samples stack FRAME_STACK of them
    "obs": (np.uint8, FRAME),
    "action": (np.int64, ()),
    "reward": (np.float32, ()),
    "terminated": (np.bool_, ()),
    "truncated": (np.bool_, ()),
}
W3_NAIVE_SPEC: bl.Spec = {  # the same transitions as full stacks, next_obs stored apart
    "obs": (np.uint8, (FRAME_STACK, *FRAME)),
    "action": (np.int64, ()),
    "reward": (np.float32, ()),
    "next_obs": (np.uint8, (FRAME_STACK, *FRAME)),
    "terminated": (np.bool_, ()),
    "truncated": (np.bool_, ()),
}
STACK_BYTES = FRAME_STACK * FRAME[0] * FRAME[1]
SAMPLE_BYTES = 2 * STACK_BYTES  # obs + next_obs stacks gathered per W3 sample

KINDS = ("reverie", "numpy", "naive")
LABELS = {"reverie": "reverie EpisodeBuffer", "numpy": "numpy episode buffer",
          "naive": "reverie ReplayBuffer, full stacks"}


# ---------------------------------------------------------------------------------------
# Data: random episodes under the NEXT_STEP convention
# ---------------------------------------------------------------------------------------


def episode_flags(steps: int, num_envs: int, rng: np.random.Generator,
                  lengths: Tuple[int, int] = EPISODE_LENGTHS,
                  truncated_share: float = TRUNCATED_SHARE) -> Tuple[np.ndarray, np.ndarray]:
    """(terminated, truncated) ``[steps, num_envs]`` of back-to-back random episodes: an
    episode of L transitions takes L rows, the last with one flag set, then its
    final-observation row (flags clear), then the next episode."""
    term = np.zeros((steps, num_envs), dtype=np.bool_)
    trunc = np.zeros((steps, num_envs), dtype=np.bool_)
    lo, hi = lengths
    for e in range(num_envs):  # a few thousand episodes per env: data generation, untimed
        n = rng.integers(lo, hi + 1, size=steps // (lo + 1) + 2)
        last = np.cumsum(n + 1) - 2  # row of each episode's last transition
        last = last[last < steps]
        cut = rng.random(last.size) < truncated_share
        term[last[~cut], e] = True
        trunc[last[cut], e] = True
    return term, trunc


def stream(spec: bl.Spec, steps: int, num_envs: int, seed: int, chunk: int = 1024,
           pool_steps: Optional[int] = None) -> Iterator[Dict[str, np.ndarray]]:
    """Time-major chunks ``[<= chunk, num_envs, ...]`` of a random episode stream of
    ``steps`` steps. The flags are drawn for the whole stream; the other fields come from
    ``pool_steps`` random steps (default: all of them), cycled (large frames: repeated data
    copy as fast as fresh ones and save generating gigabytes)."""
    rng = np.random.default_rng(seed)
    term, trunc = episode_flags(steps, num_envs, rng)
    other = {k: v for k, v in spec.items() if k not in ("terminated", "truncated")}
    pool_steps = steps if pool_steps is None else min(pool_steps, steps)
    cols = make_columns(other, pool_steps * num_envs, rng)
    pool = {k: v.reshape(pool_steps, num_envs, *v.shape[1:]) for k, v in cols.items()}
    done = 0
    while done < steps:
        k = min(chunk, steps - done)
        p = done % pool_steps
        k = min(k, pool_steps - p)
        out = {name: v[p:p + k] for name, v in pool.items()}
        out["terminated"] = term[done:done + k]
        out["truncated"] = trunc[done:done + k]
        yield out
        done += k


def fill_steps(capacity: int, num_envs: int = NUM_ENVS) -> int:
    """Steps per env written before timing: one lap and ``EXTRA_LAP`` more."""
    return capacity // num_envs + int(capacity // num_envs * EXTRA_LAP)


def make_episode_buffer(impl: str, capacity: int, spec: bl.Spec, frame_stack: int = 1,
                        seed: int = 0, num_envs: int = NUM_ENVS) -> Any:
    """An empty reverie EpisodeBuffer or numpy baseline (impl "reverie" / "numpy")."""
    if impl == "numpy":
        return NumpyEpisodeBuffer(capacity, spec, num_envs, seed, frame_stack=frame_stack)
    import reverie as rv

    return rv.EpisodeBuffer(capacity, spec=dict(spec), seed=seed, num_envs=num_envs,
                            frame_stack=frame_stack)


def filled_episode_buffer(impl: str, capacity: int, spec: bl.Spec, frame_stack: int = 1,
                          seed: int = 0, pool_steps: Optional[int] = None,
                          num_envs: int = NUM_ENVS) -> Any:
    """A buffer of ``impl`` written ``fill_steps`` steps of the seeded episode stream."""
    buf = make_episode_buffer(impl, capacity, spec, frame_stack, seed, num_envs)
    gc.disable()
    try:
        for chunk in stream(spec, fill_steps(capacity, num_envs), num_envs, seed,
                            pool_steps=pool_steps):
            buf.extend(**chunk)
    finally:
        gc.enable()
    gc.collect()
    if len(buf) != capacity:
        raise RuntimeError(f"{impl}: holds {len(buf)} of {capacity} rows")
    return buf


W3_POOL_STEPS = 256  # distinct random steps of frames, cycled when filling W3


def filled_w3(kind: str, capacity: int, seed: int = 0) -> Any:
    """A W3 buffer: "reverie"/"numpy" episode buffers (frame_stack 4) or "naive", a plain
    rv.ReplayBuffer of full obs/next_obs stacks (a ``workloads.Adapter``)."""
    if kind == "naive":
        blocks = fill_blocks(W3_NAIVE_SPEC, capacity, np.random.default_rng(seed))
        return build_filled("reverie", capacity, W3_NAIVE_SPEC, False, blocks, seed)
    return filled_episode_buffer(kind, capacity, W3E_SPEC, FRAME_STACK, seed, W3_POOL_STEPS)


# ---------------------------------------------------------------------------------------
# Agreement: the baseline recomputes reverie's batch from reverie's start keys
# ---------------------------------------------------------------------------------------


def compare(got: Mapping[str, torch.Tensor], want: Mapping[str, torch.Tensor],
            rtol: float = 1e-6) -> List[str]:
    """The fields of ``want`` on which ``got`` differs (float fields within ``rtol``)."""
    bad = []
    for name, w in want.items():
        g = got.get(name)
        if g is None or tuple(g.shape) != tuple(w.shape) or g.dtype != w.dtype:
            bad.append(f"{name} (got {None if g is None else (tuple(g.shape), g.dtype)}, "
                       f"want {tuple(w.shape), w.dtype})")
        elif w.dtype.is_floating_point:
            if not torch.allclose(g, w, rtol=rtol, atol=rtol):
                bad.append(f"{name} (max |diff| {float((g - w).abs().max()):.3g})")
        elif not torch.equal(g, w):
            bad.append(f"{name} ({int((g != w).sum())} elements differ)")
    return bad


def as_dict(batch: Any) -> Dict[str, torch.Tensor]:
    out = dict(batch)
    out["indices"] = batch.indices
    return out


def check_nstep(rbuf: Any, nbuf: NumpyEpisodeBuffer, batch_size: int, n_step: int,
                gamma: float) -> List[str]:
    """Differences between reverie's n-step batch and the baseline's for the same starts
    (and starts the baseline holds invalid)."""
    b = rbuf.sample(batch_size, n_step=n_step, gamma=gamma)
    bad = compare(as_dict(b), nbuf.nstep_at(rbuf, b.indices, n_step, gamma))
    t, e = reverie_key_to_step(rbuf, b.indices)
    if not nbuf.valid_transition(t, e).all():
        bad.append("starts the baseline holds invalid")
    return bad


def check_sequences(rbuf: Any, nbuf: NumpyEpisodeBuffer, batch_size: int, length: int,
                    burn_in: int = 0, episode_end: str = "pad") -> List[str]:
    b = rbuf.sample_sequences(batch_size, length, burn_in=burn_in, episode_end=episode_end)
    want = nbuf.sequences_at(rbuf, b.indices, length, burn_in)
    bad = compare(as_dict(b), want)
    t, e = reverie_key_to_step(rbuf, b.indices)
    ok = nbuf.valid_sequence_start(t, e)
    if episode_end == "drop":
        ok &= want["mask"][:, burn_in:].numpy().all(axis=1)
    if not ok.all():
        bad.append("starts the baseline holds invalid")
    return bad


# ---------------------------------------------------------------------------------------
# Cells
# ---------------------------------------------------------------------------------------


def unavailable() -> Optional[str]:
    """Why the section cannot run (None when it can): it needs ``reverie.EpisodeBuffer``."""
    try:
        import reverie as rv
    except Exception as exc:  # ImportError, or a broken build raising something else
        return f"reverie not importable ({type(exc).__name__}: {exc})".splitlines()[0]
    if not hasattr(rv, "EpisodeBuffer"):
        return "this reverie build has no EpisodeBuffer"
    return None


def cells() -> int:
    """Progress steps this section reports."""
    return 3 + 2 + 2 + 3 + 3


def run_w1(s: Settings, prog: Progress) -> List[Cell]:
    """W1 episodes: n-step sample(256) and sequences 32 x 80, reverie vs numpy."""
    cap = s.w1_capacity
    bufs = {}
    for impl in ("reverie", "numpy"):
        prog.note(f"episodes W1 {impl}: filling {cap:,}")
        bufs[impl] = filled_episode_buffer(impl, cap, W1E_SPEC, 1, s.seed)
    prog.note("episodes W1: checking reverie against the baseline")
    agree = {"n-step": check_nstep(bufs["reverie"], bufs["numpy"], 256, N_STEP, GAMMA),
             "sequences": check_sequences(bufs["reverie"], bufs["numpy"], SEQ_BATCH, SEQ_LENGTH)}
    out = []
    prog.note(f"episodes W1: n-step sample 256 (n={N_STEP})")
    cell = Cell("W1", f"n-step sample 256 (n={N_STEP})", "samples/s")
    cell.values = measure_rates({k: partial(b.sample, 256, n_step=N_STEP, gamma=GAMMA)
                           for k, b in bufs.items()}, 256, s)
    cell.extra = {"ratio": cell.ratio("reverie", "numpy"), "target": None,
                  "disagreements": agree["n-step"]}
    out.append(cell)
    prog.advance(2)
    prog.note(f"episodes W1: sequences {SEQ_BATCH} x {SEQ_LENGTH}")
    cell = Cell("W1", f"sequences {SEQ_BATCH} x {SEQ_LENGTH} (pad)", "sequences/s")
    cell.values = measure_rates({k: partial(b.sample_sequences, SEQ_BATCH, SEQ_LENGTH)
                           for k, b in bufs.items()}, SEQ_BATCH, s)
    cell.extra = {"ratio": cell.ratio("reverie", "numpy"), "target": SEQUENCE_TARGET,
                  "disagreements": agree["sequences"]}
    out.append(cell)
    prog.advance(2)
    del bufs
    gc.collect()
    return out


def run_w3(s: Settings, prog: Progress) -> List[Cell]:
    """W3 dedup: sample(32) and sample(256) of the three buffers, in GB/s of stacks."""
    cap = s.w3_capacity
    bufs: Dict[str, Any] = {}
    for kind in KINDS:
        prog.note(f"episodes W3 {kind}: filling {cap:,}")
        bufs[kind] = filled_w3(kind, cap, s.seed)
    prog.note("episodes W3: checking reverie against the baseline")
    agree = check_nstep(bufs["reverie"], bufs["numpy"], 64, 1, GAMMA)
    out = []
    for n in (32, 256):
        prog.note(f"episodes W3: sample {n}")
        cell = Cell("W3", f"sample {n}", "GB/s")
        cell.values = measure_rates({k: partial(bufs[k].sample, n) for k in KINDS},
                              n * SAMPLE_BYTES / 1e9, s)
        cell.extra = {"ratio": cell.ratio("reverie", "numpy"),
                      "ratio_vs_naive": cell.ratio("reverie", "naive"),
                      "bytes_per_sample": SAMPLE_BYTES, "disagreements": agree}
        out.append(cell)
        prog.advance(3)
    del bufs
    gc.collect()
    return out


def memory_probe(kind: str, capacity: int, seed: int = 0) -> Dict[str, int]:
    """RSS growth from creating and filling a W3 buffer of ``kind`` (run in a fresh process).

    The source data (cycled blocks) and the imports exist before the first reading.
    """
    import reverie  # noqa: F401  (its import is not the buffer's memory)

    rng = np.random.default_rng(seed)
    if kind == "naive":
        blocks = fill_blocks(W3_NAIVE_SPEC, capacity, rng)
        gc.collect()
        before = rss_bytes()
        buf: Any = build_filled("reverie", capacity, W3_NAIVE_SPEC, False, blocks, seed)
        stored = capacity * item_bytes(W3_NAIVE_SPEC)
    else:
        chunks = list(stream(W3E_SPEC, fill_steps(capacity), NUM_ENVS, seed,
                             pool_steps=W3_POOL_STEPS))
        gc.collect()
        before = rss_bytes()
        buf = make_episode_buffer(kind, capacity, W3E_SPEC, FRAME_STACK, seed)
        for chunk in chunks:
            buf.extend(**chunk)
        stored = capacity * item_bytes(W3E_SPEC)
    gc.collect()
    after = rss_bytes()
    assert len(buf) == capacity
    return {"rss_growth": after - before, "stored": stored}


def run_memory(s: Settings, prog: Progress) -> Dict[str, Any]:
    """``memory_probe`` in a fresh interpreter per kind."""
    out: Dict[str, Any] = {}
    for kind in KINDS:
        prog.note(f"episodes memory: {kind}")
        out[kind] = probe_in_subprocess("reverie.bench.episodes", "memory_probe",
                                          (kind, s.w3_capacity, s.seed), 600)
        prog.advance()
    return out


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------


def _figure(key: str, header: str) -> Tuple[str, Callable[[Cell], str]]:
    """A variant's median [min-max]; for GB/s also in samples/s."""
    def text(c: Cell) -> str:
        v = c.values.get(key)
        out = fmt_stats(v, c.unit)
        if v is not None and c.unit == "GB/s":
            out += f", {si(v['value'] * 1e9 / SAMPLE_BYTES)} samples/s"
        return out

    return header, text


def table(cells_: Sequence[Cell], memory: Mapping[str, Any], s: Settings) -> str:
    """The section's tables and notes."""
    lines: List[str] = []
    w1 = [c for c in cells_ if c.section == "W1"]
    w3 = [c for c in cells_ if c.section == "W3"]
    metric = ("metric", lambda c: c.metric)
    if w1:
        lines.append(f"Episodes, W1 fields, {NUM_ENVS} envs, capacity "
                     f"{human_count(s.w1_capacity)} (median [min-max])")
        lines += tabulate(w1, [metric, _figure("reverie", "reverie EpisodeBuffer"),
                               _figure("numpy", "numpy episode buffer"),
                               ratio_column("reverie", "numpy",
                                            target=lambda c: c.extra.get("target"))])
    if w3:
        lines.append("")
        lines.append(f"Episodes, W3 frames u8{list(FRAME)} x frame_stack {FRAME_STACK}, "
                     f"{NUM_ENVS} envs, capacity {human_count(s.w3_capacity)}; GB/s of "
                     f"obs + next_obs stacks ({SAMPLE_BYTES:,} bytes per sample)")
        lines += tabulate(w3, [metric]
                          + [_figure(k, h) for k, h in zip(KINDS, (
                              "reverie EpisodeBuffer (dedup)", "numpy dedup",
                              "ReplayBuffer (full stacks)"))]
                          + [ratio_column("reverie", "numpy"),
                             ratio_column("reverie", "naive", "reverie/ReplayBuffer")])
    if memory:
        naive = memory.get("naive", {}).get("rss_growth")
        lines.append("")
        lines.append(f"Memory, W3 buffer of {s.w3_capacity:,} steps, RSS growth of a fresh "
                     "process creating and filling it:")
        for kind in KINDS:
            m = memory.get(kind)
            if m is None:
                continue
            if "error" in m:
                lines.append(f"  {LABELS[kind]}: failed ({m['error']})")
                continue
            rel = ""
            if naive and kind != "naive":
                target = MEMORY_TARGET if kind == "reverie" else None
                rel = (f"; {fmt_ratio(m['rss_growth'] / naive, target, at_most=True)} "
                       "the full-stacks ReplayBuffer")
            lines.append(f"  {LABELS[kind]}: {m['rss_growth'] / 1e6:.0f} MB = "
                         f"{m['rss_growth'] / m['stored']:.2f}x its stored bytes{rel}")
    bad = {f"{c.section} {c.metric}": c.extra["disagreements"]
           for c in cells_ if c.extra.get("disagreements")}
    if cells_:
        lines.append("reverie's batches recomputed by the numpy buffer from reverie's start keys: "
                     + ("agree" if not bad else "DIFFER: " + "; ".join(
                         f"{k}: {', '.join(v)}" for k, v in bad.items())))
    lines.append(f"each figure: median of {s.repeats} repeats of {s.budget_s / s.repeats:.2g} s "
                 f"per implementation, in turns, after {s.warmup_s:g} s warm-up; buffers "
                 f"written {1 + EXTRA_LAP:g} laps of random episodes of "
                 f"{EPISODE_LENGTHS[0]}-{EPISODE_LENGTHS[1]} steps "
                 f"({TRUNCATED_SHARE:.0%} truncated) before timing")
    return "\n".join(lines)


def run(s: Settings, prog: Progress) -> Tuple[List[Cell], Dict[str, Any]]:
    """Runs the section; returns the cells and their JSON form."""
    t0 = time.perf_counter()
    memory = run_memory(s, prog)  # first, while this process is small
    out = run_w1(s, prog)
    out += run_w3(s, prog)
    text = table(out, memory, s)
    naive = memory.get("naive", {}).get("rss_growth")
    mem_ratio = {k: (m["rss_growth"] / naive if naive and "rss_growth" in m else None)
                 for k, m in memory.items() if k != "naive"}
    result = {
        "settings": {"num_envs": NUM_ENVS, "w1_capacity": s.w1_capacity,
                     "w3_capacity": s.w3_capacity, "n_step": N_STEP, "gamma": GAMMA,
                     "sequence_batch": SEQ_BATCH, "sequence_length": SEQ_LENGTH,
                     "frame_stack": FRAME_STACK, "episode_lengths": list(EPISODE_LENGTHS),
                     "truncated_share": TRUNCATED_SHARE, "laps": 1 + EXTRA_LAP,
                     "repeats": s.repeats, "budget_s": s.budget_s, "warmup_s": s.warmup_s,
                     "sequence_target": SEQUENCE_TARGET, "memory_target": MEMORY_TARGET},
        "cells": [c.as_dict() for c in out],
        "memory": memory,
        "memory_ratio_vs_naive": mem_ratio,
        "elapsed_s": time.perf_counter() - t0,
        "report": text,
    }
    return out, result
