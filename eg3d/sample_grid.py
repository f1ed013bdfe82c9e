"""Sample grids: one row per latent code, the same cameras in every row, RGB then depth; or a sheet of many codes.

    python -m eg3d.sample_grid SNAPSHOT --out grid.png [--rows 4 --cameras 5 --seed 0 --psi 0.7]
    python -m eg3d.sample_grid SNAPSHOT --out sheet.png --layout codes --rows 6 --cameras 8 --psi 1

`--layout views` (the default) shows how each of a few objects turns: one latent code per row, seen from every
camera, then its depth maps. `--layout codes` shows how varied the generator's objects are: rows x cameras
latent codes, one per tile, each column seen from its camera.
"""

import argparse
import sys

import torch

from .cli.arguments import (ANGLE, MAX_SEED, TRUNCATION, HelpFormatter, image_file, make_parent, real_number,
                            whole_number)
from .cli.snapshots import open_generator
from .networks.sample_grid import code_sheet, grid_cameras, sample_grid

# The PNG is rows x (2 x cameras) tiles of the generator's resolution (--layout codes: rows x cameras): at 64 x 64
# tiles of a 512-pixel generator it is 32768 pixels square, 3 GB of RGB in memory before it is encoded.
MAX_ROWS = 64
MAX_CAMERAS = 32


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m eg3d.sample_grid", description=__doc__.splitlines()[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("snapshot", help="snapshot folder (G_ema.safetensors + config.json): a path or any fsspec URL")
    parser.add_argument("--out", required=True, type=image_file,
                        help="image file to write (.png; a missing folder is created)")
    parser.add_argument("--rows", type=whole_number(1, MAX_ROWS), default=4,
                        help="rows (views: one latent code each; codes: --cameras codes each)")
    parser.add_argument("--cameras", type=whole_number(1, MAX_CAMERAS), default=5,
                        help="cameras (views: every one per row; codes: one per column)")
    parser.add_argument("--yaw-range", type=real_number(ANGLE), default=0.5, help="radians either side of frontal")
    parser.add_argument("--seed", type=whole_number(0, MAX_SEED), default=0, help="seed of the latent codes")
    parser.add_argument("--layout", choices=("views", "codes"), default="views",
                        help="views: a row per code, every camera, then depth; codes: a code per tile")
    parser.add_argument("--psi", type=real_number(TRUNCATION), default=0.7, help="truncation psi (1: none)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    G = open_generator(parser, args.snapshot, args.device)
    codes = args.rows * (args.cameras if args.layout == "codes" else 1)
    z = torch.randn(codes, G.model_config.z_dim, generator=torch.Generator().manual_seed(args.seed))
    cameras = grid_cameras(args.cameras, yaw_range=args.yaw_range)
    draw = code_sheet if args.layout == "codes" else sample_grid
    grid = draw(G, z.to(args.device), cameras.to(args.device), truncation_psi=args.psi)
    make_parent(args.out)
    grid.save(args.out)
    print(f"wrote {args.out} ({grid.size[0]}x{grid.size[1]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
