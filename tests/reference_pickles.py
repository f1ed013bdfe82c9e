"""Writes network pickles in the reference implementation's on-disk layout, from our own networks.

Built from the format's facts only: modules of persistent classes pickle as a call of
`torch_utils.persistence._reconstruct_persistent_obj` with a dict of type, version, module_src,
class_name and state (the module's __dict__ with `_parameters`, `_buffers`, `_modules` and
`_init_kwargs`); OSGDecoder and the renderer classes are plain classes; tensors pickle as torch pickles
them (`_rebuild_tensor_v2` / `_rebuild_parameter` over `_load_from_bytes` storages). The module tree
below follows the reference's attribute names (b4..b256, fc0.., net.0/net.2, block0/block1, ...).
Stand-in modules are put in sys.modules only while pickling, so that pickle can name their globals.
"""

import contextlib
import math
import pickle
import sys
import types
from collections import OrderedDict

import torch

HARMLESS_SOURCE = "# the module source of the reference; never executed by the reader\n"
_stub_modules: dict[str, types.ModuleType] = {}


def _stub(module: str, name: str, value):
    """Define `module.name` in a stand-in module (registered in sys.modules only while pickling)."""
    stub = _stub_modules.setdefault(module, types.ModuleType(module))
    value.__module__, value.__qualname__ = module, name
    setattr(stub, name, value)
    return value


def _reconstruct_persistent_obj(meta):  # named torch_utils.persistence._reconstruct_persistent_obj
    raise AssertionError("never called: the stream only names it")


_stub("torch_utils.persistence", "_reconstruct_persistent_obj", _reconstruct_persistent_obj)
EasyDict = _stub("dnnlib.util", "EasyDict", type("EasyDict", (dict,), {}))


class Persistent:
    """A module of a persistent class: pickles as _reconstruct_persistent_obj(meta)."""

    def __init__(self, module: str, class_name: str, state: dict, module_src: str = HARMLESS_SOURCE):
        self.meta = dict(type="class", version=6, module_src=module_src, class_name=class_name, state=state)

    def __reduce__(self):
        return _reconstruct_persistent_obj, (self.meta,)


_plain_classes = {}


def plain(module: str, class_name: str, state: dict):
    """An instance of a plain (not persistent) class `module.class_name` with __dict__ `state`."""
    key = f"{module}.{class_name}"
    if key not in _plain_classes:
        _plain_classes[key] = _stub(module, class_name, type(class_name, (), {}))
    obj = object.__new__(_plain_classes[key])
    obj.__dict__.update(state)
    return obj


def module_state(parameters=(), buffers=(), modules=(), init_kwargs=None, **attributes) -> dict:
    """A module's __dict__ as nn.Module keeps it (this torch's hook dicts included)."""
    state = dict(torch.nn.Module().__dict__)
    state.update(training=False, _parameters=OrderedDict(parameters), _buffers=OrderedDict(buffers),
                 _modules=OrderedDict(modules), **attributes)
    if init_kwargs is not None:
        state.update(_init_args=(), _init_kwargs=init_kwargs)
    return state


def resample_filter():
    f = torch.tensor([1.0, 3.0, 3.0, 1.0])
    f = torch.outer(f, f)
    return f / f.sum()


def parameter(tensor):
    return torch.nn.Parameter(tensor.detach().clone(), requires_grad=False)


def persistent(module: str, class_name: str, **state):
    return Persistent(f"training.{module}", class_name, module_state(init_kwargs={}, **state))


# --- the reference's module tree, built from ours -------------------------------------------------

def fully_connected(fc):
    params = [("weight", parameter(fc.weight))] + ([("bias", parameter(fc.bias))] if fc.bias is not None else [])
    return persistent("networks_stylegan2", "FullyConnectedLayer", parameters=params)


def synthesis_layer(layer):
    buffers = [("resample_filter", resample_filter()), ("noise_const", layer.noise_const.clone())]
    params = [("weight", parameter(layer.weight)), ("noise_strength", parameter(layer.noise_strength.reshape([]))),
              ("bias", parameter(layer.bias))]
    return persistent("networks_stylegan2", "SynthesisLayer", parameters=params, buffers=buffers,
                      modules=[("affine", fully_connected(layer.affine))])


