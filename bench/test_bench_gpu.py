"""GPU section: reverie's device buffer against torch-native replay on the same GPU.

Run with ``python -m pytest bench/test_bench_gpu.py`` (pytest-benchmark). The figures with
repeats, ratios, targets and the device's copy bandwidth come from
``python -m reverie.bench.gpu``. GPU work is asynchronous, so each benchmarked call runs
``CALLS`` steps (or samples) and then synchronises: per step = mean / CALLS (each result's
``extra_info`` says so). The GPU tests are skipped without CUDA; the last test runs the
section on the host reference (``--device cpu --quick``) and checks its tables.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator, Tuple

import pytest
import torch

import reverie as rv
from reverie.bench import gpu as G
from reverie.bench.harness import human_count
from reverie.bench.workloads import W1_SPEC, W3_SPEC

CALLS = 100  # steps or samples per benchmarked call, then one synchronisation
needs_cuda = pytest.mark.skipif(
    not rv.cuda_available(),
    reason="needs a CUDA GPU and driver and a reverie build with the CUDA kernels "
           "(rv.cuda_available() is False)")
W2_CASES = [(kind, cap) for cap in (100_000, 1_000_000) for kind in ("reverie", "torch-f32")]
W3_CAPACITY = 50_000


def _cuda() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device())


@pytest.fixture(scope="module", params=W2_CASES, ids=[f"{k}-{human_count(c)}" for k, c in W2_CASES])
def w2(request: pytest.FixtureRequest) -> Iterator[Tuple[Any, int]]:
    kind, cap = request.param
    impl = G.build_w2(kind, cap, _cuda(), G.w2_columns(cap, 0))
    yield impl, cap
    if hasattr(impl, "close"):
        impl.close()


@pytest.fixture(scope="module")
def w3() -> Iterator[Any]:
    buf, column = G.fill_w3(W3_CAPACITY, _cuda())
    yield {"reverie": G.DeviceW3(buf), "index_select": G.TorchGather(column)}
    buf.synchronize()


@needs_cuda
@pytest.mark.benchmark(group=f"GPU W2 step 256 (x{CALLS}, then synchronize)")
def test_gpu_w2_step_256(benchmark, w2: Tuple[Any, int]) -> None:
    impl, cap = w2
    device = _cuda()
    step = G.w2_stepper(impl, G.priority_pool(device, 1))
    sync = G.synchronizer(device)
    benchmark.extra_info["steps_per_call"] = CALLS

    def steps() -> None:
        for _ in range(CALLS):
            step()
        sync()

    benchmark(steps)
    fields, idx, weights = impl.sample(256)
    G.check_batch("after the benchmark", fields, idx, weights, 256, W1_SPEC, device, cap, True)


@needs_cuda
@pytest.mark.parametrize("kind", ["reverie", "index_select"])
@pytest.mark.parametrize("batch_size", list(G.W3_BATCHES))
def test_gpu_w3_sample(benchmark, w3: Any, kind: str, batch_size: int) -> None:
    benchmark.group = f"GPU W3 sample {batch_size} (x{CALLS}, then synchronize)"
    benchmark.extra_info["bytes_per_call"] = CALLS * batch_size * G.FRAME_BYTES
    impl = w3[kind]
    sync = G.synchronizer(_cuda())

    def samples() -> Any:
        for _ in range(CALLS):
            out = impl.sample(batch_size)
        sync()
        return out

    fields, idx, _ = benchmark(samples)
    G.check_batch(kind, fields, idx, None, batch_size, W3_SPEC, _cuda(), W3_CAPACITY, False)


@pytest.mark.skipif(rv.cuda_available(), reason="CUDA is present: the section would run in full")
def test_section_skips_without_cuda() -> None:
    res = _section([])
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1 and "skipped" in lines[0] and "CUDA" in lines[0], res.stdout


def test_section_on_host_reference(tmp_path: Path) -> None:
    """``--device cpu --quick``: the same code on the host reference, tables with numbers."""
    out = tmp_path / "gpu.json"
    res = _section(["--device", "cpu", "--quick", "--json", str(out)])
    assert res.returncode == 0, res.stderr[-3000:]
    text = res.stdout
    for label in G.W2_LABELS.values():
        row = next((line for line in text.splitlines() if line.startswith(f"| {label} |")), None)
        assert row is not None, f"no W2 row for {label!r} in:\n{text}"
        assert re.search(r"\| [\d.,]+ us \[", row), row
    for n in G.W3_BATCHES:
        row = next((line for line in text.splitlines() if line.startswith(f"| sample {n} |")), None)
        assert row is not None, f"no W3 row for sample {n} in:\n{text}"
        assert len(re.findall(r"[\d.]+ GB/s", row)) == 3, row
    result = json.loads(out.read_text())
    quick_cpu = G.Settings.make(torch.device("cpu"), True)
    assert [c["capacity"] for c in result["w2"]] == list(quick_cpu.w2_capacities)
    for cell in result["w2"]:
        assert set(cell["values"]) == set(G.W2_KINDS)
        assert all(v["value"] > 0 for v in cell["values"].values())
    for cell in result["w3"]:
        assert set(cell["values"]) == {"reverie", "index_select", "copy"}
        assert all(v["value"] > 0 for v in cell["values"].values())
    assert result["device"]["device"] == "cpu"


def _section(args: list) -> subprocess.CompletedProcess:
    """``python -m reverie.bench.gpu ARGS`` in a fresh interpreter that imports this reverie."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(rv.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in [env.get("PYTHONPATH")] if p])
    return subprocess.run([sys.executable, "-m", "reverie.bench.gpu", *args], capture_output=True,
                          text=True, env=env, timeout=300)
