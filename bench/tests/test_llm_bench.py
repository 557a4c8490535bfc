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

    rng = np.random.default_rng(0)
    lens, items = llm.trajectories(rng, 12)
    lst, pad = llm.ListStore(), llm.PaddedStore(12, int(lens.max()))
    lst.extend(items)
    pad.extend(items)
    buf = llm.trajectory_buffer(items, lens)
    idx = np.array([2, 0, 2, 11])
    want = {name: torch.cat([items[i][name] for i in idx]) for name in llm.FIELDS}
    for store in (lst, pad):
        values, cu = store.sample_packed(idx)
        assert cu.tolist() == [0, *np.cumsum(lens[idx]).tolist()]
        for name in llm.FIELDS:
            assert torch.equal(values[name], want[name])
    got = buf.get(buf.keys()[torch.from_numpy(idx)])
    for name in llm.FIELDS:
        assert torch.equal(got[name], want[name])
    padded, mask = lst.sample_padded(idx)
    assert padded["input_ids"].shape == (4, int(lens[idx].max())) and int(mask.sum()) == int(lens[idx].sum())
    rates = llm.baseline_rates(items=256, batch=8, seconds=0.05)
    assert rates["padded_store_x_raw"] > 1.0 and rates["list_packed"] > 0


def test_packed_comparison_reports_every_figure():
    r = llm.packed_comparison(items=256, batch=16, seconds=0.05)
    for key in ("reverie_packed", "list_packed", "padded_unpad", "reverie_padded", "list_pad_sequence",
                "reverie_nested", "reverie_budget", "memcpy_floor", "add_reverie_tok_s"):
        assert r[key] > 0, key
    assert 1.0 <= r["reverie_x_raw"] < 1.1 < r["padded_store_x_raw"]
    assert "memcpy floor" in llm.packed_table({"x": r})
