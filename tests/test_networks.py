"""The tri-plane generator and the dual discriminator: parameter counts from a hand-derived formula, output
shapes, truncation, pose conditioning and gradient flow."""

import math

import pytest
import torch
import torch.nn.functional as F

from eg3d.config.presets import get_preset
from eg3d.networks.camera import orbit_camera, pixel_rays
from eg3d.networks.discriminator import DualDiscriminator
from eg3d.networks.generator import TriPlaneGenerator

# ---------------------------------------------------------------------------------------------- counting by hand
# Written from the architecture description (docs), not from the code. Every layer is equalized-lr with a bias
# unless said otherwise; noise inputs are buffers, their strengths are one parameter per synthesis layer.


def fc(fan_in, fan_out):
    return fan_in * fan_out + fan_out


def conv(fan_in, fan_out, k, bias=True):
    return fan_in * fan_out * k * k + (fan_out if bias else 0)


def synthesis_layer(fan_in, fan_out, w_dim):
    return fc(w_dim, fan_in) + fan_out * fan_in * 9 + 1 + fan_out  # affine + 3x3 weight + noise strength + bias


def to_rgb(fan_in, fan_out, w_dim):
    return fc(w_dim, fan_in) + fan_out * fan_in + fan_out  # affine + 1x1 weight + bias


def synthesis_block(fan_in, fan_out, w_dim, img_channels):
    """A block with conv0 (up or not: same parameters), conv1 and ToRGB."""
    return (synthesis_layer(fan_in, fan_out, w_dim) + synthesis_layer(fan_out, fan_out, w_dim)
            + to_rgb(fan_out, img_channels, w_dim))


