"""bench/train_step.py --phases (the per-phase rows of bench/gpu_check.sh) on the CPU: one row per phase of an
iteration with every phase due, times that add up to the step, and MFU from the counted FLOPs."""

import types

import pytest
import torch

from bench_scripts import load_bench_script


@pytest.fixture(scope="module")
def bench():
    return load_bench_script("train_step")


def test_one_row_per_phase_adding_up_to_the_step_with_mfu_from_the_counted_flops(bench, monkeypatch):
    config = bench.bench_config("tiny", torch.device("cpu"), dtype="fp32",
                                overrides=["run.batch_size=2", "loss.r1_interval=4", "loss.density_reg_interval=4"])
    # The bench's clock replaced by one that ticks once per read: each phase spans 1 tick (its start and end),
    # the step 2 per phase + 1, so the rest of the step is (2 * 4 + 1) - 4 = 5 ticks.
    clock = iter(range(1000))
    monkeypatch.setattr(bench, "time", types.SimpleNamespace(perf_counter=lambda: float(next(clock))))
    rows = bench.measure_phases(config, torch.device("cpu"), steps=1, warmup=0, peak_override=0.01)
    assert [row["phase"] for row in rows] == ["Gmain", "Greg", "Dmain", "Dreg", "rest"]
    seconds = {row["phase"]: row["ms"] / 1000 for row in rows}
    assert seconds == {"Gmain": 1.0, "Greg": 1.0, "Dmain": 1.0, "Dreg": 1.0, "rest": 5.0}
    costs = bench.phase_costs(config)
    flops = {name: value for name, (value, _) in costs.items()}
    assert flops["Gmain"] > flops["Greg"] > 0  # Gmain: G forward and backward and D to its input
    # bf16 (with run.precision bf16) in the main phases only: the regularizers run in float32
    assert {name: low for name, (_, low) in costs.items()} == {"Gmain": True, "Greg": False, "Dmain": True,
                                                                 "Dreg": False}
    for row in rows:
        assert row["syncs"] is None and row["peak_memory_mib"] is None  # a CPU has neither per phase
        if row["phase"] == "rest":
            assert row["gflops"] == 0 and row["mfu"] is None
        else:  # MFU = FLOPs of the phase's 2 images / 1 s / 0.01 TFLOP/s, by hand
            assert row["gflops"] == pytest.approx(flops[row["phase"]] * 2 / 1e9)
            assert row["mfu"] == pytest.approx(flops[row["phase"]] * 2 / 0.01e12)
