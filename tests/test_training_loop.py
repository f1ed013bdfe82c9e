"""The worker loop end to end without Ray: resume equivalence, on one process and on gloo process groups,
and resuming a checkpoint on another world size."""

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from model_helpers import micro_config
from dataloading.build import build
from dataloading.synthetic import generate_dataset
from distributed_helpers import run_on_workers
from eg3d.config import TrainConfig
from eg3d.training.checkpoints import CheckpointStore
from eg3d.training.loop import QUALITY_KEYS, TrainingDiverged, train


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
    resumed = log_records(tmp_path / "resumed")
    # A run that stops measures its quality there; the uninterrupted one carries its 8-image measurement on.
    measured_at_the_stop = lambda records: [{k: v for k, v in r.items() if not (r["nimg"] == 12 and k.startswith(
        QUALITY_KEYS))} for r in records]
    assert resumed[2]["fd_data"] != expected[2]["fd_data"] == expected[1]["fd_data"]
    assert measured_at_the_stop(resumed) == measured_at_the_stop(expected)  # every loss and schedule value, exactly
    raw = [json.loads(line) for line in (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()]
    assert [r["restarts"] for r in raw] == [0, 0, 0, 1, 1, 1]  # the second start is the first restart
    final = "snapshots/snapshot-000000024/G_ema.safetensors"
    a, b = load_file(tmp_path / "straight" / final), load_file(tmp_path / "resumed" / final)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_crash_between_a_checkpoint_and_its_log_record_loses_no_record(tmp_path, shards, monkeypatch):
    """A process killed after the checkpoint at 8 images is published, while the snapshot due there is taken
    (before the step's log record is written): the resume exports the snapshot and writes the record, which the
    checkpoint carries, so the log equals an uninterrupted run's."""
    import eg3d.training.loop as loop

    train(loop_config(0.016), manifest_url=shards, run_url=tmp_path / "straight", log=quiet)
    take_snapshot = loop.take_snapshot

    def killed_at_8(trainer, *args, **kwargs):
        if trainer.nimg == 8:
            raise KeyboardInterrupt("killed")
        return take_snapshot(trainer, *args, **kwargs)

    monkeypatch.setattr(loop, "take_snapshot", killed_at_8)
    with pytest.raises(KeyboardInterrupt):
        train(loop_config(0.016), manifest_url=shards, run_url=tmp_path / "crashed", log=quiet)
    assert [r["nimg"] for r in log_records(tmp_path / "crashed")] == [4]
    monkeypatch.setattr(loop, "take_snapshot", take_snapshot)
    train(loop_config(0.016), manifest_url=shards, run_url=tmp_path / "crashed", log=quiet)
    assert log_records(tmp_path / "crashed") == log_records(tmp_path / "straight")
    assert (tmp_path / "crashed" / "snapshots" / "snapshot-000000008" / "config.json").exists()


@pytest.mark.parametrize("progress_seconds, expected_lines", [
    (0.0, ["kimg 0.004/0.008 (50.0%)  img/s ", "kimg 0.008/0.008 (100.0%)  img/s "]),  # every step
    # after the first step, then only the log interval's status line
    (3600.0, ["kimg 0.004/0.008 (50.0%)  img/s ", "kimg 0.008/0.008 (100.0%)  img/s "]),
    (3600.0, ["kimg 0.004/0.012 (33.3%)  img/s ", "kimg 0.012/0.012 (100.0%)  img/s "]),
])
def test_progress_is_printed_between_log_intervals(tmp_path, shards, monkeypatch, progress_seconds, expected_lines):
    from eg3d.training import loop as training_loop

    monkeypatch.setattr(training_loop, "PROGRESS_SECONDS", progress_seconds)
    lines = []
    total_kimg = float(expected_lines[-1].split("/")[1].split()[0])
    train(loop_config(total_kimg, "run.log_kimg=1", "metrics.num_generated=0"), manifest_url=shards, run_url=tmp_path,
          log=lines.append)
    progress = [line for line in lines if line.startswith("kimg ")]
    assert [line[:len(start)] for line, start in zip(progress, expected_lines)] == expected_lines
    assert len(progress) == len(expected_lines) and all(" ETA " in line for line in progress)


def train_on_worker(rank: int, config: dict, manifest_url: str, run_url: str, backend: str, zero_stage: int):
    from cluster.backends import make_sync

    config = TrainConfig.from_dict(config)
    sync = make_sync(backend, zero_stage=zero_stage)
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
    assert records[-1]["blur_sigma"] == pytest.approx(loop_config(0.024).loss.blur_init_sigma * (
        1 - 0.024 / loop_config(0.024).loss.blur_fade_kimg))  # schedules follow images seen across the resize


@pytest.mark.slow
def test_three_workers_take_uneven_shares_after_two(tmp_path, shards):
    """A checkpoint of 2 workers resumes on 3, which cannot split 8 images evenly: they take 4 + 2 + 2
    (minibatch-std pairs), the run still advances 8 images a step, and each rank's reader delivers its share."""
    args = lambda kimg: (loop_config(kimg, "run.batch_size=8", "run.log_kimg=0.008", "run.checkpoint_kimg=0.016",
                                     "run.snapshot_kimg=1").to_dict(), shards, str(tmp_path), "ddp", 0)
    run_on_workers(train_on_worker, 2, args=args(0.016))
    lines = run_on_workers(train_on_worker, 3, args=args(0.032))
    assert any("8 images per step = 4 + 2 + 2 over 3 workers, in micro-batches of 2 (2 accumulation steps)" in line
               for line in lines[0])
    assert any("saved by 2 workers, now 3" in line for line in lines[2])
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [(r["kimg"], r["world_size"], r["accumulation_steps"]) for r in records] == [
        (0.008, 2, 2), (0.016, 2, 2), (0.024, 3, 2), (0.032, 3, 2)]
    assert [[rank["images"] for rank in r["ranks"]] for r in records] == [[4, 4], [4, 4], [4, 2, 2], [4, 2, 2]]
    assert CheckpointStore(str(tmp_path)).latest().world_size == 3


def poison_steps(monkeypatch, steps: set[int]):
    """NaN in one real image at the given step indices: D's phases of those steps are skipped."""
    from eg3d.training.trainer import Trainer

    original = Trainer.train_step

    def train_step(self, real_img, real_c):
        if self.step_index in steps:
            real_img = real_img.clone()
            real_img[0, 0, 0, 0] = float("nan")
        original(self, real_img, real_c)

    monkeypatch.setattr(Trainer, "train_step", train_step)


def published(run_url) -> list[int]:
    return [c.nimg for c in CheckpointStore(str(run_url)).published()]


def test_a_diverged_run_stops_and_names_the_newest_good_checkpoint(tmp_path, shards):
    """R1 weighted by 1e300 overflows D's gradients whenever Dreg runs (every step here), from the
    resumed checkpoint on: the run stops after run.max_nonfinite_steps steps, and the checkpoint that
    fell due meanwhile (at 16 images) neither is written nor prunes the good one."""
    run_url = tmp_path / "run"
    train(loop_config(0.008, "run.keep_checkpoints=1"), manifest_url=shards, run_url=run_url, log=quiet)
    assert published(run_url) == [8]
    diverging = loop_config(0.04, "run.keep_checkpoints=1", "loss.r1_gamma=1e300", "loss.r1_interval=1",
                            "run.max_nonfinite_steps=3")
    with pytest.raises(TrainingDiverged) as stopped:
        train(diverging, manifest_url=shards, run_url=run_url, log=quiet)
    [checkpoint] = CheckpointStore(str(run_url)).published()
    assert checkpoint.nimg == 8
    message = str(stopped.value)
    assert message.startswith("training diverged: 3 consecutive optimizer steps had non-finite gradients")
    assert "(steps 2..4, the last at 0.020 kimg, 20 images seen; run.max_nonfinite_steps is 3)" in message
    assert f"the newest checkpoint before the divergence is {checkpoint.manifest_url} (0.008 kimg)" in message
    assert "--set optimizer.g_lr=0.0025 --set optimizer.d_lr=0.002" in message  # half of tiny's
    records = log_records(run_url)
    assert [(r["kimg"], r["nonfinite_streak"]) for r in records] == [(0.004, 0), (0.008, 0), (0.012, 1), (0.016, 2),
                                                                    (0.02, 3)]
    assert records[-1]["skipped_steps"] == 3

    # The advice works: the same run with a sane R1 weight resumes from that checkpoint and finishes.
    lines = []
    train(loop_config(0.016, "run.keep_checkpoints=1", "loss.r1_interval=1"), manifest_url=shards,
          run_url=run_url, log=lines.append)
    assert any("resumed from" in line and "0.008 kimg" in line for line in lines)
    assert published(run_url) == [16]


def test_a_checkpoint_due_during_skipped_steps_waits_for_a_finite_step(tmp_path, shards, monkeypatch):
    poison_steps(monkeypatch, {3})  # the step that ends at 16 images, when a checkpoint falls due
    trainer = train(loop_config(0.024, "run.keep_checkpoints=10", "run.max_nonfinite_steps=2"),
                    manifest_url=shards, run_url=tmp_path, log=quiet)
    assert published(tmp_path) == [24, 20, 8]  # 16 held back, written at the next finite step
    assert trainer.nimg == 24 and trainer.skipped_steps["D"] == 1 and trainer.nonfinite_streak == 0


def test_max_nonfinite_steps_zero_never_stops(tmp_path, shards, monkeypatch):
    poison_steps(monkeypatch, set(range(100)))
    trainer = train(loop_config(0.016, "run.max_nonfinite_steps=0"), manifest_url=shards, run_url=tmp_path, log=quiet)
    assert trainer.nimg == 16 and trainer.nonfinite_streak == 4
    assert published(tmp_path) == []  # every step was skipped in part: no checkpoint of that state


def flip_a_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))  # same size: only the SHA-256 tells


