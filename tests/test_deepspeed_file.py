"""distributed.deepspeed_config: a DeepSpeed JSON whose communication settings are merged over the code-built
config, on a real one-rank gloo group; the keys the batch handling and the ZeRO stage own stay ours."""

import json
from pathlib import Path

import pytest

from model_helpers import micro_config, random_cameras
from distributed_helpers import run_on_workers
from eg3d.config import apply_overrides, validate
from eg3d.config.presets import tiny

SHIPPED = Path(__file__).parents[1] / "cluster" / "deepspeed.json"


def write(tmp_path, settings: dict) -> str:
    path = tmp_path / "deepspeed.json"
    path.write_text(json.dumps(settings))
    return str(path)


def engine_settings(rank: int, url: str):
    from cluster.backends import DeepSpeedFile, make_sync
    from eg3d.training.trainer import Trainer

    config = micro_config("run.micro_batch=1")
    sync = make_sync("deepspeed", zero_stage=1, deepspeed_file=DeepSpeedFile.load(url))
    trainer = Trainer(config, camera_pool=random_cameras(16), sync=sync)
    engine = sync.engines[id(trainer.G)]
    trainer.train_step(*_batch(config.run.batch_size))  # the file's settings train, R1's double backward included
    return {"reduce_bucket_size": engine.zero_reduce_bucket_size(), "overlap_comm": engine.zero_overlap_comm(),
            "optimizer_bucket": engine.optimizer.reduce_bucket_size, "stage": engine.zero_optimization_stage(),
            "train_batch_size": engine.train_batch_size(), "nimg": trainer.nimg}


def _batch(n: int):
    import torch

    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1, random_cameras(n, seed=1)


def test_a_file_that_changes_a_bucket_size_is_applied(tmp_path):
    pytest.importorskip("deepspeed")
    url = write(tmp_path, {"zero_optimization": {"reduce_bucket_size": 123456}})
    [result] = run_on_workers(engine_settings, 1, args=(url,))
    assert result["reduce_bucket_size"] == result["optimizer_bucket"] == 123456
    assert (result["stage"], result["train_batch_size"], result["nimg"]) == (1, 4, 4)  # ours stay


def test_the_shipped_file_trains():
    pytest.importorskip("deepspeed")
    [result] = run_on_workers(engine_settings, 1, args=(str(SHIPPED),))
    assert result["reduce_bucket_size"] == json.loads(SHIPPED.read_text())["zero_optimization"]["reduce_bucket_size"]
    assert result["overlap_comm"] is False and result["nimg"] == 4


def deepspeed_config(url: str, *extra: str):
    config = apply_overrides(tiny(), ["distributed.backend=deepspeed", "distributed.zero_stage=1",
                                      f"distributed.deepspeed_config={url}", *extra])
    validate(config)
    return config


@pytest.mark.parametrize("settings, message", [
    ({"train_batch_size": 64}, "train_batch_size is 64, but it must be 8, set by eg3d-train from run.batch_size"),
    ({"zero_optimization": {"stage": 2}}, "zero_optimization.stage is 2, but it must be 1, set by eg3d-train from "
                                          "distributed.zero_stage"),
    ({"gradient_accumulation_steps": 2}, "gradient_accumulation_steps is 2, but it must be 1"),
    ({"optimizer": {"type": "Adam"}}, "unsupported key(s) optimizer; a DeepSpeed file here may set zero_optimization"),
    ({"bf16": {"enabled": True}, "zero_optimization": {}}, "unsupported key(s) bf16"),
    ({"zero_optimization": {"overlap_comm": True}}, "zero_optimization.overlap_comm is True, but it must be False"),
    ({"zero_optimization": {"round_robin_gradients": True}}, "zero_optimization.round_robin_gradients is True, but it "
     "must be False, set by eg3d-train from checkpoints keep the parameters in the optimizer's order"),
    ({"zero_optimization": 1}, "zero_optimization must be a JSON object"),
])
def test_a_file_that_sets_our_keys_or_unknown_ones_is_refused(tmp_path, settings, message):
    from cluster.backends import load_deepspeed_file

    url = write(tmp_path, settings)
    with pytest.raises(ValueError) as error:
        load_deepspeed_file(deepspeed_config(url))
    assert f"distributed.deepspeed_config {url}: " in str(error.value) and message in str(error.value)


def test_our_keys_with_our_values_are_accepted(tmp_path):
    from cluster.backends import load_deepspeed_file

    url = write(tmp_path, {"train_batch_size": 8, "zero_optimization": {"stage": 1, "reduce_bucket_size": 10}})
    assert load_deepspeed_file(deepspeed_config(url)).settings["zero_optimization"]["reduce_bucket_size"] == 10


def test_every_world_size_of_an_elastic_run_is_checked(tmp_path):
    """The micro-batch depends on the world size: 8 images over 1 worker is one micro-batch of 8, over 2 of 4."""
    from cluster.backends import load_deepspeed_file

    url = write(tmp_path, {"train_micro_batch_size_per_gpu": 8})
    assert load_deepspeed_file(deepspeed_config(url, "distributed.max_workers=1"))
    with pytest.raises(ValueError, match="train_micro_batch_size_per_gpu is 8, but it must be 4"):
        load_deepspeed_file(deepspeed_config(url, "distributed.max_workers=2"))


def test_the_cli_refuses_a_bad_file_before_anything_starts(tmp_path, capsys):
    from eg3d.train import main

    url = write(tmp_path, {"train_batch_size": 64})
    storage = tmp_path / "runs"
    assert main(["--storage", str(storage), "--backend", "deepspeed", "--set",
                 f"distributed.deepspeed_config={url}"]) == 2
    assert "train_batch_size is 64" in capsys.readouterr().err and not storage.exists()
    assert main(["--storage", str(storage), "--backend", "deepspeed", "--set",
                 f"distributed.deepspeed_config={tmp_path / 'missing.json'}"]) == 2
    assert "missing.json" in capsys.readouterr().err


@pytest.mark.parametrize("overrides", [["distributed.deepspeed_config=ds.json"],  # ddp does not read it
                                       ["distributed.backend=deepspeed", "distributed.deepspeed_config= "]])
def test_the_field_is_validated(overrides):
    with pytest.raises(ValueError, match="distributed.deepspeed_config"):
        validate(apply_overrides(tiny(), overrides))
