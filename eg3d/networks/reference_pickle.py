"""Read a network pickle of the reference implementation (NVlabs/eg3d) without executing anything in it.

The reference pickles its modules through `torch_utils.persistence`, whose unpickling runs the module
source stored in the file. Here a restricted unpickler rebuilds only tensors, numpy scalars and plain
containers; every class the file names becomes an inert record of its name and state. The weights are
then renamed to ours and the configuration is read from the generator's init kwargs.

    networks = read_reference_pickle(open("ffhq512-128.pkl", "rb"))
    config = apply_to_config(get_preset("ffhq512"), networks)  # the pickle's architecture, the preset's training
    G = TriPlaneGenerator(config.model, config.rendering)
    G.load_state_dict(networks.state["G_ema"])
"""

import copy
import dataclasses
import io
import pickle
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import torch

from eg3d.config import ModelConfig, RenderingConfig, TrainConfig

from .discriminator import DualDiscriminator
from .generator import TriPlaneGenerator

NOT_A_REFERENCE_PICKLE = "the file is not a plain reference network pickle"
RELEASED_PICKLES = ("ffhq512-128.pkl", "ffhqrebalanced512-128.pkl", "afhqcats512-128.pkl", "shapenetcars128-64.pkl")

# ---------------------------------------------------------------------------------------------------
# The restricted unpickler


@dataclass
class ReferenceObject:
    """An object of a class named in the file, kept as data: `class_name` as written, `state` its __dict__."""

    class_name: str
    state: dict | None = None


def _persistent_object(meta) -> ReferenceObject:
    """Stands in for torch_utils.persistence._reconstruct_persistent_obj: keeps the state, never the source."""
    if not isinstance(meta, dict) or "class_name" not in meta or "state" not in meta:
        raise pickle.UnpicklingError(f"persistent object without class_name/state: {NOT_A_REFERENCE_PICKLE}")
    return ReferenceObject(str(meta["class_name"]), meta["state"])


class _NamedClass:
    """Base of the stand-ins for plain classes (OSGDecoder, the renderer, torch.nn containers): any
    construction records nothing but the arguments; unpickling's BUILD step stores the state."""

    class_name = "?"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args, obj.state = args, None
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state[0] if isinstance(state, tuple) and len(state) == 2 else state


def _load_storage(blob: bytes):
    """torch.storage._load_from_bytes, but loading its torch.save blob with weights_only=True."""
    return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, *_):
    return torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, False, OrderedDict())


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *_):
    return data


def _numpy_multiarray():
    return np._core.multiarray if hasattr(np, "_core") else np.core.multiarray


