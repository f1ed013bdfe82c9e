"""The worker loop end to end without Ray: resume equivalence, on one process and on gloo process groups,
and resuming a checkpoint on another world size."""

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import micro_config
from dataloading.build import build
from distributed_helpers import run_on_workers
from eg3d.config import TrainConfig, accumulation
from eg3d.synthetic import generate_dataset
from eg3d.training_loop import train


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("loop-data")
    generate_dataset(root / "data", count=12, resolution=32, seed=0)
    build(str(root / "data"), str(root / "shards"), workers=1, progress=False)
    return str(root / "shards" / "manifest.json")


def loop_config(total_kimg: float, *extra: str) -> TrainConfig:
    return micro_config(f"run.total_kimg={total_kimg}", "run.log_kimg=0.004", "run.checkpoint_kimg=0.008",
                        "run.snapshot_kimg=0.008", "data.backend=pytorch", "loss.r1_interval=2",
                        "loss.density_reg_interval=3", "model.disc_mbstd_group=2", "run.micro_batch=2", *extra)


# Values that depend on the wall clock, the process or on where the run was interrupted.
VOLATILE = ("timestamp", "images_per_second", "restarts", "target_nimg", "checkpoint_nimg", "memory/", "seconds/",
            "data_wait_seconds", "checkpoint/", "snapshot/", "frechet_distance/", "kernel_distance/",
            "quality_nimg/", "quality_seconds/")


def deterministic(values: dict) -> dict:
    return {k: v for k, v in values.items() if not k.startswith(VOLATILE)}


def log_records(run_url) -> list[dict]:
    """The log of a run, without what a resume legitimately changes."""
    records = [json.loads(line) for line in (run_url / "log.jsonl").read_text().splitlines()]
    return [{**deterministic(r), "ranks": [deterministic(rank) for rank in r["ranks"]]} for r in records]


def quiet(line):
    pass


def test_a_resumed_run_reproduces_the_uninterrupted_losses(tmp_path, shards):
    train(loop_config(0.024), manifest_url=shards, run_url=tmp_path / "straight", log=quiet)
    train(loop_config(0.012), manifest_url=shards, run_url=tmp_path / "resumed", log=quiet)  # stops at 12 images
    lines = []
    train(loop_config(0.024), manifest_url=shards, run_url=tmp_path / "resumed", log=lines.append)
    assert any("resumed from" in line and "0.012 kimg" in line for line in lines)
    expected = log_records(tmp_path / "straight")
    assert [r["kimg"] for r in expected] == [0.004, 0.008, 0.012, 0.016, 0.02, 0.024]
    assert log_records(tmp_path / "resumed") == expected  # every loss and schedule value, exactly
    raw = [json.loads(line) for line in (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()]
    assert [r["restarts"] for r in raw] == [0, 0, 0, 1, 1, 1]  # the second start is the first restart
    final = "snapshots/snapshot-000000024/G_ema.safetensors"
    a, b = load_file(tmp_path / "straight" / final), load_file(tmp_path / "resumed" / final)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("progress_seconds, expected_lines", [
    (0.0, ["kimg 0.004/0.008 (50.0%)  img/s ", "kimg 0.008/0.008 (100.0%)  img/s "]),  # every step
    (3600.0, ["kimg 0.008/0.008 (100.0%)  img/s "]),  # only the log interval's status line
])
def test_progress_is_printed_between_log_intervals(tmp_path, shards, monkeypatch, progress_seconds, expected_lines):
    from eg3d import training_loop

    monkeypatch.setattr(training_loop, "PROGRESS_SECONDS", progress_seconds)
    lines = []
    train(loop_config(0.008, "run.log_kimg=1", "metrics.num_generated=0"), manifest_url=shards, run_url=tmp_path,
          log=lines.append)
    progress = [line for line in lines if line.startswith("kimg ")]
    assert [line[:len(start)] for line, start in zip(progress, expected_lines)] == expected_lines
    assert len(progress) == len(expected_lines) and all(" ETA " in line for line in progress)


def train_on_worker(rank: int, config: dict, manifest_url: str, run_url: str, backend: str, zero_stage: int):
    import torch.distributed as dist

    from cluster.backends import make_sync

    config = TrainConfig.from_dict(config)
    micro, _ = accumulation(config, dist.get_world_size())
    sync = make_sync(backend, zero_stage=zero_stage, global_batch=config.run.batch_size, micro_batch=micro)
    lines = []
    train(config, manifest_url=manifest_url, run_url=run_url, sync=sync, log=lines.append)
    return lines


@pytest.mark.slow
@pytest.mark.parametrize("backend,zero_stage", [("ddp", 0), ("deepspeed", 1)])
def test_resume_on_two_workers_and_then_on_one(tmp_path, shards, backend, zero_stage):
    """Two workers resume their own checkpoint exactly (sharded optimizer state included); the same
    checkpoint then resumes on one worker and the run continues on the same schedule."""
    if backend == "deepspeed":
        pytest.importorskip("deepspeed")
    args = lambda kimg, run: (loop_config(kimg).to_dict(), shards, str(tmp_path / run), backend, zero_stage)
    run_on_workers(train_on_worker, 2, args=args(0.016, "straight"))
    run_on_workers(train_on_worker, 2, args=args(0.008, "resumed"))
    run_on_workers(train_on_worker, 2, args=args(0.016, "resumed"))
    assert log_records(tmp_path / "resumed") == log_records(tmp_path / "straight")

    [lines] = run_on_workers(train_on_worker, 1, args=args(0.024, "resumed"))
    assert any("saved by 2 workers, now 1" in line for line in lines)
    records = log_records(tmp_path / "resumed")
    assert [(r["kimg"], r["world_size"]) for r in records] == [
        (0.004, 2), (0.008, 2), (0.012, 2), (0.016, 2), (0.02, 1), (0.024, 1)]
    assert [r["accumulation_steps"] for r in records] == [1, 1, 1, 1, 2, 2]  # 4 = 2 x 1 x 2 = 2 x 2 x 1
    assert records[-1]["blur_sigma"] == pytest.approx(loop_config(0).loss.blur_init_sigma * (
        1 - 0.024 / loop_config(0).loss.blur_fade_kimg))  # schedules follow images seen across the resize