def to_rgb(layer):
    return persistent("networks_stylegan2", "ToRGBLayer", parameters=[("weight", parameter(layer.weight)),
                                                                      ("bias", parameter(layer.bias))],
                      modules=[("affine", fully_connected(layer.affine))])


def synthesis_block(block, module="networks_stylegan2", class_name="SynthesisBlock"):
    modules = [("conv0", synthesis_layer(block.conv0))] if block.in_channels else []
    modules += [("conv1", synthesis_layer(block.conv1)), ("torgb", to_rgb(block.torgb))]
    params = [("const", parameter(block.const))] if not block.in_channels else []
    return persistent(module, class_name, parameters=params, buffers=[("resample_filter", resample_filter())],
                      modules=modules)


def mapping_network(mapping):
    modules = [("embed", fully_connected(mapping.embed))] if mapping.c_dim else []
    modules += [(f"fc{i}", fully_connected(layer)) for i, layer in enumerate(mapping.layers)]
    buffers = [("w_avg", mapping.w_avg.clone())] if hasattr(mapping, "w_avg") else []
    return persistent("networks_stylegan2", "MappingNetwork", modules=modules, buffers=buffers)


def backbone(G):
    blocks = [(f"b{4 * 2 ** i}", synthesis_block(block)) for i, block in enumerate(G.backbone.blocks)]
    return persistent("networks_stylegan2", "Generator", modules=[
        ("synthesis", persistent("networks_stylegan2", "SynthesisNetwork", modules=blocks)),
        ("mapping", mapping_network(G.mapping))])


def decoder(G):
    net = torch.nn.Sequential()
    net._modules.update({"0": fully_connected(G.decoder.hidden), "1": torch.nn.Softplus(),
                         "2": fully_connected(G.decoder.out)})
    return plain("training.triplane", "OSGDecoder", module_state(modules=[("net", net)], hidden_dim=64))


def superresolution(G):
    sr = G.superresolution
    up_first = sr.block0.up > 1
    block0 = synthesis_block(sr.block0) if up_first else synthesis_block(sr.block0, "superresolution",
                                                                            "SynthesisBlockNoUp")
    return persistent("superresolution", "SuperresolutionHybrid8XDC" if up_first else "SuperresolutionHybrid2X",
                      buffers=[("resample_filter", resample_filter())],
                      modules=[("block0", block0), ("block1", synthesis_block(sr.block1))],
                      input_resolution=sr.input_resolution, sr_antialias=sr.antialias)


def renderer():
    marcher = plain("training.volumetric_rendering.ray_marcher", "MipRayMarcher2", module_state())
    return plain("training.volumetric_rendering.renderer", "ImportanceRenderer",
                 module_state(modules=[("ray_marcher", marcher)], plane_axes=torch.eye(3).repeat(3, 1, 1)))


def rendering_kwargs(G) -> dict:
    m, r = G.model_config, G.rendering_config
    factor = m.image_resolution // m.sr_input_resolution
    return {
        "image_resolution": m.image_resolution, "disparity_space_sampling": False, "clamp_mode": "softplus",
        "superresolution_module": "training.superresolution." + ("SuperresolutionHybrid8XDC" if factor == 4
                                                                 else "SuperresolutionHybrid2X"),
        "c_gen_conditioning_zero": not m.pose_conditioning, "gpc_reg_prob": 0.5, "c_scale": m.camera_scale,
        "superresolution_noise_mode": "none", "density_reg": 0.25, "density_reg_p_dist": 0.004,
        "reg_type": "l1", "decoder_lr_mul": m.decoder_lr_multiplier, "sr_antialias": m.sr_antialias,
        "depth_resolution": r.depth_resolution, "depth_resolution_importance": r.depth_resolution_importance,
        "ray_start": "auto" if r.ray_start is None else r.ray_start,
        "ray_end": "auto" if r.ray_end is None else r.ray_end,
        "box_warp": r.box_warp, "white_back": r.white_background, "avg_camera_radius": 2.7,
        "avg_camera_pivot": [0, 0, 0.2],
    }