ALLOWED_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _persistent_object,
    ("collections", "OrderedDict"): OrderedDict,
    ("dnnlib.util", "EasyDict"): dict,
    ("dnnlib", "EasyDict"): dict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("numpy", "dtype"): np.dtype,
    ("numpy", "ndarray"): np.ndarray,
    **{(module, name): getattr(_numpy_multiarray(), name)
       for module in ("numpy.core.multiarray", "numpy._core.multiarray") for name in ("scalar", "_reconstruct")},
}
# Modules whose classes become inert `_NamedClass` stand-ins (never imported).
INERT_CLASS_MODULES = ("training.", "torch.nn.modules.")


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles tensors, storages, numpy scalars and containers; any other global is an UnpicklingError."""

    def __init__(self, file):
        super().__init__(file)
        self._stand_ins = {}

    def find_class(self, module: str, name: str):
        if (module, name) in ALLOWED_GLOBALS:
            return ALLOWED_GLOBALS[module, name]
        if module.startswith(INERT_CLASS_MODULES) and name.isidentifier():
            key = f"{module}.{name}"
            if key not in self._stand_ins:
                self._stand_ins[key] = type(name, (_NamedClass,), {"class_name": key})
            return self._stand_ins[key]
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed: {NOT_A_REFERENCE_PICKLE} "
                                     "(only tensors, numpy scalars, containers and the reference's classes)")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError(f"persistent id {pid!r}: {NOT_A_REFERENCE_PICKLE} (a torch.save file?)")


def load_restricted(data: bytes | BinaryIO):
    """Unpickle `data` (bytes or a binary file) with `RestrictedUnpickler`."""
    file = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    start = file.read(4)
    file.seek(-len(start), io.SEEK_CUR)
    if start.startswith(b"PK"):  # a zip: torch.save's format, e.g. one of our trainer.pt files
        raise pickle.UnpicklingError("a zip file (torch.save's format, e.g. a checkpoint's trainer.pt), not a "
                                     "reference network pickle; to start from one of our runs, pass the run folder "
                                     "or its checkpoint manifest to --init-from")
    try:
        return RestrictedUnpickler(file).load()
    except (EOFError, ValueError, IndexError, KeyError, pickle.UnpicklingError) as error:
        if NOT_A_REFERENCE_PICKLE in str(error):  # our own refusals (a global outside the allow-list) say it already
            raise
        # what pickle raises for bytes that are not a pickle stream
        raise pickle.UnpicklingError(f"not a pickle, or a truncated one ({type(error).__name__}: {error})") from None


# ---------------------------------------------------------------------------------------------------
# The module tree of an unpickled network


def module_state(obj, where: str) -> dict:
    """The __dict__ of an unpickled module (a ReferenceObject or a plain-class stand-in)."""
    state = getattr(obj, "state", None)
    if not isinstance(state, dict):
        raise ValueError(f"{where}: not a module with a state dict ({type(obj).__name__}); {NOT_A_REFERENCE_PICKLE}")
    return state


def named_tensors(obj, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every parameter and buffer of a module tree by its dotted reference name, as state_dict() names them."""
    state = module_state(obj, prefix or "network")
    tensors = {}
    for group in ("_parameters", "_buffers"):
        for name, value in (state.get(group) or {}).items():
            if value is not None:
                tensors[prefix + name] = value
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            tensors.update(named_tensors(child, f"{prefix}{name}."))
    return tensors


def submodule(obj, path: str):
    for name in path.split("."):
        obj = module_state(obj, path)["_modules"][name]
    return obj


def init_kwargs(obj, where: str) -> dict:
    kwargs = module_state(obj, where).get("_init_kwargs")
    if not isinstance(kwargs, dict):
        raise ValueError(f"{where}: no init kwargs; {NOT_A_REFERENCE_PICKLE}")
    return kwargs


# ---------------------------------------------------------------------------------------------------
# Reference names -> ours. A rule maps a regex over the reference name to our name; None: skipped.

SKIPPED = re.compile(r"(^|\.)resample_filter$|^dataset_label_std$")

GENERATOR_RULES = (
    (r"backbone\.mapping\.fc(\d+)\.(.+)", r"mapping.layers.\1.\2"),
    (r"backbone\.mapping\.(embed\..+|w_avg)", r"mapping.\1"),
    (r"backbone\.synthesis\.b(\d+)\.(.+)", lambda m: f"backbone.blocks.{_log2(m[1]) - 2}.{m[2]}"),
    (r"decoder\.net\.0\.(.+)", r"decoder.hidden.\1"),
    (r"decoder\.net\.2\.(.+)", r"decoder.out.\1"),
    (r"superresolution\.(block[01]\..+)", r"superresolution.\1"),
)

# Our tensor name prefix -> the config fields that set its shape (for error messages).
SHAPE_FIELDS = (
    ("mapping.embed", "model.c_dim / model.w_dim"),
    ("mapping.", "model.z_dim / model.w_dim / model.mapping_layers"),
    ("backbone.", "model.backbone_channel_base / model.backbone_channel_max / model.backbone_resolution"),
    ("decoder.", "model.plane_channels / model.decoder_hidden"),
    ("superresolution.", "model.sr_channels / model.sr_input_resolution / model.image_resolution"),
    ("blocks.", "model.disc_channel_base / model.disc_channel_max / model.image_resolution"),
    ("epilogue.", "model.disc_channel_base / model.disc_channel_max"),
)


def _log2(text: str) -> int:
    return int(text).bit_length() - 1


def discriminator_rules(image_resolution: int) -> tuple:
    """D's blocks run from the image resolution down to 8: reference b{res} -> our blocks.{index}."""
    top = _log2(str(image_resolution))
    return (
        (r"b4\.(conv|fc|out)\.(.+)", r"epilogue.\1.\2"),
        (r"b(\d+)\.(.+)", lambda m: f"blocks.{top - _log2(m[1])}.{m[2]}"),
        (r"mapping\.fc(\d+)\.(.+)", r"mapping.layers.\1.\2"),
        (r"mapping\.(embed\..+)", r"mapping.\1"),
    )


