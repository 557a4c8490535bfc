"""examples/class_incremental.py learns: replay from the class-balanced reservoir keeps the
old classes that naive fine-tuning forgets (a short run: 10 epochs per task)."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def load_example():
    path = Path(__file__).resolve().parent.parent / "examples" / "class_incremental.py"
    spec = importlib.util.spec_from_file_location("class_incremental", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_replay_keeps_the_old_classes_fine_tuning_forgets():
    ex = load_example()
    naive = ex.train(False, seed=0, epochs=10, memory_size=200)
    replay = ex.train(True, seed=0, epochs=10, memory_size=200)
    assert naive[-1] < 0.35  # about 1/5: only the last task's classes are right
    assert replay[-1] > 0.75 and replay[-1] > 2.5 * naive[-1]
