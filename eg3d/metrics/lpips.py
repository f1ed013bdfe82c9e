"""LPIPS (Zhang et al. 2018, "v0.1", VGG16 variant) for inversion losses, and a random-feature stand-in.

Real LPIPS needs two weight files, each a path or URL checked by SHA-256 (as `load_inception`):
  * the VGG16 backbone: torchvision's ImageNet `vgg16` state dict (the file `vgg16-397923af.pth`); we read
    only its convolutions, `features.{0,2,5,7,10,12,14,17,19,21,24,26,28}.{weight,bias}` (the classifier is
    ignored);
  * the linear heads: the `lpips` package's `weights/v0.1/vgg.pth`, five 1x1 convolutions without bias,
    `lin{0..4}.model.1.weight` of shapes [1, C, 1, 1] for C = 64, 128, 256, 512, 512.
Distance (images in [-1, 1]): shift and scale to the backbone's input statistics, take the features at
relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3, normalise each pixel's feature vector to unit length, and
sum over taps the spatial mean of sum_c w_c * (difference_c)^2.
Every constant here was checked against the lpips package's source (richzhang/PerceptualSimilarity): the
scaling layer's shift and scale, the taps after torchvision `features` indices 3, 8, 15, 22 and 29, the
unit normalisation's eps of 1e-10 (added to the norm), and the heads as bias-free 1x1 convolutions
behind a dropout (hence the `.model.1.` in their names), averaged over space.

Without weight files `random_lpips` builds the same architecture with seeded random convolutions and
uniform heads: a "random-feature LPIPS stand-in (not LPIPS)", whose values are not comparable to LPIPS.
"""

import errno
import os

import torch
import torch.nn.functional as F
from torch import nn

from .inception import cached_download, check_digest, default_cache_dir, normalized_digest

STAND_IN_LABEL = "random-feature LPIPS stand-in (not LPIPS)"
# (output channels of each 3x3 convolution, stage by stage); a stage ends at an LPIPS tap, then max-pools.
VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
TAP_CHANNELS = tuple(stage[-1] for stage in VGG16_STAGES)
# torchvision's `features` indices of the convolutions (ReLUs and max pools take the indices between).
VGG16_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
# The LPIPS scaling layer: [-1, 1] images -> the ImageNet-normalised input of the backbone.
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)


class LPIPS(nn.Module):
    """Perceptual distance [N] between image batches in [-1, 1]. `label` says which weights it has."""

    def __init__(self, *, label: str = "LPIPS (VGG16, v0.1)"):
        super().__init__()
        self.label = label
        self.convs = nn.ModuleList()
        in_channels = 3
        for stage in VGG16_STAGES:
            for out_channels in stage:
                self.convs.append(nn.Conv2d(in_channels, out_channels, 3, padding=1))
                in_channels = out_channels
        self.heads = nn.ParameterList([nn.Parameter(torch.ones(1, c, 1, 1) / c) for c in TAP_CHANNELS])
        self.register_buffer("shift", torch.tensor(SHIFT).reshape(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).reshape(1, 3, 1, 1))

    def taps(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = (images - self.shift) / self.scale
        features, convs = [], iter(self.convs)
        for index, stage in enumerate(VGG16_STAGES):
            if index:
                x = F.max_pool2d(x, 2)
            for _ in stage:
                x = F.relu(next(convs)(x))
            features.append(x)
        return features

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.shape != b.shape or a.ndim != 4 or a.shape[1] != 3:
            raise ValueError(f"expected two image batches [N, 3, H, W] of one shape, got {list(a.shape)} and {list(b.shape)}")
        total = 0
        for fa, fb, head in zip(self.taps(a), self.taps(b), self.heads):
            difference = unit_normalized(fa) - unit_normalized(fb)
            total = total + (difference.square() * head).sum(dim=1).mean(dim=(1, 2))
        return total


def unit_normalized(features: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return features / (features.square().sum(dim=1, keepdim=True).sqrt() + eps)


def random_lpips(seed: int = 0) -> LPIPS:
    """The stand-in: He-scaled seeded random convolutions, zero biases, uniform heads (1/C per channel)."""
    network = LPIPS(label=STAND_IN_LABEL)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for conv in network.convs:
            fan_in = conv.weight[0].numel()
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * (2 / fan_in) ** 0.5)
            conv.bias.zero_()
    return network.eval().requires_grad_(False)


def load_lpips(vgg_weights: str, vgg_sha256: str | None, head_weights: str, head_sha256: str | None,
               cache_dir: str | None = None) -> LPIPS:
    """LPIPS from torchvision's vgg16 state dict and lpips' v0.1 vgg.pth (paths or fsspec URLs, see above)."""
    backbone = torch.load(local_weights(vgg_weights, vgg_sha256, cache_dir), map_location="cpu", weights_only=True)
    heads = torch.load(local_weights(head_weights, head_sha256, cache_dir), map_location="cpu", weights_only=True)
    network = LPIPS()
    state = {}
    for ours, index in enumerate(VGG16_CONV_INDICES):
        for kind in ("weight", "bias"):
            state[f"convs.{ours}.{kind}"] = required(backbone, f"features.{index}.{kind}", vgg_weights)
    for tap in range(len(TAP_CHANNELS)):
        state[f"heads.{tap}"] = required(heads, f"lin{tap}.model.1.weight", head_weights)
    state["shift"], state["scale"] = network.shift, network.scale
    network.load_state_dict(state)
    return network.eval().requires_grad_(False)


def required(state_dict: dict, name: str, source: str) -> torch.Tensor:
    if name not in state_dict:
        raise KeyError(f"{source}: no tensor {name!r} (has {', '.join(list(state_dict)[:6])}, ...)")
    return state_dict[name]


def local_weights(weights: str, sha256: str | None, cache_dir: str | None) -> str:
    """A local, SHA-256-checked path of `weights` (a URL is downloaded once into the cache)."""
    expected = normalized_digest(sha256)
    weights = str(weights)
    if "://" in weights:
        return cached_download(weights, expected, cache_dir or default_cache_dir())
    path = os.path.expanduser(weights)
    if not os.path.isfile(path):
        raise FileNotFoundError(errno.ENOENT, f"LPIPS weights not found: {weights}")
    check_digest(path, expected, name=weights)
    return path
