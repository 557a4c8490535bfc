"""The one harness every benchmark section measures and reports through.

Written once here, so that a figure means the same in every section:

- **Interleaved timing** (:func:`interleave`, :func:`measure_rates`): every variant is
  warmed up, then the variants take turns, one slice of the budget each per round
  (A B C A B C ...), so a change in the machine's load during a cell hits all of them alike.
- **Medians and spread** (:func:`summary`): a figure is the median over the rounds, shown
  with its min and max; the rounds themselves go into the JSON.
- **Ratio columns** (:class:`Cell`, :func:`ratio_column`): one variant's median over a named
  baseline's, with the target it is held to, if any.
- **Output** (:func:`markdown`, :func:`tabulate`, :func:`plot_ratios`): the markdown table and
  the PNG.

Also the small aids several sections share: a progress line (:class:`Progress`), the
machine's description, resident memory of this process, a probe run in a fresh
interpreter, and dropping a file from the page cache (cold reads).

>>> rates = measure_rates({"a": lambda: None}, 1.0, Budget(0.03, 3, 0.01))
>>> sorted(rates["a"])
['max', 'min', 'repeats', 'value']
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from typing import (
    Any,
    Callable,
    Dict,
    List,
    Mapping,
    Optional,
    Protocol,
    Sequence,
    Tuple,
    TypeVar,
    Union,
)

T = TypeVar("T")
Stats = Dict[str, Any]
"""``{"value": median, "min": ..., "max": ..., "repeats": [one figure per round]}``."""


class Timing(Protocol):
    """What the timing functions read from a section's settings."""

    budget_s: float  # timed seconds per variant and cell, split over the rounds
    repeats: int  # rounds
    warmup_s: float  # untimed seconds per variant before the first round


@dataclass
class Budget:
    """A plain :class:`Timing` (sections usually pass their own settings object)."""

    budget_s: float
    repeats: int
    warmup_s: float


# ---------------------------------------------------------------------------------------
# Timing and statistics
# ---------------------------------------------------------------------------------------


def summary(values: Sequence[float]) -> Stats:
    """The median of ``values``, their min and max, and the values themselves.

    Raises:
        ValueError: ``values`` is empty.
    """
    if not values:
        raise ValueError("no values to summarise")
    return {"value": statistics.median(values), "min": min(values), "max": max(values),
            "repeats": list(values)}


def timed(op: Callable[[], Any], seconds: float) -> Tuple[int, float]:
    """Calls ``op`` until ``seconds`` have passed (at least once): (calls, elapsed seconds)."""
    calls = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        op()
        calls += 1
        now = time.perf_counter()
        if now >= deadline:
            return calls, now - start


def interleave(rounds: Mapping[str, Callable[[], T]], repeats: int,
               warmup: Optional[Mapping[str, Callable[[], Any]]] = None,
               before: Optional[Callable[[str, int], None]] = None) -> Dict[str, List[T]]:
    """Runs every variant's measurement once per round, the variants in turns.

    Args:
        rounds: ``{variant: measure}``; ``measure()`` times one slice and returns its figure.
        repeats: how many rounds.
        warmup: ``{variant: warm}``, each called once before the first round.
        before: called as ``before(variant, round)`` before each measurement (progress).

    Returns:
        ``{variant: [figure of round 0, round 1, ...]}``.
    """
    for warm in (warmup or {}).values():
        warm()
    out: Dict[str, List[T]] = {k: [] for k in rounds}
    for r in range(repeats):
        for key, measure in rounds.items():
            if before is not None:
                before(key, r)
            out[key].append(measure())
    return out


def _rate(op: Callable[[], Any], seconds: float, units_per_call: float) -> float:
    calls, elapsed = timed(op, seconds)
    return calls * units_per_call / elapsed


def measure_rates(ops: Mapping[str, Callable[[], Any]], units_per_call: float,
                  s: Timing) -> Dict[str, Stats]:
    """Units per second of each op, interleaved: after ``s.warmup_s`` of each, ``s.repeats``
    rounds in which every op is called for ``s.budget_s / s.repeats`` seconds in turn.

    Returns:
        ``{op: summary of its rates}`` (``units_per_call * calls / elapsed`` per round).
    """
    slice_s = s.budget_s / s.repeats
    samples = interleave({k: partial(_rate, op, slice_s, units_per_call) for k, op in ops.items()},
                         s.repeats, warmup={k: partial(timed, op, s.warmup_s)
                                            for k, op in ops.items()})
    return {k: summary(v) for k, v in samples.items()}


