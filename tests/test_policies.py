"""The replay policies of the table issue: writers (FIFO, reservoir, keep-top-k), admission
(threshold, a caller's predicate), the max-times-sampled remover and item metadata.

Unit tests against the plain-Python model of tests/policy_reference.py, statistical tests
(fixed seeds, stated tolerances), error paths that must change nothing, and threads.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from policy_reference import PolicyModel, reservoir_replaces
from reference import assert_tensor_equal
from scipy import stats

import reverie as rv

P_MIN = 1e-3  # statistical tests: reject only below this p-value (fixed seeds: deterministic)


def rows(first: int, n: int, score=None) -> dict:
    i = np.arange(first, first + n)
    s = (i * 0.37 % 1.0).astype(np.float32) if score is None else np.asarray(score, np.float32)
    return {"id": i.astype(np.int64), "score": s, "obs": np.stack([i, -i], 1).astype(np.float32)}


def as_rows(batch: dict) -> list:
    n = len(batch["id"])
    return [{k: v[j] for k, v in batch.items()} for j in range(n)]


def held_ids(buf) -> list:
    return sorted(buf.get(buf._table.stored_keys())["id"].tolist()) if len(buf) else []


def model_ids(model: PolicyModel) -> list:
    return sorted(int(it.row["id"]) for it in model.stored())


# ---- reservoir ----------------------------------------------------------------------------


def test_reservoir_matches_the_model_offer_by_offer():
    """Every decision (keep, which slot) equals the model's Algorithm R with the documented
    generator; keys carry the slots' generations."""
    cap, seed = 50, 1234
    buf = rv.ReplayBuffer(cap, writer=rv.Reservoir(), seed=seed)
    model = PolicyModel(cap, seed, writer="reservoir")
    first = 0
    for n in (7, 50, 1, 200, 33, 0, 500):
        batch = rows(first, n)
        assert buf.extend(**batch) == model.offer(as_rows(batch))
        first += n
        assert held_ids(buf) == model_ids(model)
        assert sorted(buf._table.stored_keys().tolist()) == sorted(it.key for it in model.stored())
    assert buf.stats()["reservoir.offers"] == first
    assert buf.stats()["table.written"] == model.written


def test_reservoir_batched_offers_equal_offers_one_by_one():
    a = rv.ReplayBuffer(64, writer=rv.Reservoir(), seed=7)
    b = rv.ReplayBuffer(64, writer=rv.Reservoir(), seed=7)
    batch = rows(0, 3000)
    a.extend(**batch)
    stored = 0
    for r in as_rows(batch):
        stored += b.add(**r)
    assert stored == a.stats()["table.written"]
    assert_tensor_equal(a.columns["id"], b.columns["id"])
    assert a._table.stored_keys().tolist() == b._table.stored_keys().tolist()


def reservoir_inclusion(cap: int, n: int, streams: int) -> np.ndarray:
    """How often each of n offered items is held after the stream, over `streams` seeds."""
    counts = np.zeros(n)
    for seed in range(streams):
        buf = rv.ReplayBuffer(cap, writer=rv.Reservoir(), seed=1000 + seed)
        buf.extend(id=np.arange(n))
        counts[buf.columns["id"][:cap].numpy()] += 1
    return counts


def test_reservoir_inclusion_probability_is_k_over_n():
    """k = 5 of n = 40, 2000 seeded streams: each item held with probability 1/8; chi-square
    over the 40 items (p > 1e-3), and every item within 5 sigma of 250."""
    cap, n, streams = 5, 40, 2000
    counts = reservoir_inclusion(cap, n, streams)
    assert counts.sum() == cap * streams
    assert stats.chisquare(counts).pvalue > P_MIN
    sigma = np.sqrt(streams * (cap / n) * (1 - cap / n))
    assert np.abs(counts - streams * cap / n).max() < 5 * sigma


