"""StyleGAN2 building blocks used by the generator, the super-resolution modules and the discriminator.

Pure PyTorch, no custom CUDA ops: the FIR resampling runs as depthwise convolutions. Every layer uses
the equalized learning rate (weights stored as N(0,1)/lr_multiplier, scaled at run time).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

LRELU_GAIN = math.sqrt(2)


def fir_filter(taps=(1, 3, 3, 1)) -> torch.Tensor:
    """Separable low-pass filter, normalized to unit sum, as a 2D kernel."""
    f = torch.tensor(taps, dtype=torch.float32)
    f = torch.outer(f, f)
    return f / f.sum()


def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, *, up: int = 1, down: int = 1,
              pad: tuple[int, int] = (0, 0), gain: float = 1.0) -> torch.Tensor:
    """FIR resampling of x [N, C, H, W]: upsample by zero insertion, pad (a negative pad crops), filter
    with `kernel` per channel (a true convolution), keep every `down`-th pixel (upfirdn of scipy.signal
    and StyleGAN2, in 2D). A 1D kernel is separable: filtering is by its outer product with itself.

    Only the taps that meet input samples are computed: upsampling is a depthwise transposed convolution
    with stride `up` (the polyphase filter: each output phase reads every `up`-th tap), downsampling a
    depthwise convolution with stride `down`, and a 1D kernel runs as one pass per axis. Output side:
    H * up + pad[0] + pad[1] - taps + 1, then divided by `down` rounding up.
    """
    if kernel.ndim == 1:
        k = kernel * math.sqrt(gain)
        x = _upfirdn_pass(x, k[None, :], up=(1, up), down=(1, down), pad=((0, 0), pad))
        return _upfirdn_pass(x, k[:, None], up=(up, 1), down=(down, 1), pad=(pad, (0, 0)))
    return _upfirdn_pass(x, kernel * gain, up=(up, up), down=(down, down), pad=(pad, pad))


def _upfirdn_pass(x, kernel, *, up, down, pad):
    """upfirdn2d with a 2D kernel [kh, kw] and per-axis (height, width) up, down and (before, after) pad.

    As many border pixels as possible are handled by the convolution's own (symmetric) padding; the rest
    by F.pad, which crops when negative.
    """
    c = x.shape[1]
    weight = kernel.to(x.dtype)[None, None].repeat(c, 1, 1, 1)
    if up == (1, 1):
        conv_pad = [max(0, min(p)) for p in pad]
        x = _pad(x, [(p0 - q, p1 - q) for (p0, p1), q in zip(pad, conv_pad)])
        return F.conv2d(x, weight.flip([2, 3]), stride=down, padding=conv_pad, groups=c)
    # The transposed convolution is the full convolution of the zero-inserted input (its last up-1 zeros
    # excepted): full[j] = sum_i x[i] k[j - up * i], length (L - 1) * up + taps. The padded, filtered
    # signal is full[taps - 1 - pad0 :], of length L * up + pad0 + pad1 - taps + 1.
    crops = [(taps - 1 - p0, taps - u - p1) for taps, u, (p0, p1) in zip(kernel.shape, up, pad)]
    conv_crop = [max(0, min(cr)) for cr in crops]
    x = F.conv_transpose2d(x, weight, stride=up, padding=conv_crop, groups=c)
    x = _pad(x, [(q - c0, q - c1) for (c0, c1), q in zip(crops, conv_crop)])
    return x[:, :, ::down[0], ::down[1]] if down != (1, 1) else x


def _pad(x, pad):
    """Zero-pad (negative: crop) x [N, C, H, W] by ((top, bottom), (left, right)); no copy when all zero."""
    (top, bottom), (left, right) = pad
    return F.pad(x, [left, right, top, bottom]) if any((top, bottom, left, right)) else x


def upsample2x(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """2x FIR upsampling [N, C, H, W] -> [N, C, 2H, 2W], gain 4 so a constant stays constant (StyleGAN2's
    upsample2d padding: the filter centred on each input sample)."""
    taps = kernel.shape[-1]
    return upfirdn2d(x, kernel, up=2, pad=((taps + 1) // 2, (taps - 2) // 2), gain=4)


def bias_act(x, bias, *, activation: str, gain: float = 1.0, clamp: float | None = None, dim: int = 1):
    if bias is not None:
        shape = [1] * x.ndim
        shape[dim] = -1
        x = x + bias.reshape(shape)
    if activation == "lrelu":
        x = F.leaky_relu(x, 0.2) * (LRELU_GAIN * gain)
    elif gain != 1:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


class FullyConnected(nn.Module):
    def __init__(self, in_features: int, out_features: int, *, activation: str = "linear",
                 lr_multiplier: float = 1.0, bias_init: float = 0.0, bias: bool = True):
        super().__init__()
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x):
        w = self.weight * self.weight_gain
        b = self.bias * self.bias_gain if self.bias is not None else None
        if self.activation == "linear" and b is not None:
            return torch.addmm(b, x, w.t()) if x.ndim == 2 else F.linear(x, w, b)
        return bias_act(F.linear(x, w), b, activation=self.activation, dim=x.ndim - 1)


class Conv2d(nn.Module):
    """Equalized-lr convolution with optional 2x FIR downsampling (the discriminator's layers)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, bias: bool = True,
                 activation: str = "linear", down: int = 1, conv_clamp: float | None = None):
        super().__init__()
        self.activation, self.down, self.conv_clamp = activation, down, conv_clamp
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size ** 2)
        self.register_buffer("resample_filter", fir_filter(), persistent=False)

    def forward(self, x, gain: float = 1.0):
        w = self.weight * self.weight_gain
        if self.down == 1:
            x = F.conv2d(x, w, padding=self.padding)
        else:  # low-pass, then a strided convolution
            taps = self.resample_filter.shape[-1]
            margin = self.padding + (taps - self.down + 1) // 2
            if w.shape[-1] == 1:  # a 1x1 conv reads only the kept pixels: filter only those
                x = F.conv2d(upfirdn2d(x, self.resample_filter, down=self.down, pad=(margin, margin)), w)
            else:
                x = F.conv2d(upfirdn2d(x, self.resample_filter, pad=(margin, margin)), w, stride=self.down)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias, activation=self.activation, gain=gain, clamp=clamp)


