"""Self-imitation learning (Oh et al., ICML 2018) on gymnasium's CartPole-v1, with the
good past kept by a top-k buffer: ``rv.ReplayBuffer(writer=rv.KeepTopK(score="ret"))``
holds the 4,000 transitions with the highest discounted return-to-go ever seen, so the
agent's best episodes stay however long ago they happened.

An actor-critic (advantage = return - V(s), one update per episode) is trained with and
without the self-imitation term: for transitions drawn from the top-k buffer, imitate the
action where the stored return beats the current value, -log pi(a|s) * max(R - V(s), 0),
and regress V up towards R. Prints the mean return of the last 50 episodes for each and
plots the learning curves (``self_imitation.png``).

    pip install ".[examples]" && python examples/self_imitation.py
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

GAMMA = 0.99


class ActorCritic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 64), nn.Tanh())
        self.pi = nn.Linear(64, 2)
        self.v = nn.Linear(64, 1)

    def forward(self, obs: torch.Tensor):
        h = self.body(obs)
        return torch.distributions.Categorical(logits=self.pi(h)), self.v(h).squeeze(-1)


def returns_to_go(rewards: List[float]) -> np.ndarray:
    out = np.zeros(len(rewards), np.float32)
    g = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        g = rewards[t] + GAMMA * g
        out[t] = g
    return out


def run(self_imitation: bool, episodes: int, seed: int, capacity: int = 4000,
        sil_batch: int = 256, sil_updates: int = 4) -> List[float]:
    import gymnasium as gym

    env = gym.make("CartPole-v1")
    torch.manual_seed(seed)
    net = ActorCritic()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    best = rv.ReplayBuffer(capacity, {"obs": ("float32", (4,)), "act": ("int64", ()), "ret": ("float32", ())},
                           writer=rv.KeepTopK(score="ret"), seed=seed)
    curve: List[float] = []
    for ep in tqdm(range(episodes), desc="self-imitation" if self_imitation else "actor-critic", leave=False):
        obs, _ = env.reset(seed=seed * 100_000 + ep)
        states, actions, rewards = [], [], []
        done = False
        while not done:
            with torch.no_grad():
                dist, _ = net(torch.as_tensor(obs, dtype=torch.float32))
            a = int(dist.sample())
            states.append(obs)
            actions.append(a)
            obs, r, terminated, truncated, _ = env.step(a)
            rewards.append(float(r))
            done = terminated or truncated
        curve.append(sum(rewards))
        s = torch.as_tensor(np.asarray(states), dtype=torch.float32)
        act = torch.as_tensor(actions)
        ret = torch.as_tensor(returns_to_go(rewards))
        # The on-policy actor-critic update (advantage = R - V(s)).
        dist, v = net(s)
        adv = (ret - v).detach()
        loss = -(dist.log_prob(act) * adv).mean() + 0.5 * ((ret - v) ** 2).mean() - 0.01 * dist.entropy().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if not self_imitation:
            continue
        best.extend(obs=s, act=act, ret=ret)  # the top-k rule keeps the highest returns
        for _ in range(sil_updates):
            b = best.sample(min(sil_batch, len(best)))
            dist, v = net(b["obs"])
            gap = torch.clamp(b["ret"] - v, min=0.0)  # only where the past did better
            sil = -(dist.log_prob(b["act"]) * gap.detach()).mean() + 0.5 * (gap ** 2).mean()
            opt.zero_grad()
            (0.1 * sil).backward()
            opt.step()
    env.close()
    return curve


def plot(curves: Dict[str, List[List[float]]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, runs in curves.items():
        arr = np.asarray(runs)
        k = 20
        smooth = np.stack([np.convolve(r, np.ones(k) / k, mode="valid") for r in arr])
        x = np.arange(k, arr.shape[1] + 1)
        ax.plot(x, smooth.mean(0), label=f"{name} (last 50: {arr[:, -50:].mean():.0f})")
        ax.fill_between(x, smooth.min(0), smooth.max(0), alpha=0.2)
    ax.set_xlabel("episode")
    ax.set_ylabel("return (20-episode mean; band: min/max over seeds)")
    ax.set_title("CartPole-v1: self-imitation from a top-k buffer (rv.KeepTopK)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=300)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--plot", default="self_imitation.png")
    args = ap.parse_args()
    curves: Dict[str, List[List[float]]] = {"actor-critic": [], "actor-critic + self-imitation": []}
    for seed in range(args.seeds):
        curves["actor-critic"].append(run(False, args.episodes, seed))
        curves["actor-critic + self-imitation"].append(run(True, args.episodes, seed))
    for name, runs in curves.items():
        last = [float(np.mean(r[-50:])) for r in runs]
        print(f"{name:>30}: mean return of the last 50 episodes {np.mean(last):.1f} "
              f"(per seed: {', '.join(f'{x:.0f}' for x in last)})")
    plot(curves, args.plot)
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