def test_a_damaged_newest_checkpoint_falls_back_to_the_newest_intact_one(tmp_path, shards):
    from eg3d.training.loop import NoIntactCheckpoint

    run = lambda kimg: loop_config(kimg, "run.checkpoint_kimg=0.004", "run.snapshot_kimg=1", "metrics.num_generated=0")
    train(run(0.008), manifest_url=shards, run_url=tmp_path, log=quiet)
    store = CheckpointStore(str(tmp_path))
    eight, four = store.published()
    flip_a_byte(tmp_path / "checkpoints" / eight.manifest["folder"] / "trainer.pt")
    lines = []
    train(run(0.012), manifest_url=shards, run_url=tmp_path, log=lines.append)
    aside = eight.manifest_url + ".damaged"
    assert (f"checkpoint {eight.manifest_url} is damaged ({eight.folder_url}/trainer.pt: content does not match the "
            f"SHA-256 in {eight.manifest_url}); it is kept, set aside as {aside}, and the run resumes from the newest "
            f"intact checkpoint, {four.manifest_url}, instead") in lines
    assert any(line.startswith(f"resumed from {four.manifest_url} at 0.004 kimg") for line in lines)
    assert published(tmp_path) == [12, 8, 4]  # 8 trained again; keep_checkpoints=3 does not count the damaged one
    assert (tmp_path / "checkpoints" / eight.manifest["folder"] / "trainer.pt").exists()
    assert json.loads((tmp_path / "checkpoints" / (eight.manifest["folder"] + ".json.damaged")).read_text())[
        "damaged"].endswith("trainer.pt: content does not match the SHA-256 in " + eight.manifest_url)

    # None intact: an error that lists them all, and still nothing deleted.
    for checkpoint in store.published():
        flip_a_byte(tmp_path / "checkpoints" / checkpoint.manifest["folder"] / "data-rank0000.json")
    with pytest.raises(NoIntactCheckpoint) as stopped:
        train(run(0.016), manifest_url=shards, run_url=tmp_path, log=quiet)
    message = str(stopped.value)
    assert message.startswith(f"no intact checkpoint in {store.url}: ")
    assert message.count(".json.damaged (") == 4 and "another --name" in message
    assert len(list((tmp_path / "checkpoints").glob("*.json.damaged"))) == 4 and store.published() == []


