"""The policies section (reverie.bench.policies): its timing loop, a tiny run of the whole
section, and its place in ``python -m reverie.bench`` (results.json)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import List

import pytest

from reverie.bench import policies as P
from reverie.bench import runner
from reverie.bench.harness import Progress
from reverie.bench.workloads import Settings

needs_policies = pytest.mark.skipif(P.unavailable() is not None, reason=f"{P.unavailable()}")


def tiny(w1_capacity: int = 20_000) -> Settings:
    return Settings(True, w1_capacity, (1_000,), 1_000, 0.03, 3, 0.003, 0)


def test_timed_restarts_between_epochs_untimed() -> None:
    seen: List[int] = []
    restarts: List[int] = []
    t = P.Timed(seen.append, 2.0, epoch_calls=3, restart=lambda: (restarts.append(1),
                                                                  time.sleep(0.02)))
    rate = t.rate(0.001)
    assert seen[:7] == [0, 1, 2, 0, 1, 2, 0]  # positions restart after each epoch
    assert len(restarts) == t.restarts == (len(seen) - 1) // 3
    assert t.calls == len(seen)
    # the restarts' sleeps are not timed: far more than 2 units per 20 ms
    assert rate > 2.0 / 0.02 * 10


def test_timed_without_epochs_never_restarts() -> None:
    t = P.Timed(lambda i: None, 1.0)
    assert t.rate(0.001) > 0 and t.restarts == 0 and t.calls > 0
    with pytest.raises(ValueError):
        P.Timed(lambda i: None, 1.0, epoch_calls=2)


def test_sizes_follow_the_w1_capacity() -> None:
    assert P.sizes(Settings.make(False, None, 0)) == (1_000_000, 100_000)
    assert P.sizes(Settings.make(True, None, 0)) == (100_000, 10_000)


@needs_policies
def test_checks_agree() -> None:
    assert P.check_policies(0, n=5_000, capacity=500) == []


@needs_policies
def test_tiny_section_produces_every_row() -> None:
    s = tiny()
    prog = Progress(P.cells())
    try:
        cells, result = P.run(s, prog)
    finally:
        prog.close()
    assert prog.done == P.cells()
    assert [c.section for c in cells] == ["reservoir", "top-k", "max_times_sampled", "metadata"]
    want = {"reservoir": {"reverie", "numpy", "avalanche"}, "top-k": {"reverie", "heapq"},
            "max_times_sampled": {"with", "without"}, "metadata": {"with", "without"}}
    for c in cells:
        assert set(c.values) == want[c.section], c.section
        assert all(len(v["repeats"]) == s.repeats and v["value"] > 0 for v in c.values.values())
    res, top, mts, _ = cells
    assert res.extra["capacity"] == 2_000 and res.extra["stream"] == 20_000
    assert all(0 < share <= 1 for share in res.extra["kept_share"].values())
    assert mts.extra["samples_per_epoch"] == 20_000 // P.MTS_DRAIN // P.BATCH
    assert "problem" not in mts.extra
    assert result["checks"] == []
    text = result["report"]
    assert "| reservoir |" in text and "| top-k |" in text and "| max_times_sampled |" in text
    assert "| metadata |" in text and "agree" in text
    assert json.loads(json.dumps(result))["cells"][0]["section"] == "reservoir"


@needs_policies
def test_runner_writes_the_section_into_results(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner.Settings, "make", classmethod(lambda cls, *a: tiny()))
    monkeypatch.setattr(runner, "memcpy_bandwidth", lambda *a, **k: 1.0)
    out = runner.run(out_dir=str(tmp_path), workloads=["policies"])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [c["section"] for c in saved["policies"]["cells"]] == [
        "reservoir", "top-k", "max_times_sampled", "metadata"]
    assert out["policies"]["report"] in out["report"]