def test_reservoir_first_item_after_filling_is_kept_with_k_over_k_plus_1():
    """The (k+1)-th offer replaces a slot with probability k/(k+1), exactly what the model's
    generator gives; over 4000 seeds the frequency is within 5 sigma of k/(k+1)."""
    cap, trials = 4, 4000
    kept = 0
    for seed in range(trials):
        buf = rv.ReplayBuffer(cap, writer=rv.Reservoir(), seed=seed)
        buf.extend(id=np.arange(cap))
        got = buf.add(id=99)
        assert got == (reservoir_replaces(seed, cap, cap) >= 0)
        kept += got
    p = cap / (cap + 1)
    assert abs(kept / trials - p) < 5 * np.sqrt(p * (1 - p) / trials)


def test_reservoir_pairwise_inclusion_is_k_k_minus_1_over_n_n_minus_1():
    cap, n, streams = 4, 12, 3000
    both = np.zeros((n, n))
    for seed in range(streams):
        buf = rv.ReplayBuffer(cap, writer=rv.Reservoir(), seed=50_000 + seed)
        buf.extend(id=np.arange(n))
        held = buf.columns["id"][:cap].numpy()
        both[np.ix_(held, held)] += 1
    pairs = both[~np.eye(n, dtype=bool)]
    p = cap * (cap - 1) / (n * (n - 1))
    assert abs(pairs.mean() / streams - p) < 0.01
    sigma = np.sqrt(streams * p * (1 - p))
    assert np.abs(pairs - streams * p).max() < 5 * sigma


def test_reservoir_refuses_max_times_sampled_and_changes_nothing():
    with pytest.raises(ValueError, match="reservoir writer cannot be combined with max_times_sampled"):
        rv.ReplayBuffer(10, {"x": ("int64", ())}, writer=rv.Reservoir(), max_times_sampled=2)


# ---- keep top k -----------------------------------------------------------------------------


def test_keep_top_k_holds_exactly_the_k_best_with_newest_winning_ties():
    rng = np.random.default_rng(3)
    cap = 20
    buf = rv.ReplayBuffer(cap, writer=rv.KeepTopK(score="score"), seed=0)
    model = PolicyModel(cap, 0, writer="keep_top_k", score="score")
    first = 0
    for n in (5, 30, 1, 64, 200):
        score = rng.integers(0, 12, n).astype(np.float32)  # many ties
        batch = rows(first, n, score)
        assert buf.extend(**batch) == model.offer(as_rows(batch))
        first += n
        assert held_ids(buf) == model_ids(model)
    # the held items are the top k of everything offered by (score, insertion order)
    offered = sorted(((float(s), i) for i, s in enumerate(model_all_scores(first, rng_seed=3))),
                     reverse=True)[:cap]
    assert held_ids(buf) == sorted(i for _, i in offered)


def model_all_scores(n: int, rng_seed: int) -> np.ndarray:
    rng = np.random.default_rng(rng_seed)
    return np.concatenate([rng.integers(0, 12, k).astype(np.float32) for k in (5, 30, 1, 64, 200)])[:n]


def test_keep_top_k_drops_below_the_minimum_and_reports_it():
    buf = rv.ReplayBuffer(3, writer=rv.KeepTopK(score="score"), seed=0)
    assert buf.extend(**rows(0, 3, [5, 6, 7])) == 3
    assert buf.add(**{k: v[0] for k, v in rows(3, 1, [4]).items()}) == 0  # below 5: not stored
    assert buf.add(**{k: v[0] for k, v in rows(4, 1, [5]).items()}) == 1  # a tie: enters
    assert held_ids(buf) == [1, 2, 4]  # the older 5 left
    assert buf.stats()["keep_top_k.rejected"] == 1


def test_keep_top_k_by_priority_evicts_the_lowest_priority():
    buf = rv.ReplayBuffer(4, sampler=rv.Prioritized(alpha=1.0, eps=0.0), writer=rv.KeepTopK(score="priority"), seed=0)
    buf.extend(id=np.arange(4))
    keys = buf._table.stored_keys()
    buf.update_priorities(keys, [3.0, 0.5, 2.0, 4.0])  # id 1 lowest
    buf.add(id=10)  # new items enter with the running max (4): the lowest (id 1) leaves
    assert held_ids(buf) == [0, 2, 3, 10]
    buf.update_priorities(buf._table.stored_keys(), [3.0, 2.0, 0.1, 9.0])  # ids 0, 2, 3, 10
    buf.add(id=11)
    assert held_ids(buf) == [0, 2, 10, 11]
    with pytest.raises(ValueError, match="needs the prioritized sampler"):
        rv.ReplayBuffer(4, {"x": ("int64", ())}, writer=rv.KeepTopK(score="priority"))


