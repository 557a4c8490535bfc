"""Statistical tests of the samplers, with fixed seeds (so deterministic, never flaky).

Criterion: Pearson's chi-square goodness of fit (scipy.stats.chisquare) of the observed draw
counts against the expected ones must give p > 1e-4. Bins expected to get fewer than 5 draws
are pooled into one. With a fixed seed the outcome is the same on every run; a correct sampler
fails such a test with probability 1e-4 per seed, a biased one with near certainty at these
sample sizes (~200k draws).

Prioritized batches are stratified (draw i lies in the i-th of B equal segments of the total),
which makes a batch's counts *less* dispersed than independent draws: the chi-square test is
then conservative (still rejects biases, never spuriously fails). Independent draws are
checked with batch size 1, where stratification does nothing.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from keys import fifo_insertion, fifo_key, slot_of
from reference import ReferenceBuffer
from scipy import stats

import reverie as rv

P_MIN = 1e-4


def chi_square_p(counts: np.ndarray, probs: np.ndarray) -> float:
    """p-value of counts ~ Multinomial(sum, probs), pooling bins with expected < 5."""
    counts = np.asarray(counts, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    assert counts.shape == probs.shape
    assert abs(probs.sum() - 1) < 1e-9
    assert counts[probs == 0].sum() == 0, "draws of items with probability 0"
    expected = probs * counts.sum()
    big = expected >= 5
    obs = list(counts[big])
    exp = list(expected[big])
    if (~big & (probs > 0)).any():
        obs.append(counts[~big].sum())
        exp.append(expected[~big].sum())
    exp = np.asarray(exp)
    exp *= counts.sum() / exp.sum()
    assert len(obs) >= 2, "degenerate layout: fewer than two bins"
    return float(stats.chisquare(obs, exp).pvalue)


def prioritized(priorities, alpha: float, beta: float = 0.4, eps: float = 0.0, seed: int = 1234):
    """A full prioritized buffer whose slot i holds key i and priority priorities[i], and its
    reference model."""
    n = len(priorities)
    buf = rv.ReplayBuffer(n, spec={"k": rv.Field("int64")},
                          sampler=rv.Prioritized(alpha=alpha, beta=beta, eps=eps), seed=seed)
    ref = ReferenceBuffer(n, prioritized=True, alpha=alpha, beta=beta, eps=eps)
    buf.extend(k=np.arange(n))
    ref.extend({"k": np.arange(n)})
    buf.update_priorities(np.arange(n), np.asarray(priorities, dtype=np.float64))
    ref.update_priorities(range(n), priorities)
    return buf, ref


def count_slots(buf, draws: int, batch: int) -> np.ndarray:
    counts = np.zeros(buf.capacity, dtype=np.int64)
    for _ in range(draws // batch):
        keys = buf.sample(batch).indices.numpy()
        counts += np.bincount(slot_of(keys, buf.capacity), minlength=buf.capacity)
    return counts


RNG = np.random.default_rng(2024)
LAYOUTS = {
    # name: (priorities, alpha)
    "random_uniform_a0.6": (RNG.random(64).tolist(), 0.6),
    "six_decades_a1": (RNG.permutation(np.logspace(-4, 2, 64)).tolist(), 1.0),
    "six_decades_a0.6": (RNG.permutation(np.logspace(-4, 2, 64)).tolist(), 0.6),
    "six_decades_a0": (RNG.permutation(np.logspace(-4, 2, 64)).tolist(), 0.0),
    "heavy_tail_a1": ((RNG.pareto(1.0, 50) + 1e-3).tolist(), 1.0),
    "few_large_many_small_a1": ([1e3] * 3 + [1e-2] * 200, 1.0),
    "with_zeros_a1": ([0.0, 1.0, 0.0, 2.0, 0.0, 0.5, 3.0, 0.0] * 4, 1.0),
    "two_items_a0.6": ([1.0, 4.0], 0.6),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("batch", [1, 500])
def test_prioritized_frequencies(layout, batch):
    priorities, alpha = LAYOUTS[layout]
    buf, ref = prioritized(priorities, alpha)
    draws = 100_000 if batch == 1 else 200_000
    counts = count_slots(buf, draws, batch)
    probs = ref.probabilities()
    expected_probs = np.array([(p + 0.0) ** alpha for p in priorities])
    expected_probs /= expected_probs.sum()
    np.testing.assert_allclose(probs, expected_probs, rtol=1e-12)  # the model is P = q / sum q
    p_value = chi_square_p(counts, probs)
    assert p_value > P_MIN, f"{layout}, batch {batch}: p = {p_value}; counts {counts} vs {probs * draws}"


def test_alpha_zero_is_uniform_even_for_zero_priorities():
    buf, _ = prioritized([0.0, 5.0, 1e-9, 100.0, 0.0, 2.0], alpha=0.0)
    counts = count_slots(buf, 60_000, 1)
    assert chi_square_p(counts, np.full(6, 1 / 6)) > P_MIN


def test_frequencies_after_wrap_and_updates():
    """Priorities set through sampled keys on a wrapped buffer, with stale updates mixed in."""
    cap = 40
    buf = rv.ReplayBuffer(cap, spec={"k": rv.Field("int64")},
                          sampler=rv.Prioritized(alpha=0.7, beta=0.5, eps=1e-3), seed=77)
    ref = ReferenceBuffer(cap, prioritized=True, alpha=0.7, beta=0.5, eps=1e-3)
    rng = np.random.default_rng(5)
    for _ in range(30):
        n = int(rng.integers(1, 12))
        batch = np.arange(ref.written, ref.written + n)
        buf.extend(k=batch)
        ref.extend({"k": batch})
        keys = buf.sample(16).indices.numpy()
        old = np.array([ref.key_of(max(0, ref.written - cap - 3))])  # possibly stale
        all_keys = np.concatenate([keys, old])
        pr = rng.exponential(2.0, len(all_keys))
        assert buf.update_priorities(all_keys, pr) == ref.update_priorities(all_keys.tolist(), pr.tolist())
    counts = count_slots(buf, 200_000, 1000)
    assert chi_square_p(counts, ref.probabilities()) > P_MIN
    counts = count_slots(buf, 60_000, 1)
    assert chi_square_p(counts, ref.probabilities()) > P_MIN


# ---- zero and tiny priorities ----------------------------------------------------------------


def test_zero_priority_never_sampled():
    pr = [0.0 if i % 3 else float(i + 1) for i in range(30)]
    buf, ref = prioritized(pr, alpha=1.0, eps=0.0)
    counts = count_slots(buf, 200_000, 1000) + count_slots(buf, 20_000, 1)
    zero = np.array(pr) == 0
    assert counts[zero].sum() == 0
    assert (counts[~zero] > 0).all()
    assert (buf.priorities().numpy()[zero] == 0).all()


def test_single_zero_among_many():
    """One zero-priority item between two huge ones at the edges of segments."""
    buf, _ = prioritized([1e6, 0.0, 1e6], alpha=1.0, eps=0.0)
    for batch in (1, 2, 3, 4, 7, 1000):
        for _ in range(50):
            assert 1 not in buf.sample(batch).indices.tolist()


def test_tiny_priority_only_positive_is_always_drawn():
    """1e-300 is far below one fixed-point unit; a positive priority rounds up to one unit and
    so stays samplable."""
    for tiny in (1e-12, 1e-100, 1e-300, 5e-324):
        pr = [0.0] * 9 + [tiny]
        buf, _ = prioritized(pr, alpha=1.0, eps=0.0)
        assert buf.priorities()[9].item() > 0
        assert buf.sample(64).indices.tolist() == [9] * 64


def test_tiny_priority_is_representable_next_to_huge_ones():
    pr = [1e6] * 7 + [1e-12]
    buf, _ = prioritized(pr, alpha=1.0, eps=0.0)
    stored = buf.priorities().numpy()
    assert stored[7] > 0, "a positive priority was stored as 0"
    assert stored[7] <= 1e6 * 2.0**-40  # about one unit: negligible, but positive
    np.testing.assert_allclose(stored[:7], 1e6, rtol=1e-12)


def test_tiny_priorities_with_observable_probability():
    """Two tiny priorities (1e-12 and 1e-10, the rest 0): the smaller is drawn ~1% of the time,
    in the right proportion, although both are far below the initial priority 1.0."""
    pr = [0.0] * 6 + [1e-12, 1e-10]
    buf, ref = prioritized(pr, alpha=1.0, eps=0.0)
    stored = buf.priorities().numpy()
    np.testing.assert_allclose(stored[6:], [1e-12, 1e-10], rtol=1e-4)
    counts = count_slots(buf, 200_000, 1)[6:]
    assert counts[0] > 1000  # expected 1980
    assert chi_square_p(counts, np.array([1, 100]) / 101) > P_MIN


# ---- importance weights --------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["six_decades_a1", "six_decades_a0.6", "heavy_tail_a1", "with_zeros_a1"])
@pytest.mark.parametrize("beta", [0.0, 0.4, 1.0])
def test_importance_weights_match_per_definition(layout, beta):
    priorities, alpha = LAYOUTS[layout]
    buf, _ = prioritized(priorities, alpha, beta=beta)
    n = len(priorities)
    q = np.array(priorities, dtype=np.float64) ** alpha
    P = q / q.sum()
    positive = P > 0
    w_max = ((n * P[positive]) ** -beta).max()
    for _ in range(20):
        b = buf.sample(256)
        slots = b.indices.numpy() % n
        want = (n * P[slots]) ** -beta / w_max
        np.testing.assert_allclose(b.weights.numpy(), want, rtol=1e-6)
        assert b.weights.dtype == torch.float32
    # beta set at run time
    buf.sampler.beta = 0.7
    b = buf.sample(256)
    slots = b.indices.numpy() % n
    want = (n * P[slots]) ** -0.7 / ((n * P[positive]) ** -0.7).max()
    np.testing.assert_allclose(b.weights.numpy(), want, rtol=1e-6)


def test_weights_use_the_number_of_stored_items_not_capacity():
    """A partly filled buffer: N = len(buf). (N cancels in the normalised weight, so compare
    against the un-normalised form divided by its max over stored items.)"""
    buf = rv.ReplayBuffer(100, spec={"k": rv.Field("int64")},
                          sampler=rv.Prioritized(alpha=1.0, beta=1.0, eps=0.0), seed=0)
    buf.extend(k=np.arange(4))
    buf.update_priorities([0, 1, 2, 3], [1.0, 2.0, 4.0, 8.0])
    b = buf.sample(64)
    P = np.array([1, 2, 4, 8]) / 15
    want = (4 * P[b.indices.numpy()]) ** -1.0 / ((4 * P) ** -1.0).max()
    np.testing.assert_allclose(b.weights.numpy(), want, rtol=1e-6)
    assert b.weights[b.indices == 0].tolist() == [1.0] * int((b.indices == 0).sum())


# ---- uniform -------------------------------------------------------------------------------------


@pytest.mark.parametrize("written,capacity", [(37, 37), (50, 37), (37, 100), (1000, 3)])
def test_uniform_with_replacement_frequencies(written, capacity):
    buf = rv.ReplayBuffer(capacity, seed=99)
    buf.extend(k=np.arange(written))
    n = len(buf)
    counts = np.zeros(capacity, dtype=np.int64)
    for _ in range(200):
        keys = buf.sample(1000).indices.numpy()
        ids = fifo_insertion(keys, capacity)
        assert ids.min() >= written - n and ids.max() < written
        counts += np.bincount(slot_of(keys, capacity), minlength=capacity)
    probs = np.zeros(capacity)
    probs[:n] = 1 / n
    assert chi_square_p(counts, probs) > P_MIN
    # positions within a batch are identically distributed too: column 0 of many batches
    firsts = slot_of(np.array([buf.sample(4).indices[0].item() for _ in range(20_000)]), capacity)
    assert chi_square_p(np.bincount(firsts, minlength=capacity), probs) > P_MIN


@pytest.mark.parametrize("n,batch", [(5, 2), (6, 3), (7, 6), (8, 2)])
def test_uniform_without_replacement_subsets(n, batch):
    buf = rv.ReplayBuffer(n, sampler=rv.Uniform(replacement=False), seed=3)
    buf.extend(k=np.arange(2 * n + 1))  # wrapped: keys n+1 .. 2n stored
    subsets = {frozenset(fifo_key(k, n) for k in c): i
               for i, c in enumerate(itertools.combinations(range(n + 1, 2 * n + 1), batch))}
    counts = np.zeros(len(subsets), dtype=np.int64)
    inclusion = np.zeros(n, dtype=np.int64)
    draws = 20_000
    for _ in range(draws):
        keys = buf.sample(batch).indices.tolist()
        assert len(set(keys)) == batch
        counts[subsets[frozenset(keys)]] += 1
        for k in keys:
            inclusion[slot_of(k, n)] += 1
    assert chi_square_p(counts, np.full(len(subsets), 1 / len(subsets))) > P_MIN
    # every item is in a batch with probability batch / n
    np.testing.assert_allclose(inclusion / draws, batch / n, atol=5 * np.sqrt(0.25 / draws))