@pytest.mark.slow
def test_a_file_only_rank_1_reads_decides_for_every_rank(tmp_path, shards):
    """Rank 1 alone reads data-rank0001.json: its mismatch makes both workers fall back together."""
    args = lambda kimg: (loop_config(kimg, "run.checkpoint_kimg=0.004", "run.snapshot_kimg=1",
                                     "metrics.num_generated=0").to_dict(), shards, str(tmp_path), "ddp", 0)
    run_on_workers(train_on_worker, 2, args=args(0.008))
    eight, four = CheckpointStore(str(tmp_path)).published()
    flip_a_byte(tmp_path / "checkpoints" / eight.manifest["folder"] / "data-rank0001.json")
    lines = run_on_workers(train_on_worker, 2, args=args(0.012))
    assert any(line.startswith(f"checkpoint {eight.manifest_url} is damaged ({eight.folder_url}/data-rank0001.json")
               for line in lines[0])
    assert all(any(line.startswith(f"resumed from {four.manifest_url}") for line in rank) for rank in lines)
    assert published(tmp_path) == [12, 8, 4]


def test_a_full_disk_stops_the_run_and_names_the_intact_checkpoint(tmp_path, shards, monkeypatch):
    """ENOSPC at the checkpoint of 8 images, then at the snapshot of 8 images (written after its checkpoint)."""
    import errno

    from dataloading import storage
    from eg3d.training.loop import StorageFull

    run = loop_config(0.008, "run.checkpoint_kimg=0.004", "run.snapshot_kimg=0.008", "metrics.num_generated=0")
    real_write = storage.write_bytes_atomic
    full_at = ["checkpoints/000000008-"]

    def full_disk(url, data):
        if full_at[0] in url:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(url, data)

    monkeypatch.setattr(storage, "write_bytes_atomic", full_disk)
    with pytest.raises(StorageFull) as stopped:
        train(run, manifest_url=shards, run_url=tmp_path, log=quiet)
    [four] = CheckpointStore(str(tmp_path)).published()
    message = str(stopped.value)
    assert message.startswith(f"disk full: no space left on the device writing {tmp_path}/checkpoints/000000008-")
    assert "/data-rank0000.json (" in message and "bytes needed), for the checkpoint at 0.008 kimg" in message
    assert f"The newest checkpoint, {four.manifest_url} (0.004 kimg), is intact" in message
    assert "run the same command again: it resumes from the newest checkpoint" in message
    assert [p.name[:10] for p in (tmp_path / "checkpoints").iterdir()] == ["000000004-"] * 2  # no half-written one

    full_at[0] = "snapshots/snapshot-000000008/"
    with pytest.raises(StorageFull) as stopped:
        train(run, manifest_url=shards, run_url=tmp_path, log=quiet)
    eight = CheckpointStore(str(tmp_path)).latest()
    assert eight.nimg == 8 and eight.manifest["snapshot_due"]
    assert f"for the snapshot at 0.008 kimg. The newest checkpoint, {eight.manifest_url} (0.008 kimg), is intact" \
        in str(stopped.value)
    full_at[0] = "no longer full"
    train(run, manifest_url=shards, run_url=tmp_path, log=quiet)  # nothing to train: the resume exports it
    assert (tmp_path / "snapshots/snapshot-000000008/config.json").exists()