def test_keep_top_k_refuses_nan_scores_changing_nothing():
    buf = rv.ReplayBuffer(4, writer=rv.KeepTopK(score="score"), seed=0)
    buf.extend(**rows(0, 4, [1, 2, 3, 4]))
    before = buf.state_dict()
    with pytest.raises(ValueError, match="NaN"):
        buf.extend(**rows(4, 3, [9, float("nan"), 9]))
    after = buf.state_dict()
    for name, t in before["arrays"].items():
        assert torch.equal(t, after["arrays"][name]), name
    assert before["scalars"] == after["scalars"]


@pytest.mark.parametrize("spec, score, error", [
    ({"s": ("float32", (2,))}, "s", TypeError),   # not a scalar
    ({"s": ("bool", ())}, "s", TypeError),        # not numeric
    ({"s": ("float32", ())}, "nope", ValueError),  # not in the spec
])
def test_bad_score_fields_are_refused(spec, score, error):
    with pytest.raises(error, match="score"):
        rv.ReplayBuffer(4, spec, writer=rv.KeepTopK(score=score))
    with pytest.raises(error, match="threshold field"):
        rv.ReplayBuffer(4, spec, admit=rv.Threshold(score, 1.0))


# ---- admission ------------------------------------------------------------------------------


def test_threshold_admits_at_least_the_value_and_changes_live():
    buf = rv.ReplayBuffer(100, admit=rv.Threshold("score", 0.5), seed=0)
    model = PolicyModel(100, 0, score="score", threshold=0.5)
    batch = rows(0, 50)
    assert buf.extend(**batch) == model.offer(as_rows(batch))
    assert held_ids(buf) == model_ids(model)
    buf.admit.value = 0.9  # live
    model.threshold = 0.9
    batch = rows(50, 50)
    assert buf.extend(**batch) == model.offer(as_rows(batch))
    assert held_ids(buf) == model_ids(model)
    assert buf.stats()["threshold.dropped"] == model.dropped
    assert buf.admit.value == 0.9
    with pytest.raises(ValueError, match="finite"):
        buf.admit.value = float("nan")
    assert buf.admit.value == 0.9


def test_callable_admission_sees_the_whole_batch_once():
    calls = []

    def keep_even(batch):
        calls.append(len(batch["id"]))
        return batch["id"] % 2 == 0

    buf = rv.ReplayBuffer(100, admit=keep_even, seed=0)
    assert buf.extend(**rows(0, 40)) == 20
    assert calls == [40]  # once per extend, vectorised
    assert held_ids(buf) == list(range(0, 40, 2))
    add = buf.add  # an alias: still through the predicate
    assert add(**{k: v[0] for k, v in rows(41, 1).items()}) == 0
    assert add(**{k: v[0] for k, v in rows(42, 1).items()}) == 1
    assert len(buf) == 21
    # torch inputs reach the predicate as torch tensors
    seen = []
    tbuf = rv.ReplayBuffer(10, admit=lambda b: (seen.append(type(b["x"])), b["x"] > 0)[1], seed=0)
    tbuf.extend(x=torch.tensor([-1.0, 2.0, 3.0]))
    assert seen == [torch.Tensor] and len(tbuf) == 2
    bad = rv.ReplayBuffer(10, admit=lambda b: b["x"][:2] > 0, seed=0)
    bad.extend(x=np.ones(2, np.float32))
    with pytest.raises(ValueError, match="mask has 2 values for 3 items"):
        bad.extend(x=np.ones(3, np.float32))
    assert len(bad) == 2  # unchanged
    with pytest.raises(TypeError, match="admit must be"):
        rv.ReplayBuffer(10, admit=42)


