"""examples/self_imitation.py learns: on gymnasium's CartPole-v1, the actor-critic with
self-imitation from a top-k buffer (rv.KeepTopK by return-to-go) ends higher than the same
actor-critic without it, on each of two seeds (200 episodes each; the full example runs 300
episodes over 3 seeds)."""

from __future__ import annotations

import numpy as np
from example_loader import load_example


def test_returns_to_go():
    ex = load_example("self_imitation")
    got = ex.returns_to_go([1.0, 1.0, 1.0])
    assert np.allclose(got, [1 + ex.GAMMA + ex.GAMMA ** 2, 1 + ex.GAMMA, 1.0])


def test_self_imitation_from_the_top_k_buffer_beats_plain_actor_critic():
    ex = load_example("self_imitation")
    plain, sil = [], []
    for seed in (0, 1):
        plain.append(float(np.mean(ex.run(False, 200, seed)[-50:])))
        sil.append(float(np.mean(ex.run(True, 200, seed)[-50:])))
    assert all(s > p for s, p in zip(sil, plain)), (sil, plain)
    assert np.mean(sil) > 1.2 * np.mean(plain), (sil, plain)
