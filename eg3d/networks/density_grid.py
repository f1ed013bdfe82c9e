"""Density on a regular grid filling the tri-plane box, the input of shape extraction (python -m eg3d.shapes).

The box is the world cube [-box_warp/2, box_warp/2]^3 centred at the origin: `project_to_planes` scales
world points by 2/box_warp, so exactly this cube lands on the planes' [-1, 1] texture range. The grid has
`resolution` points per axis from one face of the box to the other, faces included (as the reference
samples it), so the spacing is box_warp / (resolution - 1). Grids are indexed [x, y, z] in world axes.
"""

from collections.abc import Callable

import torch
from tqdm import tqdm

DensityFunction = Callable[[torch.Tensor], torch.Tensor]  # world points [M, 3] -> raw sigma [M]


def grid_spacing(resolution: int, box_size: float) -> float:
    return box_size / (resolution - 1)


def grid_axis(resolution: int, box_size: float) -> torch.Tensor:
    """The coordinates along each axis: `resolution` points from -box_size/2 to box_size/2."""
    return torch.linspace(-box_size / 2, box_size / 2, resolution)


def generator_density(G, ws: torch.Tensor, noise_mode: str = "const") -> DensityFunction:
    """The raw density sigma of one latent (ws [1, num_ws, w_dim]) as a function of world points; the
    tri-planes are synthesized once, so each call only runs the plane lookup and the decoder MLP."""
    planes = G.planes(ws, noise_mode)

    def density(points: torch.Tensor) -> torch.Tensor:
        sigma, _ = G.renderer.decode(planes, G.decoder, points[None])
        return sigma[0, :, 0]
    return density


def generator_colors(G, ws: torch.Tensor, points: torch.Tensor, noise_mode: str = "const") -> torch.Tensor:
    """RGB in [0, 1] at world points [M, 3]: the decoder's first three features, the colours that volume
    rendering composites into image_raw (which maps them to [-1, 1])."""
    _, features = G.renderer.decode(G.planes(ws, noise_mode), G.decoder, points[None])
    return features[0, :, :3].clamp(0, 1)


@torch.no_grad()
def sample_density_grid(density: DensityFunction, *, resolution: int, box_size: float, chunk: int = 1_000_000,
                        device: str | torch.device = "cpu", progress: bool = False) -> torch.Tensor:
    """sigma on the grid, [resolution]^3 float32 on the CPU, evaluated `chunk` points at a time."""
    if resolution < 2 or chunk < 1:
        raise ValueError(f"need resolution >= 2 and chunk >= 1, got {resolution} and {chunk}")
    axis = grid_axis(resolution, box_size).to(device)
    total = resolution ** 3
    sigma = torch.empty(total, dtype=torch.float32)
    with tqdm(total=total, unit="pt", unit_scale=True, disable=not progress, desc="density") as bar:
        for start in range(0, total, chunk):
            index = torch.arange(start, min(start + chunk, total), device=device)
            # x varies slowest and z fastest, so that the flat result reshapes to [x, y, z].
            points = torch.stack([axis[index // resolution ** 2], axis[index // resolution % resolution],
                                  axis[index % resolution]], dim=-1)
            sigma[start:start + len(index)] = density(points).float().cpu()
            bar.update(len(index))
    return sigma.reshape(resolution, resolution, resolution)