# ---- max times sampled ------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", [rv.Uniform(), rv.Uniform(replacement=False), rv.Prioritized()])
@pytest.mark.parametrize("n_times", [1, 3])
def test_items_leave_after_exactly_n_samples(sampler, n_times):
    cap = 30
    buf = rv.ReplayBuffer(cap, max_times_sampled=n_times, sampler=sampler, seed=5)
    model = PolicyModel(cap, 5, max_times=n_times)
    batch = rows(0, cap)
    buf.extend(**batch)
    model.offer(as_rows(batch))
    distinct = isinstance(sampler, rv.Uniform) and not sampler.replacement

    def most() -> int:  # the largest batch the buffer can still give
        return len(model) if distinct else int(model.samples_left())

    call = 0
    while len(model):
        if most() < 7:
            with pytest.raises(ValueError, match="samples left" if not distinct else "holds only"):
                buf.sample(most() + 1)
        b = buf.sample(min(7, most()))
        model.sampled(b.indices.tolist(), call)
        call += 1
        assert len(buf) == len(model)
        assert held_ids(buf) == model_ids(model)
    assert len(buf) == 0
    with pytest.raises(ValueError, match="empty"):
        buf.sample(1)
    # the ring writes again over the holes, oldest slot first
    buf.extend(**rows(100, 5))
    assert held_ids(buf) == list(range(100, 105)) and len(buf) == 5


