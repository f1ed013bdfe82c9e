"""Per-op times of the FIR resampling, the 1x1 modulated convolution, the loss's blur and the tri-plane sampling,
before and after.

    python bench/ops.py                      # tiny and ffhq512 shapes, 5 and 3 repeats
    python bench/ops.py --shapes tiny --repeats 9

"Before" runs the direct implementations kept below (zero insertion and full-rate filtering, the
Gaussian as one 2D kernel); "after" runs the library. Before and after alternate within each repeat so
that load from other processes hits both alike; the table shows medians in milliseconds, forward alone
and forward + backward (the gradient of the output's sum). tiny uses the tiny preset's batch (8), ffhq512
batch 1. The tri-plane rows also time a rejected channels-last variant against the library.
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from eg3d.config.presets import get_preset
from eg3d.networks import layers
from eg3d.networks.renderer import TriPlaneDecoder, sample_triplanes
from eg3d.training.loss import gaussian_blur


def naive_upfirdn2d(x, kernel, *, up=1, down=1, pad=(0, 0), gain=1.0):
    """Zero insertion, zero pad (negative: crop), full-rate convolution with the whole (outer-product) kernel,
    then every `down`-th pixel: the library's upfirdn2d before it computed only the non-zero taps."""
    n, c, h, w = x.shape
    if up > 1:
        x = F.pad(x.reshape(n, c, h, 1, w, 1), [0, up - 1, 0, 0, 0, up - 1]).reshape(n, c, h * up, w * up)
    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    k = torch.outer(kernel, kernel) if kernel.ndim == 1 else kernel
    x = F.conv2d(x, (k * gain).to(x.dtype).flip([0, 1])[None, None].repeat(c, 1, 1, 1), groups=c)
    return x[:, :, ::down, ::down] if down > 1 else x


def naive_conv2d_down(layer: layers.Conv2d, x):
    """Conv2d's down path before: the filter at the full rate, then the strided conv (also for 1x1)."""
    margin = layer.padding + (layer.resample_filter.shape[-1] - layer.down + 1) // 2
    x = naive_upfirdn2d(x, layer.resample_filter, pad=(margin, margin))
    return F.conv2d(x, layer.weight * layer.weight_gain, stride=layer.down)


def naive_blur(images, sigma):
    """The blur before: one (2r+1)^2 kernel, normalized as a whole."""
    radius = int(sigma * 3)
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.outer(torch.exp(-0.5 * (t / sigma) ** 2), torch.exp(-0.5 * (t / sigma) ** 2))
    return naive_upfirdn2d(images, kernel / kernel.sum(), pad=(radius, radius))


def grouped_torgb(x, weight, styles):
    """ToRGB's 1x1 modulated convolution before: one grouped convolution, a group per sample."""
    n, c, h, w = x.shape
    wts = (weight[None] * styles[:, None, :, None, None]).reshape(-1, c, 1, 1)
    return F.conv2d(x.reshape(1, n * c, h, w), wts, groups=n).reshape(n, -1, h, w)


def triplane_decode(planes, points, decoder, *, channels_last: bool = False):
    if channels_last:
        planes = planes.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, planes.shape[:2])
    return decoder(sample_triplanes(planes, points, box_warp=1.0))


