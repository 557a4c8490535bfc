"""The benchmark harness (reverie.bench.harness): turns, medians, ratios, tables, the plot."""

from __future__ import annotations

from pathlib import Path
from typing import List

import pytest

from reverie.bench.harness import (
    Budget,
    Cell,
    Panel,
    fmt_ratio,
    fmt_stats,
    fmt_value,
    human_count,
    interleave,
    markdown,
    measure_rates,
    plot_ratios,
    ratio_column,
    si,
    summary,
    tabulate,
    timed,
    value_column,
)


def test_interleave_takes_turns_after_warming_every_variant() -> None:
    log: List[str] = []
    out = interleave({"a": lambda: log.append("a") or 1, "b": lambda: log.append("b") or 2},
                     3, warmup={"a": lambda: log.append("wa"), "b": lambda: log.append("wb")},
                     before=lambda k, r: log.append(f"{k}{r}"))
    assert out == {"a": [1, 1, 1], "b": [2, 2, 2]}
    assert log == ["wa", "wb", "a0", "a", "b0", "b", "a1", "a", "b1", "b", "a2", "a", "b2", "b"]


def test_summary_is_the_median_and_its_spread() -> None:
    assert summary([3.0, 1.0, 2.0, 10.0]) == {"value": 2.5, "min": 1.0, "max": 10.0,
                                              "repeats": [3.0, 1.0, 2.0, 10.0]}
    with pytest.raises(ValueError):
        summary([])


def test_timed_calls_at_least_once_until_the_deadline() -> None:
    calls, elapsed = timed(lambda: None, 0.0)
    assert calls == 1 and elapsed >= 0
    calls, elapsed = timed(lambda: None, 0.01)
    assert calls > 1 and elapsed >= 0.01


def test_measure_rates_counts_units_per_second() -> None:
    rates = measure_rates({"fast": lambda: None, "slow": lambda: sum(range(2000))}, 10.0,
                          Budget(0.06, 3, 0.005))
    for v in rates.values():
        assert len(v["repeats"]) == 3 and v["min"] <= v["value"] <= v["max"]
    assert rates["fast"]["value"] > rates["slow"]["value"] > 0


def test_cell_ratio_against_a_named_baseline() -> None:
    c = Cell("W1", "extend 256", "items/s", {"reverie": summary([30.0]), "numpy": summary([10.0])})
    assert c.ratio("reverie", "numpy") == 3.0
    assert c.ratio("reverie", "cpprb") is None
    c.values["zero"] = summary([0.0])
    assert c.ratio("reverie", "zero") is None
    assert c.as_dict()["values"]["numpy"]["value"] == 10.0


def test_formats() -> None:
    assert human_count(1_000_000) == "1M" and human_count(50_000) == "50k"
    assert human_count(1_234) == "1,234"
    assert si(32_812_000) == "32.8M" and si(412) == "412" and si(1_500) == "1.5k"
    assert fmt_value(None, "items/s") == "-"
    assert fmt_value(12.345, "GB/s") == "12.35 GB/s" and fmt_value(2.06e6, "items/s") == "2.06M/s"
    assert fmt_value(1234.0, "us") == "1,234 us"
    v = summary([1.0e6, 2.0e6, 3.0e6])
    assert fmt_stats(v, "rows/s") == "2M/s [1M-3M]"
    assert fmt_stats(summary([0.5, 0.52]), "us") == "0.51 us [0.5-0.52]"
    assert fmt_stats(summary([11.0, 12.0]), "GB/s") == "11.50 GB/s [11.00-12.00]"
    assert fmt_ratio(None) == "-" and fmt_ratio(3.3211) == "3.32x"
    assert fmt_ratio(6.56, 10.0) == "6.56x (misses >= 10x)"
    assert fmt_ratio(0.126, 0.3, at_most=True) == "0.126x (meets <= 0.3x)"
    assert fmt_ratio(1.05, 0.5, percent=True) == "105% (meets >= 50%)"


def test_tables() -> None:
    assert markdown(["a", "b"], [["1", "2"]]) == ["| a | b |", "|---|---|", "| 1 | 2 |"]
    cells = [Cell("threads", "extend 256", "rows/s",
                  {"1 thread": summary([2.0e6]), "2 threads": summary([3.0e6])},
                  {"target": 1.6}),
             Cell("threads", "add 1", "rows/s",
                  {"1 thread": summary([2.0e6]), "2 threads": summary([1.0e6])})]
    lines = tabulate(cells, [("metric", lambda c: c.metric),
                             value_column("1 thread", spread=False),
                             ratio_column("2 threads", "1 thread",
                                          target=lambda c: c.extra.get("target"))])
    assert lines == ["| metric | 1 thread | 2 threads/1 thread |", "|---|---|---|",
                     "| extend 256 | 2M/s | 1.5x (misses >= 1.6x) |", "| add 1 | 2M/s | 0.5x |"]


def test_plot_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "speedup.png"
    plot_ratios([Panel("W1", ["add 1", "extend 256"],
                       {"vs numpy": [2.3, 1.8], "vs x": [None, None]}, {"vs numpy": "tab:blue"}),
                 Panel("W2", ["step"], {"vs numpy": [6.0]})], str(path), "title")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
