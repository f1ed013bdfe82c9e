"""The camera-conditioned dual discriminator: a StyleGAN2 resnet discriminator over 6 channels
(final image beside the upsampled raw image) with a projection head conditioned on the camera."""

import math

import torch
from torch import nn

from eg3d.config import ModelConfig

from .layers import Conv2d, FullyConnected, MappingNetwork, resize_bilinear


class DiscriminatorBlock(nn.Module):
    """Two 3x3 convs (the second halves the resolution) plus a scaled 1x1 downsampling skip.

    `in_channels == 0` makes the top block, which reads the image through a 1x1 FromRGB.
    """

    def __init__(self, in_channels: int, tmp_channels: int, out_channels: int, *, img_channels: int,
                 conv_clamp: float | None = None):
        super().__init__()
        self.in_channels = in_channels
        if in_channels == 0:
            self.fromrgb = Conv2d(img_channels, tmp_channels, 1, activation="lrelu", conv_clamp=conv_clamp)
        self.conv0 = Conv2d(tmp_channels, tmp_channels, 3, activation="lrelu", conv_clamp=conv_clamp)
        self.conv1 = Conv2d(tmp_channels, out_channels, 3, activation="lrelu", down=2, conv_clamp=conv_clamp)
        self.skip = Conv2d(tmp_channels, out_channels, 1, bias=False, down=2)

    def forward(self, x, img):
        if self.in_channels == 0:
            x = self.fromrgb(img)
        y = self.skip(x, gain=math.sqrt(0.5))
        x = self.conv1(self.conv0(x), gain=math.sqrt(0.5))
        return y + x


def minibatch_stddev(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """Append one channel: the mean standard deviation over groups of samples (i, i + N/G, ...)."""
    n, c, h, w = x.shape
    g = min(group_size, n)
    y = x.reshape(g, -1, c, h, w)
    y = (y - y.mean(dim=0)).square().mean(dim=0).add(1e-8).sqrt()
    y = y.mean(dim=[1, 2, 3]).reshape(-1, 1, 1, 1).repeat(g, 1, h, w)
    return torch.cat([x, y], dim=1)


class DiscriminatorEpilogue(nn.Module):
    def __init__(self, channels: int, *, cmap_dim: int, mbstd_group: int, conv_clamp: float | None = None):
        super().__init__()
        self.mbstd_group, self.cmap_dim = mbstd_group, cmap_dim
        self.conv = Conv2d(channels + 1, channels, 3, activation="lrelu", conv_clamp=conv_clamp)
        self.fc = FullyConnected(channels * 4 * 4, channels, activation="lrelu")
        self.out = FullyConnected(channels, cmap_dim)

    def forward(self, x, cmap):
        x = self.conv(minibatch_stddev(x, self.mbstd_group))
        x = self.out(self.fc(x.flatten(1)))
        return (x * cmap).sum(dim=1, keepdim=True) / math.sqrt(self.cmap_dim)


class DualDiscriminator(nn.Module):
    def __init__(self, model: ModelConfig):
        super().__init__()
        self.model_config = model
        resolution = model.image_resolution
        resolutions = [2 ** i for i in range(int(math.log2(resolution)), 2, -1)]  # e.g. 512 ... 8
        channels = {r: min(model.disc_channel_base // r, model.disc_channel_max) for r in resolutions + [4]}
        self.blocks = nn.ModuleList(
            DiscriminatorBlock(channels[r] if r < resolution else 0, channels[r], channels[r // 2], img_channels=6,
                               conv_clamp=model.conv_clamp)
            for r in resolutions
        )
        cmap_dim = channels[4]
        self.mapping = MappingNetwork(z_dim=0, c_dim=model.c_dim, w_dim=cmap_dim, num_ws=None,
                                      num_layers=model.disc_mapping_layers, w_avg_beta=None)
        self.epilogue = DiscriminatorEpilogue(channels[4], cmap_dim=cmap_dim, mbstd_group=model.disc_mbstd_group,
                                              conv_clamp=model.conv_clamp)

    def forward(self, image: torch.Tensor, image_raw: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Logits [N, 1] for final images [N,3,R,R], raw images [N,3,r,r] and cameras [N,25]."""
        if image_raw.shape[-1] != image.shape[-1]:
            image_raw = resize_bilinear(image_raw, image.shape[-2:])
        # channels_last: the convolutions (and their backward) run faster in it on CPU; values are the same.
        x, img = None, torch.cat([image, image_raw], dim=1).contiguous(memory_format=torch.channels_last)
        for block in self.blocks:
            x = block(x, img)
        if self.model_config.disc_camera_noise > 0:
            c = c + torch.randn_like(c) * c.std(dim=0) * self.model_config.disc_camera_noise
        return self.epilogue(x, self.mapping(None, c))