def test_consume_once_queue_with_threads_never_returns_an_item_twice():
    """max_times_sampled=1 with four sampler threads: every item comes back exactly once."""
    n = 20_000
    buf = rv.ReplayBuffer(n, max_times_sampled=1, seed=2)
    buf.extend(id=np.arange(n))
    got: list = [[] for _ in range(4)]

    def take(t: int) -> None:
        while True:
            try:
                got[t].append(buf.sample(50)["id"].numpy())
            except ValueError:
                return

    threads = [threading.Thread(target=take, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    ids = np.concatenate([np.concatenate(g) for g in got if g])
    assert len(ids) == n and len(np.unique(ids)) == n
    assert len(buf) == 0


def test_keep_top_k_with_max_times_sampled_fills_freed_slots():
    buf = rv.ReplayBuffer(4, writer=rv.KeepTopK(score="score"), max_times_sampled=1, seed=1)
    model = PolicyModel(4, 1, writer="keep_top_k", score="score", max_times=1)
    for call, n in enumerate((4, 3, 5, 2, 6)):
        batch = rows(call * 10, n)
        assert buf.extend(**batch) == model.offer(as_rows(batch))
        assert held_ids(buf) == model_ids(model)
        b = buf.sample(min(2, len(buf)))
        model.sampled(b.indices.tolist(), call)
        assert held_ids(buf) == model_ids(model)


# ---- metadata -------------------------------------------------------------------------------


def test_metadata_of_batches_and_get():
    buf = rv.ReplayBuffer(8, metadata=True, seed=0)
    buf.version = 3
    buf.extend(**rows(0, 5))
    buf.version = 4
    buf.extend(**rows(5, 5))  # wraps: ids 2..9 stored
    b = buf.sample(64)
    meta = b.meta
    assert set(meta) == {"inserted", "version", "times_sampled", "last_sampled"}
    assert all(t.dtype == torch.int64 and tuple(t.shape) == (64,) for t in meta.values())
    assert_tensor_equal(meta["inserted"], b["id"])  # insertion number = id here
    assert (meta["version"] == torch.where(b["id"] < 5, 3, 4)).all()
    # times_sampled: draws before this one (within the batch too); last_sampled -1 on first
    seen: dict = {}
    for j, i in enumerate(b["id"].tolist()):
        assert meta["times_sampled"][j].item() == seen.get(i, 0)
        assert meta["last_sampled"][j].item() == (-1 if i not in seen else 0)
        seen[i] = seen.get(i, 0) + 1
    g = buf.get(b.indices)
    assert [g.meta["times_sampled"][j].item() for j in range(64)] == [seen[i] for i in b["id"].tolist()]
    assert (g.meta["last_sampled"] == 0).all()
    assert buf.sample(4).meta is not None
    plain = rv.ReplayBuffer(8, seed=0)
    plain.extend(**rows(0, 3))
    assert plain.sample(4).meta is None and plain.get([0]).meta is None


def test_metadata_counts_are_exact_under_threads():
    """Four threads sample 400 batches of 64 from 100 items: the counts add up to exactly
    the draws (compare-and-swap counting)."""
    buf = rv.ReplayBuffer(100, metadata=True, seed=1)
    buf.extend(**rows(0, 100))
    per_thread: list = [np.zeros(100, np.int64) for _ in range(4)]

    def draw(t: int) -> None:
        for _ in range(100):
            ids = buf.sample(64)["id"].numpy()
            np.add.at(per_thread[t], ids, 1)

    threads = [threading.Thread(target=draw, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    drawn = sum(per_thread)
    g = buf.get(buf._table.stored_keys())
    times = np.zeros(100, np.int64)
    times[g["id"].numpy()] = g.meta["times_sampled"].numpy()
    assert drawn.sum() == 4 * 100 * 64
    np.testing.assert_array_equal(times, drawn)


def test_version_is_shared_and_persists(tmp_path):
    buf = rv.ReplayBuffer(8, {"x": ("int64", ())}, metadata=True, seed=0, storage="shared")
    buf.version = 11
    import pickle

    other = pickle.loads(pickle.dumps(buf))
    assert other.version == 11
    other.extend(x=np.arange(3))
    assert (buf.get(buf._table.stored_keys()).meta["version"] == 11).all()
    buf.save(tmp_path / "c")
    assert rv.ReplayBuffer.load(tmp_path / "c").version == 11
    other.close()
    buf.close()


# ---- combinations and errors ------------------------------------------------------------------


def test_episode_buffers_refuse_other_policies():
    with pytest.raises(TypeError):
        rv.EpisodeBuffer(8, writer=rv.Reservoir())  # not an EpisodeBuffer argument
    buf = rv.EpisodeBuffer(8, metadata=True, seed=0)
    assert buf.sample is not None


@pytest.mark.parametrize("kwargs, error, match", [
    ({"writer": rv.Uniform()}, TypeError, "writer must be"),
    ({"writer": "fifo"}, TypeError, "writer must be"),
    ({"sampler": rv.Fifo()}, TypeError, "sampler must be"),
    ({"admit": rv.Fifo()}, TypeError, "admit"),
    ({"max_times_sampled": 0}, ValueError, "max_times_sampled must be >= 1"),
    ({"max_times_sampled": 1.5}, TypeError, "max_times_sampled must be an int"),
    ({"metadata": 1}, TypeError, "metadata must be a bool"),
])
def test_bad_policy_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        rv.ReplayBuffer(10, **kwargs)


def test_parts_round_trip_through_their_configuration():
    for part in (rv.Uniform(False), rv.Prioritized(0.7, 0.3, 1e-3), rv.Fifo(), rv.Reservoir(),
                 rv.KeepTopK("score"), rv.Threshold("score", 0.25)):
        assert rv.ReplayBuffer  # the registry is filled on import
        back = type(part).from_config(part.role, part.config())
        assert back == part and type(back) is type(part)
    with pytest.raises(ValueError, match="unknown writer kind 'lifo'"):
        rv.Fifo.from_config("writer", {"kind": "lifo"})


def test_a_refused_write_leaves_the_admission_counts_unchanged():
    """Threshold drops some rows, then keep-top-k refuses a NaN score: nothing is counted."""
    buf = rv.ReplayBuffer(4, writer=rv.KeepTopK(score="score"), admit=rv.Threshold("id", 2), seed=0)
    buf.extend(**rows(0, 4, [1, 2, 3, 4]))
    before = buf.stats()
    with pytest.raises(ValueError, match="NaN"):
        buf.extend(**rows(10, 3, [9, float("nan"), 9]) | {"id": np.array([0, 11, 12])})
    assert buf.stats() == before
