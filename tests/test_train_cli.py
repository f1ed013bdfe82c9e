"""The `python -m eg3d.train` entrypoint end to end on a micro configuration, and EMA snapshots."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model_helpers import MICRO_OVERRIDES, micro_config
from dataloading.synthetic import generate_dataset
from eg3d.networks.snapshot import load_generator, render
from eg3d.train import main as train_main, prepare_data
from eg3d.training.checkpoints import CheckpointStore
from s3_fixtures import BUCKET, moto_server, no_aws_credentials  # noqa: F401 - the fixtures

ROOT = Path(__file__).resolve().parent.parent


def cli_args(storage, kimg, *extra, name="run"):
    overrides = MICRO_OVERRIDES + ["data.synthetic_count=12", "run.log_kimg=0.004", "run.checkpoint_kimg=0.008",
                                   "run.snapshot_kimg=0.008", "run.keep_checkpoints=2"]
    return ["--preset", "tiny", "--storage", str(storage), "--name", name, "--kimg", str(kimg)] + \
        [a for o in overrides for a in ("--set", o)] + list(extra)


def log_records(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


@pytest.mark.slow
def test_train_writes_logs_checkpoints_snapshots_and_resumes(tmp_path, capfd):
    """The embedded default's path (local Ray, synthetic data, one worker), then the same command resumes."""
    out = tmp_path / "run"
    assert train_main(cli_args(tmp_path, 0.008)) == 0
    printed = "".join(capfd.readouterr())
    assert f"building shards of {out / 'synthetic-data'} into {out / 'shards'}" in printed
    assert "starting a local Ray with token authentication" in printed
    assert "kimg 0.008/0.008 (100.0%)" in printed
    # Ray's warning about token auth and the preemption watcher's error-level notice are not shown.
    assert "Token authentication is enabled" not in printed and "PreemptionWatcher" not in printed
    assert (out / "synthetic-data" / "dataset.json").is_file()
    assert (out / "shards" / "manifest.json").is_file()
    records = log_records((out / "log.jsonl").read_text())
    assert [r["kimg"] for r in records] == [0.004, 0.008]
    for key in ("loss/G", "loss/D", "scores/real", "scores/fake", "blur_sigma", "images_per_second"):
        assert np.isfinite(records[-1][key]), key
    assert CheckpointStore(str(out)).latest().nimg == 8

    assert train_main(cli_args(tmp_path, 0.008)) == 0  # the same command again: finished, no worker starts
    printed = "".join(capfd.readouterr())
    assert f"{out} has already trained its 0.008 kimg (its newest checkpoint is at 0.008 kimg): nothing to do; " \
           f"pass a larger --kimg" in printed and "starting" not in printed

    assert train_main(cli_args(tmp_path, 0.024)) == 0  # the same command with a longer target resumes
    printed = "".join(capfd.readouterr())
    assert f"using the shards already built in {out / 'shards'}" in printed and "building shards" not in printed
    records = log_records((out / "log.jsonl").read_text())
    assert [r["kimg"] for r in records] == [0.004, 0.008, 0.012, 0.016, 0.02, 0.024]
    assert [c.nimg for c in CheckpointStore(str(out)).published()] == [24, 16]  # keep 2
    snapshots = sorted(p.name for p in (out / "snapshots").iterdir())
    assert snapshots == ["snapshot-000000008", "snapshot-000000016", "snapshot-000000024"]  # never deleted

    # A snapshot loads with one call, without training state, and renders exactly what G_ema renders.
    G = load_generator(out / "snapshots" / "snapshot-000000024")
    grid = Image.open(out / "snapshots" / "snapshot-000000024" / "grid.png")
    assert grid.size == (10 * 32, 4 * 32)  # 5 cameras x (image + depth), 4 latent codes
    state = CheckpointStore(str(out)).latest().load_torch("trainer.pt")
    for name, value in G.state_dict().items():
        assert torch.equal(value, state["G_ema"][name]), name
    z = torch.randn(2, G.model_config.z_dim)
    c = torch.tensor(json.loads((out / "synthetic-data" / "dataset.json").read_text())["labels"][0][1]).expand(2, 25)
    a = render(G, z, c, truncation_psi=0.7)
    b = render(G, z, c, truncation_psi=0.7)
    assert torch.equal(a["image"], b["image"])  # deterministic: constant noise, no jitter in eval
    assert a["image"].shape == (2, 3, 32, 32) and a["image_depth"].shape == (2, 1, 16, 16)


def test_dataset_resolution_mismatch_names_the_dataset(tmp_path, capsys):
    data = tmp_path / "data"
    generate_dataset(data, count=2, resolution=16, seed=0)
    assert train_main(cli_args(tmp_path / "run", 0.004, "--data", str(data))) == 2
    error = capsys.readouterr().err
    assert str(data) in error and "images are 16x16, but preset tiny trains at 32x32" in error
    assert "python -m dataloading.convert DATASET OUT --resolution 32" in error
    assert not (tmp_path / "run" / "checkpoints").exists()


def no_launch(*args, **kwargs):
    raise AssertionError("the data should have been refused before any worker started")


