"""Feature networks for FID and KID: Inception-v3 as used in the GAN literature, and a random stand-in.

`InceptionV3Features` is TensorFlow's "inception-2015-12-05" graph, the network of the original FID code,
in the layout of pytorch-fid's port, so that pytorch-fid's weight file loads into it unchanged. That graph
differs from torchvision's Inception-v3 in three places, all in the pooling branches: average pools do not
count the zero padding, and the last block pools its branch with a max instead of an average.

`RandomFeatures` is a small fixed network with seeded random weights: no download, about a millisecond per
image on a CPU. Its distances track image statistics but are not comparable to published FIDs.
"""

import errno
import os

import torch
import torch.nn.functional as F
from torch import nn

from dataloading.downloads import (cached_download, check_digest, default_cache_dir,  # noqa: F401 (used here and by lpips)
                                   download, file_digest, normalized_digest)
from eg3d.config.presets import PYTORCH_FID_WEIGHTS_URL
from eg3d.networks.layers import resize_bilinear

INCEPTION_RESOLUTION = 299


# --- Inception-v3 -------------------------------------------------------------------------------------

class ConvBlock(nn.Module):
    """Convolution without bias, batch norm (TensorFlow's epsilon), ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, *, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def average_pool_3x3(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow averages over the pixels inside the image only: border outputs are not pulled towards zero.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


def max_pool_3x3(x: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)


class InceptionA(nn.Module):
    """35x35 block: 1x1, 5x5 and double 3x3 branches plus a pooled 1x1."""

    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = ConvBlock(in_channels, 64, 1)
        self.branch5x5_1 = ConvBlock(in_channels, 48, 1)
        self.branch5x5_2 = ConvBlock(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvBlock(in_channels, 64, 1)
        self.branch3x3dbl_2 = ConvBlock(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBlock(96, 96, 3, padding=1)
        self.branch_pool = ConvBlock(in_channels, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(average_pool_3x3(x)),
        ], dim=1)


class InceptionB(nn.Module):
    """Grid reduction 35x35 -> 17x17: strided 3x3, strided double 3x3, max pool."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = ConvBlock(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvBlock(in_channels, 64, 1)
        self.branch3x3dbl_2 = ConvBlock(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBlock(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, kernel_size=3, stride=2),
        ], dim=1)


