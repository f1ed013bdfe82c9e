"""StyleGAN2 building blocks against independent float64 implementations and hand-derived values."""

import math

import numpy as np
import pytest
import torch

from eg3d.networks.discriminator import minibatch_stddev
from eg3d.networks.layers import (Conv2d, FullyConnected, MappingNetwork, SynthesisLayer, SynthesisNetwork, ToRGB,
                                  fir_filter, modulated_conv2d, normalize_2nd_moment, upfirdn2d, upsample2x)

TAPS = np.array([1.0, 3.0, 3.0, 1.0])
FIR = np.outer(TAPS, TAPS) / np.outer(TAPS, TAPS).sum()  # [1,3,3,1]/8 per axis


def np_lrelu(x, gain=1.0):
    return np.where(x >= 0, x, 0.2 * x) * math.sqrt(2) * gain


def np_upfirdn2d(x, kernel, *, up=1, down=1, pad=(0, 0), gain=1.0):
    """Zero-insertion upsample, zero pad, true 2D convolution ('valid'), keep every `down`-th pixel."""
    n, c, h, w = x.shape
    u = np.zeros((n, c, h * up, w * up))
    u[:, :, ::up, ::up] = x  # samples at multiples of `up`, zeros after each
    u = np.pad(u, ((0, 0), (0, 0), (pad[0], pad[1]), (pad[0], pad[1])))
    k = np.asarray(kernel, dtype=np.float64) * gain
    kh, kw = k.shape
    oh, ow = u.shape[2] - kh + 1, u.shape[3] - kw + 1
    out = np.zeros((n, c, oh, ow))
    for a in range(kh):  # convolution: out[y, x] = sum_ab k[a, b] * u[y + kh-1-a, x + kw-1-b]
        for b in range(kw):
            out += k[a, b] * u[:, :, kh - 1 - a:kh - 1 - a + oh, kw - 1 - b:kw - 1 - b + ow]
    return out[:, :, ::down, ::down]


def np_correlate(x, weight, *, stride=1):
    """Multi-channel 2D cross-correlation, 'valid': x [C_in, H, W], weight [C_out, C_in, k, k] -> [C_out, H', W']."""
    _, h, w = x.shape
    _, _, kh, kw = weight.shape
    oh, ow = h - kh + 1, w - kw + 1
    out = np.zeros((weight.shape[0], oh, ow))
    for a in range(kh):
        for b in range(kw):
            out += np.einsum("oi,ihw->ohw", weight[:, :, a, b], x[:, a:a + oh, b:b + ow])
    return out[:, ::stride, ::stride]


def modulate(weight, style, demodulate):
    """One sample's modulated (and optionally demodulated) weight [O, I, k, k], float64 numpy."""
    w = weight * style[None, :, None, None]
    if demodulate:
        w = w / np.sqrt((w ** 2).sum(axis=(1, 2, 3), keepdims=True) + 1e-8)
    return w


# ---------------------------------------------------------------------------------------------- FIR filters

def test_fir_filter_is_normalized_outer_product():
    np.testing.assert_allclose(fir_filter().numpy(), FIR, rtol=1e-7)


def test_upfirdn2d_of_an_impulse_returns_the_kernel_unflipped():
    # Hand-derived: convolving a unit impulse with k gives k itself (a correlation would give k flipped).
    k = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    out = upfirdn2d(torch.ones(1, 1, 1, 1), k, pad=(1, 1))
    np.testing.assert_array_equal(out[0, 0].numpy(), k.numpy())
    np.testing.assert_array_equal(np_upfirdn2d(np.ones((1, 1, 1, 1)), k.numpy(), pad=(1, 1))[0, 0], k.numpy())


@pytest.mark.parametrize("up,down,pad,gain", [(2, 1, (2, 1), 4.0), (1, 2, (1, 1), 1.0), (2, 2, (2, 1), 4.0),
                                              (1, 1, (3, 0), 2.5)])
