"""Typed configuration: one dataclass per concern, composed into `TrainConfig`.

Presets (eg3d.config.presets) are Python functions returning a `TrainConfig`; the command line overrides
single fields with `--set section.field=value`. Every int and float field declares its range beside its type
(`Annotated` with annotated-types' markers), and every choice field is a `Literal` of its values. A section
checks its own fields when it is built (`Section.__post_init__`, which `dataclasses.replace` runs too);
`validate` checks them again, as presets and commands also assign fields, and then the checks across sections.
"""

import dataclasses
import difflib
import functools
import json
import math
import operator
import types
import typing
from dataclasses import dataclass, field
from typing import Annotated, Literal

from annotated_types import BaseMetadata, DocInfo, Ge, GroupedMetadata, Gt, Interval, Le, Lt, Predicate, doc


def is_power_of_two(n: int) -> bool:
    """Whether n is 1, 2, 4, 8, ..."""
    return n > 0 and n & (n - 1) == 0


# The words of a Predicate in an error: "48 is not a power of two".
PREDICATE_WORDS = {is_power_of_two: "a power of two", math.isfinite: "finite"}
PositiveInt = Annotated[int, Ge(1)]
NonNegativeInt = Annotated[int, Ge(0)]
PositiveFloat = Annotated[float, Gt(0)]
NonNegativeFloat = Annotated[float, Ge(0)]
Probability = Annotated[float, Interval(ge=0, le=1)]
Resolution = Annotated[int, Predicate(is_power_of_two)]  # with its smallest size, e.g. Annotated[Resolution, Ge(4)]
MAX_SEED = 2 ** 32 - 1  # numpy's legacy seeds (numpy.random.RandomState) are 32-bit
Seed = Annotated[int, Interval(ge=0, le=MAX_SEED)]


class Section:
    """A section of the config. It checks its fields when built, and `validate` calls `check` again."""

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """ValueError naming the field for a value of the wrong type, a choice outside its Literal or a number
        outside its range; sections with checks across their own fields extend it."""
        check_fields(self)


@dataclass
class ModelConfig(Section):
    z_dim: PositiveInt = 512  # the latent code z's length
    w_dim: PositiveInt = 512  # the intermediate latent w's length (the styles)
    c_dim: Annotated[int, Interval(ge=25, le=25), doc("the length of a camera label: a 4x4 camera-to-world matrix "
                                                      "and 3x3 intrinsics")] = 25
    mapping_layers: PositiveInt = 2  # fully connected layers of the mapping network z, c -> w
    mapping_lr_multiplier: PositiveFloat = 0.01  # the mapping network's learning rate, relative to G's (StyleGAN2)
    camera_scale: NonNegativeFloat = 1.0  # c is multiplied by this before the camera embedding
    pose_conditioning: bool = True  # False: the generator's camera conditioning is zeroed
    backbone_resolution: Annotated[Resolution, Ge(4)] = 256  # the synthesis starts at 4x4
    backbone_channel_base: PositiveInt = 32768  # the tri-plane backbone's channels at resolution r: min(base / r, max)
    backbone_channel_max: PositiveInt = 512  # the most channels of a backbone layer
    plane_channels: PositiveInt = 32  # feature channels of each of the three planes
    # the hidden width of the decoder MLP (tri-plane features -> density, colour features)
    decoder_hidden: PositiveInt = 64
    decoder_lr_multiplier: PositiveFloat = 1.0  # the decoder's learning rate, relative to G's
    image_resolution: Annotated[Resolution, Ge(8)] = 512  # D's blocks halve it down to 8x8, then 4x4
    # the super-resolution's input (the neural rendering resolution it expects)
    sr_input_resolution: Annotated[Resolution, Ge(4)] = 128
    sr_channels: tuple[PositiveInt, PositiveInt] = (256, 128)  # the super-resolution's two blocks' channels
    sr_antialias: bool = True  # antialiased resizing of the raw image before the super-resolution (reference)
    disc_channel_base: PositiveInt = 32768  # D's channels at resolution r: min(base / r, max)
    disc_channel_max: PositiveInt = 512  # the most channels of a D layer
    disc_mapping_layers: NonNegativeInt = 8  # 0: the camera's embedding alone
    # minibatch standard deviation group size (a worker's micro-batch is split in these)
    disc_mbstd_group: PositiveInt = 4
    disc_camera_noise: NonNegativeFloat = 0.0  # std of noise added to D's camera input, in units of the batch std
    # The super-resolution's and the discriminator's conv outputs are clamped to +-conv_clamp (times the
    # layer's gain), in every precision, as in the reference; the tri-plane backbone is never clamped
    # (nor is it in the reference). None: no clamping.
    conv_clamp: PositiveFloat | None = 256.0

    def check(self) -> None:
        super().check()
        if self.image_resolution not in (self.sr_input_resolution * 2, self.sr_input_resolution * 4):
            raise ValueError(f"config: model.image_resolution ({self.image_resolution}) must be 2x or 4x "
                             f"model.sr_input_resolution ({self.sr_input_resolution})")


