"""python -m reverie.bench.llm --quick: runs, reports each setting for both splits, and the
cost-balanced split is the better one where lengths spread (the DAPO-like tail)."""

from __future__ import annotations

from reverie.bench import llm


def test_quick_run_reports_both_splits():
    results = llm.run(quick=True)
    assert len(results) == 3
    for r in results.values():
        assert 1.0 <= r["reverie_median"] <= r["reverie_worst"]
        assert 1.0 <= r["verl_median"] <= r["verl_worst"]
    tail = next(r for name, r in results.items() if "tail" in name)
    assert tail["reverie_median"] < tail["verl_median"]
    text = llm.table(results)
    assert text.count("\n") == 4 and "verl-style" in text


def test_token_kk_is_a_partition():
    parts = llm.token_kk([5.0, 3.0, 8.0, 1.0, 7.0], 2)
    assert sorted(i for p in parts for i in p) == [0, 1, 2, 3, 4]
    sums = sorted(sum([5.0, 3.0, 8.0, 1.0, 7.0][i] for i in p) for p in parts)
    assert sums == [12.0, 12.0]


def test_baselines_pack_the_same_tokens():
    import numpy as np
    import torch

    seqs = [torch.arange(n) + 100 * n for n in (3, 1, 5)]
    lst, pad = llm.ListStore(), llm.PaddedStore(3, 5)
    lst.extend(seqs)
    pad.extend(seqs)
    idx = np.array([2, 0, 2])
    for store in (lst, pad):
        values, cu = store.sample_packed(idx)
        assert cu.tolist() == [0, 5, 8, 13]
        assert torch.equal(values, torch.cat([seqs[2], seqs[0], seqs[2]]))
    assert lst.sample_padded(idx).shape == (3, 5)
    rates = llm.baseline_rates(items=256, batch=8, seconds=0.05)
    assert rates["padded_store_x_raw"] > 1.0 and rates["list_packed"] > 0
