"""DQN with prioritized replay on CartPole, with reverie as the replay buffer.

The CartPole dynamics are written out below (the classic Barto-Sutton-Anderson equations,
as in gymnasium's CartPole-v1) so the example needs nothing beyond torch and reverie.

    python examples/dqn_per.py --steps 20000
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch
from torch import nn

import reverie as rv


class CartPole:
    """CartPole-v1: push left/right, +1 per step upright, ends at 12 degrees, 2.4 m or 500 steps."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.state = np.zeros(4)
        self.t = 0

    def reset(self) -> np.ndarray:
        self.state = self.rng.uniform(-0.05, 0.05, 4)
        self.t = 0
        return self.state.astype(np.float32)

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool]:
        x, x_dot, theta, theta_dot = self.state
        force = 10.0 if action == 1 else -10.0
        cos, sin = math.cos(theta), math.sin(theta)
        total_mass, pole_mass_length, length = 1.1, 0.05, 0.5
        temp = (force + pole_mass_length * theta_dot**2 * sin) / total_mass
        theta_acc = (9.8 * sin - cos * temp) / (length * (4.0 / 3.0 - 0.1 * cos**2 / total_mass))
        x_acc = temp - pole_mass_length * theta_acc * cos / total_mass
        tau = 0.02
        self.state = np.array([x + tau * x_dot, x_dot + tau * x_acc,
                               theta + tau * theta_dot, theta_dot + tau * theta_acc])
        self.t += 1
        terminated = abs(self.state[0]) > 2.4 or abs(self.state[2]) > 12 * math.pi / 180
        truncated = self.t >= 500
        return self.state.astype(np.float32), 1.0, bool(terminated), truncated


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    env = CartPole(args.seed)
    q = nn.Sequential(nn.Linear(4, 128), nn.ReLU(), nn.Linear(128, 2))
    target = nn.Sequential(nn.Linear(4, 128), nn.ReLU(), nn.Linear(128, 2))
    target.load_state_dict(q.state_dict())
    opt = torch.optim.Adam(q.parameters(), lr=1e-3)

    buf = rv.ReplayBuffer(50_000, sampler=rv.Prioritized(alpha=0.6, beta=0.4), seed=args.seed)
    obs, episode_return, returns = env.reset(), 0.0, []
    for step in range(args.steps):
        eps = max(0.05, 1.0 - step / (0.3 * args.steps))
        if np.random.rand() < eps:
            action = int(np.random.randint(2))
        else:
            with torch.no_grad():
                action = int(q(torch.from_numpy(obs)).argmax())
        next_obs, reward, terminated, truncated = env.step(action)
        buf.add(obs=obs, action=action, reward=reward, next_obs=next_obs, done=terminated)
        episode_return += reward
        obs = next_obs
        if terminated or truncated:
            returns.append(episode_return)
            obs, episode_return = env.reset(), 0.0

        if len(buf) >= 1000:
            buf.sampler.beta = 0.4 + 0.6 * step / args.steps  # anneal beta to 1
            batch = buf.sample(128)
            with torch.no_grad():
                best = q(batch.next_obs).argmax(1, keepdim=True)  # double DQN
                bootstrap = target(batch.next_obs).gather(1, best).squeeze(1)
                y = batch.reward + 0.99 * bootstrap * (~batch.done)
            pred = q(batch.obs).gather(1, batch.action.unsqueeze(1)).squeeze(1)
            td = y - pred
            loss = (batch.weights * nn.functional.smooth_l1_loss(pred, y, reduction="none")).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            buf.update_priorities(batch.indices, td.detach().abs())
        if step % 500 == 0:
            target.load_state_dict(q.state_dict())
        if step % 5000 == 0 and returns:
            print(f"step {step:6d}  mean return (last 20 episodes) {np.mean(returns[-20:]):6.1f}")
    print(f"final mean return (last 20 episodes): {np.mean(returns[-20:]):.1f}")


if __name__ == "__main__":
    main()