@dataclass
class RenderingConfig(Section):
    depth_resolution: Annotated[int, Ge(2)] = 48  # stratified (coarse) samples per ray
    depth_resolution_importance: NonNegativeInt = 48  # 0: no importance sampling
    ray_start: NonNegativeFloat | None = 2.25  # None: per-ray bounds from intersecting the tri-plane box
    ray_end: PositiveFloat | None = 3.3  # the far bound, world units along the ray; None with ray_start
    box_warp: PositiveFloat = 1.0  # the side of the tri-plane box around the origin, world units
    white_background: bool = False  # composite onto white instead of black (ShapeNet)
    legacy_plane_order: bool = False  # the reference's XY/XZ/ZX planes instead of XY/XZ/YZ
    neural_rendering_resolution_initial: PositiveInt = 64  # pixels per side of the volume rendering
    neural_rendering_resolution_final: PositiveInt | None = None  # None: no second stage
    neural_rendering_resolution_fade_kimg: PositiveFloat = 1000.0  # the fade from initial to final, over this many kimg

    def check(self) -> None:
        super().check()
        if (self.ray_start is None) != (self.ray_end is None):
            raise ValueError("config: rendering.ray_start and rendering.ray_end must both be set or both be null")
        if self.ray_start is not None and not self.ray_start < self.ray_end:
            raise ValueError(f"config: rendering.ray_start ({self.ray_start}) must be < rendering.ray_end "
                             f"({self.ray_end})")


@dataclass
class LossConfig(Section):
    r1_gamma: NonNegativeFloat = 1.0  # the R1 penalty's weight on D's gradient at real images
    r1_interval: PositiveInt = 16  # lazy R1: every this many D steps
    density_reg: NonNegativeFloat = 0.25  # the weight of the density regularization (smooth density near sampled points)
    density_reg_interval: PositiveInt = 4  # density regularization every this many G steps
    density_reg_points: PositiveInt = 1000  # points sampled in the box per image for the density regularization
    density_reg_perturbation: PositiveFloat = 0.004  # the offset to each point's neighbour, world units
    gpc_prob: Probability | None = 0.5  # generator pose conditioning swap probability after the fade; None: off
    gpc_fade_kimg: NonNegativeFloat = 1000.0  # 0: no fade
    blur_init_sigma: NonNegativeFloat = 10.0  # the Gaussian blur of D's images at the start, in pixels; fades to 0
    blur_fade_kimg: NonNegativeFloat = 200.0  # 0: no blur
    blur_raw_target: bool = True  # blur the raw (neural rendering) image too, as the reference