def cases(name: str):
    """(label, before, after, inputs needing grad, other args) at the preset's layer shapes."""
    config = get_preset(name)
    m, batch = config.model, (config.run.batch_size if name == "tiny" else 1)
    fir = layers.fir_filter()
    # The backbone's last upsampling layer: input at half resolution, conv_transpose output (2h+1)^2.
    res = m.backbone_resolution
    channels = min(m.backbone_channel_base // res, m.backbone_channel_max)
    up_in = torch.randn(batch, channels, res + 1, res + 1)
    yield ("modconv up: FIR after conv_transpose", lambda x: naive_upfirdn2d(x, fir, pad=(1, 1), gain=4),
           lambda x: layers.upfirdn2d(x, fir, pad=(1, 1), gain=4), [up_in])
    # The backbone's last ToRGB: a 1x1 modulated conv (no demodulation) to the three planes' channels.
    res = m.backbone_resolution
    torgb = torch.randn(3 * m.plane_channels, channels, 1, 1)
    x, styles = torch.randn(batch, channels, res, res), torch.randn(batch, channels)
    yield (f"ToRGB 1x1 modconv {channels}->{3 * m.plane_channels}", lambda x, s: grouped_torgb(x, torgb, s),
           lambda x, s: layers.modulated_conv2d(x, torgb, s, demodulate=False), [x, styles])
    # The discriminator's first block: 3x3 conv1 and 1x1 skip, both halving the resolution.
    res, img = m.image_resolution, m.image_resolution
    tmp, out = (min(m.disc_channel_base // r, m.disc_channel_max) for r in (res, res // 2))
    x = torch.randn(batch, tmp, img, img)
    for k in (3, 1):
        layer = layers.Conv2d(tmp, out, k, down=2, bias=False)
        yield (f"Conv2d {k}x{k} down2 {tmp}->{out}", lambda x, layer=layer: naive_conv2d_down(layer, x),
               lambda x, layer=layer: layer(x), [x])
    img_channels = 3 * m.plane_channels
    x = torch.randn(batch, img_channels, m.backbone_resolution // 2, m.backbone_resolution // 2)
    yield (f"upsample2x {img_channels} ch", lambda x: naive_upfirdn2d(x, fir, up=2, pad=(2, 1), gain=4),
           lambda x: layers.upsample2x(x, fir), [x])
    sigma = config.loss.blur_init_sigma
    x = torch.randn(batch, 3, img, img)
    yield (f"blur sigma {sigma:g}", lambda x: naive_blur(x, sigma), lambda x: gaussian_blur(x, sigma), [x])
    planes = torch.randn(batch, 3, m.plane_channels, m.backbone_resolution, m.backbone_resolution)
    rays = config.rendering.neural_rendering_resolution_initial ** 2
    points = torch.rand(batch, rays * config.rendering.depth_resolution, 3) - 0.5
    decoder = TriPlaneDecoder(m.plane_channels, m.decoder_hidden, m.plane_channels)
    yield ("tri-plane sample + decode", lambda p: triplane_decode(p, points, decoder),
           lambda p: triplane_decode(p, points, decoder), [planes])
    yield ("  channels-last planes (rejected)", lambda p: triplane_decode(p, points, decoder),
           lambda p: triplane_decode(p, points, decoder, channels_last=True), [planes])


def timed(fn, inputs, backward: bool) -> float:
    inputs = [x.detach().requires_grad_(backward) for x in inputs]
    start = time.perf_counter()
    out = fn(*inputs)
    if backward:
        out = out if isinstance(out, torch.Tensor) else sum(o.sum() for o in out)
        out.sum().backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["tiny", "ffhq512"])
    parser.add_argument("--repeats", type=int, default=None, help="default: 5 at tiny, 3 at ffhq512")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; medians in ms")
    print(f"{'shapes':<8} {'op':<38} {'fwd before':>10} {'fwd after':>10} {'f+b before':>10} {'f+b after':>10}")
    for name in args.shapes:
        repeats = args.repeats or (5 if name == "tiny" else 3)
        for label, before, after, inputs in cases(name):
            times = {key: [] for key in ("fb", "fa", "bb", "ba")}
            for fn in (before, after):  # warm-up
                timed(fn, inputs, True)
            for _ in range(repeats):
                for key, fn, backward in (("fb", before, False), ("fa", after, False),
                                          ("bb", before, True), ("ba", after, True)):
                    times[key].append(timed(fn, inputs, backward))
            ms = {key: statistics.median(v) * 1e3 for key, v in times.items()}
            print(f"{name:<8} {label:<38} {ms['fb']:>10.1f} {ms['fa']:>10.1f} {ms['bb']:>10.1f} {ms['ba']:>10.1f}",
                  flush=True)


if __name__ == "__main__":
    main()