def modulated_conv2d(x, weight, styles, *, demodulate: bool = True, up: int = 1,
                     resample_filter: torch.Tensor | None = None):
    """Per-sample modulated convolution x [N, I, H, W] -> [N, O, H * up, W * up] with weight [O, I, k, k] and
    styles [N, I]: one grouped convolution (a 1x1 kernel: one batched matmul, about twice as fast on a CPU
    as oneDNN's grouped 1x1 convolution, forward and backward); `up=2` uses a transposed conv + FIR."""
    n, in_channels, h, w = x.shape
    out_channels, _, kh, kw = weight.shape
    wts = weight[None] * styles[:, None, :, None, None]  # [N, O, I, k, k]
    if demodulate:
        wts = wts * (wts.square().sum(dim=[2, 3, 4], keepdim=True) + 1e-8).rsqrt()
    if kh == kw == 1 and up == 1:
        x = torch.bmm(wts.reshape(n, out_channels, in_channels), x.reshape(n, in_channels, h * w))
        return x.reshape(n, out_channels, h, w)
    x = x.reshape(1, n * in_channels, h, w)
    if up == 1:
        x = F.conv2d(x, wts.reshape(n * out_channels, in_channels, kh, kw), padding=kh // 2, groups=n)
        return x.reshape(n, out_channels, h, w)
    # Transposed convolution wants [N*I, O, k, k]; kernel orientation as in the reference's weights.
    wts = wts.transpose(1, 2).reshape(n * in_channels, out_channels, kh, kw)
    x = F.conv_transpose2d(x, wts, stride=up, groups=n)  # (h-1)*up + k
    taps = resample_filter.shape[-1]
    pad0 = kh // 2 + (taps + up - 1) // 2 - (kw - 1)
    pad1 = kh // 2 + (taps - up) // 2 - (kw - up)
    x = upfirdn2d(x, resample_filter, pad=(pad0, pad1), gain=up ** 2)
    return x.reshape(n, out_channels, h * up, w * up)


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv, per-pixel noise with a learned strength, bias and leaky ReLU."""

    def __init__(self, in_channels: int, out_channels: int, *, w_dim: int, resolution: int, up: int = 1,
                 use_noise: bool = True, conv_clamp: float | None = None):
        super().__init__()
        self.up, self.resolution, self.conv_clamp, self.use_noise = up, resolution, conv_clamp, use_noise
        self.affine = FullyConnected(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3))
        if use_noise:
            self.register_buffer("noise_const", torch.randn(resolution, resolution))
            self.noise_strength = nn.Parameter(torch.zeros([1]))  # 1-d: DeepSpeed cannot broadcast 0-d tensors
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.register_buffer("resample_filter", fir_filter(), persistent=False)

    def forward(self, x, w, noise_mode: str = "random", gain: float = 1.0):
        styles = self.affine(w)
        x = modulated_conv2d(x, self.weight, styles, up=self.up, resample_filter=self.resample_filter)
        if self.use_noise and noise_mode != "none":
            if noise_mode == "random":
                noise = torch.randn(x.shape[0], 1, self.resolution, self.resolution, device=x.device, dtype=x.dtype)
            else:
                noise = self.noise_const
            x = x + noise * self.noise_strength
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias, activation="lrelu", gain=gain, clamp=clamp)


class ToRGB(nn.Module):
    """1x1 modulated conv without demodulation."""

    def __init__(self, in_channels: int, out_channels: int, *, w_dim: int, conv_clamp: float | None = None):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnected(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1 / math.sqrt(in_channels)

    def forward(self, x, w):
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False)
        return bias_act(x, self.bias, activation="linear", clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
    """One resolution of the 'skip' synthesis network: (x, img) -> (x, img) at 2x (or same) resolution.

    `in_channels == 0` makes the first block, which starts from a learned constant.
    """

    def __init__(self, in_channels: int, out_channels: int, *, w_dim: int, resolution: int, img_channels: int,
                 up: int = 2, use_noise: bool = True, conv_clamp: float | None = None):
        super().__init__()
        self.in_channels, self.resolution, self.up = in_channels, resolution, up
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim=w_dim, resolution=resolution, up=up,
                                        use_noise=use_noise, conv_clamp=conv_clamp)
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim=w_dim, resolution=resolution,
                                    use_noise=use_noise, conv_clamp=conv_clamp)
        self.torgb = ToRGB(out_channels, img_channels, w_dim=w_dim, conv_clamp=conv_clamp)
        self.num_ws = (1 if in_channels == 0 else 2) + 1
        self.register_buffer("resample_filter", fir_filter(), persistent=False)

    def forward(self, x, img, ws, noise_mode: str = "random"):
        w_iter = iter(ws.unbind(dim=1))
        if self.in_channels == 0:
            x = self.const.unsqueeze(0).expand(ws.shape[0], -1, -1, -1)
        else:
            x = self.conv0(x, next(w_iter), noise_mode=noise_mode)
        x = self.conv1(x, next(w_iter), noise_mode=noise_mode)
        if img is not None and self.up > 1:
            img = upsample2x(img, self.resample_filter)
        y = self.torgb(x, next(w_iter))
        img = img + y if img is not None else y
        return x, img


class MappingNetwork(nn.Module):
    """z (and an embedded condition c) -> w, broadcast to `num_ws` copies; tracks w_avg for truncation."""

    def __init__(self, *, z_dim: int, c_dim: int, w_dim: int, num_ws: int | None, num_layers: int,
                 lr_multiplier: float = 0.01, w_avg_beta: float | None = 0.998):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws, self.w_avg_beta = z_dim, c_dim, w_dim, num_ws, w_avg_beta
        embed_features = w_dim if c_dim > 0 else 0
        if c_dim > 0:
            self.embed = FullyConnected(c_dim, embed_features)
        features = [z_dim + embed_features] + [w_dim] * num_layers
        self.layers = nn.ModuleList(
            FullyConnected(a, b, activation="lrelu", lr_multiplier=lr_multiplier)
            for a, b in zip(features[:-1], features[1:])
        )
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z, c, *, truncation_psi: float = 1.0, truncation_cutoff: int | None = None,
                update_w_avg: bool = False):
        parts = []
        if self.z_dim > 0:
            parts.append(normalize_2nd_moment(z))
        if self.c_dim > 0:
            parts.append(normalize_2nd_moment(self.embed(c)))
        x = torch.cat(parts, dim=1)
        for layer in self.layers:
            x = layer(x)
        if update_w_avg and self.w_avg_beta is not None:
            self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        if self.num_ws is None:
            return x
        ws = x.unsqueeze(1).repeat(1, self.num_ws, 1)
        if truncation_psi != 1:
            cutoff = self.num_ws if truncation_cutoff is None else truncation_cutoff
            ws[:, :cutoff] = self.w_avg.lerp(ws[:, :cutoff], truncation_psi)
        return ws


class SynthesisNetwork(nn.Module):
    """StyleGAN2 'skip' synthesis from 4x4 to `resolution`, emitting `img_channels` channels."""

    def __init__(self, *, w_dim: int, resolution: int, img_channels: int, channel_base: int, channel_max: int,
                 use_noise: bool = True, conv_clamp: float | None = None):
        super().__init__()
        self.resolutions = [2 ** i for i in range(2, int(math.log2(resolution)) + 1)]
        channels = {r: min(channel_base // r, channel_max) for r in self.resolutions}
        self.blocks = nn.ModuleList()
        for r in self.resolutions:
            in_channels = channels[r // 2] if r > 4 else 0
            self.blocks.append(SynthesisBlock(in_channels, channels[r], w_dim=w_dim, resolution=r,
                                              img_channels=img_channels, use_noise=use_noise,
                                              conv_clamp=conv_clamp))
        # Consecutive blocks share a w: each block's ToRGB w is the next block's first conv w.
        self.num_ws = sum(b.num_ws - 1 for b in self.blocks) + 1

    def forward(self, ws, noise_mode: str = "random"):
        x = img = None
        w_index = 0
        for block in self.blocks:
            x, img = block(x, img, ws.narrow(1, w_index, block.num_ws), noise_mode=noise_mode)
            w_index += block.num_ws - 1
        return img


def resize_bilinear(images: torch.Tensor, size: int | tuple[int, int], *, antialias: bool = True) -> torch.Tensor:
    """Bilinear resize (antialiased by default). bfloat16 input is resized in float32, as PyTorch has no
    bfloat16 kernel for the antialiased path (autocast leaves interpolation alone), and cast back."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    if images.dtype in (torch.float32, torch.float64):
        return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=antialias)
    return F.interpolate(images.float(), size=size, mode="bilinear", align_corners=False,
                         antialias=antialias).to(images.dtype)


def resize(images: torch.Tensor, resolution: int) -> torch.Tensor:
    if images.shape[-1] == resolution:
        return images
    return resize_bilinear(images, resolution)