@dataclass
class AugmentConfig(Section):
    """Discriminator augmentation (eg3d.training.augment): "none", "fixed" at probability p, or "ada", which
    starts at p and moves it every `interval` steps towards a mean sign of D's real logits of `target`,
    by one unit per `ada_kimg` thousand images."""

    kind: Literal["none", "fixed", "ada"] = "none"  # none, fixed (at p) or ada (adaptive)
    p: Probability = 0.0  # the fixed probability, or ada's initial one
    target: Annotated[float, Interval(ge=-1, le=1)] = 0.6  # a mean sign
    ada_kimg: PositiveFloat = 500.0  # ada: images (kimg) for p to move by 1
    interval: PositiveInt = 4  # steps between adjustments


@dataclass
class OptimizerConfig(Section):
    g_lr: PositiveFloat = 0.0025  # G's Adam learning rate
    d_lr: PositiveFloat = 0.002  # D's Adam learning rate
    # Adam's betas, both networks
    betas: tuple[Annotated[float, Interval(ge=0, lt=1)], Annotated[float, Interval(ge=0, lt=1)]] = (0.0, 0.99)
    eps: PositiveFloat = 1e-8  # Adam's epsilon


@dataclass
class EmaConfig(Section):
    ema_kimg: NonNegativeFloat = 10.0  # the EMA's half-life; 0: G_ema is G
    # the half-life is at most this times the images seen (early on); None: no ramp-up
    rampup: PositiveFloat | None = 0.05


@dataclass
class DataConfig(Section):
    path: str | None = None  # dataset folder or zip (reference format); None: synthetic data under the run dir
    xflip: bool = False  # random horizontal flips with the camera mirrored
    synthetic_count: PositiveInt = 2000  # images of the synthetic data set when there is no --data
    # shard decoding; "auto": dali when installed. The same batches either way
    backend: Literal["auto", "pytorch", "dali"] = "auto"


@dataclass
class RunConfig(Section):
    out: str = "runs"  # where runs live when no --storage is given
    total_kimg: PositiveFloat = 25000.0  # the run's length, in thousands of images seen
    batch_size: PositiveInt = 32  # global batch, in images
    micro_batch: PositiveInt | None = None  # per-worker micro-batch; None: each worker's whole share at once
    # "bf16": forward passes under bfloat16 autocast, except the regularizers Greg and Dreg (weights, EMA, optimizers
    # stay fp32)
    precision: Literal["fp32", "bf16"] = "fp32"
    # torch.compile G and D for the Gmain, Greg and Dmain phases (Dreg stays eager); see eg3d.training.compilation
    compile: bool = False
    # torch threads per worker; None: the CPUs Ray assigned to it, capped by the cores it may run on
    threads: PositiveInt | None = None
    seed: Seed = 0  # seeds every random number of the run
    device: Literal["auto", "cpu", "cuda"] = "auto"  # "auto": cuda when there is a GPU
    checkpoint_kimg: PositiveFloat = 200.0  # a checkpoint every this many kimg
    # A checkpoint also when this many minutes passed since the last one (or the start), whatever the speed, so
    # that a crash costs at most that much training; null: by checkpoint_kimg only
    checkpoint_minutes: PositiveFloat | None = 15.0
    snapshot_kimg: PositiveFloat = 200.0  # an EMA snapshot (and its quality measurement) every this many kimg
    log_kimg: PositiveFloat = 4.0  # a log.jsonl record and status line every this many kimg
    keep_checkpoints: Annotated[int, Ge(1), doc(
        "a rerun resumes from the newest checkpoint, and with 0 every checkpoint would be deleted as it is "
        "written, so that a rerun would start from zero")] = 3
    # Stop the run after this many consecutive steps with a phase skipped for non-finite gradients
    # (training has diverged); 0 or null: never stop.
    max_nonfinite_steps: Annotated[int, Ge(0), doc("0 or null: never stop")] | None = 50
    sample_truncation_psi: Annotated[float, Predicate(math.isfinite)] = 0.7  # > 1 extrapolates away from w_avg
    sample_truncation_cutoff: NonNegativeInt = 14  # the ws truncated; 0: none
    # A new run's starting weights (--init-from): a run folder or checkpoint manifest, an EMA snapshot folder, or a
    # reference network pickle (.pkl); the run's own checkpoint wins once it has one. See eg3d.config.stages.
    init_from: str | None = None
    init_fades: bool = False  # with init_from: keep the blur and pose-conditioning fades (reference: --resume_blur)


