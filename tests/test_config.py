import dataclasses
import json
import math
import re
import sys
import types
import typing

import pytest
from annotated_types import Ge, Gt, Lt, Predicate

from eg3d import summary
from eg3d.config import (DistributedConfig, LossConfig, RenderingConfig, TrainConfig, apply_batch_rule, apply_overrides,
                         batch_rule, describe_batch_rule, validate)
from eg3d.config.presets import PRESETS, afhq512, ffhq512, get_preset, shapenet128, tiny
from eg3d.config.schema import NumberRange, check_fields, section_number_ranges
from eg3d.train import main as train_main


def test_reference_preset_values():
    f = ffhq512()
    assert (f.model.image_resolution, f.rendering.neural_rendering_resolution_initial) == (512, 64)
    assert (f.rendering.depth_resolution, f.rendering.depth_resolution_importance) == (48, 48)
    assert (f.rendering.ray_start, f.rendering.ray_end, f.rendering.box_warp) == (2.25, 3.3, 1.0)
    assert (f.loss.r1_gamma, f.loss.gpc_prob, f.loss.r1_interval, f.loss.density_reg_interval) == (1.0, 0.5, 16, 4)
    assert (f.optimizer.g_lr, f.optimizer.d_lr, f.optimizer.betas) == (0.0025, 0.002, (0.0, 0.99))
    assert (f.ema.ema_kimg, f.loss.blur_fade_kimg, f.run.batch_size) == (10.0, 200.0, 32)
    a = afhq512()
    assert (a.loss.r1_gamma, a.loss.gpc_prob) == (5.0, 0.8)
    augment = a.augment
    assert (augment.kind, augment.p, augment.target, augment.ada_kimg, augment.interval) == ("ada", 0.0, 0.6, 500.0, 4)
    assert f.augment.kind == "none"
    s = shapenet128()
    assert (s.model.image_resolution, s.rendering.depth_resolution, s.rendering.depth_resolution_importance) == (128, 64, 64)
    assert (s.rendering.ray_start, s.rendering.ray_end, s.rendering.box_warp) == (0.1, 2.6, 1.6)
    assert s.rendering.white_background and s.loss.r1_gamma == 0.3 and s.loss.gpc_prob is None
    t = tiny()
    assert (t.model.image_resolution, t.rendering.neural_rendering_resolution_initial, t.run.batch_size) == (64, 16, 8)
    for preset in PRESETS.values():
        validate(preset())


def test_overrides_convert_and_validate_types():
    config = apply_overrides(tiny(), ["loss.r1_gamma=2", "rendering.ray_start=null", "rendering.ray_end=None",
                                      "model.sr_channels=[8, 4]", "data.xflip=true", "run.out=some/dir"])
    assert config.loss.r1_gamma == 2.0 and isinstance(config.loss.r1_gamma, float)
    assert config.rendering.ray_start is None and config.rendering.ray_end is None
    assert config.model.sr_channels == (8, 4)
    assert config.data.xflip is True and config.run.out == "some/dir"
    assert apply_overrides(tiny(), ["distributed.use_gpu=true"]).distributed.use_gpu is True  # a switch
    assert apply_overrides(tiny(), ["distributed.use_gpu=auto"]).distributed.use_gpu == "auto"  # or its choice
    assert apply_overrides(tiny(), ["metrics.extractor=none"]).metrics.extractor == "none"  # the text, not null
    assert tiny().loss.r1_gamma == 1.0  # presets are fresh objects


@pytest.mark.parametrize("override, named", [
    ("loss.r1_gama=2", "loss.r1_gama"),
    ("los.r1_gamma=2", "'los'"),
    ("loss.r1_gamma=abc", "loss.r1_gamma"),
    ("run.batch_size=2.5", "run.batch_size"),
    ("data.xflip=1", "data.xflip"),
    ("model.sr_channels=[1,2,3]", "model.sr_channels"),
    ("r1_gamma=2", "section.field=value"),
])
def test_bad_overrides_name_the_key(override, named):
    with pytest.raises(ValueError, match=named.replace(".", r"\.").replace("[", r"\[")):
        apply_overrides(tiny(), [override])


@pytest.mark.parametrize("override, suggestion", [
    ("loss.r1_gama=2", "; did you mean loss.r1_gamma?"),
    ("los.r1_gamma=2", "; did you mean loss?"),
    ("render.depth_resolution=16", "; did you mean rendering?"),
    ("run.batchsize=8", "; did you mean run.batch_size?"),
    ("r1_gamma=1", "; did you mean loss.r1_gamma?"),  # the section left out
    ("total_kimg=5", "; did you mean run.total_kimg?"),
])
def test_unknown_keys_suggest_the_closest(override, suggestion):
    with pytest.raises(ValueError) as error:
        apply_overrides(tiny(), [override])
    assert str(error.value).endswith(suggestion)


