"""Micro-batch balance for RL on language models (issue: "Replay for RL on language
models"): ``rv.micro_batches`` (Karmarkar-Karp on the cost a*L + L^2) against a verl-style
split (Karmarkar-Karp on the token counts, as verl's ``get_seqlen_balanced_partitions``
balances them, written here from the method's description), on the same lengths.

Lengths: prompts uniform in [64, 256], responses lognormal with median 300 capped at 1,024,
G = 8 responses per prompt (a sequence is prompt + response); and a DAPO-like tail, 5% of
responses up to 8,192. Reported per setting: the imbalance max/mean of each split's
micro-batch costs (1.0 is even) over 50 draws (median and worst), and the time per split.

    python -m reverie.bench.llm [--quick]
"""

from __future__ import annotations

import argparse
import heapq
import time
from typing import Dict, List, Sequence, Tuple

import numpy as np

A = 4096.0  # the linear weight of the cost (rv.micro_batches' default)


def lengths(rng: np.random.Generator, prompts: int, group: int = 8, tail: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """(lengths, group ids) of prompts x group sequences."""
    p = np.repeat(rng.integers(64, 257, prompts), group)
    r = np.minimum(np.round(rng.lognormal(np.log(300), 0.6, prompts * group)), 1024)
    if tail:
        long = rng.random(prompts * group) < 0.05
        r = np.where(long, rng.integers(1024, 8193, prompts * group), r)
    return (p + r).astype(np.int64), np.repeat(np.arange(prompts), group)


def token_kk(weights: Sequence[float], k: int) -> List[List[int]]:
    """Karmarkar-Karp differencing on the given weights into k subsets (the verl-style
    baseline balances token counts). Each partial partition: k (sum, members) subsets;
    the two of largest spread merge, largest subset of one with smallest of the other."""
    heap: List[Tuple[float, int, List[Tuple[float, List[int]]]]] = []
    for i, w in enumerate(weights):
        subsets = [(float(w), [i])] + [(0.0, []) for _ in range(k - 1)]
        heapq.heappush(heap, (-float(w), i, subsets))
    made = len(weights)
    while len(heap) > 1:
        _, _, x = heapq.heappop(heap)
        _, _, y = heapq.heappop(heap)
        xs = sorted(x, key=lambda s: -s[0])
        ys = sorted(y, key=lambda s: s[0])
        z = [(a[0] + b[0], a[1] + b[1]) for a, b in zip(xs, ys)]
        sums = [s for s, _ in z]
        heapq.heappush(heap, (-(max(sums) - min(sums)), made, z))
        made += 1
    return [members for _, members in heap[0][2]]


def imbalance(costs: np.ndarray) -> float:
    return float(costs.max() / costs.mean())


def cost_of(parts: Sequence[Sequence[int]], lens: np.ndarray) -> np.ndarray:
    c = A * lens + lens.astype(np.float64) ** 2
    return np.array([c[list(p)].sum() for p in parts])


def run(quick: bool = False) -> Dict[str, Dict[str, float]]:
    import reverie as rv

    draws = 10 if quick else 50
    settings = [("64 x 8, 8 micro-batches", 8, 8, False), ("32 x 8, 4 micro-batches, groups whole", 32, 4, False),
                ("64 x 8 with a DAPO tail, 8 micro-batches", 64, 8, True)]
    out: Dict[str, Dict[str, float]] = {}
    for name, prompts, k, tail in settings:
        rng = np.random.default_rng(0)
        ours, theirs, t_ours, t_theirs = [], [], 0.0, 0.0
        for _ in range(draws):
            lens, groups = lengths(rng, prompts, tail=tail)
            grouped = "groups" in name
            t = time.perf_counter()
            mb = rv.micro_batches(lens, k, groups=groups if grouped else None, a=A)
            t_ours += time.perf_counter() - t
            ours.append(mb.imbalance)
            units = [np.flatnonzero(groups == g).tolist() for g in range(prompts)] if grouped else [[i] for i in range(len(lens))]
            t = time.perf_counter()
            split = token_kk([float(lens[u].sum()) for u in units], k)
            t_theirs += time.perf_counter() - t
            parts = [[i for u in s for i in units[u]] for s in split]
            theirs.append(imbalance(cost_of(parts, lens)))
        out[name] = {"reverie_median": float(np.median(ours)), "reverie_worst": float(np.max(ours)),
                     "verl_median": float(np.median(theirs)), "verl_worst": float(np.max(theirs)),
                     "reverie_ms": 1e3 * t_ours / draws, "verl_ms": 1e3 * t_theirs / draws}
    return out


def table(results: Dict[str, Dict[str, float]]) -> str:
    rows = ["| setting | reverie imbalance (median / worst) | verl-style token KK (median / worst) | time per split |",
            "|---|---|---|---|"]
    for name, r in results.items():
        rows.append(f"| {name} | {r['reverie_median']:.3f} / {r['reverie_worst']:.3f} | "
                    f"{r['verl_median']:.3f} / {r['verl_worst']:.3f} | {r['reverie_ms']:.2f} ms vs {r['verl_ms']:.2f} ms |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    print(table(run(args.quick)))


if __name__ == "__main__":
    main()