def rename(tensors: dict, rules, what: str) -> dict[str, tuple[str, torch.Tensor]]:
    """Reference names -> ours by the first matching rule: {our name: (reference name, tensor)}. Unused
    buffers are skipped; a tensor no rule maps is a ValueError naming it."""
    renamed, unknown = {}, []
    for name, tensor in tensors.items():
        if SKIPPED.search(name):
            continue
        for pattern, replacement in rules:
            match = re.fullmatch(pattern, name)
            if match:
                ours = match.expand(replacement) if isinstance(replacement, str) else replacement(match)
                renamed[ours] = name, tensor
                break
        else:
            unknown.append(name)
    if unknown:
        raise ValueError(f"{what}: tensor(s) with no counterpart in our network: {', '.join(sorted(unknown))}")
    return renamed


def fit_to(network: torch.nn.Module, tensors: dict, what: str) -> dict[str, torch.Tensor]:
    """Our state dict from `rename`'s output, checked against `network` (on the meta device is fine): names
    and shapes. 0-d noise strengths are
    reshaped to ours. Missing or extra names, or a shape that does not fit: ValueError naming the tensor,
    both shapes and the config field that sets it."""
    expected = network.state_dict()
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or extra:
        raise ValueError(f"{what}: tensors missing: {', '.join(missing) or 'none'}; "
                         f"tensors we do not have: {', '.join(tensors[k][0] for k in extra) or 'none'}")
    fitted = {}
    for name, target in expected.items():
        reference_name, tensor = tensors[name]
        if name.endswith("noise_strength") and tensor.numel() == target.numel() == 1:
            tensor = tensor.reshape(target.shape)
        if tensor.shape != target.shape:
            field = next((f for prefix, f in SHAPE_FIELDS if name.startswith(prefix)), "the preset")
            raise ValueError(f"{what}: tensor {reference_name} (our {name}) has shape {list(tensor.shape)} in the "
                             f"pickle but ours is "
                             f"{list(target.shape)}; the config field(s) that set it: {field}")
        fitted[name] = tensor.detach().clone().to(target.dtype)
    return fitted


# ---------------------------------------------------------------------------------------------------
# The configuration


def generator_config(G) -> tuple[dict, dict]:
    """ModelConfig and RenderingConfig fields (without legacy_plane_order) read from a reference generator."""
    kwargs = init_kwargs(G, "G_ema")
    rendering = kwargs.get("rendering_kwargs") or {}
    tensors = named_tensors(G)
    blocks = [_log2(m[1]) for n in tensors if (m := re.match(r"backbone\.synthesis\.b(\d+)\.", n))]
    _check_rendering_options(rendering)
    model = {
        "z_dim": kwargs["z_dim"], "w_dim": kwargs["w_dim"], "c_dim": kwargs["c_dim"],
        "mapping_layers": len({n.split(".")[2] for n in tensors if re.match(r"backbone\.mapping\.fc\d+\.", n)}),
        "mapping_lr_multiplier": (kwargs.get("mapping_kwargs") or {}).get("lr_multiplier", 0.01),
        "camera_scale": rendering.get("c_scale", 0),
        "pose_conditioning": not rendering.get("c_gen_conditioning_zero", False),
        "backbone_resolution": 2 ** max(blocks),
        "backbone_channel_base": kwargs.get("channel_base", 32768),
        "backbone_channel_max": kwargs.get("channel_max", 512),
        "plane_channels": tensors["decoder.net.0.weight"].shape[1],
        "decoder_hidden": tensors["decoder.net.0.weight"].shape[0],
        "decoder_lr_multiplier": rendering.get("decoder_lr_mul", 1),
        "image_resolution": kwargs["img_resolution"],
        "sr_input_resolution": module_state(submodule(G, "superresolution"), "superresolution")["input_resolution"],
        "sr_channels": tuple(tensors[f"superresolution.block{i}.conv1.weight"].shape[0] for i in (0, 1)),
        "sr_antialias": rendering.get("sr_antialias", True),
    }
    ray_start, ray_end = (rendering.get(k) for k in ("ray_start", "ray_end"))
    auto = ray_start == "auto" or ray_end == "auto"
    render = {
        "depth_resolution": rendering["depth_resolution"],
        "depth_resolution_importance": rendering.get("depth_resolution_importance", 0),
        "ray_start": None if auto else float(ray_start), "ray_end": None if auto else float(ray_end),
        "box_warp": float(rendering["box_warp"]),
        "white_background": bool(rendering.get("white_back", False)),
        "neural_rendering_resolution_initial": int(module_state(G, "G_ema").get("neural_rendering_resolution", 64)),
    }
    return {k: _plain(v) for k, v in model.items()}, {k: _plain(v) for k, v in render.items()}