def relabel(data, change) -> None:
    """Apply `change` to every label of the dataset.json in `data` (a float64 [N,25] array in place)."""
    metadata = json.loads((data / "dataset.json").read_text())
    labels = np.array([label for _, label in metadata["labels"]])
    change(labels)
    metadata["labels"] = [[name, label.tolist()] for (name, _), label in zip(metadata["labels"], labels)]
    (data / "dataset.json").write_text(json.dumps(metadata))


def opengl_axes(labels: np.ndarray) -> None:
    labels[:, [1, 2, 5, 6, 9, 10]] *= -1  # cam2world columns 1 and 2: the cameras look away from the object


def six_units_away(labels: np.ndarray) -> None:
    labels[:, [3, 7, 11]] *= 6 / 2.7  # camera centres moved out along their rays, from radius 2.7 to 6


def relabelled_dataset(tmp_path, monkeypatch, change):
    """Four synthetic images whose labels went through `change`; launching workers fails the test."""
    import cluster.launch

    monkeypatch.setattr(cluster.launch, "launch", no_launch)
    data = tmp_path / "data"
    generate_dataset(data, count=4, resolution=32, seed=0)
    relabel(data, change)
    return data


def test_data_with_opengl_cameras_is_refused_with_the_build_summary(tmp_path, capsys, monkeypatch):
    data = relabelled_dataset(tmp_path, monkeypatch, opengl_axes)
    assert train_main(cli_args(tmp_path / "run", 0.004, "--data", str(data))) == 2
    error = capsys.readouterr().err
    assert "4 of 4 cameras see none of the tri-plane box" in error and "python -m dataloading.convert" in error
    assert "4 of 4 samples rejected, by kind:\n  camera sees nothing: 4\n    00000/img00000000.png: camera" in error
    assert "... and 1 more" in error and "rejects.json" in error


def test_cameras_outside_the_preset_ray_range_are_refused_before_training(tmp_path, capsys, monkeypatch):
    data = relabelled_dataset(tmp_path, monkeypatch, six_units_away)
    # The build checks rays at any depth, which still hit the box from 6 units away; tiny samples 2.25..3.3.
    assert train_main(cli_args(tmp_path / "run", 0.004, "--data", str(data))) == 2
    out, error = capsys.readouterr()
    assert "4 samples in 1 shards" in out and "0 see nothing" in out  # the build's summary
    assert "rendering.ray_start=2.25, rendering.ray_end=3.3, rendering.box_warp=1.0 (preset tiny" in error
    assert "4 of 4 cameras see none of the tri-plane box [-0.5, 0.5]^3, by samples at depths 2.25..3.3" in error
    assert "sit 6.00 from the origin" in error and "scale the camera positions" in error


def test_a_missing_data_path_is_reported_as_missing(tmp_path, capsys):
    missing = tmp_path / "no-such-dataset"
    assert train_main(cli_args(tmp_path / "runs", 0.004, "--data", str(missing))) == 2
    captured = capsys.readouterr()
    assert f"--data {missing}: no such file or folder" in captured.err
    assert "building shards" not in captured.out
    assert not (tmp_path / "runs").exists()


def test_changed_data_under_a_run_is_refused_with_the_ways_out(tmp_path, capsys):
    data, run = tmp_path / "data", tmp_path / "run"
    generate_dataset(data, count=3, resolution=32, seed=0)
    prepare_data(micro_config(), str(data), str(run))
    first = json.loads((data / "dataset.json").read_text())["labels"][0][0]
    Image.new("RGB", (32, 32), (9, 9, 9)).save(data / first)  # the user fixes an image
    capsys.readouterr()
    with pytest.raises(ValueError) as error:
        prepare_data(micro_config(), str(data), str(run))
    message = str(error.value)
    assert f"--data {data} is not the data this run was sharded from" in message and "source_sha256" in message
    assert "use a new --name" in message and f"delete {run / 'shards'}" in message
    assert "using the shards" not in capsys.readouterr().out


def test_shards_are_built_once_and_a_rerun_says_it_uses_them(tmp_path, capsys):
    data, run = tmp_path / "data", tmp_path / "run"
    generate_dataset(data, count=3, resolution=32, seed=0)
    capsys.readouterr()
    assert prepare_data(micro_config(), str(data), str(run)) == str(run / "shards" / "manifest.json")
    first = capsys.readouterr()
    assert f"building shards of {data} into {run / 'shards'}" in first.out
    assert "3/3" in first.err  # the progress bar
    prepare_data(micro_config(), str(data), str(run))
    second = capsys.readouterr()
    assert f"using the shards already built in {run / 'shards'}" in second.out
    assert "building" not in second.out and "3/3" not in second.err


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["ddp", "deepspeed"])
def test_two_workers_from_s3_shards_to_s3_snapshots(tmp_path, moto_server, backend):
    """Two Ray Train workers read s3:// shards and write checkpoints, snapshots and the log to s3://."""
    if backend == "deepspeed":
        pytest.importorskip("deepspeed")
    from dataloading import storage
    from dataloading.build import build

    data = tmp_path / "data"
    generate_dataset(data, count=8, resolution=32, seed=0)
    shards = f"s3://{BUCKET}/train-cli/shards"
    if not storage.exists(shards + "/manifest.json"):
        build(str(data), shards, workers=1, progress=False)
    run = f"s3://{BUCKET}/train-cli/runs/{backend}"
    args = cli_args(f"s3://{BUCKET}/train-cli/runs", 0.016, "--data", shards, "--workers", "2", "--backend", backend,
                    "--set", "distributed.zero_stage=1" if backend == "deepspeed" else "distributed.zero_stage=0",
                    name=backend)
    assert train_main(args) == 0
    records = log_records(storage.read_bytes(run + "/log.jsonl").decode())
    assert [(r["kimg"], r["world_size"]) for r in records] == [(0.004, 2), (0.008, 2), (0.012, 2), (0.016, 2)]
    checkpoint = CheckpointStore(run).latest()
    assert checkpoint.nimg == 16 and checkpoint.world_size == 2
    expected_files = {"trainer.pt", "quality.json", "data-rank0000.json", "data-rank0001.json"}
    if backend == "deepspeed":
        expected_files |= {"optimizer-rank0000.pt", "optimizer-rank0001.pt"}
    assert set(checkpoint.manifest["files"]) == expected_files
    for nimg in (8, 16):
        listing = storage.list(f"{run}/snapshots/snapshot-{nimg:09d}")
        assert set(listing) == {"G_ema.safetensors", "config.json", "grid.png"}
    assert not (tmp_path / "shards").exists()  # read in place, not copied


