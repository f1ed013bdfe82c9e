"""Latents, cameras and batched rendering for the image and video commands (eg3d/generate.py, eg3d/video.py).

Seeds: seed s gives z = numpy.random.RandomState(s).randn(1, z_dim), whatever the other seeds, as the reference's
gen_samples, gen_videos and shape extraction draw it (so a network imported from a reference pickle shows the
same identity for the same seed).
Every view is conditioned on the frontal camera (`frontal_camera`), as the reference's gen_samples and
gen_videos do, so a seed's identity does not change with the view.
"""

import math

import numpy as np
import torch

from . import camera
from .snapshot import default_neural_rendering_resolution


def seed_latents(seeds: list[int], z_dim: int) -> torch.Tensor:
    """z [len(seeds), z_dim] float32, each row drawn from its own seed alone with NumPy's RandomState."""
    return torch.from_numpy(np.concatenate([np.random.RandomState(seed).randn(1, z_dim) for seed in seeds])).float()


def frontal_camera(*, radius: float = camera.FFHQ_RADIUS, focal: float = camera.FFHQ_FOCAL) -> torch.Tensor:
    """The camera label [1, 25] at yaw = pitch = pi/2."""
    return camera.orbit_camera(math.pi / 2, math.pi / 2, radius=radius, focal=focal)


def orbit_angles(frames: int, *, yaw_range: float = 0.35, pitch_range: float = 0.25) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference gen_videos' path, one period over the video: for t = frame / frames,
    yaw = pi/2 + yaw_range * sin(2 pi t) and pitch = pi/2 + pitch_range * cos(2 pi t) (radians)."""
    t = torch.arange(frames, dtype=torch.float64) / frames
    yaw = math.pi / 2 + yaw_range * torch.sin(2 * math.pi * t)
    pitch = math.pi / 2 + pitch_range * torch.cos(2 * math.pi * t)
    return yaw.float(), pitch.float()


def orbit_path(frames: int, *, yaw_range: float = 0.35, pitch_range: float = 0.25,
               radius: float = camera.FFHQ_RADIUS, focal: float = camera.FFHQ_FOCAL) -> torch.Tensor:
    """Camera labels [frames, 25] along `orbit_angles`."""
    yaw, pitch = orbit_angles(frames, yaw_range=yaw_range, pitch_range=pitch_range)
    return camera.orbit_camera(yaw, pitch, radius=radius, focal=focal)


def styles(G, z: torch.Tensor, c_condition: torch.Tensor, *, truncation_psi: float, truncation_cutoff: int | None,
           mix_z: torch.Tensor | None = None, mix_layers: int = 0) -> torch.Tensor:
    """ws [N, num_ws, w_dim] of z; with mix_z, the last `mix_layers` (finest) layers come from mix_z."""
    condition = c_condition.expand(len(z), -1)
    ws = G.map(z, condition, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
    if mix_z is None:
        return ws
    if not 0 <= mix_layers <= G.num_ws:
        raise ValueError(f"mix_layers {mix_layers} is outside 0..{G.num_ws} (the generator's style layers)")
    ws_mix = G.map(mix_z.expand(len(z), -1), condition, truncation_psi=truncation_psi,
                   truncation_cutoff=truncation_cutoff)
    return G.mix_styles(ws, ws_mix, G.num_ws - mix_layers)


def interpolate_keyframes(keyframes: torch.Tensor, frames: int) -> torch.Tensor:
    """ws keyframes [K, ...] -> [frames, ...]: linear in w, K keyframes evenly spaced over a looping video
    (frame 0 is keyframe 0; after the last keyframe the path returns to the first)."""
    position = torch.arange(frames, dtype=torch.float64) * len(keyframes) / frames
    index = position.floor().long()
    weight = (position - index).to(keyframes.dtype).reshape(-1, *[1] * (keyframes.dim() - 1))
    return torch.lerp(keyframes[index], keyframes[(index + 1) % len(keyframes)], weight)


@torch.no_grad()
def render_batches(G, ws: torch.Tensor, cameras: torch.Tensor, batch_size: int):
    """Yield G.synthesis outputs for ws [N, num_ws, w_dim] seen from cameras [N, 25], batch_size at a time
    (const noise: an item's render does not depend on its batch)."""
    resolution = default_neural_rendering_resolution(G)
    for start in range(0, len(ws), batch_size):
        yield G.synthesis(ws[start:start + batch_size], cameras[start:start + batch_size],
                          neural_rendering_resolution=resolution, noise_mode="const")
