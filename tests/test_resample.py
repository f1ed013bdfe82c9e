"""FIR resampling (upfirdn2d, upsample2x, Conv2d's down path, the loss's blur) against the direct
zero-insertion implementation, in float64: values, gradients and whole networks."""

import math

import pytest
import torch
import torch.nn.functional as F

from model_helpers import micro_config, random_cameras
from eg3d.networks import layers
from eg3d.networks.discriminator import DualDiscriminator
from eg3d.networks.generator import TriPlaneGenerator
from eg3d.networks.layers import Conv2d, fir_filter, upfirdn2d, upsample2x
from eg3d.training.loss import gaussian_blur


def naive_upfirdn2d(x, kernel, *, up=1, down=1, pad=(0, 0), gain=1.0):
    """The direct definition: insert up-1 zeros after each sample, zero-pad (negative: crop), convolve at the
    full rate with the whole kernel (its outer product with itself when 1D), keep every `down`-th pixel."""
    n, c, h, w = x.shape
    if up > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(n, c, h * up, w * up)
    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    k = torch.outer(kernel, kernel) if kernel.ndim == 1 else kernel
    k = (k * gain).to(x.dtype).flip([0, 1])[None, None].repeat(c, 1, 1, 1)
    x = F.conv2d(x, k, groups=c)
    return x[:, :, ::down, ::down]


def random_kernel(kind: str, generator) -> torch.Tensor:
    if kind == "fir2d":
        return fir_filter().double()
    if kind == "taps1d":
        return torch.tensor([1.0, 3.0, 3.0, 1.0], dtype=torch.float64) / 8
    if kind == "odd1d":
        return torch.rand(5, generator=generator, dtype=torch.float64)
    return torch.randn(3, 4, generator=generator, dtype=torch.float64)  # non-square, asymmetric 2D


@pytest.mark.parametrize("kernel_kind", ["fir2d", "taps1d", "odd1d", "asym2d"])
@pytest.mark.parametrize("up,down", [(2, 1), (1, 2), (1, 1), (2, 2), (3, 1)])
@pytest.mark.parametrize("pad", [(2, 1), (1, 1), (0, 0), (3, 0), (-1, 2), (-2, -1), (4, 4)])
def test_upfirdn2d_matches_zero_insertion(kernel_kind, up, down, pad):
    g = torch.Generator().manual_seed(up * 100 + down * 10 + pad[0])
    kernel = random_kernel(kernel_kind, g)
    x = torch.randn(3, 5, 9, 11, generator=g, dtype=torch.float64)  # odd and unequal sides
    expected = naive_upfirdn2d(x, kernel, up=up, down=down, pad=pad, gain=2.5)
    got = upfirdn2d(x, kernel, up=up, down=down, pad=pad, gain=2.5)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kernel_kind", ["fir2d", "taps1d", "asym2d"])
@pytest.mark.parametrize("up,down,pad", [(2, 1, (2, 1)), (1, 2, (1, 1)), (1, 2, (-1, 2)), (2, 1, (0, 3))])
def test_upfirdn2d_gradients(kernel_kind, up, down, pad):
    g = torch.Generator().manual_seed(7)
    kernel = random_kernel(kernel_kind, g)
    x = torch.randn(2, 2, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: upfirdn2d(t, kernel, up=up, down=down, pad=pad, gain=4), (x,))
    grad_out = torch.randn_like(naive_upfirdn2d(x, kernel, up=up, down=down, pad=pad, gain=4))
    got, = torch.autograd.grad(upfirdn2d(x, kernel, up=up, down=down, pad=pad, gain=4), x, grad_out)
    expected, = torch.autograd.grad(naive_upfirdn2d(x, kernel, up=up, down=down, pad=pad, gain=4), x, grad_out)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("size", [(4, 4), (5, 8)])
def test_upsample2x_matches_zero_insertion(size):
    x = torch.randn(2, 6, *size, dtype=torch.float64)
    expected = naive_upfirdn2d(x, fir_filter().double(), up=2, pad=(2, 1), gain=4)
    torch.testing.assert_close(upsample2x(x, fir_filter().double()), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kernel_size", [1, 3])
@pytest.mark.parametrize("size", [8, 9])
def test_conv2d_down2_matches_full_rate_filter_then_strided_conv(kernel_size, size):
    torch.manual_seed(0)
    layer = Conv2d(4, 6, kernel_size, down=2, activation="lrelu").double()
    x = torch.randn(2, 4, size, size, dtype=torch.float64, requires_grad=True)
    margin = kernel_size // 2 + 1
    w = layer.weight * layer.weight_gain
    expected = F.conv2d(naive_upfirdn2d(x, fir_filter().double(), pad=(margin, margin)), w, stride=2)
    expected = layers.bias_act(expected, layer.bias, activation="lrelu")
    got = layer(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(lambda t: layer(t), (x,))


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.3])
def test_gaussian_blur_matches_the_2d_kernel(sigma):
    images = torch.randn(1, 2, 7, 9, dtype=torch.float64, requires_grad=True)
    radius = int(math.floor(sigma * 3))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    taps = torch.exp(-0.5 * (x / sigma) ** 2)
    taps = (taps / taps.sum()).double()
    expected = naive_upfirdn2d(images, torch.outer(taps, taps), pad=(radius, radius))
    got = gaussian_blur(images, sigma)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(lambda t: gaussian_blur(t, sigma), (images,))


def test_networks_match_the_zero_insertion_reference(monkeypatch):
    """G (backbone, super-resolution with a 4x block) and D in float64 with fixed weights and inputs give
    the same outputs and gradients with the naive resampling patched in."""
    config = micro_config("model.sr_input_resolution=8")  # 8 -> 32: both super-resolution blocks upsample
    torch.manual_seed(0)
    G = TriPlaneGenerator(config.model, config.rendering).double().eval()
    D = DualDiscriminator(config.model).double()
    z = torch.randn(2, config.model.z_dim, dtype=torch.float64)
    c = random_cameras(2).double()

    def run():
        G.zero_grad()
        D.zero_grad()
        images = G(z, c, neural_rendering_resolution=16, noise_mode="const")
        logits = D(images["image"], images["image_raw"], c)
        logits.sum().backward()
        grads = [p.grad.clone() for p in list(G.parameters()) + list(D.parameters()) if p.grad is not None]
        return images["image"].detach(), logits.detach(), grads

    image, logits, grads = run()
    monkeypatch.setattr(layers, "upfirdn2d", naive_upfirdn2d)
    ref_image, ref_logits, ref_grads = run()
    torch.testing.assert_close(image, ref_image, rtol=0, atol=1e-10)
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=1e-10)
    assert len(grads) == len(ref_grads)
    for got, expected in zip(grads, ref_grads):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