# ---------------------------------------------------------------------------------------
# Cells and ratios
# ---------------------------------------------------------------------------------------


@dataclass
class Cell:
    """One line of a section's table: variants measured in turns, and their ratios.

    ``values`` maps a variant to its :func:`summary`; ``extra`` holds what the section adds
    (targets, ratios kept for the JSON, checks); ``note`` is shown beside the section name.
    """

    section: str
    metric: str
    unit: str
    values: Dict[str, Stats] = field(default_factory=dict)
    extra: Dict[str, Any] = field(default_factory=dict)
    note: str = ""

    def value(self, key: str) -> Optional[float]:
        """The median of variant ``key`` (None when it was not measured)."""
        v = self.values.get(key)
        return None if v is None else v["value"]

    def ratio(self, num: str, den: str) -> Optional[float]:
        """``num``'s median over ``den``'s (None when either is missing or ``den``'s is 0)."""
        a, b = self.value(num), self.value(den)
        return None if a is None or not b else a / b

    def as_dict(self) -> Dict[str, Any]:
        out = {"section": self.section, "metric": self.metric, "unit": self.unit,
               "values": self.values, **self.extra}
        if self.note:
            out["note"] = self.note
        return out


# ---------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------


def human_count(n: int) -> str:
    """1_000_000 -> '1M', 50_000 -> '50k', 1_234 -> '1,234'."""
    for scale, suffix in ((1_000_000, "M"), (1_000, "k")):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{suffix}"
    return f"{n:,}"


def si(x: float) -> str:
    """Three significant digits with k/M: 32_812_000 -> '32.8M', 412 -> '412'."""
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if x >= scale:
            return f"{x / scale:.3g}{suffix}"
    return f"{x:.3g}"


def _plain(x: float) -> str:
    return f"{x:,.0f}" if x >= 1000 else f"{x:.3g}"


def fmt_value(v: Optional[float], unit: str) -> str:
    """One figure: '12.34 GB/s', '1,234 us', or a rate '32.8M/s'; '-' for None."""
    if v is None:
        return "-"
    if unit == "GB/s":
        return f"{v:.2f} GB/s"
    if unit == "us":
        return f"{_plain(v)} us"
    return f"{si(v)}/s"


def fmt_stats(v: Optional[Stats], unit: str) -> str:
    """A median and its spread: '32.8M/s [31M-33.5M]', '12.34 GB/s [11.90-12.50]'."""
    if v is None:
        return "-"
    if unit == "GB/s":
        return f"{v['value']:.2f} GB/s [{v['min']:.2f}-{v['max']:.2f}]"
    if unit == "us":
        return f"{_plain(v['value'])} us [{_plain(v['min'])}-{_plain(v['max'])}]"
    return f"{si(v['value'])}/s [{si(v['min'])}-{si(v['max'])}]"


def fmt_ratio(r: Optional[float], target: Optional[float] = None, *, at_most: bool = False,
              percent: bool = False) -> str:
    """'3.32x' or '94%', with the verdict against a target: '(meets >= 10x)', '(misses <= 0.3x)'.

    Args:
        r: the ratio (None: '-').
        target: the bound it is held to (None: no verdict).
        at_most: the target is an upper bound (memory), not a lower one (speed).
        percent: show as a percentage (a share of a reference, e.g. of the copy bandwidth).
    """
    if r is None:
        return "-"
    text = f"{r:.0%}" if percent else f"{r:.3g}x"
    if target is not None:
        goal = f"{target:.0%}" if percent else f"{target:g}x"
        meets = r <= target if at_most else r >= target
        text += f" ({'meets' if meets else 'misses'} {'<=' if at_most else '>='} {goal})"
    return text


# ---------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------


Column = Tuple[str, Callable[[Cell], str]]
"""A table column: its header, and the text of its cell in each row."""
Target = Union[None, float, Callable[[Cell], Optional[float]]]