def test_unknown_key_with_nothing_close_suggests_nothing():
    with pytest.raises(ValueError) as error:
        apply_overrides(tiny(), ["loss.xyz=1"])
    assert str(error.value) == "override 'loss.xyz=1': unknown config field 'loss.xyz'"


@pytest.mark.parametrize("override, named", [
    ("run.micro_batch=3", "run.batch_size"),
    ("model.image_resolution=96", "model.image_resolution"),
    ("rendering.ray_start=3.5", "rendering.ray_start"),
    ("rendering.ray_end=null", "rendering.ray_end"),
    ("data.backend=tensorflow", "data.backend"),
    ("run.precision=fp16", "run.precision"),
    ("run.max_nonfinite_steps=-1", "run.max_nonfinite_steps"),
    ("distributed.backend=horovod", "distributed.backend"),
    ("distributed.zero_stage=2", "distributed.zero_stage"),
    ("distributed.use_gpu=yes", "distributed.use_gpu"),
    ("distributed.min_workers=0", "distributed.min_workers"),
    ("distributed.max_workers=3", "makes 2 minibatch-std groups of 4 images, and each of 3 workers"),
    ("augment.kind=adaptive", "augment.kind"),
    ("augment.p=1.5", "augment.p"),
    ("augment.target=2", "augment.target"),
    ("augment.ada_kimg=0", "augment.ada_kimg"),
    ("augment.interval=0", "augment.interval"),
])
def test_inconsistent_configs_are_rejected(override, named):
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        validate(apply_overrides(tiny(), [override]))


def test_the_batch_rule_scales_the_ema_half_life_and_the_blur_fade_as_the_reference_does():
    """The reference's train.py: ema_kimg = 10 * batch / 32 and blur fade 200 * batch / 32 kimg; a preset's own
    values are scaled by batch / its batch (tiny trains 8: 2.5 and 1 kimg); and the checkpoint interval (200 kimg
    at 32, tiny's 2 at 8), so that checkpoints come every as many steps."""
    assert batch_rule(ffhq512(), 256) == [("ema.ema_kimg", 80.0), ("loss.blur_fade_kimg", 1600.0),
                                          ("run.checkpoint_kimg", 1600.0)]
    assert batch_rule(afhq512(), 128) == [("ema.ema_kimg", 40.0), ("loss.blur_fade_kimg", 800.0),
                                          ("run.checkpoint_kimg", 800.0)]
    assert batch_rule(ffhq512(), 32) == [("ema.ema_kimg", 10.0), ("loss.blur_fade_kimg", 200.0),
                                         ("run.checkpoint_kimg", 200.0)]
    assert batch_rule(tiny(), 16) == [("ema.ema_kimg", 5.0), ("loss.blur_fade_kimg", 2.0), ("run.checkpoint_kimg", 4.0)]


def test_the_batch_rule_changes_nothing_else_and_leaves_fields_set_with_set():
    preset = afhq512()
    config = apply_overrides(preset, ["ema.ema_kimg=20", "run.batch_size=256"])
    adjusted, applied = apply_batch_rule(config, preset, {"ema.ema_kimg"})
    assert applied == [("loss.blur_fade_kimg", 1600.0), ("run.checkpoint_kimg", 1600.0)]
    assert (adjusted.ema.ema_kimg, adjusted.loss.blur_fade_kimg, adjusted.run.batch_size) == (20.0, 1600.0, 256)
    changed = {f"{section}.{name}" for section, fields in adjusted.to_dict().items() if isinstance(fields, dict)
               for name, value in fields.items() if value != getattr(getattr(preset, section), name)}
    # rates, regularization intervals, fades in images, snapshot and log intervals kept
    assert changed == {"ema.ema_kimg", "loss.blur_fade_kimg", "run.checkpoint_kimg", "run.batch_size"}
    assert describe_batch_rule(adjusted, preset, applied).startswith(
        "--batch 256 (preset afhq512 trains 32) scales the schedules the reference ties to optimizer steps, and the "
        "checkpoint interval: loss.blur_fade_kimg=1600.0, run.checkpoint_kimg=1600.0; kept as set with --set: "
        "ema.ema_kimg=20.0; the learning rates")


def test_augment_overrides():
    config = apply_overrides(afhq512(), ["augment.kind=fixed", "augment.p=0.2"])
    validate(config)
    assert (config.augment.kind, config.augment.p) == ("fixed", 0.2)
    assert apply_overrides(afhq512(), ["augment.kind=none"]).augment.kind == "none"


