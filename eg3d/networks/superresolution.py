"""Super-resolution: the 32-channel neural rendering (and its RGB) -> the final image.

Two StyleGAN2 synthesis blocks driven by the last w. For 4x (512 from 128) both blocks upsample;
for 2x (128 from 64, 256 from 128, the tiny preset's 64 from 32) the first keeps the resolution.
"""

import torch
from torch import nn

from .layers import SynthesisBlock, resize_bilinear


class SuperResolution(nn.Module):
    def __init__(self, *, in_channels: int, input_resolution: int, output_resolution: int,
                 channels: tuple[int, int], w_dim: int, antialias: bool = True, conv_clamp: float | None = None):
        super().__init__()
        factor = output_resolution // input_resolution
        if factor not in (2, 4) or factor * input_resolution != output_resolution:
            raise ValueError(f"super-resolution from {input_resolution} to {output_resolution} is not 2x or 4x")
        self.input_resolution, self.antialias = input_resolution, antialias
        first_up = 2 if factor == 4 else 1
        self.block0 = SynthesisBlock(in_channels, channels[0], w_dim=w_dim, img_channels=3, up=first_up,
                                     resolution=input_resolution * first_up, conv_clamp=conv_clamp)
        self.block1 = SynthesisBlock(channels[0], channels[1], w_dim=w_dim, img_channels=3, up=2,
                                     resolution=output_resolution, conv_clamp=conv_clamp)
        self.num_ws = self.block0.num_ws

    def resize(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] == self.input_resolution:
            return x
        return resize_bilinear(x, self.input_resolution, antialias=self.antialias)

    def forward(self, rgb: torch.Tensor, features: torch.Tensor, ws: torch.Tensor) -> torch.Tensor:
        ws = ws[:, -1:].expand(-1, self.num_ws, -1)  # only the last w, repeated
        x, img = self.block0(self.resize(features), self.resize(rgb), ws, noise_mode="none")
        _, img = self.block1(x, img, ws, noise_mode="none")
        return img
