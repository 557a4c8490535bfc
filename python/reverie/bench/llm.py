"""RL on language models (issue: "Replay for RL on language models"), one run:

- packed batches: sampling 64 trajectories from reverie's TrajectoryBuffer (packed, nested,
  padded, a token budget) against a Python list of tensors (index + ``torch.cat``, or
  ``pad_sequence``) and a verl-style padded store (index + unpad through the mask), with
  the memcpy floor of the same bytes; add rates in tokens/s; memory against the raw tokens;
- micro-batch balance: ``rv.micro_batches`` (Karmarkar-Karp on the cost a*L + L^2) against
  a verl-style split (Karmarkar-Karp on the token counts, as verl's
  ``get_seqlen_balanced_partitions`` balances them, written here from the method's
  description), on the same lengths: the imbalance max/mean of the micro-batch costs (1.0
  is even) over 50 draws (median and worst), and the time per split.

Lengths: prompts uniform in [64, 256], responses lognormal with median 300 capped at 1,024
(and median 800 capped at 2,048 for the packed comparison), G = 8 responses per prompt;
and a DAPO-like tail, 5% of responses up to 8,192.

    python -m reverie.bench.llm [--quick]
"""

from __future__ import annotations

import argparse
import heapq
import time
from typing import Any, Dict, List, Sequence, Tuple

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


FIELDS = {"input_ids": torch.int64, "old_logprobs": torch.float32, "advantages": torch.float32}


def trajectories(rng: np.random.Generator, n: int, median: float = 300.0, cap: int = 1024) -> Tuple[np.ndarray, List[Dict[str, torch.Tensor]]]:
    """(lengths, items) of n trajectories: prompt uniform in [64, 256] plus a lognormal
    response (median `median`, capped at `cap`); per token an id, a log-probability and an
    advantage (the per-token fields a GRPO loss reads)."""
    lens = (rng.integers(64, 257, n) + np.minimum(np.round(rng.lognormal(np.log(median), 0.6, n)), cap)).astype(np.int64)
    ids = torch.from_numpy(rng.integers(0, 32_000, int(lens.sum())))
    logp = torch.from_numpy(-rng.random(int(lens.sum()), dtype=np.float32))
    adv = torch.from_numpy(rng.standard_normal(int(lens.sum()), dtype=np.float32))
    cu = np.concatenate([[0], np.cumsum(lens)])
    items = [{"input_ids": ids[a:b], "old_logprobs": logp[a:b], "advantages": adv[a:b]}
             for a, b in zip(cu[:-1].tolist(), cu[1:].tolist())]
    return lens, items


def raw_bytes(lens: np.ndarray) -> int:
    return int(lens.sum()) * sum(torch.empty(0, dtype=d).element_size() for d in FIELDS.values())


class ListStore:
    """The baseline store most trainers keep: a Python list of items (a dict of per-token
    tensors each); a packed batch is built by indexing the list and concatenating each field
    (cu_seqlens from the lengths), a padded one with ``torch.nn.utils.rnn.pad_sequence`` per
    field plus an attention mask."""

    def __init__(self) -> None:
        self.items: List[Dict[str, torch.Tensor]] = []

    def extend(self, items: Sequence[Dict[str, torch.Tensor]]) -> None:
        self.items.extend(items)

    def sample_packed(self, idx: np.ndarray) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
        chosen = [self.items[i] for i in idx.tolist()]
        lens = torch.tensor([len(t["input_ids"]) for t in chosen], dtype=torch.int32)
        cu = torch.zeros(len(chosen) + 1, dtype=torch.int32)
        torch.cumsum(lens, 0, out=cu[1:])
        return {name: torch.cat([t[name] for t in chosen]) for name in FIELDS}, cu

    def sample_padded(self, idx: np.ndarray) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
        chosen = [self.items[i] for i in idx.tolist()]
        out = {name: torch.nn.utils.rnn.pad_sequence([t[name] for t in chosen], batch_first=True) for name in FIELDS}
        lens = torch.tensor([len(t["input_ids"]) for t in chosen])
        mask = torch.arange(out["input_ids"].shape[1])[None, :] < lens[:, None]
        return out, mask.long()