def test_max_nonfinite_steps_default_and_off_switches():
    assert tiny().run.max_nonfinite_steps == 50
    for off in ("0", "null"):
        validate(apply_overrides(tiny(), [f"run.max_nonfinite_steps={off}"]))
    with pytest.raises(ValueError, match=r"run\.max_nonfinite_steps: expected int"):
        apply_overrides(tiny(), ["run.max_nonfinite_steps=2.5"])


def test_config_round_trips_through_json():
    config = apply_overrides(shapenet128(), ["loss.r1_gamma=0.5"])
    again = TrainConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown preset 'ffhq1024'"):
        get_preset("ffhq1024")


def test_cli_reports_bad_override_and_exits_2(capsys, tmp_path):
    assert train_main(["--storage", str(tmp_path), "--set", "loss.bogus=1"]) == 2
    assert "loss.bogus" in capsys.readouterr().err
    assert train_main(["--storage", str(tmp_path), "--workers", "two"]) == 2
    assert "--workers 'two'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing written


def test_summary_matches_module_counts_and_hand_derived_flops(capsys):
    summary.main(["--preset", "tiny"])
    result = json.loads(capsys.readouterr().out)
    assert result["preset"] == "tiny"
    assert result["G"]["params"] == sum(result["G"]["modules"].values())
    assert set(result["G"]["modules"]) == {"mapping", "backbone", "decoder", "superresolution"}
    flops = result["flops_per_image"]
    t = tiny()
    res = t.rendering.neural_rendering_resolution_initial
    points = res * res * (t.rendering.depth_resolution + t.rendering.depth_resolution_importance)
    assert flops["points_per_image"] == points
    # Decoder MLP by hand: 2 FLOPs per multiply-add, 32 -> 64 -> 33 per point, plus 4 bilinear taps x 3 planes.
    assert flops["G_rendering"] == points * 2 * (32 * 64 + 64 * 33) + points * 3 * 4 * 32 * 2
    # Mapping by hand: embed 25 -> 64, then 128 -> 64 and 64 -> 64.
    assert flops["G_mapping"] == 2 * (25 * 64 + 128 * 64 + 64 * 64)
    parts = flops["G_mapping"] + flops["G_backbone"] + flops["G_rendering"] + flops["G_superresolution"]
    assert flops["G_forward"] >= parts


@pytest.mark.parametrize("override, message", [
    ("run.total_kimg=-5", "config field run.total_kimg: -5 is not > 0 (expected a finite number > 0)"),
    ("model.z_dim=0", "config field model.z_dim: 0 is not >= 1 (expected an integer >= 1)"),
    ("optimizer.g_lr=-1", "config field optimizer.g_lr: -1 is not > 0 (expected a finite number > 0)"),
    ("loss.r1_gamma=1e400", "config field loss.r1_gamma: inf is not finite (expected a finite number >= 0)"),
    ("loss.r1_gamma=NaN", "config field loss.r1_gamma: nan is not finite (expected a finite number >= 0)"),
    ("loss.r1_gamma=nan", "config field loss.r1_gamma: nan is not finite (expected a finite number >= 0)"),
    ("loss.r1_gamma=inf", "config field loss.r1_gamma: inf is not finite (expected a finite number >= 0)"),
    ("loss.r1_gamma=-Infinity", "config field loss.r1_gamma: -inf is not finite (expected a finite number >= 0)"),
    ("run.checkpoint_kimg=-1", "config field run.checkpoint_kimg: -1 is not > 0 (expected a finite number > 0)"),
    ("optimizer.betas=[0.5, 1]", "config field optimizer.betas: 1 is not < 1 (expected a finite number >= 0 and < 1)"),
    ("model.backbone_resolution=48", "config field model.backbone_resolution: 48 is not a power of two "
                                     "(expected an integer >= 4 and a power of two)"),
    ("run.micro_batch=0", "config field run.micro_batch: 0 is not >= 1 (expected an integer >= 1, or null)"),
    ("run.keep_checkpoints=0", "config field run.keep_checkpoints: 0 is not >= 1 (expected an integer >= 1: a "
                               "rerun resumes from the newest checkpoint, and with 0 every checkpoint would be "
                               "deleted as it is written, so that a rerun would start from zero)"),
])
def test_values_out_of_range_are_refused_naming_field_value_and_range(override, message):
    with pytest.raises(ValueError) as error:
        validate(apply_overrides(tiny(), [override]))
    assert str(error.value) == message