@pytest.mark.parametrize("asymmetric", [False, True])
def test_upfirdn2d_matches_direct_numpy(up, down, pad, gain, asymmetric):
    rng = np.random.default_rng(up * 10 + down + asymmetric)
    x = rng.standard_normal((2, 3, 7, 7))
    kernel = rng.standard_normal((4, 4)) if asymmetric else FIR
    expected = np_upfirdn2d(x, kernel, up=up, down=down, pad=pad, gain=gain)
    got = upfirdn2d(torch.from_numpy(x), torch.from_numpy(kernel), up=up, down=down, pad=pad, gain=gain)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-12)


def test_upfirdn2d_shapes_for_2x_up_and_down():
    x = torch.randn(1, 2, 8, 8)
    f = fir_filter()
    # [1,3,3,1] upsampling: 2H + pad0 + pad1 - 3 = 2H with pads (2, 1).
    assert upfirdn2d(x, f, up=2, pad=(2, 1), gain=4).shape == (1, 2, 16, 16)
    # Downsampling: (H + 2 - 3) // 2 rounded up = H/2 with pads (1, 1).
    assert upfirdn2d(x, f, down=2, pad=(1, 1)).shape == (1, 2, 4, 4)


def test_upsample2x_preserves_a_constant_in_the_interior():
    # Gain 4 compensates the 3 zeros inserted per input pixel: a DC image stays DC away from the border.
    out = upsample2x(torch.full((1, 1, 8, 8), 2.5, dtype=torch.float64), fir_filter().double())
    assert out.shape == (1, 1, 16, 16)
    np.testing.assert_allclose(out[0, 0, 2:-2, 2:-2].numpy(), 2.5, rtol=1e-12)
    expected = np_upfirdn2d(np.full((1, 1, 8, 8), 2.5), FIR, up=2, pad=(2, 1), gain=4)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12)


# ---------------------------------------------------------------------------------------------- modulated conv

