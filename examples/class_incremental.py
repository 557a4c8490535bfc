"""Class-incremental learning on scikit-learn's digits: 5 tasks of 2 classes, learned one
after the other by a small MLP, with naive fine-tuning against experience replay from a
class-balanced reservoir (``rv.ClassBalanced``, CBRS) of 200 items. After each task the
accuracy on every class seen so far is printed and plotted (``class_incremental.png``).

    pip install ".[examples]" && python examples/class_incremental.py

Fine-tuning forgets the old classes (its accuracy falls towards 1 / tasks seen); replay
keeps them. No downloads: the digits ship with scikit-learn.
"""

from __future__ import annotations

import argparse
from typing import Dict, List

import numpy as np
import torch
from torch import nn

import reverie as rv

try:
    from tqdm import tqdm
except ImportError:  # tqdm is a dependency of reverie; kept optional here anyway
    def tqdm(x, **_):  # type: ignore[no-redef]
        return x


def load(seed: int):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    return train_test_split(x, y.astype(np.int64), test_size=0.3, random_state=seed, stratify=y)


def accuracy(net: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((net(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def train(replay: bool, seed: int, epochs: int, memory_size: int) -> List[float]:
    torch.manual_seed(seed)
    xtr, xte, ytr, yte = load(seed)
    net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    memory = rv.ReplayBuffer(memory_size, {"x": ("float32", (64,)), "y": ("int64", ())},
                             writer=rv.ClassBalanced(label="y"), seed=seed)
    rng = np.random.default_rng(seed)
    accs: List[float] = []
    tasks = [(2 * t, 2 * t + 1) for t in range(5)]
    for t, classes in enumerate(tqdm(tasks, desc="replay" if replay else "fine-tuning")):
        idx = np.flatnonzero(np.isin(ytr, classes))
        for _ in range(epochs):
            for batch in np.array_split(rng.permutation(idx), max(1, len(idx) // 32)):
                x, y = torch.from_numpy(xtr[batch]), torch.from_numpy(ytr[batch])
                if replay and len(memory) > 0:
                    old = memory.sample(32)
                    x, y = torch.cat([x, old.x]), torch.cat([y, old.y])
                opt.zero_grad()
                nn.functional.cross_entropy(net(x), y).backward()
                opt.step()
        memory.extend(x=xtr[idx], y=ytr[idx])  # the task's items offered to the memory
        seen = np.isin(yte, [c for task in tasks[:t + 1] for c in task])
        accs.append(accuracy(net, xte[seen], yte[seen]))
    if replay:
        print(f"  memory per class after the last task: {dict(sorted(memory.writer.counts().items()))}")
    return accs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--memory", type=int, default=200)
    p.add_argument("--plot", default="class_incremental.png")
    args = p.parse_args()
    results: Dict[str, List[float]] = {
        "fine-tuning": train(False, args.seed, args.epochs, args.memory),
        f"replay (ClassBalanced, {args.memory} items)": train(True, args.seed, args.epochs, args.memory),
    }
    print("accuracy on every class seen so far, after each task:")
    for name, accs in results.items():
        print(f"  {name:34s} " + "  ".join(f"{a:.2f}" for a in accs))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for name, accs in results.items():
        ax.plot(range(1, 6), accs, marker="o", label=name)
    ax.set_xlabel("tasks learned (2 classes each)")
    ax.set_ylabel("accuracy on classes seen")
    ax.set_ylim(0, 1.05)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.plot, dpi=120)
    print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