def test_cli_refuses_an_out_of_range_value_in_one_line_before_any_worker(capsys, tmp_path, monkeypatch):
    def launch(*args, **kwargs):
        raise AssertionError("the launcher was reached")

    monkeypatch.setitem(sys.modules, "cluster.launch", types.SimpleNamespace(launch=launch))
    assert train_main(["--storage", str(tmp_path), "--set", "run.total_kimg=-5"]) == 2
    assert capsys.readouterr().err == ("error: config field run.total_kimg: -5 is not > 0 "
                                       "(expected a finite number > 0)\n")
    assert train_main(["--storage", str(tmp_path), "--kimg", "-5"]) == 2
    assert "run.total_kimg: -5 is not > 0" in capsys.readouterr().err
    for kimg in ("nan", "inf"):
        assert train_main(["--storage", str(tmp_path), "--kimg", kimg]) == 2
        assert f"run.total_kimg: {kimg} is not finite (expected a finite number > 0)" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing written


SECTIONS = [f for f in dataclasses.fields(TrainConfig) if dataclasses.is_dataclass(f.type)]


def holds_numbers(annotation) -> bool:
    """Whether a field's type holds an int or a float anywhere (optional, in a tuple, ...)."""
    return annotation in (int, float) or any(holds_numbers(arg) for arg in typing.get_args(annotation))


def test_every_numeric_field_declares_its_range():
    """A new int or float field cannot be added without a range beside it (nor a float without finiteness)."""
    numeric = {f"{s.name}.{name}" for s in SECTIONS for name, annotation in typing.get_type_hints(s.type).items()
               if holds_numbers(annotation)}
    declared = {f"{s.name}.{name}": ranges for s in SECTIONS for name, ranges in section_number_ranges(s.type).items()}
    assert set(declared) == numeric
    assert len(numeric) > 70
    assert [key for key, ranges in declared.items() if not all(number.markers for number in ranges)] == []
    assert [len(ranges) for ranges in (declared["model.sr_channels"], declared["optimizer.betas"])] == [2, 2]


def just_inside_and_outside(number: NumberRange, default) -> list[tuple[object, object]]:
    """(a value just inside, a value just outside) for each bound of the range; and nan and infinities for a float."""
    def moved(value, direction):
        return value + direction if number.kind is int else math.nextafter(value, direction * math.inf)

    cases = []
    for marker in number.markers:
        if isinstance(marker, Predicate):
            cases.append((default, next(x for x in (default + 1, math.inf) if not marker.func(x))))
        else:
            bound = next(getattr(marker, name) for name in ("gt", "ge", "lt", "le") if hasattr(marker, name))
            outward = -1 if isinstance(marker, (Gt, Ge)) else 1
            cases.append((moved(bound, -outward), bound) if isinstance(marker, (Gt, Lt)) else
                         (bound, moved(bound, outward)))
    if number.kind is float:
        cases += [(default, math.nan), (default, math.inf), (default, -math.inf)]
    return cases


def with_number(config: TrainConfig, section: str, name: str, index: int | None, value, *, assign=False):
    """The section of config with the field (or its tuple item `index`) set to value: a copy made with
    dataclasses.replace, or with assign=True, the section itself with the field assigned (checked by nothing)."""
    values = getattr(config, section)
    old = getattr(values, name)
    new = value if index is None else old[:index] + (value,) + old[index + 1:]
    if not assign:
        return dataclasses.replace(values, **{name: new})
    setattr(values, name, new)
    return values


def boundary_cases():
    config = tiny()
    for s in SECTIONS:
        for name, ranges in section_number_ranges(s.type).items():
            default = getattr(getattr(config, s.name), name)
            for index, number in enumerate(ranges):
                item_index = index if len(ranges) > 1 else None
                item = default if item_index is None else default[index]
                for inside, outside in just_inside_and_outside(number, item):
                    yield pytest.param(s.name, name, item_index, inside, outside,
                                       id=f"{s.name}.{name}{'' if item_index is None else f'[{index}]'}:"
                                          f"{inside!r}|{outside!r}")


@pytest.mark.parametrize("section, name, index, inside, outside", list(boundary_cases()))
def test_each_bound_of_each_field_refuses_just_outside(section, name, index, inside, outside):
    """The section refuses the value when built (dataclasses.replace runs __post_init__), and validate when
    the field is assigned afterwards."""
    check_fields(with_number(tiny(), section, name, index, inside, assign=True))  # the field alone: no cross-checks
    message = rf"^config field {section}\.{name}: \S+ is not .+ \(expected "
    with pytest.raises(ValueError, match=message):
        with_number(tiny(), section, name, index, outside)
    config = tiny()
    with_number(config, section, name, index, outside, assign=True)
    with pytest.raises(ValueError, match=message):
        validate(config)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_is_in_range(preset):
    validate(get_preset(preset))


