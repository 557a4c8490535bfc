"""Benchmarks: reverie against the replay buffers people write (``python -m reverie.bench``).

``baselines`` holds the comparison buffers; ``runner`` the workloads, timing and report.
"""

__all__ = ["baselines", "runner"]