def markdown(head: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
    """A markdown table's lines."""
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def tabulate(cells: Sequence[Cell], columns: Sequence[Column]) -> List[str]:
    """One row per cell, one column per ``(header, text of a cell)``."""
    return markdown([h for h, _ in columns], [[f(c) for _, f in columns] for c in cells])


def value_column(key: str, header: Optional[str] = None, spread: bool = True) -> Column:
    """Variant ``key``'s figure in the cell's unit; with ``spread``, '[min-max]' too."""
    def text(c: Cell) -> str:
        if spread:
            return fmt_stats(c.values.get(key), c.unit)
        return fmt_value(c.value(key), c.unit)

    return header or key, text


def ratio_column(num: str, den: str, header: Optional[str] = None, target: Target = None,
                 at_most: bool = False, percent: bool = False) -> Column:
    """``num``'s median over ``den``'s (the named baseline), with a verdict when ``target``
    (a number, or a function of the cell giving one or None) is set."""
    def text(c: Cell) -> str:
        goal = target(c) if callable(target) else target
        return fmt_ratio(c.ratio(num, den), goal, at_most=at_most, percent=percent)

    return header or f"{num}/{den}", text


# ---------------------------------------------------------------------------------------
# The plot
# ---------------------------------------------------------------------------------------


@dataclass
class Panel:
    """One panel of :func:`plot_ratios`: bars of ratios, one group per x label.

    ``series`` maps a legend label to one ratio per x label (None: no bar); ``colors`` maps
    a legend label to its bar colour.
    """

    title: str
    labels: List[str]
    series: Dict[str, List[Optional[float]]]
    colors: Dict[str, str] = field(default_factory=dict)


def plot_ratios(panels: Sequence[Panel], path: str, title: str) -> None:
    """Writes a PNG of log-scale ratio bars, one panel each, a line at 1x (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        series = {k: v for k, v in panel.series.items() if any(v)}
        width = 0.8 / max(len(series), 1)
        seen = [0.5, 2.0]
        for k, (label, ys) in enumerate(series.items()):
            xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(panel.labels))]
            heights = [y or 0.0 for y in ys]
            seen += [y for y in heights if y]
            bars = ax.bar(xs, heights, width, label=label, color=panel.colors.get(label))
            for bar, y in zip(bars, heights):
                if y:
                    ax.annotate(f"{y:.3g}x", (bar.get_x() + bar.get_width() / 2, y),
                                ha="center", va="bottom", fontsize=7)
        ax.set_yscale("log")
        ax.set_ylim(min(seen) / 1.5, max(seen) * 2.5)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}x"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(panel.labels)))
        ax.set_xticklabels(panel.labels, fontsize=8)
        ax.set_title(panel.title, fontsize=10)
        ax.legend(fontsize=8, loc="upper left", ncol=max(len(series), 1))
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------
# Progress, machine, processes, files
# ---------------------------------------------------------------------------------------


class Progress:
    """A progress bar on stderr (tqdm when installed, else one line per step)."""

    def __init__(self, total: int) -> None:
        try:
            from tqdm import tqdm

            self.bar: Any = tqdm(total=total, unit="cell", file=sys.stderr, dynamic_ncols=True)
        except ImportError:
            self.bar = None
        self.total, self.done = total, 0

    def note(self, text: str) -> None:
        """Says what runs now."""
        if self.bar is not None:
            self.bar.set_description_str(text)
        else:
            print(f"[{self.done}/{self.total}] {text}", file=sys.stderr, flush=True)

    def advance(self, n: int = 1) -> None:
        """Counts ``n`` steps as done."""
        self.done += n
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def machine_info() -> Dict[str, Any]:
    """The CPU, core count and versions, for the report and the JSON."""
    import numpy as np
    import torch

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info: Dict[str, Any] = {
        "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
        "numpy": np.__version__, "torch": torch.__version__, "platform": platform.platform(),
    }
    try:
        import reverie

        info["reverie"] = reverie.__version__
    except Exception:  # a broken build: the sections report it as skipped
        pass
    return info


def rss_bytes() -> int:
    """This process's resident set size (Linux ``/proc/self/status``).

    Raises:
        RuntimeError: no VmRSS line (not Linux).
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def probe_in_subprocess(module: str, func: str, args: Tuple[Any, ...],
                        timeout: float) -> Dict[str, Any]:
    """``module.func(*args)`` (returning JSON-able data) in a fresh interpreter, so memory
    figures start from a clean process; ``{"error": ...}`` when it fails."""
    code = f"import json; from {module} import {func}; print(json.dumps({func}{args!r}))"
    try:
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=timeout, check=True)
        return json.loads(res.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError) as exc:
        err = getattr(exc, "stderr", "") or ""
        return {"error": f"{type(exc).__name__}: {err.strip()[-300:]}"}


def drop_cache(path: str) -> None:
    """Evicts the file's pages from the page cache (after an fsync they are clean), so the
    next read comes from the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
