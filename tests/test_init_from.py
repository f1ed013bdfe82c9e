"""Starting a new run from another's weights (--init-from): a stage-2 run from a stage-1 run, from a snapshot,
the run's own checkpoint winning on a rerun, the errors, and the driver's parse."""

import json
import os
import pickle

import pytest
import torch
from safetensors.torch import load_file

from model_helpers import MICRO_OVERRIDES
from eg3d.config import apply_init_from_adjustments
from eg3d.train import build_config, main as train_main, parse_args
from eg3d.training.checkpoints import CheckpointStore
from eg3d.training.init_from import check_init_source, find_init_source
from eg3d.training.loop import train
from eg3d.training.trainer import Trainer
from test_training_loop import log_records, loop_config, quiet, shards  # noqa: F401 - shards is a fixture


@pytest.fixture(scope="module")
def stage1(tmp_path_factory, shards):  # noqa: F811 - the fixture imported above
    """A finished 8-image stage-1 run (a checkpoint and a snapshot at 8 images)."""
    run_url = tmp_path_factory.mktemp("stage1") / "stage1"
    train(loop_config(0.008), manifest_url=shards, run_url=run_url, log=quiet)
    return run_url


def stage2_config(total_kimg: float, init_from, *extra: str):
    """Stage 2 of the micro config: the neural rendering resolution fades from 16 to 32 over 16 images, with
    the adjustments the driver makes for --init-from."""
    config = loop_config(total_kimg, "rendering.neural_rendering_resolution_final=32",
                         "rendering.neural_rendering_resolution_fade_kimg=0.016", *extra)
    config.run.init_from = str(init_from)
    config, _ = apply_init_from_adjustments(config, set())
    return config


def networks_at_first_step(monkeypatch) -> dict:
    """Filled with the trainer's images seen and a copy of G, D and G_ema just before its first step."""
    seen = {}
    original = Trainer.train_step

    def train_step(self, real_img, real_c):
        if not seen:
            seen.update({"nimg": self.nimg, **{name: {k: v.clone() for k, v in getattr(self, name).state_dict().items()}
                                                for name in ("G", "D", "G_ema")}})
        original(self, real_img, real_c)

    monkeypatch.setattr(Trainer, "train_step", train_step)
    return seen


def assert_equal_states(a: dict, b: dict):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_adjustments_skip_the_fields_set_explicitly(capsys):
    lines = []
    args = parse_args(["--preset", "ffhq512_stage2", "--init-from", "s3://bucket/runs/ffhq-stage1",
                       "--set", "loss.blur_init_sigma=3"])
    config = build_config(args, log=lines.append)
    assert (config.loss.blur_init_sigma, config.loss.gpc_fade_kimg, config.ema.rampup) == (3.0, 0.0, None)
    assert lines == ["starting from other weights (run.init_from), as the reference does when it resumes from a "
                     "network: loss.gpc_fade_kimg=0.0, ema.rampup=null; --set run.init_fades=true keeps the blur and "
                     "pose-conditioning fades"]
    kept = build_config(parse_args(["--preset", "ffhq512_stage2", "--init-from", "x", "--set", "run.init_fades=true"]),
                        log=quiet)
    assert (kept.loss.blur_init_sigma, kept.loss.gpc_fade_kimg, kept.ema.rampup) == (10.0, 1000.0, None)
    plain = build_config(parse_args(["--preset", "ffhq512_stage2"]), log=lines.append)
    assert (plain.loss.blur_init_sigma, plain.ema.rampup, plain.run.total_kimg) == (10.0, 0.05, 2000)
    assert len(lines) == 1  # nothing said without --init-from
    afhq = build_config(parse_args(["--preset", "afhq512", "--init-from", "x"]), log=quiet)
    assert (afhq.augment.kind, afhq.augment.ada_kimg, afhq.rendering.neural_rendering_resolution_final) == (
        "ada", 100.0, 128)


def test_stage2_starts_from_the_stage1_checkpoint_and_fades_the_rendering_resolution(tmp_path, shards, stage1,
                                                                                    monkeypatch):
    seen = networks_at_first_step(monkeypatch)
    lines = []
    train(stage2_config(0.02, stage1), manifest_url=shards, run_url=tmp_path / "stage2", log=lines.append)
    checkpoint = CheckpointStore(str(stage1)).latest()
    saved = checkpoint.load_torch("trainer.pt")
    assert seen["nimg"] == 0
    for name in ("G", "D", "G_ema"):
        assert_equal_states(seen[name], saved[name])
    assert f"started from checkpoint {checkpoint.manifest_url} (0.008 kimg): G, D and G_ema; images are counted " \
           f"from 0, optimizer state is new" in lines
    records = log_records(tmp_path / "stage2")
    assert [r["kimg"] for r in records] == [0.004, 0.008, 0.012, 0.016, 0.02]
    # rint(16 (1 - a) + 32 a), a = min(kimg / 0.016, 1), at the end of each interval
    assert [r["neural_rendering_resolution"] for r in records] == [20, 24, 28, 32, 32]
    assert [r["blur_sigma"] for r in records] == [0.0] * 5  # no blur fade (stage 1 started at sigma 2)
    assert [r["gpc_prob"] for r in records] == [0.5] * 5  # the final swap probability from the start


