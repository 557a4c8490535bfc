"""examples/annealed_mixture.py: every batch's synthetic count is exactly the rounding the
schedule asks for, and a mixture of the two sources beats either alone (a short run)."""

from __future__ import annotations

from example_loader import load_example


def test_exact_counts_is_largest_remainder():
    ex = load_example("annealed_mixture")
    assert ex.exact_counts([0.25, 0.75], 256) == [64, 192]
    assert ex.exact_counts([0.5, 0.5], 255) == [128, 127]  # a tie: the earlier partition
    assert ex.exact_counts([1 / 3, 1 / 3, 1 / 3], 256) == [86, 85, 85]


def test_the_annealed_mixture_follows_its_schedule_and_beats_each_source_alone():
    ex = load_example("annealed_mixture")
    steps = 1500
    s = ex.schedules(steps)
    runs = {name: ex.train(s[name], steps, seed=0) for name in ("real only", "synthetic only", "annealed 0.9 -> 0.5")}
    annealed = runs["annealed 0.9 -> 0.5"]
    assert annealed["share"] == annealed["wanted"]  # every batch, exactly
    assert annealed["share"][0] == 230 / 256 and annealed["share"][-1] == 128 / 256
    assert set(runs["real only"]["share"]) == {0.0} and set(runs["synthetic only"]["share"]) == {1.0}
    best_single = min(runs["real only"]["test_mse"][-1], runs["synthetic only"]["test_mse"][-1])
    assert annealed["test_mse"][-1] < 0.8 * best_single, {k: r["test_mse"][-1] for k, r in runs.items()}
