"""Generators broken on purpose, each in one way, to show that the 3D quality metrics see what they claim.

    broken = FlatDepth(G)                 # G's images, but the depth of a plane facing the camera
    GeneratorMetrics(...).add_images(broken(z, c, neural_rendering_resolution=16), c)

Each wraps a generator and answers like one (`map`, `synthesis`, calling it), changing one thing: where it
looks (CameraIgnored, CameraMirrored), its geometry (FlatDepth) or its colours (Greyscale, ColoursPermuted).
`DataRenderer` is the synthetic data set's own renderer as a generator, perfectly 3D, to break where a trained
generator is not 3D enough for a broken geometry to show. `bench/quality_trust.py` and
`tests/test_quality_trust.py` measure them.
"""

import hashlib

import numpy as np
import torch
from torch import nn

from eg3d.networks.camera import mirror_label

from .consistency import plane_depth


class BrokenGenerator(nn.Module):
    """G with its `synthesis` changed by `break_output(ws, cameras, resolution)` (override)."""

    description = "unchanged"

    def __init__(self, G: nn.Module):
        super().__init__()
        self.G = G
        self.model_config, self.rendering_config = G.model_config, G.rendering_config

    def map(self, z, c, **kwargs):
        return self.G.map(z, c, **kwargs)

    def synthesis(self, ws, c, *, neural_rendering_resolution: int, noise_mode: str = "random") -> dict:
        return self.G.synthesis(ws, c, neural_rendering_resolution=neural_rendering_resolution,
                                noise_mode=noise_mode)

    def forward(self, z, c, *, neural_rendering_resolution: int, c_condition=None, truncation_psi: float = 1.0,
                truncation_cutoff=None, noise_mode: str = "random") -> dict:
        ws = self.map(z, c if c_condition is None else c_condition, truncation_psi=truncation_psi,
                      truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws, c, neural_rendering_resolution=neural_rendering_resolution, noise_mode=noise_mode)


class CameraIgnored(BrokenGenerator):
    """Renders every image from one fixed camera, whatever camera it is asked for (a 2D generator)."""

    description = "camera ignored (always one view)"

    def __init__(self, G: nn.Module, camera: torch.Tensor):
        super().__init__(G)
        self.register_buffer("camera", camera.reshape(1, 25))

    def synthesis(self, ws, c, **kwargs) -> dict:
        return super().synthesis(ws, self.camera.to(c.device).expand(len(c), -1), **kwargs)


class CameraMirrored(BrokenGenerator):
    """Renders from the camera mirrored left-right (yaw reversed about the frontal view)."""

    description = "camera mirrored"

    def synthesis(self, ws, c, **kwargs) -> dict:
        return super().synthesis(ws, mirror_label(c), **kwargs)


class FlatDepth(BrokenGenerator):
    """G's images painted on the plane through the world origin that faces the camera: its depth is that
    plane's, whatever the object's shape."""

    description = "flat (image on a plane facing the camera)"

    def synthesis(self, ws, c, *, neural_rendering_resolution: int, **kwargs) -> dict:
        output = dict(super().synthesis(ws, c, neural_rendering_resolution=neural_rendering_resolution, **kwargs))
        output["image_depth"] = plane_depth(c, neural_rendering_resolution)
        return output


class Greyscale(BrokenGenerator):
    """Every image in shades of grey (its luminance): the data's colours gone, its shapes kept."""

    description = "greyscale"

    def synthesis(self, ws, c, **kwargs) -> dict:
        output = dict(super().synthesis(ws, c, **kwargs))
        weights = torch.tensor([0.299, 0.587, 0.114], device=c.device)[None, :, None, None]
        for key in ("image", "image_raw"):
            output[key] = (output[key] * weights).sum(dim=1, keepdim=True).expand_as(output[key])
        return output


class ColoursPermuted(BrokenGenerator):
    """Every image with its red, green and blue channels rotated (R <- G <- B <- R). On the synthetic data set
    this breaks nothing a distribution can show: its hues are uniform, and a channel permutation maps them onto
    themselves (fd_data cannot see it there; on faces it would)."""

    description = "colours permuted"

    def synthesis(self, ws, c, **kwargs) -> dict:
        output = dict(super().synthesis(ws, c, **kwargs))
        for key in ("image", "image_raw"):
            output[key] = output[key][:, [1, 2, 0]]
        return output


class DataRenderer(nn.Module):
    """The synthetic data set's own renderer (`dataloading.synthetic`) answering like a generator: a perfect 3D
    generator of that data, to break on purpose where a trained one is not yet 3D. Latent code z picks the
    scene (a seed from its bytes); images are sphere traced at the config's image resolution and, for
    image_raw and image_depth, at the neural rendering resolution (the background at rendering.ray_end)."""

    description = "the data's renderer (ideal 3D)"

    def __init__(self, config):
        super().__init__()
        self.model_config, self.rendering_config = config.model, config.rendering

    def map(self, z, c, **kwargs):
        return z

    def synthesis(self, ws, c, *, neural_rendering_resolution: int, noise_mode: str = "const") -> dict:
        from dataloading import synthetic

        images, raws, depths = [], [], []
        far = self.rendering_config.ray_end or 2 * camera_distance(c)
        for code, camera in zip(ws.detach().cpu(), c.detach().cpu().double()):
            scene_seed = int.from_bytes(hashlib.sha256(code.float().numpy().tobytes()).digest()[:8], "little")
            scene = synthetic.random_scene(synthetic.image_rng(scene_seed, 0))
            images.append(synthetic.render_scene(scene, camera.numpy(), self.model_config.image_resolution).image)
            small = synthetic.render_scene(scene, camera.numpy(), neural_rendering_resolution)
            raws.append(small.image)
            depths.append(np.nan_to_num(small.pixel_depth(), nan=far))
        as_images = lambda xs: torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).float().to(c.device) * 2 - 1
        return {"image": as_images(images), "image_raw": as_images(raws),
                "image_depth": torch.from_numpy(np.stack(depths)).float()[:, None].to(c.device)}

    def forward(self, z, c, *, neural_rendering_resolution: int, **kwargs) -> dict:
        return self.synthesis(self.map(z, c), c, neural_rendering_resolution=neural_rendering_resolution)


def camera_distance(cameras: torch.Tensor) -> float:
    return float(cameras[:, :16].reshape(-1, 4, 4)[:, :3, 3].norm(dim=1).max())