class PaddedStore:
    """A verl-style store: every field of every item padded to the longest length [N, T_max]
    with an attention mask; a packed batch is the sampled rows unpadded (each field's
    nonzero-mask positions gathered, cu_seqlens from the mask's row sums)."""

    def __init__(self, capacity: int, t_max: int) -> None:
        self.fields = {name: torch.zeros(capacity, t_max, dtype=d) for name, d in FIELDS.items()}
        self.mask = torch.zeros(capacity, t_max, dtype=torch.bool)
        self.size = 0

    def extend(self, items: Sequence[Dict[str, torch.Tensor]]) -> None:
        for t in items:
            n = len(t["input_ids"])
            for name in FIELDS:
                self.fields[name][self.size, :n] = t[name]
            self.mask[self.size, :n] = True
            self.size += 1

    def sample_packed(self, idx: np.ndarray) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
        i = torch.from_numpy(idx)
        mask = self.mask[i]
        lens = mask.sum(1, dtype=torch.int32)
        cu = torch.zeros(len(idx) + 1, dtype=torch.int32)
        torch.cumsum(lens, 0, out=cu[1:])
        return {name: col[i][mask] for name, col in self.fields.items()}, cu

    def nbytes(self) -> int:
        return sum(c.numel() * c.element_size() for c in self.fields.values()) + self.mask.numel()


def trajectory_buffer(items: Sequence[Dict[str, torch.Tensor]], lens: np.ndarray, seed: int = 0) -> Any:
    """A TrajectoryBuffer holding `items` (its arena sized to their raw bytes plus room for
    the largest item, the ring's worst-case skip at the end)."""
    import reverie as rv

    spec = {name: rv.Field(d, (None,)) for name, d in FIELDS.items()}
    per_token = raw_bytes(lens) // int(lens.sum())
    arena = raw_bytes(lens) + 3 * 8 * len(lens) + 2 * int(lens.max()) * per_token
    buf = rv.TrajectoryBuffer(len(items), spec, seed=seed, arena_bytes=arena)
    fill(buf, items)
    return buf


def fill(buf: Any, items: Sequence[Dict[str, torch.Tensor]]) -> None:
    """Extends `buf` with `items` in calls of 256, each field a list of per-item tensors."""
    for a in range(0, len(items), 256):
        chunk = items[a:a + 256]
        buf.extend(**{name: [t[name] for t in chunk] for name in FIELDS})


def _rate(fn: Any, seconds: float) -> float:
    fn()  # warm: first calls import and allocate
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds and n >= 3:
            return n / elapsed


def packed_comparison(items: int = 4096, batch: int = 64, seconds: float = 1.0, seed: int = 0,
                      median: float = 300.0, cap: int = 1024) -> Dict[str, float]:
    """Batches/s of a packed sample of `batch` trajectories (three per-token fields) from
    reverie's TrajectoryBuffer, the list store (index + cat) and the verl-style padded store
    (index + unpad through the mask), and of a padded sample (reverie's padded layout vs
    pad_sequence); add rates in tokens/s; memory against the raw token bytes. One run."""
    rng = np.random.default_rng(seed)
    lens, data = trajectories(rng, items, median, cap)
    raw = raw_bytes(lens)
    out: Dict[str, float] = {"mean_len": float(lens.mean()), "raw_mib": raw / 2**20}
    # Adds (tokens/s) in steady state: each store is filled once (its memory touched), then
    # the second fill of the same items is timed (the FIFO stores overwrite their oldest).
    buf = trajectory_buffer(data, lens, seed)
    t0 = time.perf_counter()
    fill(buf, data)
    out["add_reverie_tok_s"] = float(lens.sum()) / (time.perf_counter() - t0)
    lst, pad = ListStore(), PaddedStore(items, int(lens.max()))
    lst.extend(data)
    t0 = time.perf_counter()
    for a in range(0, items, 256):
        lst.extend(data[a:a + 256])
    out["add_list_tok_s"] = float(lens.sum()) / (time.perf_counter() - t0)
    lst.items = lst.items[items:]
    pad.extend(data)
    pad.size = 0
    t0 = time.perf_counter()
    pad.extend(data)
    out["add_padded_tok_s"] = float(lens.sum()) / (time.perf_counter() - t0)
    stats = buf.stats()
    out["reverie_x_raw"] = (stats["arena_held_bytes"] + 8 * 4 * items) / raw  # blocks + stamps and handles
    out["padded_store_x_raw"] = pad.nbytes() / raw
    draws = [rng.integers(0, items, batch) for _ in range(64)]
    k = iter(range(1 << 62))

    def pick() -> np.ndarray:
        return draws[next(k) % len(draws)]

    # The floor: the same bytes copied by one memcpy each (hot source, a reused destination):
    # a packed batch cannot be gathered faster than its bytes are copied.
    mean_batch_tokens = int(batch * lens.mean())
    src = {name: torch.zeros(mean_batch_tokens, dtype=d) for name, d in FIELDS.items()}
    dst = {name: torch.empty_like(t) for name, t in src.items()}
    out["memcpy_floor"] = _rate(lambda: [dst[k].copy_(src[k]) for k in FIELDS], seconds)
    out["reverie_packed"] = _rate(lambda: buf.sample(batch), seconds)
    out["reverie_nested"] = _rate(lambda: buf.sample(batch, layout="nested"), seconds)
    out["reverie_padded"] = _rate(lambda: buf.sample(batch, layout="padded"), seconds)
    budget = int(batch * lens.mean())
    out["reverie_budget"] = _rate(lambda: buf.sample(max_tokens=budget), seconds)
    out["list_packed"] = _rate(lambda: lst.sample_packed(pick()), seconds)
    out["padded_unpad"] = _rate(lambda: pad.sample_packed(pick()), seconds)
    out["list_pad_sequence"] = _rate(lambda: lst.sample_padded(pick()), seconds)
    return out


