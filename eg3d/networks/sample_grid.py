"""Sample grids: one row per latent code, the same cameras in every row, RGB then depth (`sample_grid`); or a
sheet of many latent codes, one view each (`code_sheet`).

The command `python -m eg3d.sample_grid` (eg3d/sample_grid.py) writes either from a snapshot.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import camera
from .snapshot import render


def grid_cameras(count: int, *, yaw_range: float = 0.5, radius: float = camera.FFHQ_RADIUS,
                 focal: float = camera.FFHQ_FOCAL) -> torch.Tensor:
    """`count` cameras sweeping yaw across +-yaw_range radians around the frontal view."""
    yaw = math.pi / 2 + torch.linspace(-yaw_range, yaw_range, count)
    return camera.orbit_camera(yaw, torch.full_like(yaw, math.pi / 2), radius=radius, focal=focal)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[N,3,H,W] in [-1, 1] -> uint8 [N,H,W,3]."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def depth_to_images(depth: torch.Tensor, resolution: int, *, lo: float | None = None,
                    hi: float | None = None) -> torch.Tensor:
    """Depth [N,1,h,w] -> grey images [N,3,R,R] in [-1, 1], near = bright, one scale for all N views:
    lo..hi (default: the depths' own range; depths outside it are clamped)."""
    lo = depth.min() if lo is None else torch.tensor(lo)
    hi = depth.max() if hi is None else torch.tensor(hi)
    normalized = (1 - (depth - lo) / (hi - lo).clamp(min=1e-8)).clamp(0, 1)
    grey = F.interpolate(normalized, size=(resolution, resolution), mode="nearest")
    return grey.expand(-1, 3, -1, -1) * 2 - 1


@torch.no_grad()
def sample_grid(G, z: torch.Tensor, cameras: torch.Tensor, *, truncation_psi: float = 0.7,
                truncation_cutoff: int | None = 14) -> Image.Image:
    """Rows: latent codes z; columns: each camera's image, then each camera's depth map."""
    rows = []
    for z_row in z:
        zs = z_row[None].expand(len(cameras), -1)
        # Condition every view of a row on the same (frontal-most) camera so the identity is fixed.
        condition = cameras[len(cameras) // 2][None].expand(len(cameras), -1)
        out = render(G, zs, cameras, c_condition=condition, truncation_psi=truncation_psi,
                     truncation_cutoff=truncation_cutoff)
        resolution = out["image"].shape[-1]
        tiles = torch.cat([out["image"], depth_to_images(out["image_depth"], resolution)])
        rows.append(np.concatenate(list(to_uint8(tiles)), axis=1))
    return Image.fromarray(np.concatenate(rows, axis=0))


@torch.no_grad()
def code_sheet(G, z: torch.Tensor, cameras: torch.Tensor, *, truncation_psi: float = 0.7,
               truncation_cutoff: int | None = 14, batch: int = 16) -> Image.Image:
    """A sheet of R = len(z) / C rows by C = len(cameras) columns of G's output images (RGB only, no depth): an
    (R * res) x (C * res) image. Tile (r, k) is latent code z[r * C + k] (z [R*C, z_dim]) seen from cameras[k]
    ([C, 25] cam2world + intrinsics), every tile conditioned on cameras[C // 2], the middle one (as `sample_grid`
    does). z and cameras are on G's device; `batch` is codes per forward pass (memory only: a tile depends on its
    code and camera, not on its batch). Shows many objects at once: how varied a generator's draws are, where a
    grid of a few rows shows how each one turns.

    Raises ValueError when len(z) is not a multiple of len(cameras)."""
    if len(z) % len(cameras):
        raise ValueError(f"{len(z)} latent codes do not fill rows of {len(cameras)} cameras")
    columns = len(cameras)
    condition = cameras[columns // 2][None]
    views = cameras.repeat(len(z) // columns, 1)  # tile i is seen from camera i mod C
    tiles = []
    for start in range(0, len(z), batch):
        end = min(start + batch, len(z))
        out = render(G, z[start:end], views[start:end], c_condition=condition.expand(end - start, -1),
                     truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        tiles.append(to_uint8(out["image"]))
    tiles = np.concatenate(tiles)
    rows = [np.concatenate(list(tiles[r * columns:(r + 1) * columns]), axis=1) for r in range(len(z) // columns)]
    return Image.fromarray(np.concatenate(rows, axis=0))