def channels(res, base, cmax):
    return min(base // res, cmax)


def count_mapping_g(z_dim, c_dim, w_dim, layers):
    return fc(c_dim, w_dim) + fc(z_dim + w_dim, w_dim) + (layers - 1) * fc(w_dim, w_dim)


def count_backbone(w_dim, res, img_channels, base, cmax):
    c4 = channels(4, base, cmax)
    total = c4 * 4 * 4 + synthesis_layer(c4, c4, w_dim) + to_rgb(c4, img_channels, w_dim)  # const + conv1 + torgb
    r = 8
    while r <= res:
        total += synthesis_block(channels(r // 2, base, cmax), channels(r, base, cmax), w_dim, img_channels)
        r *= 2
    return total


def count_decoder(plane_channels, hidden):
    return fc(plane_channels, hidden) + fc(hidden, 1 + plane_channels)


def count_sr(plane_channels, sr_channels, w_dim):
    a, b = sr_channels
    return synthesis_block(plane_channels, a, w_dim, 3) + synthesis_block(a, b, w_dim, 3)


def count_generator(z_dim=512, w_dim=512, c_dim=25, mapping_layers=2, backbone_res=256, plane_channels=32,
                    base=32768, cmax=512, hidden=64, sr_channels=(256, 128)):
    return {
        "mapping": count_mapping_g(z_dim, c_dim, w_dim, mapping_layers),
        "backbone": count_backbone(w_dim, backbone_res, 3 * plane_channels, base, cmax),
        "decoder": count_decoder(plane_channels, hidden),
        "superresolution": count_sr(plane_channels, sr_channels, w_dim),
    }


def count_discriminator(res=512, base=32768, cmax=512, c_dim=25, mapping_layers=8, img_channels=6):
    blocks = 0
    r = res
    while r >= 8:
        tmp, out = channels(r, base, cmax), channels(r // 2, base, cmax)
        if r == res:
            blocks += conv(img_channels, tmp, 1)  # FromRGB
        blocks += conv(tmp, tmp, 3) + conv(tmp, out, 3) + conv(tmp, out, 1, bias=False)  # conv0, conv1, skip
        r //= 2
    c = channels(4, base, cmax)
    cmap = c
    epilogue = conv(c + 1, c, 3) + fc(c * 4 * 4, c) + fc(c, cmap)
    mapping = fc(c_dim, cmap) + mapping_layers * fc(cmap, cmap)
    return {"blocks": blocks, "epilogue": epilogue, "mapping": mapping}


def n_params(module):
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------------- fixtures

def camera(yaw=math.pi / 2, pitch=math.pi / 2, pivot=(0.0, 0.0, 0.2)):
    return orbit_camera(torch.as_tensor(yaw, dtype=torch.float32), pitch, pivot=pivot)


@pytest.fixture(scope="module")
def ffhq():
    torch.manual_seed(0)
    config = get_preset("ffhq512")
    return TriPlaneGenerator(config.model, config.rendering).eval(), DualDiscriminator(config.model).eval()


def make_tiny(seed=0, **model_overrides):
    torch.manual_seed(seed)
    config = get_preset("tiny")
    for key, value in model_overrides.items():
        setattr(config.model, key, value)
    G = TriPlaneGenerator(config.model, config.rendering).eval()
    D = DualDiscriminator(config.model).eval()
    with torch.no_grad():
        G.mapping.w_avg.normal_()  # a non-trivial truncation target
    return G, D


# ---------------------------------------------------------------------------------------------- parameter counts

def test_formula_gives_the_reference_counts():
    assert sum(count_generator().values()) == 30_662_136
    assert sum(count_discriminator().values()) == 31_359_744


def test_ffhq512_parameter_counts(ffhq):
    G, D = ffhq
    expected_g = count_generator()
    assert {name: n_params(getattr(G, name)) for name in expected_g} == expected_g
    assert n_params(G) == 30_662_136
    expected_d = count_discriminator()
    assert {name: n_params(getattr(D, name)) for name in expected_d} == expected_d
    assert n_params(D) == 31_359_744


def test_shapenet128_parameter_counts():
    torch.manual_seed(0)
    config = get_preset("shapenet128")
    G = TriPlaneGenerator(config.model, config.rendering)
    # SR 64 -> 128: a no-up block 32->128 at 64, then an up block 128->64 at 128.
    assert n_params(G.superresolution) == count_sr(32, (128, 64), 512)
    assert G.superresolution.block0.up == 1 and G.superresolution.block0.resolution == 64
    assert G.superresolution.block1.up == 2 and G.superresolution.block1.resolution == 128
    expected = count_generator(sr_channels=(128, 64))
    assert {name: n_params(getattr(G, name)) for name in expected} == expected
    D = DualDiscriminator(config.model)
    assert n_params(D) == sum(count_discriminator(res=128).values())


def test_tiny_parameter_counts():
    G, D = make_tiny()
    m = get_preset("tiny").model
    expected = count_generator(z_dim=m.z_dim, w_dim=m.w_dim, backbone_res=m.backbone_resolution,
                               base=m.backbone_channel_base, cmax=m.backbone_channel_max, sr_channels=m.sr_channels)
    assert {name: n_params(getattr(G, name)) for name in expected} == expected
    expected_d = count_discriminator(res=64, base=m.disc_channel_base, cmax=m.disc_channel_max,
                                     mapping_layers=m.disc_mapping_layers)
    assert {name: n_params(getattr(D, name)) for name in expected_d} == expected_d


# ---------------------------------------------------------------------------------------------- shapes

@pytest.fixture(scope="module")
def tiny():
    return make_tiny()


def test_tiny_output_shapes(tiny):
    G, D = tiny
    c = camera()
    seen = {}
    hook = G.renderer.register_forward_hook(lambda module, args, output: seen.update(planes=args[0]))
    with torch.no_grad():
        # A 32x32 backbone: blocks at 4, 8, 16, 32 take 1 + 2 + 2 + 2 convolution styles and one toRGB style.
        assert G.map(torch.randn(1, 64), c).shape == (1, 8, 64)
        out = G(torch.randn(1, 64), c, neural_rendering_resolution=32, noise_mode="const")
        hook.remove()
        assert seen["planes"].shape == (1, 3, 32, 32, 32)  # three 32-channel planes at 32x32
        assert out["image"].shape == (1, 3, 64, 64)
        assert out["image_raw"].shape == (1, 3, 32, 32)
        assert out["image_depth"].shape == (1, 1, 32, 32)
        assert D(out["image"], out["image_raw"], c).shape == (1, 1)
    for value in out.values():
        assert torch.isfinite(value).all()
    # Depths lie within the sampled range.
    assert out["image_depth"].min() >= 2.25 and out["image_depth"].max() <= 3.3


def clamps(module: torch.nn.Module) -> dict:
    """{layer name: conv_clamp} of every layer in `module` that has the setting."""
    return {name: m.conv_clamp for name, m in module.named_modules() if hasattr(m, "conv_clamp")}


@pytest.mark.parametrize("preset", ["ffhq512", "ffhq512_stage2", "afhq512", "shapenet128", "tiny"])
def test_presets_clamp_the_super_resolution_and_discriminator_but_not_the_backbone(preset):
    """As the reference's training script: conv_clamp 256 in the SR network and D, none in the tri-plane
    backbone. D's 1x1 downsampling skips have no bias or activation and are not clamped there either."""
    config = get_preset(preset)
    assert config.model.conv_clamp == 256
    with torch.device("meta"):  # the structure only, no weights
        G, D = TriPlaneGenerator(config.model, config.rendering), DualDiscriminator(config.model)
    sr, disc, backbone = clamps(G.superresolution), clamps(D), clamps(G.backbone)
    assert len(sr) == 6 and set(sr.values()) == {256}  # 2 blocks x (conv0, conv1, ToRGB)
    assert {name for name, value in disc.items() if value is None} == {f"blocks.{i}.skip" for i in range(len(D.blocks))}
    assert {value for value in disc.values() if value is not None} == {256}
    assert len(disc) == 3 * len(D.blocks) + 1 + 1  # conv0, conv1, skip per block; the top block's FromRGB; epilogue
    assert backbone and set(backbone.values()) == {None}


def test_super_resolution_leaves_image_raw_the_pure_rendering():
    """tiny with a 2x super-resolution renders at 32, the SR's input size, so the SR's first block takes the
    raw RGB itself as its skip input. The reference's 2x and 4x modules add their first ToRGB output into that
    tensor in place, so the image_raw it returns is no longer the rendering; ours must be."""
    G, _ = make_tiny(sr_input_resolution=32)
    c = camera()
    seen = {}

    def keep_rendering(module, args, output):
        feature = output[0]  # [N, rays, channels], rays row-major over the 32 x 32 image
        seen["rgb"] = feature.transpose(1, 2)[:, :3].reshape(len(feature), 3, 32, 32).clone()

    def keep_skip(module, args, output):
        seen["skip_in"], seen["skip_out"] = args[1].clone(), output[1]

    hooks = [G.renderer.register_forward_hook(keep_rendering),
             G.superresolution.block0.register_forward_hook(keep_skip)]
    with torch.no_grad():
        out = G(torch.randn(2, 64), c.expand(2, -1), neural_rendering_resolution=32, noise_mode="const")
    for hook in hooks:
        hook.remove()
    assert torch.equal(out["image_raw"], seen["rgb"])
    # The case that matters: the SR was fed the rendering itself (no resize) and its first block added to it.
    assert G.superresolution.input_resolution == 32 and G.superresolution.block0.up == 1
    assert torch.equal(seen["skip_in"], seen["rgb"])
    assert not torch.equal(seen["skip_out"], seen["rgb"])


@pytest.mark.slow
def test_ffhq512_generator_shapes(ffhq):
    G, _ = ffhq
    c = camera()
    seen = {}

    def capture(name, take):
        def hook(module, args, output):
            seen[name] = take(args, output)  # returns None: the module's output is left alone
        return hook

    hooks = [G.renderer.register_forward_hook(capture("planes", lambda args, output: args[0])),
             G.backbone.register_forward_hook(capture("backbone", lambda args, output: output)),
             G.superresolution.block0.register_forward_hook(capture("sr_in", lambda args, output: args[0]))]
    with torch.no_grad():
        ws = G.map(torch.randn(1, 512), c)
        assert ws.shape == (1, 14, 512)
        out = G(torch.randn(1, 512), c, neural_rendering_resolution=16, noise_mode="const")
        assert seen["backbone"].shape == (1, 96, 256, 256)
        assert seen["planes"].shape == (1, 3, 32, 256, 256)
        assert seen["sr_in"].shape == (1, 32, 128, 128)  # rendered features resized to the SR input, 128
        assert out["image"].shape == (1, 3, 512, 512)
        assert out["image_raw"].shape == (1, 3, 16, 16)
        assert out["image_depth"].shape == (1, 1, 16, 16)
        for hook in hooks:
            hook.remove()
        # The renderer at the training neural rendering resolution, 64.
        origins, directions = pixel_rays(c, 64)
        feature, depth, _ = G.renderer(seen["planes"], G.decoder, origins, directions, jitter=False)
        assert feature.shape == (1, 64 * 64, 32)
        assert depth.shape == (1, 64 * 64, 1)
    for value in list(out.values()) + [feature, depth]:
        assert torch.isfinite(value).all()


@pytest.mark.slow
def test_ffhq512_discriminator_shape(ffhq):
    _, D = ffhq
    with torch.no_grad():
        logits = D(torch.randn(1, 3, 512, 512), torch.randn(1, 3, 64, 64), camera())
    assert logits.shape == (1, 1)
    assert torch.isfinite(logits).all()


# ---------------------------------------------------------------------------------------------- behaviour

def test_truncation_psi0_gives_identical_images_for_different_z(tiny):
    G, _ = tiny
    c = camera().repeat(2, 1)
    z = torch.randn(2, 64)
    with torch.no_grad():
        out = G(z, c, neural_rendering_resolution=16, truncation_psi=0, noise_mode="const")
        control = G.map(z, c)  # untruncated, the two samples differ
    for key in ("image", "image_raw", "image_depth"):
        torch.testing.assert_close(out[key][0], out[key][1], rtol=0, atol=1e-5)
    assert (control[0] - control[1]).abs().max() > 1e-3
    assert (out["image"][0] - out["image"][0].mean()).abs().max() > 1e-3  # not a blank image


def test_pose_conditioning_off_ignores_the_conditioning_camera():
    G, _ = make_tiny(pose_conditioning=False)
    z, c = torch.randn(1, 64).repeat(2, 1), camera().repeat(2, 1)
    c1, c2 = camera(yaw=1.0, pitch=1.2), camera(yaw=2.1, pitch=1.9)
    with torch.no_grad():
        out = G(z, c, c_condition=torch.cat([c1, c2]), neural_rendering_resolution=16, noise_mode="const")
    for key in out:
        torch.testing.assert_close(out[key][0], out[key][1], rtol=0, atol=1e-6)
    z = z[:1]
    # Control: with conditioning on (same weights), the ws do depend on the conditioning camera.
    G.model_config.pose_conditioning = True
    with torch.no_grad():
        assert (G.map(z, c1) - G.map(z, c2)).abs().max() > 1e-4


def test_pose_conditioning_on_uses_c_condition_not_the_rendering_camera(tiny):
    G, _ = tiny
    z, c, c1 = torch.randn(1, 64), camera(), camera(yaw=1.0)
    seen = {}
    hooks = [G.backbone.register_forward_hook(lambda module, args, output: seen.update(ws=args[0])),
             G.renderer.register_forward_hook(lambda module, args, output: seen.update(origins=args[2]))]
    with torch.no_grad():
        G(z, c, c_condition=c1, neural_rendering_resolution=16, noise_mode="const")
        for hook in hooks:
            hook.remove()
        torch.testing.assert_close(seen["ws"], G.map(z, c1))
        assert (seen["ws"] - G.map(z, c)).abs().max() > 1e-4
    # Rays start at the rendering camera's centre, 2.7 from the origin on +z.
    torch.testing.assert_close(seen["origins"][0], c[0, [3, 7, 11]].expand(16 * 16, 3))
    torch.testing.assert_close(c[0, [3, 7, 11]], torch.tensor([0.0, 0.0, 2.7]), rtol=0, atol=1e-5)


def test_discriminator_depends_on_the_camera(tiny):
    _, D = tiny
    image, raw = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 32, 32)
    c1 = camera(yaw=torch.tensor([1.2, 1.9]))
    c2 = camera(yaw=torch.tensor([2.0, 1.1]))
    with torch.no_grad():
        a, b = D(image, raw, c1), D(image, raw, c2)
    assert ((a - b).abs() > 1e-6).all()


def test_gradients_reach_every_generator_part():
    G, D = make_tiny()
    G.train()
    c = camera(yaw=1.3)
    out = G(torch.randn(1, 64), c, neural_rendering_resolution=16)
    F.softplus(-D(out["image"], out["image_raw"], c)).sum().backward()
    for part in ("mapping", "backbone", "decoder", "superresolution"):
        module = getattr(G, part)
        grads = {name: p.grad for name, p in module.named_parameters()}
        assert any(g is not None and g.abs().max() > 0 for g in grads.values()), part
        for name, g in grads.items():
            if part == "superresolution" and name.endswith("noise_strength"):
                continue  # SR runs with noise off, as in the reference: these parameters are unused
            assert g is not None and torch.isfinite(g).all() and g.abs().max() > 0, f"{part}.{name}"


def test_style_mixing_takes_coarse_layers_from_one_code_and_fine_from_the_other():
    ws_a, ws_b = torch.zeros(2, 10, 4), torch.ones(2, 10, 4)
    mixed = TriPlaneGenerator.mix_styles(ws_a, ws_b, 6)
    assert torch.equal(mixed[:, :6], ws_a[:, :6]) and torch.equal(mixed[:, 6:], ws_b[:, 6:])
    assert torch.equal(ws_a, torch.zeros(2, 10, 4))  # inputs untouched
    with pytest.raises(ValueError, match="crossover 11"):
        TriPlaneGenerator.mix_styles(ws_a, ws_b, 11)


def previous_discriminator_forward(D, image, image_raw, c):
    """DualDiscriminator.forward as it was before its input went channels_last (contiguous NCHW)."""
    from eg3d.networks.layers import resize_bilinear
    if image_raw.shape[-1] != image.shape[-1]:
        image_raw = resize_bilinear(image_raw, image.shape[-2:])
    x, img = None, torch.cat([image, image_raw], dim=1)
    for block in D.blocks:
        x = block(x, img)
    return D.epilogue(x, D.mapping(None, c))


def test_discriminator_channels_last_matches_nchw_float64():
    """Logits, their gradients (inputs and weights) and the R1 double backward agree with the NCHW forward."""
    model = get_preset("tiny").model
    model.disc_camera_noise = 0
    torch.manual_seed(0)
    D = DualDiscriminator(model).double()
    image = torch.randn(2, 3, 64, 64, dtype=torch.float64, requires_grad=True)
    image_raw = torch.randn(2, 3, 32, 32, dtype=torch.float64, requires_grad=True)
    c = torch.randn(2, 25, dtype=torch.float64)
    params = list(D.parameters())
    results = []
    for forward in (D, lambda *a: previous_discriminator_forward(D, *a)):
        logits = forward(image, image_raw, c)
        grads = torch.autograd.grad(logits.sum(), [image, image_raw], create_graph=True)
        r1 = sum(g.square().sum() for g in grads)
        results.append([logits, *grads, *torch.autograd.grad(logits.sum() + r1, params)])
    for new, old in zip(*results):
        torch.testing.assert_close(new, old, atol=1e-12, rtol=1e-10)
