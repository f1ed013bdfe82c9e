"""Sample grids: one row per latent code, the same cameras in every row, RGB then depth.

    python -m eg3d.sample_grid SNAPSHOT_DIR --out grid.png [--rows 4 --cameras 5 --seed 0 --psi 0.7]
"""

import argparse
import sys

import torch

from .networks.sample_grid import grid_cameras, sample_grid
from .networks.snapshot import load_generator


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eg3d.sample_grid", description=__doc__.splitlines()[0])
    parser.add_argument("snapshot", help="snapshot directory (G_ema.safetensors + config.json)")
    parser.add_argument("--out", required=True, help="PNG file to write")
    parser.add_argument("--rows", type=int, default=4, help="latent codes, one per row")
    parser.add_argument("--cameras", type=int, default=5)
    parser.add_argument("--yaw-range", type=float, default=0.5, help="radians either side of frontal")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--psi", type=float, default=0.7, help="truncation psi")
    args = parser.parse_args(argv)
    G = load_generator(args.snapshot)
    z = torch.randn(args.rows, G.model_config.z_dim, generator=torch.Generator().manual_seed(args.seed))
    grid = sample_grid(G, z, grid_cameras(args.cameras, yaw_range=args.yaw_range), truncation_psi=args.psi)
    grid.save(args.out)
    print(f"wrote {args.out} ({grid.size[0]}x{grid.size[1]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
