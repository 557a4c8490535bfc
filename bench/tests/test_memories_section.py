"""The memories section (reverie.bench.memories): its baselines do what they are named for
(the Python CBRS loop and the Avalanche-style update balance classes; the dict keeps the
best per key), and a tiny run of the whole section."""

from __future__ import annotations

import numpy as np

from reverie.bench import memories as M
from reverie.bench.harness import Progress
from reverie.bench.workloads import Settings


def test_python_cbrs_and_avalanche_port_balance_an_imbalanced_stream():
    rng = np.random.default_rng(0)
    y = np.concatenate([np.zeros(3000, int), np.full(300, 1), np.full(100, 2)])
    rng.shuffle(y)
    x = np.zeros((len(y), *M.IMAGE), np.uint8)
    loop, ava = M.PythonCBRS(600, 0), M.AvalancheClassBalanced(600, 0)
    for at in range(0, len(y), 50):
        loop.extend(x[at:at + 50], y[at:at + 50])
        ava.extend(x[at:at + 50], y[at:at + 50])
    held = np.bincount(loop.labels[:loop.size], minlength=3)
    assert loop.size == 600 and abs(held[0] - 250) <= 1 and abs(held[1] - 250) <= 1 and held[2] == 100
    sizes = {c: len(r) for c, (r, _) in ava.groups.items()}
    assert sizes == {0: 200, 1: 200, 2: 100}  # equal shares, a small class keeps what it has


def test_dict_archive_keeps_the_best_per_key():
    d = M.DictArchive()
    d.extend(np.array([1, 2, 1]), np.array([0.5, 0.1, 0.9], np.float32), np.zeros((3, 4), np.float32))
    assert {k: round(v[0], 2) for k, v in d.best.items()} == {1: 0.9, 2: 0.1}


def test_a_tiny_run_of_the_section(tmp_path):
    s = Settings(True, 4096, (1_000,), 1_000, 0.03, 3, 0.003, 0)
    prog = Progress(M.cells())
    cells, result = M.run(s, prog, str(tmp_path))
    prog.close()
    assert {c.section for c in cells} == {"cbrs", "cbrs-classes", "archive", "mixture", "min_interval",
                                         "max_staleness"}
    assert all(v["value"] > 0 for c in cells for v in c.values.values())
    assert "Class-balanced reservoir" in result["report"]
    try:
        import matplotlib  # noqa: F401  (the bench extra; the plot is skipped without it)
    except ImportError:
        return
    assert (tmp_path / "memories_classes.png").exists()