@dataclass
class DistributedConfig(Section):
    backend: Literal["ddp", "deepspeed"] = "ddp"  # how gradients are reduced: torch DDP or DeepSpeed engines
    zero_stage: Annotated[int, Interval(ge=0, le=1)] = 0  # deepspeed: 0 or 1
    min_workers: PositiveInt = 1  # workers to start with
    max_workers: PositiveInt = 1  # > min_workers: elastic, grows when resources appear
    use_gpu: bool | Literal["auto"] = "auto"  # a GPU per worker; "auto": when the cluster has GPUs
    cpus_per_worker: PositiveFloat | None = None  # None: 1 on a cluster; the local machine split between workers
    # worker-group restarts from the newest checkpoint before the run fails
    max_failures: Annotated[int, Ge(-1), doc("-1: no limit")] = 3
    resize_check_seconds: PositiveFloat = 60.0  # how often an elastic run looks for more workers
    # deepspeed: a JSON file (path or URL) of communication settings merged over the code-built DeepSpeed config
    deepspeed_config: str | None = None

    def check(self) -> None:
        super().check()
        if self.deepspeed_config is not None and (self.backend != "deepspeed" or not self.deepspeed_config.strip()):
            raise ValueError(f"config: distributed.deepspeed_config ({self.deepspeed_config!r}) must be a file's path "
                             f"or URL, and is read by the deepspeed backend only (distributed.backend is "
                             f"{self.backend!r})")
        if self.min_workers > self.max_workers:
            raise ValueError(f"config: distributed.min_workers ({self.min_workers}) must be <= "
                             f"distributed.max_workers ({self.max_workers})")


@dataclass
class MetricsConfig(Section):
    """Image quality measured at every snapshot: FID and KID with the Inception-v3 network, or, without its
    weights, the same computation on a seeded random-feature network (labelled "random", never called FID)."""

    # "auto": inception_v3 when inception_weights is set; "none": only the evaluator's metrics (EvaluatorConfig)
    extractor: Literal["auto", "inception_v3", "random", "none"] = "auto"
    inception_weights: str | None = None  # path or URL of pytorch-fid's pt_inception-2015-12-05 state dict
    inception_sha256: str | None = None  # its SHA-256 (full, or a prefix of 8 or more hex digits)
    # generated images per measurement (split over the workers)
    num_generated: Annotated[int, Ge(0), doc("0: no measurement")] = 50000
    num_real: Annotated[int, Ge(2)] | None = None  # real images for the cached statistics; None: the whole dataset
    batch_size: PositiveInt = 32  # images per worker per feature-network forward pass
    kid_subsets: PositiveInt = 100  # KID: the number of random subsets averaged
    kid_subset_size: Annotated[int, Ge(2)] = 1000  # KID's unbiased estimate needs pairs
    random_features_seed: Seed = 0  # the random-feature network's weights (extractor random)

    def check(self) -> None:
        super().check()
        if self.extractor == "inception_v3" and not self.inception_weights:
            raise ValueError("config: metrics.extractor is inception_v3 but metrics.inception_weights (a path or URL) "
                             "is not set")


@dataclass
class EvaluatorConfig(Section):
    """The dataset-trained evaluator (eg3d.metrics.evaluator) and the 3D quality it measures at every snapshot,
    with metrics.num_generated images: fd_data, pose_error_deg, depth_error (data with depth) and
    consistency_raw/final. Trained on the run's real images on first use and cached beside the shards."""

    enabled: bool = True  # measure the 3D quality metrics at snapshots (needs metrics.num_generated > 0)
    resolution: Annotated[Resolution, Ge(16)] = 64  # its input size: images are resized to it
    kimg: PositiveFloat = 20.0  # its training length, in thousands of real images
    batch_size: Annotated[int, Ge(2)] = 64  # its training batch
    learning_rate: PositiveFloat = 3e-3  # AdamW, one-cycle schedule
    # fraction of the real images held out to measure its own error (the floor)
    holdout: Annotated[float, Interval(gt=0, lt=1)] = 0.1
    seed: Seed = 0  # decides its split, weights and batches (not run.seed: one evaluator serves every run)
    consistency_objects: PositiveInt = 16  # objects rendered per view pair for consistency_raw/final