def test_init_from_a_snapshot_takes_its_G_ema_for_G_and_G_ema_and_a_fresh_D(tmp_path, shards, stage1, monkeypatch):
    snapshot = stage1 / "snapshots" / "snapshot-000000008"
    config = stage2_config(0.004, snapshot)
    fresh = Trainer(config, camera_pool=torch.zeros(1, 25))  # what a run from scratch starts with
    seen = networks_at_first_step(monkeypatch)
    lines = []
    train(config, manifest_url=shards, run_url=tmp_path / "from-snapshot", log=lines.append)
    G_ema = load_file(snapshot / "G_ema.safetensors")
    assert_equal_states(seen["G"], G_ema)
    assert_equal_states(seen["G_ema"], G_ema)
    assert_equal_states(seen["D"], fresh.D.state_dict())
    trained_D = CheckpointStore(str(stage1)).latest().load_torch("trainer.pt")["D"]
    assert not all(torch.equal(seen["D"][k], trained_D[k]) for k in trained_D)
    assert any(f"started from EMA snapshot {snapshot}: G and G_ema from its G_ema; D is freshly initialized" in line
               for line in lines)


def test_the_runs_own_checkpoint_wins_on_a_rerun(tmp_path, shards, stage1):
    train(stage2_config(0.016, stage1), manifest_url=shards, run_url=tmp_path / "straight", log=quiet)
    train(stage2_config(0.008, stage1), manifest_url=shards, run_url=tmp_path / "resumed", log=quiet)
    lines = []
    train(stage2_config(0.016, stage1), manifest_url=shards, run_url=tmp_path / "resumed", log=lines.append)
    assert any(line.startswith("resumed from") and "0.008 kimg" in line and f"run.init_from ({stage1}) is not used"
               in line for line in lines)
    assert not any(line.startswith("started from") for line in lines)
    assert log_records(tmp_path / "resumed") == log_records(tmp_path / "straight")  # exactly


def test_sources_that_do_not_exist_or_are_of_no_kind_are_refused(tmp_path, stage1):
    missing = tmp_path / "no-such-run"
    with pytest.raises(FileNotFoundError, match=f"--init-from {missing}: no such file or folder; expected a run"):
        find_init_source(str(missing))
    (tmp_path / "something").mkdir()
    (tmp_path / "something" / "notes.txt").write_text("hello")
    with pytest.raises(ValueError) as error:
        find_init_source(str(tmp_path / "something"))
    assert f"--init-from {tmp_path / 'something'}: neither a run, a checkpoint, a snapshot nor a pickle; expected a " \
           f"run folder (with checkpoints/), a checkpoint manifest" in str(error.value)
    (tmp_path / "weights.pt").write_bytes(b"not ours")
    with pytest.raises(ValueError, match="neither a run, a checkpoint, a snapshot nor a pickle"):
        find_init_source(str(tmp_path / "weights.pt"))
    with pytest.raises(ValueError, match="not a checkpoint manifest"):
        find_init_source(str(stage1 / "config.json"))
    manifest = CheckpointStore(str(stage1)).latest().manifest_url
    assert find_init_source(manifest).checkpoint.nimg == 8
    assert find_init_source(str(stage1) + "/").checkpoint.manifest_url == manifest


def test_an_architecture_mismatch_names_the_field_both_values_and_the_url(stage1):
    for url in (str(stage1), str(stage1 / "snapshots" / "snapshot-000000008")):
        config = stage2_config(0.004, url, "model.z_dim=8", "model.sr_channels=[16,4]")
        with pytest.raises(ValueError) as error:
            check_init_source(config, log=quiet)
        message = str(error.value)
        assert message.startswith(f"--init-from {url}: its networks do not fit this run's: model.z_dim is 16 there "
                                  f"and 8 in this run; model.sr_channels is [16, 8] there and [16, 4] in this run.")
    # The rendering resolution of the stage, the schedules and the loss may differ.
    check_init_source(stage2_config(0.004, stage1, "loss.r1_gamma=3"), log=quiet)


def cli_args(storage, shards, *extra):
    return (["--preset", "tiny", "--storage", str(storage), "--name", "stage2", "--kimg", "0.004", "--data", shards]
            + [a for o in MICRO_OVERRIDES + ["run.log_kimg=0.004", "data.backend=pytorch"] for a in ("--set", o)]
            + list(extra))


def no_launch(*args, **kwargs):
    raise AssertionError("the source should have been refused before any worker started")


