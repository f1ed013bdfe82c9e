"""The tri-plane generator: mapping -> StyleGAN2 backbone -> tri-planes -> volume rendering -> super-resolution."""

import torch
from torch import nn

from eg3d.config import ModelConfig, RenderingConfig

from . import camera
from .layers import MappingNetwork, SynthesisNetwork
from .renderer import TriPlaneDecoder, VolumeRenderer
from .superresolution import SuperResolution


class TriPlaneGenerator(nn.Module):
    def __init__(self, model: ModelConfig, rendering: RenderingConfig):
        super().__init__()
        self.model_config, self.rendering_config = model, rendering
        self.plane_channels = model.plane_channels
        self.backbone = SynthesisNetwork(w_dim=model.w_dim, resolution=model.backbone_resolution,
                                         img_channels=3 * model.plane_channels,
                                         channel_base=model.backbone_channel_base,
                                         channel_max=model.backbone_channel_max)  # unclamped, as in the reference
        self.num_ws = self.backbone.num_ws
        self.mapping = MappingNetwork(z_dim=model.z_dim, c_dim=model.c_dim, w_dim=model.w_dim, num_ws=self.num_ws,
                                      num_layers=model.mapping_layers, lr_multiplier=model.mapping_lr_multiplier)
        self.decoder = TriPlaneDecoder(model.plane_channels, model.decoder_hidden, model.plane_channels,
                                       lr_multiplier=model.decoder_lr_multiplier)
        self.superresolution = SuperResolution(in_channels=model.plane_channels,
                                               input_resolution=model.sr_input_resolution,
                                               output_resolution=model.image_resolution,
                                               channels=model.sr_channels, w_dim=model.w_dim,
                                               antialias=model.sr_antialias, conv_clamp=model.conv_clamp)
        self.renderer = VolumeRenderer(rendering)

    def map(self, z, c, *, truncation_psi: float = 1.0, truncation_cutoff: int | None = None,
            update_w_avg: bool = False) -> torch.Tensor:
        """z [N, z_dim] and the conditioning camera c [N, 25] -> ws [N, num_ws, w_dim]."""
        if not self.model_config.pose_conditioning:
            c = torch.zeros_like(c)
        return self.mapping(z, c * self.model_config.camera_scale, truncation_psi=truncation_psi,
                            truncation_cutoff=truncation_cutoff, update_w_avg=update_w_avg)

    @staticmethod
    def mix_styles(ws: torch.Tensor, ws_other: torch.Tensor, crossover: int) -> torch.Tensor:
        """Style mixing: ws for layers before `crossover`, ws_other from it on (coarse -> fine)."""
        if not 0 <= crossover <= ws.shape[1]:
            raise ValueError(f"style mixing crossover {crossover} is outside 0..{ws.shape[1]}")
        mixed = ws.clone()
        mixed[:, crossover:] = ws_other[:, crossover:]
        return mixed

    def planes(self, ws: torch.Tensor, noise_mode: str = "random") -> torch.Tensor:
        planes = self.backbone(ws, noise_mode=noise_mode)
        return planes.reshape(len(planes), 3, self.plane_channels, planes.shape[-2], planes.shape[-1])

    def synthesis(self, ws, c, *, neural_rendering_resolution: int, noise_mode: str = "random") -> dict:
        """Render ws from cameras c: {'image', 'image_raw', 'image_depth'}, images NCHW. image_raw is the
        rendered feature image's RGB, mapped to [-1, 1]; image, the super-resolution output, is not bounded."""
        planes = self.planes(ws, noise_mode)
        origins, directions = camera.pixel_rays(c, neural_rendering_resolution)
        feature, depth, _ = self.renderer(planes, self.decoder, origins, directions, jitter=self.training)
        n, res = len(ws), neural_rendering_resolution
        feature_image = feature.transpose(1, 2).reshape(n, -1, res, res)
        depth_image = depth.transpose(1, 2).reshape(n, 1, res, res)
        rgb_image = feature_image[:, :3]
        image = self.superresolution(rgb_image, feature_image, ws)
        return {"image": image, "image_raw": rgb_image, "image_depth": depth_image}

    def density(self, ws: torch.Tensor, points: torch.Tensor, noise_mode: str = "random") -> torch.Tensor:
        """Raw density sigma [N, M, 1] at world points [N, M, 3]."""
        sigma, _ = self.renderer.decode(self.planes(ws, noise_mode), self.decoder, points)
        return sigma

    def forward(self, z, c, *, neural_rendering_resolution: int, c_condition=None, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None, noise_mode: str = "random") -> dict:
        """Generate from z, rendering from cameras c and conditioning on c_condition (default: c)."""
        ws = self.map(z, c if c_condition is None else c_condition, truncation_psi=truncation_psi,
                      truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws, c, neural_rendering_resolution=neural_rendering_resolution, noise_mode=noise_mode)