class InceptionC(nn.Module):
    """17x17 block: 7x7 convolutions factorized into 1x7 and 7x1."""

    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c = channels_7x7
        self.branch1x1 = ConvBlock(in_channels, 192, 1)
        self.branch7x7_1 = ConvBlock(in_channels, c, 1)
        self.branch7x7_2 = ConvBlock(c, c, (1, 7), padding=(0, 3))
        self.branch7x7_3 = ConvBlock(c, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = ConvBlock(in_channels, c, 1)
        self.branch7x7dbl_2 = ConvBlock(c, c, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = ConvBlock(c, c, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = ConvBlock(c, c, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = ConvBlock(c, 192, (1, 7), padding=(0, 3))
        self.branch_pool = ConvBlock(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            branch7x7dbl = layer(branch7x7dbl)
        return torch.cat([self.branch1x1(x), branch7x7, branch7x7dbl, self.branch_pool(average_pool_3x3(x))], dim=1)


class InceptionD(nn.Module):
    """Grid reduction 17x17 -> 8x8: strided 3x3, 7x7 then strided 3x3, max pool."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = ConvBlock(in_channels, 192, 1)
        self.branch3x3_2 = ConvBlock(192, 320, 3, stride=2)
        self.branch7x7x3_1 = ConvBlock(in_channels, 192, 1)
        self.branch7x7x3_2 = ConvBlock(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = ConvBlock(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = ConvBlock(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch7x7x3 = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            branch7x7x3 = layer(branch7x7x3)
        return torch.cat([
            self.branch3x3_2(self.branch3x3_1(x)),
            branch7x7x3,
            F.max_pool2d(x, kernel_size=3, stride=2),
        ], dim=1)


class InceptionE(nn.Module):
    """8x8 block: 3x3 convolutions split into parallel 1x3 and 3x1 outputs. `pool` is "average" or "max":
    the TensorFlow graph's last block (Mixed_7c) pools with a max, unlike the paper."""

    def __init__(self, in_channels: int, *, pool: str):
        super().__init__()
        assert pool in ("average", "max"), pool
        self.pool = average_pool_3x3 if pool == "average" else max_pool_3x3
        self.branch1x1 = ConvBlock(in_channels, 320, 1)
        self.branch3x3_1 = ConvBlock(in_channels, 384, 1)
        self.branch3x3_2a = ConvBlock(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = ConvBlock(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = ConvBlock(in_channels, 448, 1)
        self.branch3x3dbl_2 = ConvBlock(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = ConvBlock(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = ConvBlock(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = ConvBlock(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3 = self.branch3x3_1(x)
        branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3),
            self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl),
            self.branch_pool(self.pool(x)),
        ], dim=1)


class InceptionV3Features(nn.Module):
    """Images in [-1, 1], NCHW, any size -> the 2048 pool3 features [N, 2048], float32.

    Attribute names follow torchvision's Inception3, as pytorch-fid's weight file does."""

    feature_dim = 2048

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = ConvBlock(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvBlock(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBlock(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = ConvBlock(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBlock(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="average")
        self.Mixed_7c = InceptionE(2048, pool="max")
        # The 1008-way ImageNet classifier is unused; it is kept so that the weight file loads strictly.
        self.fc = nn.Linear(2048, 1008)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [N, 3, H, W], got {list(images.shape)}")
        # Features in float32 whatever the caller's autocast: FIDs are compared across runs and papers.
        with torch.autocast(images.device.type, enabled=False):
            x = images.float()
            if x.shape[2:] != (INCEPTION_RESOLUTION, INCEPTION_RESOLUTION):
                x = F.interpolate(x, size=(INCEPTION_RESOLUTION, INCEPTION_RESOLUTION), mode="bilinear",
                                  align_corners=False)
            return self.features(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return x.mean(dim=(2, 3))


# --- random features ----------------------------------------------------------------------------------

class RandomFeatures(nn.Module):
    """Images in [-1, 1], NCHW, any size -> [N, feature_dim] float32, from a fixed random network.

    The image is resized to 64x64 and passed through three stride-2 random 3x3 convolutions with leaky
    ReLUs (64 -> 32 -> 16 -> 8). Half of the features are per-channel averages over the whole 8x8 map
    (texture and colour), the other half averages over its four quadrants (layout). The weights are
    buffers drawn from `seed`: same seed, bit-identical network."""

    resolution = 64
    channels = (3, 24, 48, 96)

    def __init__(self, *, feature_dim: int = 256, seed: int = 0):
        super().__init__()
        if feature_dim <= 0 or feature_dim % 8:
            raise ValueError(f"feature_dim must be a positive multiple of 8, got {feature_dim}")
        self.feature_dim = feature_dim
        generator = torch.Generator().manual_seed(seed)
        for index, (c_in, c_out) in enumerate(zip(self.channels[:-1], self.channels[1:])):
            self.register_buffer(f"conv{index}", random_weight(generator, c_out, c_in, 3))
        self.register_buffer("global_projection", random_weight(generator, feature_dim // 2, self.channels[-1], 1))
        self.register_buffer("quadrant_projection", random_weight(generator, feature_dim // 8, self.channels[-1], 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.autocast(images.device.type, enabled=False):
            x = resize_bilinear(images.float(), self.resolution)
            for index in range(len(self.channels) - 1):
                x = F.leaky_relu(F.conv2d(x, getattr(self, f"conv{index}"), stride=2, padding=1), 0.2)
            whole = F.conv2d(x, self.global_projection).mean(dim=(2, 3))
            quadrants = F.adaptive_avg_pool2d(F.conv2d(x, self.quadrant_projection), 2).flatten(1)
            return torch.cat([whole, quadrants], dim=1)


def random_weight(generator: torch.Generator, c_out: int, c_in: int, kernel: int) -> torch.Tensor:
    """He-scaled Gaussian weights: activations keep their magnitude through the leaky ReLUs."""
    fan_in = c_in * kernel * kernel
    return torch.randn(c_out, c_in, kernel, kernel, generator=generator) * (2 / fan_in) ** 0.5


# --- loading ------------------------------------------------------------------------------------------

def feature_network(extractor: str, *, weights: str | None, sha256: str | None, seed: int = 0) -> tuple[str, nn.Module]:
    """(name, network) for the metrics config: "inception_v3" or "random"."""
    if extractor not in ("auto", "inception_v3", "random"):
        raise ValueError(f"metrics.extractor must be 'auto', 'inception_v3' or 'random', got {extractor!r}")
    if extractor == "inception_v3" and not weights:
        raise ValueError("metrics.extractor='inception_v3' needs metrics.inception_weights (a path or URL of "
                         f"pytorch-fid's weight file, e.g. {PYTORCH_FID_WEIGHTS_URL})")
    if extractor == "random" or not weights:
        return "random", RandomFeatures(seed=seed)
    return "inception_v3", load_inception(weights, sha256)


def load_inception(weights: str, sha256: str | None, cache_dir: str | None = None) -> InceptionV3Features:
    """The Inception network with pytorch-fid's weights from a local path or an fsspec URL.

    A URL is downloaded once into `cache_dir` (default $EG3D_CACHE, else ~/.cache/eg3d). `sha256` (the full
    digest or a prefix of 8 or more hex digits) is checked on every load; a cached copy that fails it is
    deleted."""
    expected = normalized_digest(sha256)
    weights = str(weights)
    if "://" in weights:
        path = cached_download(weights, expected, cache_dir or default_cache_dir())
    else:
        path = os.path.expanduser(weights)
        if not os.path.isfile(path):
            raise FileNotFoundError(errno.ENOENT, f"Inception weights not found: {weights}")
        check_digest(path, expected, name=weights)
    network = InceptionV3Features()
    network.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return network.eval().requires_grad_(False)