def foreign_generator(G) -> str | None:
    """What G is when it is not EG3D's tri-plane generator ('a StyleGAN2 generator'), by its tensor names and
    settings; None for an EG3D generator."""
    names = list(named_tensors(G))
    rendering = (module_state(G, "G_ema").get("_init_kwargs") or {}).get("rendering_kwargs") or {}
    if "triplane_depth" in rendering or any(name.startswith("t_mapping.") for name in names):
        return (f"a tri-grid (PanoHead) generator (planes of depth {rendering.get('triplane_depth', '?')} and a "
                f"camera-offset mapping, t_mapping)")
    if any(name.startswith("synthesis.input.") for name in names):
        return "a StyleGAN3 generator"
    if any(name.startswith(("synthesis.b", "mapping.fc")) for name in names):
        return "a StyleGAN2 generator"
    if not any(name.startswith("backbone.synthesis.") for name in names):
        return f"a {getattr(G, 'class_name', type(G).__name__)} network without a tri-plane backbone"
    return None


def _check_rendering_options(rendering: dict) -> None:
    if rendering.get("clamp_mode", "softplus") != "softplus" or rendering.get("disparity_space_sampling"):
        raise ValueError("G_ema.rendering_kwargs: only clamp_mode 'softplus' without disparity-space sampling is "
                         f"supported (got clamp_mode {rendering.get('clamp_mode')!r}, disparity_space_sampling "
                         f"{rendering.get('disparity_space_sampling')!r})")


def discriminator_config(D) -> dict:
    kwargs = init_kwargs(D, "D")
    tensors = named_tensors(D)
    return {
        "disc_channel_base": kwargs.get("channel_base", 32768),
        "disc_channel_max": kwargs.get("channel_max", 512),
        "disc_mapping_layers": len({n.split(".")[1] for n in tensors if re.match(r"mapping\.fc\d+\.", n)}),
        "disc_mbstd_group": (kwargs.get("epilogue_kwargs") or {}).get("mbstd_group_size", 4),
        "disc_camera_noise": float(kwargs.get("disc_c_noise", 0.0)),
    }


def _plain(value):
    """numpy scalars -> Python numbers, so configs stay JSON-able."""
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return value.item() if isinstance(value, np.generic) else value


# ---------------------------------------------------------------------------------------------------
# The public API


@dataclass
class ReferenceNetworks:
    model: dict  # ModelConfig field -> value read from the pickle
    rendering: dict  # RenderingConfig field -> value (legacy_plane_order included)
    state: dict  # {"G": our G state_dict, "D": our D state_dict or None, "G_ema": our G state_dict}
    notes: list[str]  # human-readable lines to log