def literal_choices(annotation) -> tuple | None:
    """The values of a Literal field (optional or not), else None."""
    if typing.get_origin(annotation) is typing.Literal:
        return typing.get_args(annotation)
    return next(filter(None, map(literal_choices, typing.get_args(annotation))), None)


CHOICE_FIELDS = [(s.name, name, choices) for s in SECTIONS for name, annotation in typing.get_type_hints(s.type).items()
                 if (choices := literal_choices(annotation))]


def test_the_choice_fields_are_literals():
    assert {f"{section}.{name}" for section, name, _ in CHOICE_FIELDS} >= {
        "augment.kind", "data.backend", "run.precision", "run.device", "distributed.backend", "distributed.use_gpu",
        "metrics.extractor"}


@pytest.mark.parametrize("section, name, choices", CHOICE_FIELDS, ids=[f"{s}.{n}" for s, n, _ in CHOICE_FIELDS])
def test_each_choice_field_takes_its_choices_and_refuses_others(section, name, choices):
    """Built, replaced, assigned then validated, or set with --set: every value of the Literal is taken, any
    other is refused naming the field, the value and the choices."""
    for choice in choices:  # ffhq512 has Inception weights, which metrics.extractor=inception_v3 needs
        config = apply_overrides(ffhq512(), [f"{section}.{name}={choice}"])
        assert getattr(getattr(config, section), name) == choice
        validate(config)
    annotation = typing.get_type_hints(getattr(TrainConfig, "__dataclass_fields__")[section].type)[name]
    switch = bool in typing.get_args(annotation)  # distributed.use_gpu: true, false or "auto"
    *others, last = ["true", "false"] * switch + [repr(choice) for choice in choices]
    message = f"config field {section}.{name}: 'bogus' is not {', '.join(others)} or {last}"
    with pytest.raises(ValueError) as error:
        dataclasses.replace(getattr(tiny(), section), **{name: "bogus"})
    assert str(error.value) == message
    with pytest.raises(ValueError) as error:
        apply_overrides(tiny(), [f"{section}.{name}=bogus"])
    assert str(error.value) == message
    config = tiny()
    setattr(getattr(config, section), name, "bogus")
    with pytest.raises(ValueError, match=re.escape(message)):
        validate(config)


def test_use_gpu_is_a_switch_and_earlier_runs_spelling_of_it_loads():
    config = apply_overrides(tiny(), ["distributed.use_gpu=false"])
    assert config.distributed.use_gpu is False
    saved = tiny().to_dict()
    for text, value in (("true", True), ("false", False), ("auto", "auto")):  # config.json of an earlier version
        saved["distributed"]["use_gpu"] = text
        assert TrainConfig.from_dict(saved).distributed.use_gpu == value
        assert type(TrainConfig.from_dict(saved).distributed.use_gpu) is type(value)
    with pytest.raises(ValueError, match=r"config field distributed.use_gpu: 'yes' is not true, false or 'auto'$"):
        apply_overrides(tiny(), ["distributed.use_gpu=yes"])


def test_a_section_built_directly_checks_its_fields():
    with pytest.raises(ValueError) as error:
        LossConfig(r1_gamma=-1)
    assert str(error.value) == "config field loss.r1_gamma: -1 is not >= 0 (expected a finite number >= 0)"
    with pytest.raises(ValueError, match=r"^config field loss\.r1_gamma: expected float, got '2'$"):
        LossConfig(r1_gamma="2")
    with pytest.raises(ValueError, match=r"rendering\.ray_start and rendering\.ray_end must both be set"):
        RenderingConfig(ray_end=None)
    with pytest.raises(ValueError, match=r"distributed\.min_workers \(4\) must be <= distributed\.max_workers"):
        DistributedConfig(min_workers=4, max_workers=2)
    assert LossConfig(r1_gamma=2).r1_gamma == 2


def test_overrides_of_one_section_apply_together():
    """A section is built once with all of its overrides, so that no pair of fields is checked half-changed."""
    config = apply_overrides(tiny(), ["rendering.ray_start=null", "rendering.ray_end=null",
                                      "distributed.min_workers=2", "distributed.max_workers=2"])
    assert (config.rendering.ray_start, config.rendering.ray_end, config.distributed.min_workers) == (None, None, 2)
    config = apply_overrides(tiny(), ["model.image_resolution=128", "model.sr_input_resolution=32"])
    assert (config.model.image_resolution, config.model.sr_input_resolution) == (128, 32)
