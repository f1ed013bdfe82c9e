"""bench/train_step.py --phases (the per-phase rows of bench/gpu_check.sh) on the CPU: one row per phase of an
iteration with every phase due, times that add up to the step, MFU from the counted FLOPs, and a trainer
that trains as before once measured."""

import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "train_step.py"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("train_step_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def small(bench):
    return bench.bench_config("tiny", torch.device("cpu"), dtype="fp32",
                              overrides=["run.batch_size=2", "loss.r1_interval=4", "loss.density_reg_interval=4"])


def test_one_row_per_phase_and_mfu_from_the_counted_flops(bench):
    config = small(bench)
    rows = bench.measure_phases(config, torch.device("cpu"), steps=1, warmup=0, peak_override=0.01)
    assert [row["phase"] for row in rows] == ["Gmain", "Greg", "Dmain", "Dreg", "rest"]
    flops = bench.phase_costs(config)
    for row in rows:
        assert row["ms"] > 0
        assert row["syncs"] is None and row["peak_memory_mib"] is None  # a CPU has neither per phase
        if row["phase"] == "rest":
            assert row["gflops"] == 0 and row["mfu"] is None
            continue
        assert row["gflops"] == pytest.approx(flops[row["phase"]] * 2 / 1e9)
        # MFU = FLOPs / seconds / peak, by hand
        assert row["mfu"] == pytest.approx(row["gflops"] * 1e9 / (row["ms"] / 1000) / 0.01e12)
    # Gmain runs G forward and backward and D to its input: more than Greg's density regularizer
    assert flops["Gmain"] > flops["Greg"] > 0


def test_the_phases_are_the_whole_step(bench, monkeypatch):
    """The phase rows and 'rest' add up to the measured iteration (the bench's clock replaced by one that ticks at each read)."""
    config = small(bench)
    clock = iter(range(1000))
    monkeypatch.setattr(bench, "time", types.SimpleNamespace(perf_counter=lambda: float(next(clock))))
    rows = bench.measure_phases(config, torch.device("cpu"), steps=1, warmup=0, peak_override=None)
    # With a clock that ticks once per read, each phase spans 1 tick and the step spans 2 per phase + 1:
    # rest = step - the phases = (2 * 4 + 1) - 4 = 5 ticks.
    by_phase = {row["phase"]: row["ms"] / 1000 for row in rows}
    assert [by_phase[name] for name in ("Gmain", "Greg", "Dmain", "Dreg")] == [1.0] * 4
    assert by_phase["rest"] == 5.0