def read_reference_pickle(data: bytes | BinaryIO, *, legacy_plane_order: bool = True) -> ReferenceNetworks:
    """Weights and configuration of a reference network pickle (a dict with G, D, G_ema, ...), executing
    nothing in it. legacy_plane_order (default True, as the released networks were trained): sample the
    planes as XY/XZ/ZX. Errors: pickle.UnpicklingError for a global outside the allow-list; ValueError
    for missing networks, unknown or missing tensors, or a tensor shape that does not fit."""
    snapshot = load_restricted(data)
    if not isinstance(snapshot, dict) or "G_ema" not in snapshot:
        raise ValueError(f"no G_ema in the pickle ({type(snapshot).__name__}); {NOT_A_REFERENCE_PICKLE}")
    foreign = foreign_generator(snapshot["G_ema"])
    if foreign is not None:
        raise ValueError(f"G_ema is {foreign}, not an EG3D one: only EG3D network pickles import (NVIDIA's "
                         f"{', '.join(RELEASED_PICKLES)}, or any its train.py wrote)")
    try:
        model, rendering = generator_config(snapshot["G_ema"])
        if snapshot.get("D") is not None:
            model.update(discriminator_config(snapshot["D"]))
    except (KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"a setting or tensor is missing or malformed ({type(error).__name__}: {error}); "
                         f"{NOT_A_REFERENCE_PICKLE}") from error
    rendering["legacy_plane_order"] = legacy_plane_order
    model_config, rendering_config = ModelConfig(**model), RenderingConfig(**rendering)
    with torch.device("meta"):
        G_shapes = TriPlaneGenerator(model_config, rendering_config)
        D_shapes = DualDiscriminator(model_config) if snapshot.get("D") is not None else None
    state = {"D": None}
    for key in ("G", "G_ema"):
        if snapshot.get(key) is not None:
            state[key] = fit_to(G_shapes, rename(named_tensors(snapshot[key]), GENERATOR_RULES, key), key)
    state.setdefault("G", state["G_ema"])
    if D_shapes is not None:
        rules = discriminator_rules(model["image_resolution"])
        state["D"] = fit_to(D_shapes, rename(named_tensors(snapshot["D"]), rules, "D"), "D")
    return ReferenceNetworks(model, rendering, state, _notes(snapshot, model, rendering))


def _notes(snapshot: dict, model: dict, rendering: dict) -> list[str]:
    r = rendering
    notes = [
        f"networks: {', '.join(k for k in ('G', 'D', 'G_ema') if snapshot.get(k) is not None)}; "
        f"{model['image_resolution']}x{model['image_resolution']} images, neural rendering "
        f"{r['neural_rendering_resolution_initial']}, super-resolution from {model['sr_input_resolution']}",
        "planes read in the reference's legacy XY/XZ/ZX order (rendering.legacy_plane_order=true)"
        if r["legacy_plane_order"] else
        "planes read in our XY/XZ/YZ order although the network was trained with XY/XZ/ZX: "
        "renders differ from the reference's until it is fine-tuned",
        "nothing in the file was executed: its module source was ignored, its classes kept as data",
    ]
    if snapshot.get("D") is None:
        notes.append("no D in the pickle: only the generator was read")
    kwargs = init_kwargs(snapshot["G_ema"], "G_ema")
    if kwargs.get("sr_num_fp16_res", 0) or kwargs.get("num_fp16_res", 0):
        notes.append("the reference ran some layers in fp16 with activations clamped at +-256; ours runs them "
                     "in fp32 unclamped (model.conv_clamp as the preset sets it)")
    noise_mode = (kwargs.get("rendering_kwargs") or {}).get("superresolution_noise_mode", "none")
    if noise_mode != "none":
        notes.append(f"the reference's super-resolution noise mode was {noise_mode!r}; ours adds no noise there")
    return notes


def apply_to_config(config: TrainConfig, networks: ReferenceNetworks) -> TrainConfig:
    """A copy of `config` that runs the pickle's networks: every model and rendering field read from the pickle
    (the architecture, whatever the reference's train.py built, and the camera scale, pose conditioning,
    learning-rate multipliers and rendering) replaces the config's; the training settings stay. The neural
    rendering resolution starts at the pickle's; a config's later target (neural_rendering_resolution_final)
    is kept when it differs."""
    config = copy.deepcopy(config)
    config.model = dataclasses.replace(config.model, **networks.model)
    final = config.rendering.neural_rendering_resolution_final
    config.rendering = dataclasses.replace(config.rendering, **networks.rendering)
    if final == config.rendering.neural_rendering_resolution_initial:
        config.rendering.neural_rendering_resolution_final = None
    return config


def changed_fields(before: TrainConfig, after: TrainConfig) -> list[str]:
    """'section.field: value in the preset -> value from the pickle' for the model and rendering fields that differ."""
    lines = []
    for section in ("model", "rendering"):
        old, new = before.to_dict()[section], after.to_dict()[section]
        lines += [f"{section}.{k}: {old[k]!r} in the preset -> {new[k]!r} from the pickle" for k in new
                  if new[k] != old[k]]
    return lines
