"""examples/class_incremental.py learns: replay from the class-balanced reservoir keeps the
old classes that naive fine-tuning forgets (a short run: 10 epochs per task)."""

from __future__ import annotations

from example_loader import load_example


def test_replay_keeps_the_old_classes_fine_tuning_forgets():
    ex = load_example("class_incremental")
    naive = ex.train(False, seed=0, epochs=10, memory_size=200)
    replay = ex.train(True, seed=0, epochs=10, memory_size=200)
    assert naive[-1] < 0.35  # about 1/5: only the last task's classes are right
    assert replay[-1] > 0.75 and replay[-1] > 2.5 * naive[-1]