@pytest.mark.parametrize("demodulate", [True, False])
@pytest.mark.parametrize("k", [3, 1])
def test_modulated_conv2d_up1_matches_per_sample_conv(demodulate, k):
    torch.manual_seed(0)
    n, cin, cout, h = 3, 5, 4, 6
    x = torch.randn(n, cin, h, h, dtype=torch.float64)
    weight = torch.randn(cout, cin, k, k, dtype=torch.float64)
    styles = torch.randn(n, cin, dtype=torch.float64)
    got = modulated_conv2d(x, weight, styles, demodulate=demodulate)
    assert got.shape == (n, cout, h, h)
    for i in range(n):
        w = modulate(weight.numpy(), styles[i].numpy(), demodulate)
        xp = np.pad(x[i].numpy(), ((0, 0), (k // 2, k // 2), (k // 2, k // 2)))
        expected = np_correlate(xp, w)
        np.testing.assert_allclose(got[i].numpy(), expected, rtol=1e-9, atol=1e-11)


def test_modulated_conv2d_demodulation_gives_unit_norm_filters():
    # With demodulation, scaling a sample's styles by any positive factor leaves its output unchanged.
    torch.manual_seed(1)
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    weight = torch.randn(3, 4, 3, 3, dtype=torch.float64)
    styles = torch.randn(2, 4, dtype=torch.float64)
    a = modulated_conv2d(x, weight, styles)
    b = modulated_conv2d(x, weight, styles * torch.tensor([[7.0], [0.25]], dtype=torch.float64))
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6)  # up to the 1e-8 epsilon
    c = modulated_conv2d(x, weight, styles * 3, demodulate=False)
    d = modulated_conv2d(x, weight, styles, demodulate=False)
    np.testing.assert_allclose(c.numpy(), 3 * d.numpy(), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("demodulate", [True, False])
def test_modulated_conv2d_up2_matches_upsample_then_conv(demodulate):
    """up=2: FIR-upsample (zero insertion, pads 3/2, gain 4) then a 'valid' 3x3 convolution with the flipped
    modulated kernel (the transposed-convolution orientation of the reference's weights), per sample.

    Pads: k//2 + (taps + up - 1)//2 = 3 before, k//2 + (taps - up)//2 = 2 after; 2H + 5 - 3 - 2 = 2H.
    """
    torch.manual_seed(2)
    n, cin, cout, h = 2, 4, 3, 5
    x = torch.randn(n, cin, h, h, dtype=torch.float64)
    weight = torch.randn(cout, cin, 3, 3, dtype=torch.float64)
    styles = torch.randn(n, cin, dtype=torch.float64)
    got = modulated_conv2d(x, weight, styles, demodulate=demodulate, up=2, resample_filter=fir_filter().double())
    assert got.shape == (n, cout, 2 * h, 2 * h)
    for i in range(n):
        w = modulate(weight.numpy(), styles[i].numpy(), demodulate)
        upsampled = np_upfirdn2d(x[i:i + 1].numpy(), FIR, up=2, pad=(3, 2), gain=4)[0]
        expected = np_correlate(upsampled, w[:, :, ::-1, ::-1])
        np.testing.assert_allclose(got[i].numpy(), expected, rtol=1e-9, atol=1e-11)


def test_modulated_conv2d_up2_is_lowpass_on_constants():
    # Constant input, all-ones 3x3 kernel, no demodulation: the interior of the output is 9 * const.
    x = torch.full((1, 2, 8, 8), 0.5, dtype=torch.float64)
    weight = torch.ones(1, 2, 3, 3, dtype=torch.float64)
    out = modulated_conv2d(x, weight, torch.ones(1, 2, dtype=torch.float64), demodulate=False, up=2,
                           resample_filter=fir_filter().double())
    np.testing.assert_allclose(out[0, 0, 3:-3, 3:-3].numpy(), 9.0, rtol=1e-12)


def test_torgb_is_unmodulated_1x1_with_weight_gain():
    torch.manual_seed(3)
    layer = ToRGB(6, 3, w_dim=5).double()
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(2, 6, 4, 4, dtype=torch.float64)
    w = torch.randn(2, 5, dtype=torch.float64)
    got = layer(x, w).detach().numpy()
    A, b = layer.affine.weight.detach().numpy(), layer.affine.bias.detach().numpy()
    for i in range(2):
        style = (w[i].numpy() @ A.T / math.sqrt(5) + b) / math.sqrt(6)
        kernel = layer.weight.detach().numpy() * style[None, :, None, None]
        expected = np_correlate(x[i].numpy(), kernel) + layer.bias.detach().numpy()[:, None, None]
        np.testing.assert_allclose(got[i], expected, rtol=1e-9, atol=1e-11)


def test_synthesis_layer_const_noise_bias_and_lrelu():
    torch.manual_seed(4)
    layer = SynthesisLayer(4, 3, w_dim=5, resolution=6).double()
    with torch.no_grad():
        layer.noise_strength.fill_(0.7)
        layer.bias.normal_()
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    w = torch.randn(2, 5, dtype=torch.float64)
    got = layer(x, w, noise_mode="const").detach().numpy()
    A, b = layer.affine.weight.detach().numpy(), layer.affine.bias.detach().numpy()
    for i in range(2):
        style = w[i].numpy() @ A.T / math.sqrt(5) + b  # affine bias initialized to 1
        kernel = modulate(layer.weight.detach().numpy(), style, True)
        y = np_correlate(np.pad(x[i].numpy(), ((0, 0), (1, 1), (1, 1))), kernel)
        y = y + 0.7 * layer.noise_const.numpy()[None] + layer.bias.detach().numpy()[:, None, None]
        np.testing.assert_allclose(got[i], np_lrelu(y), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(b, 1.0)
    none = layer(x, w, noise_mode="none")
    assert not torch.allclose(none, layer(x, w, noise_mode="const"))


# ---------------------------------------------------------------------------------------------- Conv2d

@pytest.mark.parametrize("k,pad,activation,bias,gain", [(3, 2, "lrelu", True, math.sqrt(0.5)),
                                                        (1, 1, "linear", False, math.sqrt(0.5)),
                                                        (3, 2, "lrelu", True, 1.0)])
def test_conv2d_down2_is_blur_then_strided_conv(k, pad, activation, bias, gain):
    # Blur with [1,3,3,1]/8 per axis after padding `pad` (k//2 + 1 for the 4-tap filter), then stride 2.
    torch.manual_seed(5)
    conv = Conv2d(4, 5, k, bias=bias, activation=activation, down=2).double()
    if bias:
        with torch.no_grad():
            conv.bias.normal_()
    h = 8
    x = torch.randn(2, 4, h, h, dtype=torch.float64)
    got = conv(x, gain=gain).detach().numpy()
    assert got.shape == (2, 5, h // 2, h // 2)
    weight = conv.weight.detach().numpy() / math.sqrt(4 * k * k)
    for i in range(2):
        blurred = np_upfirdn2d(x[i:i + 1].numpy(), FIR, pad=(pad, pad))[0]
        y = np_correlate(blurred, weight, stride=2)
        if bias:
            y = y + conv.bias.detach().numpy()[:, None, None]
        y = np_lrelu(y, gain) if activation == "lrelu" else y * gain
        np.testing.assert_allclose(got[i], y, rtol=1e-9, atol=1e-11)


def test_conv2d_no_down_is_same_padded_conv():
    torch.manual_seed(6)
    conv = Conv2d(3, 2, 3, activation="lrelu").double()
    x = torch.randn(1, 3, 5, 5, dtype=torch.float64)
    got = conv(x).detach().numpy()[0]
    expected = np_lrelu(np_correlate(np.pad(x[0].numpy(), ((0, 0), (1, 1), (1, 1))),
                                     conv.weight.detach().numpy() / math.sqrt(27)))
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-11)


# ---------------------------------------------------------------------------------------------- conv_clamp
# Identity-weighted layers, so that each output is the activation of its input pixel, worked out by hand:
# lrelu(x) * sqrt(2) * gain, clamped to +-256 * gain for the convs, the linear output clamped to +-256 for ToRGB.
# Inputs below the bound pass unchanged; the clamp holds in float32 as in float64 (not only in reduced precision).
CLAMP_INPUTS = [100.0, 150.0, 300.0, -800.0, -2000.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("gain", [1.0, math.sqrt(0.5)])
def test_conv2d_clamps_activations_at_conv_clamp_times_gain(dtype, gain):
    conv = Conv2d(1, 1, 1, activation="lrelu", conv_clamp=256).to(dtype)
    with torch.no_grad():
        conv.weight.fill_(1.0)  # weight gain 1/sqrt(1 * 1 * 1) = 1
    got = conv(torch.tensor(CLAMP_INPUTS, dtype=dtype).reshape(1, 1, 1, 5), gain=gain).flatten().tolist()
    if gain == 1.0:  # 100 sqrt2 = 141.42, 150 sqrt2 = 212.13 and -160 sqrt2 = -226.27 pass; 300 sqrt2, -400 sqrt2 do not
        expected = [100 * math.sqrt(2), 150 * math.sqrt(2), 256.0, -160 * math.sqrt(2), -256.0]
    else:  # lrelu(x) sqrt2 sqrt(0.5) = lrelu(x) within 256 sqrt(0.5) = 128 sqrt2 = 181.02: 100, 150, -160 pass
        expected = [100.0, 150.0, 128 * math.sqrt(2), -160.0, -128 * math.sqrt(2)]
    assert got == pytest.approx(expected, rel=1e-6 if dtype == torch.float32 else 1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_synthesis_layer_and_torgb_clamp_at_conv_clamp(dtype):
    x = torch.tensor(CLAMP_INPUTS, dtype=dtype).reshape(1, 1, 1, 5)
    w = torch.randn(1, 4, dtype=dtype)
    layer = SynthesisLayer(1, 1, w_dim=4, resolution=5, use_noise=False, conv_clamp=256).to(dtype)
    torgb = ToRGB(1, 1, w_dim=4, conv_clamp=256).to(dtype)
    with torch.no_grad():
        for module in (layer, torgb):
            module.affine.weight.zero_()  # style = the affine's bias, 1
        layer.weight.zero_()
        layer.weight[0, 0, 1, 1] = 1.0  # 3x3 identity; demodulation divides by sqrt(1 + 1e-8)
        torgb.weight.fill_(1.0)  # style 1 times weight gain 1/sqrt(1)
    demodulated = 1 / math.sqrt(1 + 1e-8)
    got = layer(x, w, noise_mode="none").flatten().tolist()
    expected = [100 * math.sqrt(2) * demodulated, 150 * math.sqrt(2) * demodulated, 256.0,
                -160 * math.sqrt(2) * demodulated, -256.0]
    assert got == pytest.approx(expected, rel=1e-6 if dtype == torch.float32 else 1e-12)
    assert torgb(x, w).flatten().tolist() == pytest.approx([100.0, 150.0, 256.0, -256.0, -256.0], rel=1e-12)


# ---------------------------------------------------------------------------------------------- FullyConnected

@pytest.mark.parametrize("lr,activation", [(0.01, "linear"), (1.0, "linear"), (0.01, "lrelu")])
def test_fully_connected_equalized_lr(lr, activation):
    torch.manual_seed(7)
    fc = FullyConnected(20, 7, activation=activation, lr_multiplier=lr, bias_init=1.0).double()
    with torch.no_grad():
        fc.bias.normal_()
    x = torch.randn(3, 20, dtype=torch.float64)
    W, b = fc.weight.detach().numpy(), fc.bias.detach().numpy()
    expected = x.numpy() @ (W * lr / math.sqrt(20)).T + b * lr
    if activation == "lrelu":
        expected = np_lrelu(expected)
    np.testing.assert_allclose(fc(x).detach().numpy(), expected, rtol=1e-10, atol=1e-12)
    # A leading batch axis (the decoder's [N, M, C]) gives the same per-row result.
    np.testing.assert_allclose(fc(x[None]).detach().numpy()[0], expected, rtol=1e-10, atol=1e-12)


def test_fully_connected_initialization():
    torch.manual_seed(8)
    for lr in (0.01, 1.0):
        fc = FullyConnected(1024, 1024, lr_multiplier=lr, bias_init=1.0)
        std = fc.weight.detach().double().std().item()
        assert std == pytest.approx(1 / lr, rel=0.01)
        assert abs(fc.weight.detach().double().mean().item()) < 0.01 / lr
        np.testing.assert_array_equal(fc.bias.detach().numpy(), 1.0)  # stored raw; applied times lr
    fc = FullyConnected(4, 2, lr_multiplier=0.01, bias_init=1.0)
    np.testing.assert_allclose(fc(torch.zeros(1, 4)).detach().numpy(), 0.01, rtol=1e-6)


# ---------------------------------------------------------------------------------------------- mapping

def make_mapping(**kwargs):
    torch.manual_seed(9)
    m = MappingNetwork(z_dim=8, c_dim=5, w_dim=6, num_ws=7, num_layers=2, **kwargs).double()
    with torch.no_grad():
        m.w_avg.copy_(torch.randn(6, dtype=torch.float64))
        for layer in m.layers:
            layer.bias.normal_()
    return m


def test_normalize_2nd_moment_gives_unit_mean_square():
    x = torch.randn(4, 10, dtype=torch.float64) * torch.tensor([[0.1], [3.0], [10.0], [1.0]], dtype=torch.float64)
    y = normalize_2nd_moment(x)
    np.testing.assert_allclose(y.square().mean(dim=1).numpy(), 1.0, rtol=1e-5)  # eps 1e-8
    np.testing.assert_allclose((y / x).std(dim=1).numpy(), 0.0, atol=1e-9)  # a per-row scale only


def test_mapping_forward_matches_hand_computation():
    m = make_mapping()
    z, c = torch.randn(3, 8, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    ws = m(z, c).detach().numpy()
    assert ws.shape == (3, 7, 6)

    def norm(v):
        return v / np.sqrt((v ** 2).mean(axis=1, keepdims=True) + 1e-8)

    E, eb = m.embed.weight.detach().numpy(), m.embed.bias.detach().numpy()
    h = np.concatenate([norm(z.numpy()), norm(c.numpy() @ E.T / math.sqrt(5) + eb)], axis=1)
    for layer in m.layers:
        W, b = layer.weight.detach().numpy(), layer.bias.detach().numpy()
        h = np_lrelu(h @ (W * 0.01 / math.sqrt(W.shape[1])).T + b * 0.01)
    for i in range(7):
        np.testing.assert_allclose(ws[:, i], h, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("cutoff", [3, None])
def test_mapping_truncation(cutoff):
    m = make_mapping()
    z, c = torch.randn(2, 8, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64)
    with torch.no_grad():
        plain = m(z, c)
        w_avg = m.w_avg.clone()
        zero = m(z, c, truncation_psi=0, truncation_cutoff=cutoff)
        half = m(z, c, truncation_psi=0.5, truncation_cutoff=cutoff)
    k = 7 if cutoff is None else cutoff
    np.testing.assert_allclose(zero[:, :k].numpy(), w_avg.expand(2, k, 6).numpy(), rtol=1e-12)
    np.testing.assert_allclose(half[:, :k].numpy(), (w_avg + 0.5 * (plain[:, :k] - w_avg)).numpy(), rtol=1e-9)
    np.testing.assert_array_equal(zero[:, k:].numpy(), plain[:, k:].numpy())
    np.testing.assert_array_equal(m.w_avg.numpy(), w_avg.numpy())  # truncation does not touch w_avg


def test_mapping_update_w_avg_is_lerp_with_beta():
    m = make_mapping()
    z, c = torch.randn(4, 8, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    old = m.w_avg.clone()
    w = m(z, c)[:, 0]
    assert torch.equal(m.w_avg, old)  # no update unless asked
    m(z, c, update_w_avg=True)
    expected = 0.998 * old + (1 - 0.998) * w.mean(dim=0)
    np.testing.assert_allclose(m.w_avg.numpy(), expected.detach().numpy(), rtol=1e-10, atol=1e-14)


# ---------------------------------------------------------------------------------------------- synthesis

@pytest.mark.parametrize("resolution,expected", [(256, 14), (64, 10), (4, 2)])
def test_synthesis_num_ws(resolution, expected):
    # 4x4: conv1 + torgb (2 ws); each further block adds conv0, conv1 and a torgb whose w is shared with the
    # next block's conv0: 2 + 2 * (log2(res) - 2) = 2 * log2(res) - 2.
    assert 2 * int(math.log2(resolution)) - 2 == expected
    net = SynthesisNetwork(w_dim=4, resolution=resolution, img_channels=2, channel_base=512, channel_max=4)
    assert net.num_ws == expected


def test_synthesis_w_assignment_shares_torgb_with_next_conv0():
    torch.manual_seed(10)
    net = SynthesisNetwork(w_dim=4, resolution=256, img_channels=2, channel_base=512, channel_max=4)
    ws = torch.randn(1, 14, 4)
    seen = {}

    def hook(name):
        def record(module, inputs, output):
            matches = [i for i in range(14) if torch.equal(inputs[0], ws[:, i])]
            seen[name] = matches
        return record

    for name, module in net.named_modules():
        if name.endswith(".affine"):
            module.register_forward_hook(hook(name[:-len(".affine")]))
    with torch.no_grad():
        img = net(ws, noise_mode="const")
    assert img.shape == (1, 2, 256, 256)
    expected = {"blocks.0.conv1": [0], "blocks.0.torgb": [1]}
    for b in range(1, 7):
        expected |= {f"blocks.{b}.conv0": [2 * b - 1], f"blocks.{b}.conv1": [2 * b], f"blocks.{b}.torgb": [2 * b + 1]}
    assert seen == expected


# ---------------------------------------------------------------------------------------------- minibatch std

@pytest.mark.parametrize("n,group", [(8, 4), (12, 4), (2, 4), (4, 1)])
def test_minibatch_stddev_matches_loop(n, group):
    torch.manual_seed(11)
    x = torch.randn(n, 3, 4, 4, dtype=torch.float64) * torch.arange(1, n + 1, dtype=torch.float64)[:, None, None, None]
    got = minibatch_stddev(x, group)
    assert got.shape == (n, 4, 4, 4)
    np.testing.assert_array_equal(got[:, :3].numpy(), x.numpy())
    g = min(group, n)
    stride = n // g
    xs = x.numpy()
    for j in range(stride):
        members = [j + k * stride for k in range(g)]  # groups (i, i + N/G, i + 2N/G, ...)
        sample = xs[members]
        std = np.sqrt(((sample - sample.mean(axis=0)) ** 2).mean(axis=0) + 1e-8)
        for i in members:
            np.testing.assert_allclose(got[i, 3].numpy(), std.mean(), rtol=1e-10)