def test_snapshot_without_weights_is_a_clear_error(tmp_path):
    from eg3d.networks.generator import TriPlaneGenerator
    from eg3d.networks.snapshot import save_snapshot

    with pytest.raises(FileNotFoundError, match="config.json"):  # an empty folder: no snapshot at all
        load_generator(tmp_path)
    config = micro_config()
    save_snapshot(TriPlaneGenerator(config.model, config.rendering), config, tmp_path)
    (tmp_path / "G_ema.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="G_ema.safetensors"):
        load_generator(tmp_path)


@pytest.mark.slow
def test_a_diverged_run_exits_non_zero_with_the_message_and_is_not_retried(tmp_path, capsys):
    """Through local Ray: the workers stop after run.max_nonfinite_steps steps whose R1 gradients
    overflow, Ray Train does not restart them (that would only diverge again), and the command prints
    the divergence and exits with DIVERGED_EXIT_CODE."""
    from eg3d.train import DIVERGED_EXIT_CODE

    args = cli_args(tmp_path, 0.04, "--set", "loss.r1_gamma=1e300", "--set", "loss.r1_interval=1",
                    "--set", "run.max_nonfinite_steps=2", "--set", "distributed.max_failures=3")
    assert train_main(args) == DIVERGED_EXIT_CODE == 3
    error = capsys.readouterr().err
    assert "error: training diverged: 2 consecutive optimizer steps had non-finite gradients (steps 0..1, the last " \
           "at 0.008 kimg, 8 images seen; run.max_nonfinite_steps is 2); no checkpoint was written" in error
    starts = json.loads((tmp_path / "run" / "starts.json").read_text())
    assert len(starts) == 1  # one start of the worker group: no retry
    assert CheckpointStore(str(tmp_path / "run")).latest() is None


def test_saved_images_clamp_the_unbounded_super_resolution_output():
    from eg3d.networks.sample_grid import to_uint8

    # The super-resolution output leaves [-1, 1] (-1.59 and 1.87 seen); saved pixels saturate, never wrap.
    image = torch.tensor([-1.59, -1.0, 0.0, 0.5, 1.0, 1.87]).reshape(1, 1, 1, 6).expand(1, 3, 1, 6)
    assert to_uint8(image)[0, 0, :, 0].tolist() == [0, 0, 128, 191, 255, 255]  # (x + 1) * 127.5, rounded


def wait_for(predicate, timeout: float, process) -> None:
    """Poll until `predicate()` holds; fail with the process's output if it ends or time runs out first."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"gave up waiting (exit {process.poll()}):\n{process.communicate()[0][-4000:]}")
        time.sleep(0.5)


BYSTANDER = """
import signal, sys, time, ray
ray.init(_temp_dir=sys.argv[1], include_dashboard=False)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # ray.init's atexit shutdown stops its processes
print("up", flush=True)
time.sleep(600)
"""


@pytest.fixture
def another_ray(tmp_path_factory):
    """An unrelated local Ray on this machine, in its own temporary folder; stopped by its own driver."""
    process = subprocess.Popen([sys.executable, "-c", BYSTANDER, str(tmp_path_factory.mktemp("ray"))],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "up\n"
    yield process
    process.terminate()
    process.wait(60)


@pytest.mark.slow
def test_ctrl_c_stops_the_run_names_its_checkpoint_and_exits_130(tmp_path, another_ray):
    """A local run beside another local Ray, interrupted once it has a checkpoint: the message says where it
    is and how to resume; Ray Train's placement-group cleaner finds its own cluster, not several."""
    args = cli_args(tmp_path, 1, "--set", "run.checkpoint_kimg=0.004", "--set", "run.snapshot_kimg=1")
    process = subprocess.Popen([sys.executable, "-m", "eg3d.train", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    checkpoints = tmp_path / "run" / "checkpoints"
    wait_for(lambda: checkpoints.is_dir() and any(checkpoints.glob("*.json")), 300, process)
    process.send_signal(signal.SIGINT)
    output = process.communicate(timeout=120)[0]
    newest = CheckpointStore(str(tmp_path / "run")).latest()
    assert process.returncode == 130, output[-4000:]
    assert f"stopped: {tmp_path / 'run'} was interrupted; its newest checkpoint is {newest.manifest_url} " \
           f"({newest.nimg / 1000:g} kimg), and the same command resumes from it" in output
    assert not (tmp_path / "run" / "lease.json").exists()  # released
    assert "Found multiple active Ray instances" not in output and "Traceback" not in output
    assert another_ray.poll() is None  # untouched


@pytest.mark.parametrize("storage, expected", [
    ("s3:/bucket/runs", "--storage s3:/bucket/runs: malformed URL; expected s3://bucket/runs"),
    ("s4://bucket/runs", "--storage s4://bucket/runs: unknown storage protocol 's4'; expected a local folder "
                         "or s3://bucket/prefix"),
    ("s3://", "--storage s3://: no bucket; expected s3://bucket/prefix"),
    ("gs://bucket/runs", "--storage gs://bucket/runs: gs:// is not supported here; expected a local folder or "
                         "s3://bucket/prefix"),
    ("--init-from s4://bucket/x.pkl", "--init-from s4://bucket/x.pkl: unknown storage protocol 's4'; expected a "
                                      "local path (file or folder) or an fsspec URL such as s3://bucket/key"),
])
def test_a_malformed_storage_url_is_one_line_before_anything_starts(tmp_path, monkeypatch, capsys, storage, expected):
    import cluster.launch

    monkeypatch.setattr(cluster.launch, "launch", no_launch)
    monkeypatch.chdir(tmp_path)
    location = storage.split(" ") if storage.startswith("--") else ["--storage", storage]
    assert train_main([*location, "--set", "telemetry.metrics_port=0"]) == 2
    assert capsys.readouterr().err == f"error: {expected}\n"
    assert list(tmp_path.iterdir()) == []  # no folder named "s3:" holding a run


def test_s3_without_credentials_names_the_variables_to_set(no_aws_credentials, monkeypatch, capsys):
    import cluster.launch

    monkeypatch.setattr(cluster.launch, "launch", no_launch)
    assert train_main(["--storage", "s3://bucket/runs", "--set", "telemetry.metrics_port=0"]) == 2
    assert capsys.readouterr().err == (
        "error: --storage s3://bucket/runs: no AWS credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
        "(and AWS_SESSION_TOKEN for temporary credentials), or AWS_PROFILE for a profile in the AWS credentials "
        "file; AWS_ENDPOINT_URL for an S3-compatible store other than AWS\n")


def published_run(run, config) -> None:
    """A run folder as a resume finds it: the config it was trained with and one complete checkpoint (at 8 images)."""
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.json").write_text(json.dumps(config.to_dict()))
    store = CheckpointStore(str(run))
    store.publish("000000008-test", nimg=8, world_size=1, keep=3,
                  files=store.write_files("000000008-test", {"trainer.pt": b"weights"}))


def test_a_resume_with_another_architecture_names_every_differing_field(tmp_path, monkeypatch, capsys):
    import cluster.launch

    monkeypatch.setattr(cluster.launch, "launch", no_launch)
    published_run(tmp_path / "run", micro_config())
    args = cli_args(tmp_path, 0.016, "--set", "model.plane_channels=4", "--set", "model.sr_channels=[8,8]")
    assert train_main(args) == 2
    error = capsys.readouterr().err
    assert error == (f"error: {tmp_path / 'run'} resumes from its checkpoints, whose networks have another "
                     f"architecture ({tmp_path / 'run' / 'config.json'}): model.plane_channels is 8 in the run, 4 now; "
                     f"model.sr_channels is [16, 8] in the run, [8, 8] now. Resume it with its own --preset and "
                     f"model.* settings, train the new architecture under a new --name, or fine-tune from this run "
                     f"with --name NEW --init-from {tmp_path / 'run'}\n")
    assert not (tmp_path / "run" / "shards").exists()


def test_a_resume_whose_rendering_resolution_would_jump_is_refused_before_any_worker(tmp_path, monkeypatch, capsys):
    """The run trained at 16 (no second stage); a resume at 8 images asking for 32 after a 0.004-kimg fade would
    render at 32 at once, so the driver refuses it as the workers would, and points at --init-from."""
    import cluster.launch

    monkeypatch.setattr(cluster.launch, "launch", no_launch)
    published_run(tmp_path / "run", micro_config())
    args = cli_args(tmp_path, 0.016, "--set", "rendering.neural_rendering_resolution_final=32",
                    "--set", "rendering.neural_rendering_resolution_fade_kimg=0.004")
    assert train_main(args) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {tmp_path / 'run'}: rendering.neural_rendering_resolution_final=32 (the run's: "
                            f"null), rendering.neural_rendering_resolution_fade_kimg=0.004 (the run's: 1000.0): at "
                            f"0.008 kimg, where this run resumes, the neural rendering resolution would jump from 16 "
                            f"to 32")
    assert f"--init-from {tmp_path / 'run'} --name NEW_NAME" in error
    assert not (tmp_path / "run" / "shards").exists()


def test_a_finished_run_whose_final_snapshot_is_missing_starts_its_workers_to_export_it(tmp_path):
    from eg3d.train import finished_checkpoint
    from eg3d.training.loop import snapshot_url

    config = micro_config("run.total_kimg=0.008")
    run = tmp_path / "run"
    store = CheckpointStore(str(run))
    store.publish("000000008-test", nimg=8, world_size=1, keep=3, snapshot_due=True,
                  files=store.write_files("000000008-test", {"trainer.pt": b"weights"}))
    assert finished_checkpoint(config, str(run)) is None  # crashed between the checkpoint and its snapshot
    snapshot = Path(snapshot_url(str(run), 8))
    snapshot.mkdir(parents=True)
    (snapshot / "G_ema.safetensors").write_bytes(b"half an export")
    assert finished_checkpoint(config, str(run)) is None  # its config.json, written last, is not there
    (snapshot / "config.json").write_text("{}")
    assert finished_checkpoint(config, str(run)).nimg == 8
    assert finished_checkpoint(micro_config("run.total_kimg=0.012"), str(run)) is None  # more to train


@pytest.mark.parametrize("kind, code", [("StorageFull", 1), ("NoIntactCheckpoint", 1), ("ResumeRefused", 2),
                                        ("TrainingDiverged", 3)])
def test_a_run_the_workers_stopped_is_one_line_and_its_exit_code(tmp_path, monkeypatch, capsys, kind, code):
    """What the workers' loop stops a run with (eg3d.training.loop.RunStopped) reaches the user as its message."""
    import cluster.launch
    from eg3d.training import loop

    def stopped(*args, **kwargs):
        raise getattr(loop, kind)(f"{kind} in words")

    monkeypatch.setattr(cluster.launch, "launch", stopped)
    assert train_main(cli_args(tmp_path, 0.016)) == code
    assert capsys.readouterr().err.splitlines()[-1] == f"error: {kind} in words"


@pytest.mark.parametrize("kind", ["StorageFull", "NoIntactCheckpoint", "ResumeRefused", "TrainingDiverged",
                                  "NotAStopKind"])
def test_the_launcher_raises_what_stopped_the_workers(monkeypatch, kind):
    """Rank 0's worker returns {"kind", "message"} instead of raising (Ray Train would retry a raise); the
    launcher raises that kind again, and a kind it does not know as plain RunStopped."""
    import contextlib

    import cluster.launch
    from eg3d.training import loop

    monkeypatch.setattr(cluster.launch, "ray_cluster", lambda: contextlib.nullcontext(True))
    monkeypatch.setattr(cluster.launch, "_fit", lambda *a, **k: {"kind": kind, "message": "the words"})
    with pytest.raises(loop.RunStopped, match="^the words$") as raised:
        cluster.launch.launch(micro_config(), manifest_url="m", storage_url="s", name="n")
    assert type(raised.value) is getattr(loop, kind, loop.RunStopped)


def test_sigterm_stops_the_run_as_ctrl_c_does_with_exit_143(tmp_path, monkeypatch, capsys):
    """kill, timeout, docker stop and a Kubernetes pod's deletion send SIGTERM: the driver says what the run
    left and how to resume it, exits 143 (128 + 15), releases its lease, and restores the SIGTERM handler."""
    import os
    import signal

    import eg3d.train

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
        raise AssertionError("SIGTERM did not stop the run")

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(eg3d.train, "train", terminated)
    assert train_main(cli_args(tmp_path, 0.016)) == 143
    assert capsys.readouterr().err == (f"stopped: {tmp_path / 'run'} was terminated (SIGTERM) before its first "
                                       f"checkpoint; the same command starts it again from the beginning\n")
    assert not (tmp_path / "run" / "lease.json").exists()
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.slow
def test_sigterm_after_ray_init_still_reaches_the_driver(tmp_path):
    """ray.init installs a native failure-signal handler that dumps a stack and aborts on SIGTERM (exit 134);
    the driver installs its own again after it."""
    script = ("import os, signal, time\n"
              "from cluster.launch import ray_cluster\n"
              "with ray_cluster():\n"
              "    try:\n"
              "        os.kill(os.getpid(), signal.SIGTERM); time.sleep(10)\n"
              "    except KeyboardInterrupt:\n"
              "        print('stopped', flush=True)\n")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parent.parent, capture_output=True,
                          text=True, timeout=180, env={**env, "PYTHONPATH": str(Path(__file__).parent.parent)})
    assert "stopped" in done.stdout and "SIGTERM received" not in done.stderr, done.stderr[-2000:]
    assert done.returncode == 0


def test_unreachable_object_storage_is_one_line_before_anything_starts(monkeypatch, capsys):
    """An endpoint nothing listens on (a typo in AWS_ENDPOINT_URL, a store that is down): the storage's own
    words on one line, exit 2, no traceback."""
    import cluster.launch

    monkeypatch.setattr(cluster.launch, "launch", no_launch)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # the discard port: refused
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()  # an earlier test's file system, made with other variables
    try:
        assert train_main(["--storage", "s3://bucket/runs", "--set", "telemetry.metrics_port=0"]) == 2
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("error: ") and "[Errno" not in error
    assert "s3://bucket/runs" in error and "127.0.0.1:9" in error


def test_a_forked_child_ends_on_sigterm_as_it_would_without_the_drivers_handler():
    """The driver's SIGTERM handler must not reach forked children (the synthetic data's and the shard build's
    process pools, whose `terminate()` sends SIGTERM): there SIGTERM ends the child (an earlier handler called a
    finished trainer's abort in the child, and the pool waited forever). In a fresh interpreter, as a driver
    is: other tests leave this process's signal state changed."""
    script = ("import multiprocessing, signal, time\n"
              "from cluster.signals import Terminated, stop_on_sigterm\n"
              "stop_on_sigterm()\n"
              "fork = multiprocessing.get_context('fork'); ready = fork.Event()\n"
              "child = fork.Process(target=lambda: (ready.set(), time.sleep(30)))\n"
              "child.start(); ready.wait(30); child.terminate(); child.join(60)  # a running child, as a pool's\n"
              "with multiprocessing.get_context('fork').Pool(2) as pool:  # __exit__ terminates its workers\n"
              "    assert pool.map(abs, [-1, -2]) == [1, 2]\n"
              "print(child.exitcode, Terminated.received)\n")
    root = Path(__file__).parent.parent
    done = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(root)})
    assert done.stdout == f"{-signal.SIGTERM} False\n", done.stderr[-2000:]