def baseline_rates(items: int = 4096, batch: int = 64, seconds: float = 1.0, seed: int = 0) -> Dict[str, float]:
    """Packed-batch rates (batches/s) of the two baselines alone, and the padded store's
    memory against the raw token bytes."""
    rng = np.random.default_rng(seed)
    lens, data = trajectories(rng, items)
    lst, pad = ListStore(), PaddedStore(items, int(lens.max()))
    lst.extend(data)
    pad.extend(data)
    out: Dict[str, float] = {"raw_mib": raw_bytes(lens) / 2**20, "padded_store_x_raw": pad.nbytes() / raw_bytes(lens)}
    for name, fn in (("list_packed", lst.sample_packed), ("padded_unpad", pad.sample_packed),
                     ("list_pad_sequence", lst.sample_padded)):
        out[name] = _rate(lambda fn=fn: fn(rng.integers(0, items, batch)), seconds)
    return out


def packed_table(results: Dict[str, Dict[str, float]]) -> str:
    rows = ["| lengths (mean) | packed: reverie / list+cat / verl-style unpad | vs list | vs verl-style | "
            "reverie / memcpy floor | nested | budget | padded: reverie / pad_sequence | add tokens/s: reverie / list / "
            "padded store | memory x raw: reverie / padded store |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        rows.append(
            f"| {name} ({r['mean_len']:.0f}) | {r['reverie_packed']:.0f} / {r['list_packed']:.0f} / {r['padded_unpad']:.0f} "
            f"batches/s | {r['reverie_packed'] / r['list_packed']:.1f}x | {r['reverie_packed'] / r['padded_unpad']:.1f}x | "
            f"{r['memcpy_floor'] / r['reverie_packed']:.2f}x the floor's time | "
            f"{r['reverie_nested']:.0f}/s | {r['reverie_budget']:.0f}/s | {r['reverie_padded']:.0f} / {r['list_pad_sequence']:.0f} "
            f"({r['reverie_padded'] / r['list_pad_sequence']:.1f}x) | {r['add_reverie_tok_s'] / 1e6:.0f}M / "
            f"{r['add_list_tok_s'] / 1e6:.0f}M / {r['add_padded_tok_s'] / 1e6:.0f}M | "
            f"{r['reverie_x_raw']:.3f} / {r['padded_store_x_raw']:.2f} |")
    return "\n".join(rows)


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
    seconds = 0.3 if args.quick else 1.0
    items = 1024 if args.quick else 4096
    results = {"prompt 64-256 + response median 300, cap 1,024": packed_comparison(items, seconds=seconds),
               "prompt 64-256 + response median 800, cap 2,048": packed_comparison(items, seconds=seconds,
                                                                                  median=800.0, cap=2048)}
    print(f"\nsampling 64 of {items:,} trajectories (input_ids int64, old_logprobs and advantages float32 per token):")
    print(packed_table(results))


if __name__ == "__main__":
    main()