def test_checkpoint_minutes_checkpoints_by_the_clock_and_a_resume_says_what_is_redone(tmp_path, shards):
    by_clock = loop_config(0.012, "run.checkpoint_kimg=1", "run.snapshot_kimg=1", "metrics.num_generated=0",
                           "run.keep_checkpoints=10", "run.checkpoint_minutes=1e-9")  # due at every step
    train(by_clock, manifest_url=shards, run_url=tmp_path, log=quiet)
    store = CheckpointStore(str(tmp_path))
    twelve, eight, _ = store.published()
    assert [twelve.nimg, eight.nimg] == [12, 8]  # by checkpoint_kimg alone, only the end (12) would have one

    (tmp_path / "checkpoints" / (twelve.manifest["folder"] + ".json")).unlink()  # as if it crashed before publishing
    reached = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])
    minutes = (reached["timestamp"] - eight.manifest["created_unix"]) / 60
    lines = []
    train(by_clock, manifest_url=shards, run_url=tmp_path, log=lines.append)
    assert (f"resuming at 0.008 kimg: the previous attempt had reached at least 0.012 kimg (log.jsonl), so at least 4 "
            f"images (0.004 kimg, about {minutes:.1f} minutes of its training) are trained again") in lines


def test_a_resume_that_would_jump_the_rendering_resolution_is_refused(tmp_path, shards):
    from eg3d.training.loop import ResumeRefused, resolution_jump

    run = lambda kimg, *extra: loop_config(kimg, "metrics.num_generated=0", "run.snapshot_kimg=1", *extra)
    train(run(0.008), manifest_url=shards, run_url=tmp_path, log=quiet)  # 16 throughout
    stage2 = ("rendering.neural_rendering_resolution_final=64", "rendering.neural_rendering_resolution_fade_kimg=0.004")
    with pytest.raises(ResumeRefused) as refused:
        train(run(0.016, *stage2), manifest_url=shards, run_url=tmp_path, log=quiet)
    message = str(refused.value)
    assert message.startswith(f"{CheckpointStore(str(tmp_path)).latest().manifest_url}: "
                              "rendering.neural_rendering_resolution_final=64 (the run's: null), "
                              "rendering.neural_rendering_resolution_fade_kimg=0.004 (the run's: 1000.0): at 0.008 "
                              "kimg, where this run resumes, the neural rendering resolution would jump from 16 to 64")
    assert f"--init-from {tmp_path} --name NEW_NAME" in message and isinstance(refused.value, ValueError)
    assert published(tmp_path) == [8]
    # A change that continues smoothly from where the run is: 16 + (64 - 16) * 0.008 / 1000 rounds to 16.
    saved = run(0.008).to_dict()
    assert resolution_jump(saved, run(0.008, stage2[0]), 8) is None
    assert "would jump from 16 to 40" in resolution_jump(saved, run(0.008, *stage2), 2)  # halfway: rint(16/2 + 64/2)