MODULES_AFTER = """
import sys
from eg3d.train import main
try:
    code = main(sys.argv[1:])
except SystemExit as stop:
    code = stop.code
print("after:", code, *sorted(m for m in ("torch", "numpy", "ray") if m in sys.modules), file=sys.stderr)
"""


@pytest.mark.parametrize("argv, code", [(["--set", "loss.r1_gamma=abc"], 2), (["--set", "loss.r1_gama=2"], 2),
                                        (["--workers", "two"], 2), (["--kimg", "-1"], 2), (["--print-config"], 0)])
def test_setting_errors_and_print_config_need_no_torch(tmp_path, argv, code):
    """A bad --set, flag or value is an error before torch (or numpy, or Ray) is imported, as is --print-config's
    whole work; nothing is written."""
    done = subprocess.run([sys.executable, "-c", MODULES_AFTER, *argv], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert done.stderr.splitlines()[-1] == f"after: {code}", done.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_preset_is_refused_before_torch_is_imported():
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "eg3d.train", "--preset", "nope"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "argument --preset: invalid choice: 'nope'" in done.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "eg3d.config" in imported and not imported & {"torch", "numpy"}


def test_help_ends_with_where_the_settings_are_documented(capsys):
    from eg3d.train import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--help"])
    ending = capsys.readouterr().out.rstrip().rpartition("\nsettings:\n")[2]
    assert "--print-config prints every one as this command resolves them" in ending
    assert 'docs/training.md ("Changing a setting")' in ending.replace("\n  ", " ")
    assert "\n## Changing a setting\n" in (ROOT / "docs" / "training.md").read_text()


def printed_settings(argv: list[str], capsys) -> tuple[list[str], list[str]]:
    """(comment lines, setting lines) that --print-config prints for `argv`."""
    assert train_main([*argv, "--print-config"]) == 0
    lines = capsys.readouterr().out.splitlines()
    return [line for line in lines if line.startswith("#")], [line for line in lines if line and line[0] != "#"]


def test_print_config_prints_every_setting_as_set_reads_it_back(tmp_path, monkeypatch, capsys):
    from eg3d.config import TrainConfig, apply_overrides
    from eg3d.config.presets import get_preset
    from eg3d.train import build_config, parse_args

    monkeypatch.chdir(tmp_path)
    argv = ["--preset", "ffhq512", "--kimg", "3", "--workers", "2:4", "--set", "loss.r1_gamma=2",
            "--set", "distributed.use_gpu=true", "--name", "mine"]
    comments, settings = printed_settings(argv, capsys)
    assert comments[0] == f"# the settings of the run {tmp_path / 'runs' / 'mine'}: preset ffhq512 with the flags " \
                          f"and --set applied"
    preset = get_preset("ffhq512")
    assert f"model.image_resolution={preset.model.image_resolution}" in settings  # the preset's
    assert f"optimizer.betas=[{preset.optimizer.betas[0]},{preset.optimizer.betas[1]}]" in settings  # JSON, no spaces
    assert {"loss.r1_gamma=2.0", "run.total_kimg=3.0", "distributed.min_workers=2", "distributed.max_workers=4",
            "distributed.use_gpu=true", "run.init_from=null"} <= set(settings)  # --set and the flags
    expected = build_config(parse_args(argv))
    assert apply_overrides(TrainConfig(preset="ffhq512"), settings) == expected  # every field, read back
    assert list(tmp_path.iterdir()) == []  # no run folder, no storage touched


def test_print_config_applies_the_init_from_adjustments_and_quotes_text_that_set_would_misread(tmp_path, monkeypatch,
                                                                                               capsys):
    from eg3d.config import TrainConfig, apply_overrides
    from eg3d.train import build_config, parse_args

    monkeypatch.chdir(tmp_path)
    argv = ["--init-from", "2024", "--set", "ema.rampup=0.1"]  # a run folder named 2024, which --set reads as a number
    comments, settings = printed_settings(argv, capsys)
    assert any(line.startswith("# starting from other weights (run.init_from)") for line in comments)
    assert any("--init-from a network pickle (.pkl): its model.* and rendering.* settings replace these when the run "
               "starts" in line for line in comments)
    assert {'run.init_from="2024"', "loss.blur_init_sigma=0.0", "ema.rampup=0.1"} <= set(settings)
    assert apply_overrides(TrainConfig(preset="tiny"), settings) == build_config(parse_args(argv), log=lambda _: None)


BATCH_RULE_NOTE = ("# --batch 256 (preset ffhq512 trains 32) scales the schedules the reference ties to optimizer "
                   "steps, and the checkpoint interval: ema.ema_kimg=80.0, loss.blur_fade_kimg=1600.0, "
                   "run.checkpoint_kimg=1600.0; the learning rates, the regularization "
                   "intervals and the other schedules stay (docs/training.md, \"Large batches: 16 to 64 GPUs\")")


def test_print_config_of_batch_256_on_16_to_64_workers_applies_the_batch_rule(tmp_path, monkeypatch, capsys):
    """The reference's rule at 256: EMA half-life 10 * 256 / 32 = 80 kimg, blur fade 200 * 256 / 32 = 1600 kimg;
    the learning rates, the lazy intervals, the fades in images and the groups of 4 as at 32."""
    from eg3d.config import TrainConfig, apply_overrides
    from eg3d.train import build_config, parse_args

    monkeypatch.chdir(tmp_path)
    argv = ["--preset", "ffhq512", "--batch", "256", "--workers", "16:64"]
    comments, settings = printed_settings(argv, capsys)
    assert BATCH_RULE_NOTE in comments
    assert {"run.batch_size=256", "ema.ema_kimg=80.0", "loss.blur_fade_kimg=1600.0", "run.checkpoint_kimg=1600.0",
            "run.snapshot_kimg=200.0", "distributed.min_workers=16",
            "distributed.max_workers=64", "ema.rampup=0.05", "optimizer.g_lr=0.0025", "optimizer.d_lr=0.002",
            "loss.r1_interval=16", "loss.density_reg_interval=4", "loss.gpc_fade_kimg=1000.0",
            "rendering.neural_rendering_resolution_fade_kimg=1000.0", "augment.ada_kimg=500.0", "augment.interval=4",
            "model.disc_mbstd_group=4", "run.micro_batch=4", "run.total_kimg=25000.0"} <= set(settings)
    assert apply_overrides(TrainConfig(preset="ffhq512"), settings) == build_config(parse_args(argv), log=lambda _: None)
    assert list(tmp_path.iterdir()) == []


def test_a_field_set_with_set_keeps_its_value_over_the_batch_rule_and_the_printout_says_so(capsys):
    comments, settings = printed_settings(["--preset", "afhq512", "--batch", "128", "--set", "ema.ema_kimg=20"], capsys)
    assert any(line.startswith("# --batch 128 (preset afhq512 trains 32) scales the schedules the reference ties to "
                               "optimizer steps, and the checkpoint interval: loss.blur_fade_kimg=800.0, run.checkpoint_kimg=800.0; kept as set "
                               "with --set: ema.ema_kimg=20.0;")
               for line in comments), comments
    assert {"ema.ema_kimg=20.0", "loss.blur_fade_kimg=800.0", "run.batch_size=128"} <= set(settings)
    # --set run.batch_size changes the batch alone: no rule, no note
    comments, settings = printed_settings(["--preset", "ffhq512", "--set", "run.batch_size=256"], capsys)
    assert {"ema.ema_kimg=10.0", "loss.blur_fade_kimg=200.0", "run.batch_size=256"} <= set(settings)
    assert not [line for line in comments if "--batch" in line]


def test_print_config_of_a_bad_setting_is_the_error(capsys):
    assert train_main(["--set", "run.total_kimg=-5", "--print-config"]) == 2
    out, error = capsys.readouterr()
    assert out == "" and error.startswith("error: config field run.total_kimg: -5")


def checkpoint_with_log(run: Path, records_kimg: list[float], minutes_after: float) -> None:
    """The run has a checkpoint at 0.008 kimg and a log with records at `records_kimg`, the last of them written
    `minutes_after` the checkpoint."""
    published_run(run, micro_config())
    created = CheckpointStore(str(run)).latest().manifest["created_unix"]
    (run / "log.jsonl").write_text("".join(
        json.dumps({"kimg": kimg, "nimg": round(kimg * 1000),
                    "timestamp": created + (60 * minutes_after if kimg == records_kimg[-1] else 0)}) + "\n"
        for kimg in records_kimg))


def test_the_driver_says_what_a_rerun_does(tmp_path):
    """From the run folder alone, before the driver takes the lease: new, started without a checkpoint, resumed
    (with the training since the checkpoint that is redone, or that it is not known), or damaged."""
    from cluster.lease import RunLease
    from eg3d.train import rerun_message

    run = tmp_path / "new"
    assert rerun_message(str(run)) == f"starting a new run in {run}"

    run = tmp_path / "killed"  # a driver killed before the first checkpoint left its lease
    RunLease(str(run)).acquire(log=lambda _: None)
    assert rerun_message(str(run)) == f"{run} has no checkpoint yet: starting again from 0"
    run = tmp_path / "crashed"  # workers that crashed before it left the log
    run.mkdir()
    (run / "log.jsonl").write_text(json.dumps({"kimg": 0.004, "nimg": 4, "timestamp": time.time()}) + "\n")
    assert rerun_message(str(run)) == f"{run} has no checkpoint yet: starting again from 0"

    run = tmp_path / "resumed"
    checkpoint_with_log(run, [0.004, 0.008, 0.012, 0.016], minutes_after=9.5)
    assert rerun_message(str(run)) == (f"resuming {run} from its checkpoint at 0.008 kimg (at least 9.5 minutes of "
                                       f"training since then will be redone: log.jsonl reaches 0.016 kimg)")
    run = tmp_path / "resumed-unknown"
    checkpoint_with_log(run, [0.004, 0.008], minutes_after=0)
    assert rerun_message(str(run)) == (f"resuming {run} from its checkpoint at 0.008 kimg (how much training since "
                                       f"then will be redone is not known: log.jsonl records nothing past it)")

    run = tmp_path / "damaged"
    published_run(run, micro_config())
    next((run / "checkpoints").glob("*/trainer.pt")).unlink()
    assert rerun_message(str(run)).startswith(f"{run} has checkpoints, but none is complete: the workers check")


def test_the_command_says_what_each_rerun_does_first(tmp_path, monkeypatch, capsys):
    """Through the command, the workers left out: exactly one of the messages, before the data is prepared; a
    finished run says only that it is done."""
    import cluster.launch

    monkeypatch.setattr(cluster.launch, "launch", lambda *args, **kwargs: None)
    run = tmp_path / "run"
    messages = ("starting a new run in", "has no checkpoint yet", "resuming ", "has already trained")

    def said(kimg: float) -> list[str]:
        assert train_main(cli_args(tmp_path, kimg)) == 0
        out = capsys.readouterr().out
        return [line for line in out.splitlines() if any(m in line for m in messages)]

    first = said(0.016)
    assert first == [f"starting a new run in {run}"]
    (run / "log.jsonl").write_text(json.dumps({"kimg": 0.004, "nimg": 4, "timestamp": time.time()}) + "\n")
    assert said(0.016) == [f"{run} has no checkpoint yet: starting again from 0"]
    checkpoint_with_log(run, [0.004, 0.008, 0.012], minutes_after=2)
    assert said(0.016) == [f"resuming {run} from its checkpoint at 0.008 kimg (at least 2.0 minutes of training "
                           f"since then will be redone: log.jsonl reaches 0.012 kimg)"]
    assert said(0.008) == [f"{run} has already trained its 0.008 kimg (its newest checkpoint is at 0.008 kimg): "
                           f"nothing to do; pass a larger --kimg to train further"]


def test_the_last_line_names_the_newest_complete_snapshot_and_a_command_to_try(tmp_path):
    from eg3d.train import done_message

    run = tmp_path / "run"
    run.mkdir()
    assert done_message(str(run)) == f"done: {run}"  # no snapshot yet
    for nimg, complete in ((4000, True), (8000, True), (12000, False)):  # 12000: config.json not written yet
        folder = run / "snapshots" / f"snapshot-{nimg:09d}"
        folder.mkdir(parents=True)
        if complete:
            (folder / "config.json").write_text("{}")
    newest = run / "snapshots" / "snapshot-000008000"
    assert done_message(str(run)) == (f"done: {run}; its newest snapshot is {newest}: try python -m eg3d.generate "
                                      f"{newest} --seeds 0-7 --out out/images (more in docs/apps.md)")


@pytest.mark.parametrize("argv, message", [
    (["--workers", "3:2"], "distributed.min_workers (3) must be <= distributed.max_workers (2) (from --workers 3:2)"),
    (["--workers", "0"], "config field distributed.min_workers: 0 is not >= 1 (expected an integer >= 1) (from "
                         "--workers 0)"),
    (["--kimg", "-1"], "config field run.total_kimg: -1 is not > 0 (expected a finite number > 0) (from --kimg -1.0)"),
    (["--set", "run.total_kimg=-1"], "config field run.total_kimg: -1 is not > 0 (expected a finite number > 0)\n"),
    # Past 8 workers the paper's batch of 32 is refused, naming the --batch that would take the range.
    (["--preset", "ffhq512", "--workers", "16:64"], "config: run.batch_size (32) makes 8 minibatch-std groups of 4 "
     "images, and each of 64 workers needs at least one; lower distributed.max_workers to 8 (--workers ...:8), raise "
     "run.batch_size to 256 or more (--batch 256, "),
    (["--preset", "ffhq512", "--workers", "9"], "each of 9 workers needs at least one; lower distributed.max_workers "
     "to 8 (--workers ...:8), raise run.batch_size to 36 or more (--batch 36, "),
    (["--preset", "afhq512", "--batch", "128", "--workers", "16:64"], "run.batch_size (128) makes 32 minibatch-std "
     "groups of 4 images, and each of 64 workers"),
    (["--preset", "afhq512", "--batch", "128", "--workers", "16:64"], "(from --batch 128, --workers 16:64)\n"),
])
def test_a_config_error_names_the_flag_that_set_the_field(argv, message, capsys):
    assert train_main(argv) == 2
    assert message in capsys.readouterr().err + "\n"
