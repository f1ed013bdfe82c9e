"""cluster/aws-gpu.yaml: valid for Ray's cluster launcher, and consistent with the job commands it documents."""

import copy
import json
import os
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

from eg3d.train import build_config, parse_args

LAUNCHER_YAML = Path(__file__).parents[1] / "cluster" / "aws-gpu.yaml"


def ray_schema() -> dict:
    import ray

    with open(os.path.join(os.path.dirname(ray.__file__), "autoscaler", "ray-schema.json")) as file:
        return json.load(file)


def launcher_config() -> dict:
    return yaml.safe_load(LAUNCHER_YAML.read_text())


def job_commands() -> list[list[str]]:
    """The `ray job submit` commands in the file's comments (with their continuation lines), as argv lists."""
    comments = [line.strip().removeprefix("#").strip() for line in LAUNCHER_YAML.read_text().splitlines()
                if line.strip().startswith("#")]
    commands, current = [], None
    for line in comments:
        if current is None and line.startswith("ray job submit"):
            current = ""
        if current is not None:
            current += " " + line.removesuffix("\\")
            if not line.endswith("\\"):
                commands.append(shlex.split(current))
                current = None
    return commands


def train_arguments(command: list[str]) -> list[str]:
    entrypoint = command[command.index("--") + 1:]
    assert entrypoint[:3] == ["python", "-m", "eg3d.train"], entrypoint
    return entrypoint[3:]


def gpu_node_types(config: dict) -> dict:
    return {name: spec for name, spec in config["available_node_types"].items() if spec["resources"].get("GPU")}


def test_the_launcher_yaml_validates_against_rays_schema():
    jsonschema.validate(launcher_config(), ray_schema())


def test_ray_itself_accepts_it():
    """Ray's own check after filling in the provider's defaults, as `ray up` does before it touches the cloud."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(launcher_config()))


@pytest.mark.parametrize("break_it, message", [
    (lambda c: c.update(min_worker=1), "Additional properties"),
    (lambda c: c["available_node_types"]["ray.worker.gpu"].update(gpus=1), "Additional properties"),
    (lambda c: c["available_node_types"]["ray.worker.gpu"]["resources"].update(GPU="one"), "'one' is not of type"),
    (lambda c: c["docker"].update(tag="2.60.0"), "Additional properties"),
    (lambda c: c.pop("provider"), "'provider' is a required property"),
])
def test_a_broken_copy_fails_the_schema(break_it, message):
    config = copy.deepcopy(launcher_config())
    break_it(config)
    with pytest.raises(jsonschema.ValidationError, match=message):
        jsonschema.validate(config, ray_schema())


def test_head_has_no_gpu_and_workers_have_them():
    config = launcher_config()
    head = config["available_node_types"][config["head_node_type"]]
    assert not head["resources"].get("GPU")
    assert list(gpu_node_types(config)) == ["ray.worker.gpu"]


def test_the_documented_jobs_parse_and_match_the_worker_nodes():
    """One Ray Train worker per GPU: the GPU nodes' min/max times GPUs per node are the run's --workers MIN:MAX,
    and that range is one the config accepts (every world size divides the batch into whole micro-batches)."""
    config = launcher_config()
    [(_, gpu_type)] = gpu_node_types(config).items()
    per_node = gpu_type["resources"]["GPU"]
    commands = job_commands()
    assert len(commands) == 2, commands
    for command in commands:
        assert command[:5] == ["ray", "job", "submit", "--address", "http://127.0.0.1:8265"]
        args = parse_args(train_arguments(command))
        low, _, high = args.workers.partition(":")
        assert (int(low), int(high or low)) == (gpu_type["min_workers"] * per_node, gpu_type["max_workers"] * per_node)
        train_config = build_config(args)
        assert train_config.distributed.use_gpu is True
        assert config["max_workers"] >= gpu_type["max_workers"]
    deepspeed = build_config(parse_args(train_arguments(commands[1])))
    assert deepspeed.distributed.backend == "deepspeed" and deepspeed.distributed.zero_stage == 1
    # The path is this checkout's file as file_mounts places it on the head (in the container's home, /home/ray).
    mount = next(remote for remote, local in config["file_mounts"].items() if local == ".")
    assert deepspeed.distributed.deepspeed_config == mount.replace("~", "/home/ray") + "/cluster/deepspeed.json"


def test_setup_installs_this_package_with_the_dali_and_deepspeed_extras():
    config = launcher_config()
    mount = next(remote for remote, local in config["file_mounts"].items() if local == ".")
    checkout = mount.replace("~", "$HOME")
    installs = [shlex.split(c) for c in config["setup_commands"] if c.startswith("pip install")]
    targets = [word for words in installs for word in words if word.startswith(checkout + "[")]
    assert len(targets) == 1, installs
    extras = set(re.fullmatch(r".*\[(.*)\]", targets[0]).group(1).split(","))
    assert {"dali", "deepspeed"} <= extras
    assert any(words[2].startswith("torch") for words in installs), "a CUDA torch before the package"