def test_the_command_refuses_a_bad_source_with_exit_code_2(tmp_path, shards, stage1, capsys, monkeypatch):
    import cluster.launch

    monkeypatch.setattr(cluster.launch, "launch", no_launch)
    missing = tmp_path / "nothing-here"
    assert train_main(cli_args(tmp_path, shards, "--init-from", str(missing))) == 2
    assert f"error: --init-from {missing}: no such file or folder" in capsys.readouterr().err
    assert train_main(cli_args(tmp_path, shards, "--init-from", str(stage1), "--set", "model.w_dim=8")) == 2
    assert f"error: --init-from {stage1}: its networks do not fit this run's: model.w_dim is 16 there and 8 in this " \
           f"run" in capsys.readouterr().err
    foreign = tmp_path / "foreign.pkl"
    foreign.write_bytes(pickle.dumps({"G_ema": os.system}))  # names os.system: refused, never called
    assert train_main(cli_args(tmp_path, shards, "--init-from", str(foreign))) == 2
    assert f"error: --init-from {foreign}: " in capsys.readouterr().err
    assert not (tmp_path / "stage2").exists()


def test_the_command_records_init_from_in_config_json(tmp_path, shards, stage1, monkeypatch, capsys):
    """The driver's config, handed to the worker loop in this process instead of Ray's workers."""
    import cluster.launch

    def launch_here(config, *, manifest_url, storage_url, name, **kwargs):
        train(config, manifest_url=manifest_url, run_url=f"{storage_url}/{name}")

    monkeypatch.setattr(cluster.launch, "launch", launch_here)
    assert train_main(cli_args(tmp_path, shards, "--init-from", str(stage1))) == 0
    printed = capsys.readouterr().out
    assert "starting from other weights (run.init_from)" in printed
    assert f"--init-from {stage1}: checkpoint " in printed and "started from checkpoint" in printed
    config = json.loads((tmp_path / "stage2" / "config.json").read_text())
    assert config["run"]["init_from"] == str(stage1)
    assert (config["loss"]["blur_init_sigma"], config["loss"]["gpc_fade_kimg"], config["ema"]["rampup"]) == (0, 0, None)
    assert train_main(cli_args(tmp_path, shards, "--init-from", str(stage1))) == 0  # the same command again
    printed = capsys.readouterr().out
    assert f"{tmp_path / 'stage2'} has already trained its 0.004 kimg" in printed  # and says nothing to do
    assert f"the weights of --init-from {stage1} are not loaded again: the run resumes from a checkpoint of its " \
           f"own" in printed
    assert f"--init-from {stage1}: checkpoint " not in printed


def test_init_from_a_reference_pickle_starts_from_its_networks(tmp_path, shards, stage1, monkeypatch):
    """Stage 1's networks written as a reference network pickle start a run with exactly their weights; the
    driver's check adopts the pickle's settings (the legacy plane order) and logs its notes."""
    from reference_pickles import reference_pickle

    saved = CheckpointStore(str(stage1)).latest().load_torch("trainer.pt")
    networks = Trainer(loop_config(0.008), camera_pool=torch.zeros(1, 25))
    for name in ("G", "D", "G_ema"):
        getattr(networks, name).load_state_dict(saved[name])
    pkl = tmp_path / "stage1.pkl"
    pkl.write_bytes(reference_pickle(networks.G, networks.D, networks.G_ema, neural_rendering_resolution=16))
    lines = []
    config = check_init_source(stage2_config(0.004, pkl), log=lines.append)
    assert config.rendering.legacy_plane_order is True
    assert any(line.startswith(f"--init-from {pkl}: ") and "plane" in line for line in lines)
    seen = networks_at_first_step(monkeypatch)
    train(config, manifest_url=shards, run_url=tmp_path / "from-pickle", log=lines.append)
    assert seen["nimg"] == 0
    for name in ("G", "D", "G_ema"):
        assert_equal_states(seen[name], saved[name])
    assert any(line.startswith(f"started from network pickle {pkl}") for line in lines)


@pytest.mark.parametrize("kind, message", [("stylegan2_pickle", "a StyleGAN2 generator, not an EG3D one"),
                                           ("stylegan3_pickle", "a StyleGAN3 generator, not an EG3D one")])
def test_a_stylegan_pickle_is_named_as_such(tmp_path, kind, message):
    import reference_pickles

    pkl = tmp_path / "net.pkl"
    pkl.write_bytes(getattr(reference_pickles, kind)())
    with pytest.raises(ValueError, match=f"^--init-from {pkl}: G_ema is {message}"):
        check_init_source(stage2_config(0.004, pkl))


def test_a_pickle_of_another_architecture_is_adopted_and_each_change_logged(tmp_path):
    from reference_pickles import reference_pickle

    other = loop_config(0.004, "model.mapping_layers=3", "model.decoder_hidden=8")
    G = Trainer(other, camera_pool=torch.zeros(1, 25)).G_ema
    pkl = tmp_path / "other.pkl"
    pkl.write_bytes(reference_pickle(G, None, G, neural_rendering_resolution=16))
    lines = []
    config = check_init_source(stage2_config(0.004, pkl), log=lines.append)
    assert (config.model.mapping_layers, config.model.decoder_hidden) == (3, 8)
    assert f"--init-from {pkl}: model.mapping_layers: 2 in the preset -> 3 from the pickle" in lines
    assert f"--init-from {pkl}: model.decoder_hidden: 16 in the preset -> 8 from the pickle" in lines
