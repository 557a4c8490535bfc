"""Micro-batch balance for RL on language models (issue: "Replay for RL on language
models"): ``rv.micro_batches`` (Karmarkar-Karp on the cost a*L + L^2) against a verl-style
split (Karmarkar-Karp on the token counts, as verl's ``get_seqlen_balanced_partitions``
balances them, written here from the method's description), on the same lengths.

Also measured: the two baseline stores the ragged table will be compared against (a Python
list of tensors packed by concatenation or padded by pad_sequence; a verl-style padded store
unpadded through its attention mask), their packed-batch rates and the padded store's memory.

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
import torch

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


class ListStore:
    """The baseline store most trainers keep: a Python list of per-item token tensors; a
    packed batch is built by indexing the list and concatenating (cu_seqlens from the
    lengths), a padded one with ``torch.nn.utils.rnn.pad_sequence``."""

    def __init__(self) -> None:
        self.items: List[torch.Tensor] = []

    def extend(self, seqs: Sequence[torch.Tensor]) -> None:
        self.items.extend(seqs)

    def sample_packed(self, idx: np.ndarray) -> Tuple[torch.Tensor, torch.Tensor]:
        chosen = [self.items[i] for i in idx.tolist()]
        lens = torch.tensor([len(t) for t in chosen], dtype=torch.int32)
        cu = torch.zeros(len(chosen) + 1, dtype=torch.int32)
        torch.cumsum(lens, 0, out=cu[1:])
        return torch.cat(chosen), cu

    def sample_padded(self, idx: np.ndarray) -> torch.Tensor:
        return torch.nn.utils.rnn.pad_sequence([self.items[i] for i in idx.tolist()], batch_first=True)


class PaddedStore:
    """A verl-style store: every item padded to the longest length [N, T_max] with an
    attention mask; a packed batch is the sampled rows unpadded (the mask's nonzero
    positions gathered, cu_seqlens from the mask's row sums)."""

    def __init__(self, capacity: int, t_max: int) -> None:
        self.tokens = torch.zeros(capacity, t_max, dtype=torch.int64)
        self.mask = torch.zeros(capacity, t_max, dtype=torch.bool)
        self.size = 0

    def extend(self, seqs: Sequence[torch.Tensor]) -> None:
        for t in seqs:
            self.tokens[self.size, :len(t)] = t
            self.mask[self.size, :len(t)] = True
            self.size += 1

    def sample_packed(self, idx: np.ndarray) -> Tuple[torch.Tensor, torch.Tensor]:
        i = torch.from_numpy(idx)
        rows, mask = self.tokens[i], self.mask[i]
        lens = mask.sum(1, dtype=torch.int32)
        cu = torch.zeros(len(idx) + 1, dtype=torch.int32)
        torch.cumsum(lens, 0, out=cu[1:])
        return rows[mask], cu

    def nbytes(self) -> int:
        return self.tokens.numel() * self.tokens.element_size() + self.mask.numel()


def baseline_rates(items: int = 4096, batch: int = 64, seconds: float = 1.0, seed: int = 0) -> Dict[str, float]:
    """Packed-batch rates (batches/s) of the two baselines, and their memory against the raw
    token bytes, on the issue's lengths (responses up to 1,024 plus prompts): the figures the
    ragged table will be measured against."""
    rng = np.random.default_rng(seed)
    lens, _ = lengths(rng, items // 8)
    seqs = [torch.from_numpy(rng.integers(0, 32_000, int(n))) for n in lens]
    lst, pad = ListStore(), PaddedStore(len(seqs), int(lens.max()))
    lst.extend(seqs)
    pad.extend(seqs)
    raw = int(lens.sum()) * 8
    out: Dict[str, float] = {"raw_mib": raw / 2**20, "padded_store_x_raw": pad.nbytes() / raw}
    for name, fn in (("list_packed", lst.sample_packed), ("padded_unpad", pad.sample_packed),
                     ("list_pad_sequence", lst.sample_padded)):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            fn(rng.integers(0, len(seqs), batch))
            n += 1
        out[name] = n / (time.perf_counter() - t0)
    return out


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
    rates = baseline_rates(seconds=0.3 if args.quick else 1.0)
    print("\nbaselines for the packed-batch comparison (sample 64 of 4,096 items; batches/s, and the padded "
          "store's memory against the raw token bytes):")
    for k, v in rates.items():
        print(f"  {k}: {v:.3g}")


if __name__ == "__main__":
    main()
