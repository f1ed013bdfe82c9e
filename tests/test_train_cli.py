"""The `python -m eg3d.train` entrypoint end to end on a micro configuration, and EMA snapshots."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import MICRO_OVERRIDES
from dataloading.shard_reader import BACKENDS
from s3_fixtures import BUCKET, moto_server  # noqa: F401 - the fixture
from eg3d.snapshot import load_generator, render
from eg3d.synthetic import generate_dataset
from eg3d.train import main as train_main
from eg3d.training_loop import load_latest_checkpoint


def cli_args(out, kimg, *extra):
    overrides = MICRO_OVERRIDES + ["data.synthetic_count=12", "run.log_kimg=0.004", "run.checkpoint_kimg=0.008",
                                   "run.snapshot_kimg=0.008", "run.keep_checkpoints=2"]
    return ["--preset", "tiny", "--out", str(out), "--kimg", str(kimg)] + [a for o in overrides for a in ("--set", o)] \
        + list(extra)


@pytest.mark.slow
def test_train_writes_logs_checkpoints_snapshots_and_resumes(tmp_path):
    out = tmp_path / "run"
    assert train_main(cli_args(out, 0.008)) == 0
    assert (out / "synthetic-data" / "dataset.json").is_file()
    assert (out / "shards" / "manifest.json").is_file()
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["kimg"] for r in records] == [0.004, 0.008]
    for key in ("loss/G", "loss/D", "scores/real", "scores/fake", "blur_sigma", "images_per_second"):
        assert np.isfinite(records[-1][key]), key
    first = load_latest_checkpoint(out)
    assert first["trainer"]["nimg"] == 8

    assert train_main(cli_args(out, 0.024)) == 0  # the same command with a longer target resumes
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["kimg"] for r in records] == [0.004, 0.008, 0.012, 0.016, 0.02, 0.024]
    checkpoints = sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*.pt"))
    assert checkpoints == ["checkpoint-000000016.pt", "checkpoint-000000024.pt"]  # keep 2
    snapshots = sorted(p.name for p in (out / "snapshots").iterdir())
    assert snapshots == ["snapshot-000000008", "snapshot-000000016", "snapshot-000000024"]  # never deleted

    # A snapshot loads with one call, without training state, and renders exactly what G_ema renders.
    G = load_generator(out / "snapshots" / "snapshot-000000024")
    grid = Image.open(out / "snapshots" / "snapshot-000000024" / "grid.png")
    assert grid.size == (10 * 32, 4 * 32)  # 5 cameras x (image + depth), 4 latent codes
    state = load_latest_checkpoint(out)["trainer"]
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
    assert str(data) in error and "16x16" in error and "model.image_resolution is 32" in error
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_train_from_a_manifest_on_s3(tmp_path, moto_server):
    from dataloading.build import build

    data = tmp_path / "data"
    generate_dataset(data, count=8, resolution=32, seed=0)
    build(str(data), f"s3://{BUCKET}/train-cli/shards", workers=1, progress=False)
    for backend in BACKENDS:  # pytorch, and dali where installed (CI installs it)
        out = tmp_path / f"run-{backend}"
        args = cli_args(out, 0.008, "--data", f"s3://{BUCKET}/train-cli/shards", "--set", f"data.backend={backend}")
        assert train_main(args) == 0
        assert load_latest_checkpoint(out)["trainer"]["nimg"] == 8
        assert not (out / "shards").exists()  # read in place, not copied


def test_snapshot_without_weights_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="G_ema.safetensors"):
        load_generator(tmp_path)