@pytest.mark.slow
def test_a_checkpoint_resumes_under_the_other_backend(tmp_path, shards):
    """ZeRO 1 on two workers, then ddp on one (once KeyError: 'opt_G'), then ZeRO 1 on two again (once a missing
    optimizer-rank0000.pt): the optimizer state goes along both ways and the run continues on its schedule."""
    pytest.importorskip("deepspeed")
    args = lambda kimg, backend, zero_stage: (loop_config(kimg).to_dict(), shards, str(tmp_path), backend, zero_stage)
    run_on_workers(train_on_worker, 2, args=args(0.008, "deepspeed", 1))
    [lines] = run_on_workers(train_on_worker, 1, args=args(0.016, "ddp", 0))
    assert any("resumed from" in line and "saved by 2 workers, now 1" in line for line in lines), lines
    lines = run_on_workers(train_on_worker, 2, args=args(0.024, "deepspeed", 1))
    assert any("resumed from" in line for line in lines[0]), lines[0]
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [(r["kimg"], r["world_size"]) for r in records] == [
        (0.004, 2), (0.008, 2), (0.012, 1), (0.016, 1), (0.02, 2), (0.024, 2)]


def test_a_truncated_newest_manifest_is_set_aside_and_named(tmp_path, shards):
    """`truncate -s 50` on the newest manifest: the resume names it, sets it aside and uses the older checkpoint;
    with every manifest cut short, the error lists each of them."""
    from eg3d.training.loop import NoIntactCheckpoint

    run = lambda kimg: loop_config(kimg, "run.checkpoint_kimg=0.004", "run.snapshot_kimg=1", "metrics.num_generated=0")
    train(run(0.008), manifest_url=shards, run_url=tmp_path, log=quiet)
    eight, four = CheckpointStore(str(tmp_path)).published()
    os.truncate(eight.manifest_url, 50)
    lines = []
    train(run(0.012), manifest_url=shards, run_url=tmp_path, log=lines.append)
    aside = eight.manifest_url + ".damaged"
    assert any(line.startswith(f"checkpoint {eight.manifest_url} is damaged (its manifest is not JSON (")
               and line.endswith(f"); it is kept, set aside as {aside}, and the run resumes from the newest intact "
                                 f"checkpoint, {four.manifest_url}, instead") for line in lines), lines
    assert any(line.startswith(f"resumed from {four.manifest_url} at 0.004 kimg") for line in lines)
    assert json.loads(Path(aside).read_text())["damaged"].startswith("its manifest is not JSON (")

    for checkpoint in CheckpointStore(str(tmp_path)).published():
        os.truncate(checkpoint.manifest_url, 50)
    with pytest.raises(NoIntactCheckpoint) as stopped:
        train(run(0.016), manifest_url=shards, run_url=tmp_path, log=quiet)
    assert str(stopped.value).count("(its manifest is not JSON (") == 4, stopped.value
    assert len(list((tmp_path / "checkpoints").glob("*.json.damaged"))) == 4