@dataclass
class TelemetryConfig(Section):
    metrics_host: str = "127.0.0.1"  # each worker's /metrics; 0.0.0.0 on a cluster, for Prometheus to reach it
    # the driver's; local rank r's is metrics_port + 1 + r (a free one if taken)
    metrics_port: Annotated[int, Interval(ge=0, le=65535), doc("a TCP port, or 0: off")] = 9400


@dataclass
class TrainConfig:
    preset: str = "custom"
    model: ModelConfig = field(default_factory=ModelConfig)
    rendering: RenderingConfig = field(default_factory=RenderingConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    data: DataConfig = field(default_factory=DataConfig)
    run: RunConfig = field(default_factory=RunConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    evaluator: EvaluatorConfig = field(default_factory=EvaluatorConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        sections = {f.name: f.type for f in dataclasses.fields(cls)}
        kwargs = {}
        for name, value in values.items():
            if name not in sections:
                raise ValueError(f"config: unknown section {name!r}; expected one of {sorted(sections)}")
            section_type = sections[name]
            kwargs[name] = value if section_type is str else _build_section(section_type, name, value)
        return cls(**kwargs)


def _build_section(section_type, prefix: str, values: dict):
    known = {f.name: f for f in dataclasses.fields(section_type)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"config: unknown field(s) {', '.join(prefix + '.' + k for k in unknown)}")
    hints = _field_types(section_type)
    values = {k: LEGACY_SPELLINGS.get((prefix, k, v), v) if isinstance(v, str) else v for k, v in values.items()}
    return section_type(**{k: _coerce(v, hints[k], f"{prefix}.{k}") for k, v in values.items()})


# Values that configs saved by earlier versions spell differently: distributed.use_gpu was text.
LEGACY_SPELLINGS = {("distributed", "use_gpu", "true"): True, ("distributed", "use_gpu", "false"): False}


def _coerce(value, annotation, key: str):
    """Check (and, for JSON lists -> tuples and ints -> floats, convert) a value against a field type; a choice
    must be one of its Literal's values."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        choices = typing.get_args(annotation)
        if not any(type(value) is type(choice) and value == choice for choice in choices):
            raise ValueError(f"config field {key}: {value!r} is not {_either(choices)}")
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ValueError as error:
                errors.append(str(error))
        if bool in options:  # a switch with choices besides: distributed.use_gpu is true, false or "auto"
            literals = [c for option in options if typing.get_origin(option) is Literal for c in typing.get_args(option)]
            raise ValueError(f"config field {key}: {value!r} is not {_either([True, False, *literals])}")
        raise ValueError(errors[0])
    if origin is tuple:
        item_types = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)) or len(value) != len(item_types):
            raise ValueError(f"config field {key}: expected {len(item_types)} values, got {value!r}")
        return tuple(_coerce(v, t, key) for v, t in zip(value, item_types))
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation in (int, float, str, bool) and type(value) is annotation:
        return value
    raise ValueError(f"config field {key}: expected {getattr(annotation, '__name__', annotation)}, got {value!r}")


NON_FINITE_SPELLINGS = {"nan", "inf", "infinity"}  # Python's (float("nan"), str(math.inf)), any case and sign


def _parse_value(text: str):
    """Command-line value: JSON (numbers, true/false, null, lists), Python-style booleans/None and non-finite
    floats (nan, inf: the range check then says "is not finite"), else a string."""
    aliases = {"True": True, "False": False, "None": None, "none": None}
    if text in aliases:
        return aliases[text]
    if text.strip().lstrip("+-").lower() in NON_FINITE_SPELLINGS:
        return float(text)
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(config: TrainConfig, overrides: list[str]) -> TrainConfig:
    """Apply `section.field=value` overrides; an unknown or ill-typed key raises ValueError naming it."""
    values = config.to_dict()
    for item in overrides:
        key, sep, text = item.partition("=")
        section, dot, name = key.strip().partition(".")
        sections = [s for s, fields in values.items() if isinstance(fields, dict)]
        if not sep or not dot:
            keys = [f"{s}.{field}" for s in sections for field in values[s]]
            raise ValueError(f"override {item!r}: expected section.field=value, e.g. loss.r1_gamma=2"
                             f"{_did_you_mean(key.strip(), keys, key=lambda k: k.partition('.')[2])}")
        if section not in sections:
            raise ValueError(f"override {item!r}: unknown config section {section!r}"
                             f"{_did_you_mean(section, sections)}")
        if name not in values[section]:
            raise ValueError(f"override {item!r}: unknown config field {key.strip()!r}"
                             f"{_did_you_mean(name, values[section], prefix=section + '.')}")
        # A text field takes the text as it is: augment.kind=none is the choice "none", not null.
        annotation = _field_types(type(getattr(config, section)))[name]
        values[section][name] = text.strip() if _is_text(annotation) else _parse_value(text.strip())
    return TrainConfig.from_dict(values)  # each section built once, with all of its overrides


def _either(choices) -> str:
    """"'a', 'b' or 'c'" (true and false as JSON spells them)."""
    *others, last = ["true" if c is True else "false" if c is False else repr(c) for c in choices]
    return f"{', '.join(others)} or {last}" if others else last


def _is_text(annotation) -> bool:
    """A str field, or a choice among strings."""
    return annotation is str or (typing.get_origin(annotation) is Literal
                                 and all(isinstance(choice, str) for choice in typing.get_args(annotation)))


@functools.cache
def _field_types(section_type) -> dict:
    """A section's field types, without their range markers."""
    return typing.get_type_hints(section_type)


def _did_you_mean(word: str, choices, *, prefix: str = "", key=None) -> str:
    """"; did you mean loss.r1_gamma?" for the closest choice (compared through `key`, e.g. the field name
    of a full key), or "" when none is close."""
    choices = list(choices)
    compared = {key(choice) if key else choice: choice for choice in reversed(choices)}  # first wins a tie
    close = difflib.get_close_matches(word, list(compared), n=1)
    return f"; did you mean {prefix}{compared[close[0]]}?" if close else ""


@dataclass(frozen=True)
class NumberRange:
    """The range of one number of a field (the field itself, or one item of a tuple field)."""

    kind: type  # int or float; a float must also be finite
    markers: tuple[BaseMetadata, ...]  # annotated-types' Gt, Ge, Lt, Le and Predicate
    why: str = ""  # what the range means, from the field's doc(...)
    nullable: bool = False  # null is allowed too (and keeps its meaning)

    def failure(self, value) -> str | None:
        """What `value` is not ("> 0", "finite", "a power of two"), or None when it is in range."""
        if self.kind is float and not math.isfinite(value):
            return "finite"
        return next((_marker_words(m) for m in self.markers if not _marker_holds(m, value)), None)

    def describe(self) -> str:
        """E.g. "an integer >= 4 and a power of two", "a finite number >= 0 and <= 1"."""
        comparisons = [_marker_words(m) for m in self.markers if not isinstance(m, Predicate)]
        predicates = [_marker_words(m) for m in self.markers if isinstance(m, Predicate) and m.func is not math.isfinite]
        kind = "an integer" if self.kind is int else "a finite number"
        text = " and ".join([" ".join([kind] + comparisons[:1])] + comparisons[1:] + predicates)
        return text + (", or null" if self.nullable else "") + (f": {self.why}" if self.why else "")


_COMPARISONS = {Gt: ("gt", operator.gt, ">"), Ge: ("ge", operator.ge, ">="), Lt: ("lt", operator.lt, "<"),
                Le: ("le", operator.le, "<=")}


def _marker_holds(marker: BaseMetadata, value) -> bool:
    if isinstance(marker, Predicate):
        return marker.func(value)
    attribute, compare, _ = _COMPARISONS[type(marker)]
    return compare(value, getattr(marker, attribute))


def _marker_words(marker: BaseMetadata) -> str:
    if isinstance(marker, Predicate):
        return PREDICATE_WORDS[marker.func]
    attribute, _, symbol = _COMPARISONS[type(marker)]
    return f"{symbol} {_number(getattr(marker, attribute))}"


def _number(value) -> str:
    """-5 for -5.0, 0.0025 as it is, inf and nan as such; an int as it is."""
    if not isinstance(value, float):
        return str(value)
    text = f"{value:g}"
    return text if float(text) == value else repr(value)


def number_ranges(annotation) -> list[NumberRange]:
    """The ranges of the numbers a field of this type holds: one for an int or float field (optional or not),
    one per item of a tuple of them, none for other fields."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        nullable = type(None) in args
        return [dataclasses.replace(number, nullable=nullable) for arg in args if arg is not type(None)
                for number in number_ranges(arg)]
    if origin is tuple:
        return [number for arg in args for number in number_ranges(arg)]
    if origin is Annotated and args[0] in (int, float):
        markers = [m for marker in annotation.__metadata__
                   for m in (marker if isinstance(marker, GroupedMetadata) else [marker])]
        why = " ".join(m.documentation for m in markers if isinstance(m, DocInfo))
        checks = sorted((m for m in markers if not isinstance(m, DocInfo)), key=lambda m: isinstance(m, Predicate))
        return [NumberRange(args[0], tuple(checks), why)]
    return [NumberRange(annotation, ())] if annotation in (int, float) else []


@functools.cache
def section_number_ranges(section_type) -> dict[str, list[NumberRange]]:
    """Each numeric field of a config section: its number ranges (see number_ranges)."""
    hints = typing.get_type_hints(section_type, include_extras=True)
    return {name: ranges for name, annotation in hints.items() if (ranges := number_ranges(annotation))}


@functools.cache
def section_name(section_type) -> str:
    """The TrainConfig field that holds a section of this type: "loss" for LossConfig."""
    return next(f.name for f in dataclasses.fields(TrainConfig) if f.type is section_type)


def check_fields(section: Section) -> None:
    """Every field of a section against its type: a wrong type or a choice outside its Literal (see _coerce), a
    number outside its declared range; a null keeps its meaning. ValueError, e.g. "config field
    run.total_kimg: -5 is not > 0 (expected a finite number > 0)"."""
    prefix = section_name(type(section))
    ranges = section_number_ranges(type(section))
    for name, annotation in _field_types(type(section)).items():
        value = getattr(section, name)
        _coerce(value, annotation, f"{prefix}.{name}")
        items = () if value is None else value if isinstance(value, (tuple, list)) else (value,)
        for item, number in zip(items, ranges.get(name, ())):
            failure = number.failure(item)
            if failure is not None:
                raise ValueError(f"config field {prefix}.{name}: {_number(item)} is not {failure} "
                                 f"(expected {number.describe()})")


def validate(config: TrainConfig) -> None:
    """Each section's own checks again (fields may have been assigned since it was built), then the checks
    across sections."""
    for section in dataclasses.fields(config):
        value = getattr(config, section.name)
        if isinstance(value, Section):
            value.check()
    q, d = config.metrics, config.distributed
    if q.num_generated and q.num_generated < 2 * d.max_workers:
        raise ValueError(f"config: metrics.num_generated ({q.num_generated}) must be 0 or at least 2 per worker "
                         f"(distributed.max_workers is {d.max_workers})")
    for world_size in range(d.max_workers, d.min_workers - 1, -1):  # the largest first: its error says what it needs
        batch_split(config, world_size)


@dataclass(frozen=True)
class BatchSplit:
    """How the run.batch_size images of one optimizer step are spread over the workers.

    The unit of the split is a group of D's minibatch standard deviation layer (`group` images:
    model.disc_mbstd_group, or run.micro_batch or run.batch_size when smaller). Every share and every
    micro-batch holds whole groups, so D computes that statistic over the same groups of images whatever
    the world size. Shares differ by at most one group, the first ranks taking the extra ones; rank r's
    share is images [offset(r), offset(r) + shares[r]) of the global batch. A share runs in micro-batches
    of `micro_batch` images (the whole share when None), the last one smaller when the share is not a
    multiple of it. With run.micro_batch equal to the group, as in the paper's presets, a step cuts the
    global batch into the same micro-batches for every world size.
    """

    global_batch: int
    group: int
    shares: tuple[int, ...]
    micro_batch: int | None

    @property
    def world_size(self) -> int:
        return len(self.shares)

    def offset(self, rank: int) -> int:
        """Index in the global batch of rank's first image."""
        return sum(self.shares[:rank])

    def micro_batches(self, rank: int) -> tuple[int, ...]:
        """The sizes of rank's micro-batches, in order (they sum to its share)."""
        share = self.shares[rank]
        size = min(self.micro_batch or share, share)
        full, rest = divmod(share, size)
        return (size,) * full + ((rest,) if rest else ())

    @property
    def accumulation_steps(self) -> int:
        """Micro-batches of the largest share: the step takes as long as that worker."""
        return max(len(self.micro_batches(rank)) for rank in range(self.world_size))

    @property
    def largest_micro_batch(self) -> int:
        return max(max(self.micro_batches(rank)) for rank in range(self.world_size))

    def describe(self) -> str:
        """E.g. "32 images per step = 12 + 12 + 8 over 3 workers, in micro-batches of 4 (3 accumulation steps)"."""
        shares = " + ".join(str(share) for share in self.shares)
        return (f"{self.global_batch} images per step = {shares} over {self.world_size} worker"
                f"{'s' if self.world_size > 1 else ''}, in micro-batches of {self.largest_micro_batch} "
                f"({self.accumulation_steps} accumulation step{'s' if self.accumulation_steps > 1 else ''})")


def batch_split(config: TrainConfig, world_size: int) -> BatchSplit:
    """run.batch_size over `world_size` workers (see BatchSplit).

    Raises ValueError naming the config fields when the batch is not a whole number of groups, when the
    micro-batch is not a whole number of groups, or when there are fewer groups than workers (the sizes
    themselves are positive: RunConfig checks its fields)."""
    assert world_size > 0, world_size
    run, group_size = config.run, config.model.disc_mbstd_group
    micro = min(run.micro_batch, run.batch_size) if run.micro_batch else None
    group = min(group_size, micro or run.batch_size)
    if micro is not None and micro % group:
        raise ValueError(f"config: run.micro_batch ({micro}) must be a multiple of model.disc_mbstd_group "
                         f"({group_size}), so that D's minibatch-std groups are whole")
    if run.batch_size % group:
        raise ValueError(f"config: run.batch_size ({run.batch_size}) must be a multiple of the minibatch-std group "
                         f"({group} images: model.disc_mbstd_group or a smaller run.micro_batch)")
    groups = run.batch_size // group
    if world_size > groups:
        raise ValueError(f"config: run.batch_size ({run.batch_size}) makes {groups} minibatch-std group"
                         f"{'s' if groups > 1 else ''} of {group} images, and each of {world_size} workers needs "
                         f"at least one; lower distributed.max_workers to {groups} (--workers ...:{groups}), raise "
                         f"run.batch_size to {group * world_size} or more (--batch {group * world_size}, which also "
                         f"scales the EMA half-life, the blur fade and the checkpoint interval: docs/training.md, "
                         f"\"Large batches\"), or lower model.disc_mbstd_group (a departure from the paper's groups "
                         f"of 4)")
    each, extra = divmod(groups, world_size)
    shares = tuple((each + (rank < extra)) * group for rank in range(world_size))
    return BatchSplit(global_batch=run.batch_size, group=group, shares=shares, micro_batch=micro)