def generator(G, *, neural_rendering_resolution: int):
    m = G.model_config
    kwargs = EasyDict(z_dim=m.z_dim, c_dim=m.c_dim, w_dim=m.w_dim, img_resolution=m.image_resolution,
                      img_channels=3, sr_num_fp16_res=4, channel_base=m.backbone_channel_base,
                      channel_max=m.backbone_channel_max, fused_modconv_default="inference_only",
                      num_fp16_res=0, conv_clamp=None,
                      mapping_kwargs=EasyDict(num_layers=m.mapping_layers), rendering_kwargs=rendering_kwargs(G),
                      sr_kwargs=EasyDict(channel_base=m.backbone_channel_base))
    state = module_state(
        modules=[("renderer", renderer()), ("ray_sampler", plain("training.volumetric_rendering.ray_sampler",
                                                                 "RaySampler", module_state())),
                 ("backbone", backbone(G)), ("superresolution", superresolution(G)), ("decoder", decoder(G))],
        buffers=[("dataset_label_std", torch.rand(m.c_dim))],
        init_kwargs=kwargs, z_dim=m.z_dim, c_dim=m.c_dim, w_dim=m.w_dim, img_resolution=m.image_resolution,
        img_channels=3, neural_rendering_resolution=neural_rendering_resolution,
        rendering_kwargs=kwargs["rendering_kwargs"], _last_planes=None)
    return Persistent("training.triplane", "TriPlaneGenerator", state)


def conv2d(conv):
    params = [("weight", parameter(conv.weight))] + ([("bias", parameter(conv.bias))] if conv.bias is not None else [])
    return persistent("networks_stylegan2", "Conv2dLayer", parameters=params,
                      buffers=[("resample_filter", resample_filter())])


def discriminator(D):
    m = D.model_config
    top = int(math.log2(m.image_resolution))
    modules = []
    for i, block in enumerate(D.blocks):
        children = [("fromrgb", conv2d(block.fromrgb))] if block.in_channels == 0 else []
        children += [(name, conv2d(getattr(block, name))) for name in ("conv0", "conv1", "skip")]
        modules.append((f"b{2 ** (top - i)}", persistent("networks_stylegan2", "DiscriminatorBlock", modules=children,
                                                         buffers=[("resample_filter", resample_filter())])))
    modules.append(("mapping", mapping_network(D.mapping)))
    epilogue = D.epilogue
    modules.append(("b4", persistent("networks_stylegan2", "DiscriminatorEpilogue", modules=[
        ("mbstd", persistent("networks_stylegan2", "MinibatchStdLayer", group_size=m.disc_mbstd_group)),
        ("conv", conv2d(epilogue.conv)), ("fc", fully_connected(epilogue.fc)), ("out", fully_connected(epilogue.out))])))
    kwargs = EasyDict(c_dim=m.c_dim, img_resolution=m.image_resolution, img_channels=3,
                      channel_base=m.disc_channel_base, channel_max=m.disc_channel_max, conv_clamp=256,
                      num_fp16_res=4, disc_c_noise=m.disc_camera_noise, block_kwargs=EasyDict(freeze_layers=0),
                      mapping_kwargs=EasyDict(), epilogue_kwargs=EasyDict(mbstd_group_size=m.disc_mbstd_group))
    state = module_state(modules=modules, buffers=[("resample_filter", resample_filter())], init_kwargs=kwargs,
                         c_dim=m.c_dim, img_resolution=m.image_resolution, disc_c_noise=m.disc_camera_noise)
    return Persistent("training.dual_discriminator", "DualDiscriminator", state)


@contextlib.contextmanager
def stub_modules():
    """The stand-in modules in sys.modules while pickling, removed afterwards (the reader must not need them)."""
    names = {".".join(name.split(".")[:i]) for name in _stub_modules for i in range(1, name.count(".") + 2)}
    added = sorted(name for name in names if name not in sys.modules)
    sys.modules.update({name: _stub_modules.get(name) or types.ModuleType(name) for name in added})
    try:
        yield
    finally:
        for name in added:
            del sys.modules[name]


