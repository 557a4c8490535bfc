"""Benchmarks: reverie against the replay buffers people write (``python -m reverie.bench``).

The library never imports this package. Its modules:

- ``harness``: the one harness every section uses (interleaved timing, medians and spread,
  ratio columns, the markdown table, the PNG).
- ``workloads``: the shared specs (W1, W3), random data, run settings and the per-library
  adapters.
- ``baselines``, ``policy_baselines``, ``episode_baseline``, ``torch_baselines``: the
  buffers reverie is compared against.
- Sections: ``runner`` (W1-W3, memory; the main job), ``concurrency`` (with ``ingest``),
  ``episodes``, ``policies`` (reservoir, top-k, max_times_sampled, metadata), ``gpu``,
  ``checkpoint``, ``memmap``.

``bench/ab_previous.py`` (outside the package) compares the current build with an earlier
one, workload by workload, in alternating fresh processes.
"""

__all__ = ["baselines", "harness", "runner", "workloads"]