def dumps(snapshot: dict) -> bytes:
    with stub_modules():
        return pickle.dumps(snapshot, protocol=4)


def reference_pickle(G, D, G_ema, *, neural_rendering_resolution: int, extra: dict | None = None) -> bytes:
    """The bytes of a reference network pickle holding our G, D (or None) and G_ema."""
    snapshot = {
        "G": generator(G, neural_rendering_resolution=neural_rendering_resolution),
        "D": discriminator(D) if D is not None else None,
        "G_ema": generator(G_ema, neural_rendering_resolution=neural_rendering_resolution),
        "augment_pipe": None,
        "training_set_kwargs": EasyDict(class_name="training.dataset.ImageFolderDataset", path="ffhq.zip",
                                        use_labels=True, max_size=None, xflip=False, resolution=64),
        **(extra or {}),
    }
    return dumps(snapshot)


# --- other generators' pickles, by their state-dict key names and settings (their tensors are stand-ins) ----------

def _fc(in_features: int, out_features: int, module: str = "networks_stylegan2"):
    weight, bias = parameter(torch.zeros(out_features, in_features)), parameter(torch.zeros(out_features))
    return persistent(module, "FullyConnectedLayer", parameters=[("weight", weight), ("bias", bias)])


def _generator(module: str, synthesis_modules: list, width: int = 8) -> Persistent:
    mapping = persistent(module, "MappingNetwork", modules=[("fc0", _fc(width, width, module))],
                         buffers=[("w_avg", torch.zeros(width))])
    kwargs = EasyDict(z_dim=width, c_dim=0, w_dim=width, img_resolution=16, img_channels=3,
                      mapping_kwargs=EasyDict(num_layers=1), synthesis_kwargs=EasyDict(channel_base=256))
    return Persistent(f"training.{module}", "Generator", module_state(
        init_kwargs=kwargs, modules=[("synthesis", persistent(module, "SynthesisNetwork", modules=synthesis_modules)),
                                     ("mapping", mapping)]))


def stylegan2_pickle() -> bytes:
    """A StyleGAN2 (or StyleGAN2-ADA) network pickle: synthesis.b4.const, synthesis.b4.conv1..., mapping.fc0..."""
    block = persistent("networks_stylegan2", "SynthesisBlock", parameters=[("const", parameter(torch.zeros(8, 4, 4)))],
                       buffers=[("resample_filter", resample_filter())])
    G = _generator("networks_stylegan2", [("b4", block)])
    return dumps({"G": G, "D": None, "G_ema": G, "augment_pipe": None})


def stylegan3_pickle() -> bytes:
    """A StyleGAN3 network pickle: synthesis.input.freqs/phases/affine, synthesis.L0_36_512..., mapping.fc0..."""
    synthesis_input = persistent("networks_stylegan3", "SynthesisInput",
                                 parameters=[("weight", parameter(torch.zeros(8, 8)))],
                                 buffers=[("transform", torch.eye(3)), ("freqs", torch.zeros(8, 2)),
                                          ("phases", torch.zeros(8))],
                                 modules=[("affine", _fc(8, 4, "networks_stylegan3"))])
    layer = persistent("networks_stylegan3", "SynthesisLayer",
                       parameters=[("weight", parameter(torch.zeros(8, 8, 3, 3)))])
    G = _generator("networks_stylegan3", [("input", synthesis_input), ("L0_36_512", layer)])
    return dumps({"G": G, "D": None, "G_ema": G, "augment_pipe": None})


def trigrid_pickle(G_ours) -> bytes:
    """A PanoHead (tri-grid) network pickle: EG3D's layout from our G, with planes of depth 3 (rendering_kwargs
    triplane_depth, triplane_size) and the camera-offset mapping t_mapping."""
    G = generator(G_ours, neural_rendering_resolution=16)
    state = G.meta["state"]
    state["_init_kwargs"]["rendering_kwargs"].update(triplane_depth=3, triplane_size=256)
    state["_modules"]["t_mapping"] = persistent("networks_stylegan2", "MappingNetwork",
                                                modules=[("fc0", _fc(8, 3))])
    return dumps({"G": G, "D": None, "G_ema": G, "augment_pipe": None})
