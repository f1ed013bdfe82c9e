"""3D shapes: each seed's density sampled on a grid over the tri-plane box, meshed by marching cubes.

    python -m eg3d.shapes SNAPSHOT_DIR --seeds 0-3 --resolution 256 --out shapes/ [--obj --mrc --colors]

Writes seed0000.ply (and .obj with --obj, the density volume .mrc with --mrc) per seed.

Units and axes. Vertices are in world units, the units of the cameras (FFHQ cameras sit at radius 2.7):
the grid fills the tri-plane box [-box_warp/2, box_warp/2]^3 centred at the origin (box_warp 1 for
ffhq512/afhq512, 1.6 for shapenet128), the cube that the renderer maps onto the planes. The world is y-up;
the frontal camera sits on +z looking at the origin, so a face looks towards +z and +x is to the right
in the frontal image (the subject's left).

Latent and camera. z is drawn from the seed with NumPy's RandomState (fixed across platforms and
versions, and the reference's choice); w = mapping(z, c) with c the frontal camera (yaw = pitch = pi/2,
radius 2.7, FFHQ focal, looking at the origin; the reference looks at its average pivot, [0, 0, 0.2] for
FFHQ) and truncation psi 0.7 on the first 14 ws as for the sample grid. Noise is constant.

Level. The surface is where the decoder's raw density output sigma equals `--level` (default 10, the
threshold of the reference's shape export). The renderer turns sigma into a density of softplus(sigma - 1)
per world unit, so 10 means a density of about 9 per unit: a ray crossing 0.1 world units of it keeps
exp(-0.9) = 40% of its light. Lower levels give fatter, noisier surfaces.

Border. Like the reference, which overwrites a border of 30/256 of the grid before meshing, the outer
`--border` voxels (default round(30 * resolution / 256)) are treated as empty: the tri-plane edges hold
artefacts, and this closes every surface (a few non-manifold edges may remain where marching cubes
meets an ambiguous cell: the command reports whether each mesh is watertight). The .mrc volume is the untrimmed sigma,
stored with the MRC axis order (data[z, y, x]), the voxel size and the origin in world units, so ChimeraX
shows it in world axes (the reference flips and swaps axes, and stores voxel indices).
"""

import argparse
import sys
from pathlib import Path

import mrcfile
import numpy as np
import torch
import trimesh
from skimage.measure import marching_cubes

from .cli.arguments import MAX_GRID_RESOLUTION, TRUNCATION, real_number, seeds_list, whole_number
from .cli.snapshots import open_generator
from .generate import TRUNCATION_CUTOFF
from .networks import orbit
from .networks.density_grid import generator_colors, generator_density, grid_spacing, sample_density_grid

REFERENCE_LEVEL = 10.0
MAX_CHUNK = 2 ** 24  # points per decoder forward: their tri-plane features and hidden layers take ~10 GB


def reference_border(resolution: int) -> int:
    return round(30 * resolution / 256)


def extract_mesh(sigma: np.ndarray, *, box_size: float, level: float, border: int) -> trimesh.Trimesh | None:
    """The level set of sigma ([x, y, z] grid over the box) as a mesh in world units with outward faces;
    None where sigma never crosses the level inside the trimmed region."""
    empty = level - 1000.0
    volume = np.pad(sigma.astype(np.float32), 1, constant_values=empty)  # one empty layer closes the surface
    if border > 0:
        inner = volume[1 + border:-1 - border, 1 + border:-1 - border, 1 + border:-1 - border].copy()
        volume[:] = empty
        volume[1 + border:-1 - border, 1 + border:-1 - border, 1 + border:-1 - border] = inner
    if not volume.min() < level < volume.max():
        return None
    spacing = grid_spacing(sigma.shape[0], box_size)
    vertices, faces, _, _ = marching_cubes(volume, level=level, spacing=(spacing,) * 3)
    mesh = trimesh.Trimesh(vertices - spacing - box_size / 2, faces)  # minus the pad layer, then centre
    if mesh.volume < 0:
        mesh.invert()
    return mesh


def largest_component(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    return max(mesh.split(only_watertight=False), key=lambda part: len(part.faces))


def write_mrc(path: Path, sigma: np.ndarray, *, box_size: float) -> None:
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(np.ascontiguousarray(sigma.transpose(2, 1, 0), dtype=np.float32))
        mrc.voxel_size = grid_spacing(sigma.shape[0], box_size)
        mrc.header.origin = (-box_size / 2,) * 3


def level_advice(sigma: np.ndarray, level: float) -> str:
    """Why no mesh came out at `level`, and which level to try."""
    return (f"sigma never reaches --level {level} inside the border (range {sigma.min():.3g}..{sigma.max():.3g}); "
            f"no mesh written. A network trained briefly has lower densities than the reference's level was chosen "
            f"for: try --level {sigma.max() / 2:.2g} (half the maximum)")


@torch.no_grad()
def finish_mesh(G, ws: torch.Tensor, sigma: np.ndarray, *, level: float, border: int, faces: int | None = None,
                largest: bool = False, colors: bool = False) -> trimesh.Trimesh | None:
    """The mesh of one latent (ws [1, num_ws, w_dim]) from its sigma grid [R, R, R] (world units, see the
    module docstring): marching cubes at `level`, then optional simplification to at most `faces` faces,
    the largest component and vertex colours from the decoder. None where sigma never reaches `level`."""
    mesh = extract_mesh(sigma, box_size=G.rendering_config.box_warp, level=level, border=border)
    if mesh is None:
        return None
    if faces is not None and len(mesh.faces) > faces:
        mesh = mesh.simplify_quadric_decimation(face_count=faces)
    if largest:  # after simplifying, which can cut thin parts off
        mesh = largest_component(mesh)
    if colors:
        device = ws.device
        rgb = generator_colors(G, ws, torch.from_numpy(mesh.vertices).float().to(device)).cpu().numpy()
        mesh.visual.vertex_colors = np.round(rgb * 255).astype(np.uint8)
    return mesh


def mesh_or_half_max(G, ws: torch.Tensor, sigma: np.ndarray, *, level: float, border: int,
                     colors: bool = True) -> tuple[trimesh.Trimesh, float, str]:
    """finish_mesh at `level`, or, where sigma never reaches it (a briefly trained network), at half sigma's
    maximum: (mesh, the level used, a note saying which). ValueError where even that gives no surface."""
    mesh = finish_mesh(G, ws, sigma, level=level, border=border, colors=colors)
    if mesh is not None:
        return mesh, level, ""
    half = float(sigma.max() / 2)
    mesh = finish_mesh(G, ws, sigma, level=half, border=border, colors=colors)
    if mesh is None:
        raise ValueError(f"the density has no surface inside the border (sigma {sigma.min():.3g}..{sigma.max():.3g})")
    return mesh, half, f"sigma never reaches {level:g}: meshed at {half:.3g}, half its maximum"


def seed_ws(G, seed: int, *, truncation_psi: float, truncation_cutoff: int | None, device) -> torch.Tensor:
    """ws [1, num_ws, w_dim] of a seed, as eg3d.generate draws and conditions it (eg3d.networks.orbit)."""
    z = orbit.seed_latents([seed], G.model_config.z_dim).to(device)
    return orbit.styles(G, z, orbit.frontal_camera().to(device), truncation_psi=truncation_psi,
                        truncation_cutoff=truncation_cutoff)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m eg3d.shapes", description=__doc__.splitlines()[0])
    parser.add_argument("snapshot", help="snapshot folder (G_ema.safetensors + config.json): a path or any fsspec URL")
    parser.add_argument("--seeds", type=seeds_list, default=[0], help="e.g. 0-3,7 (default 0)")
    parser.add_argument("--out", required=True, help="folder for seedNNNN.ply/.obj/.mrc")
    parser.add_argument("--resolution", type=whole_number(8, MAX_GRID_RESOLUTION), default=256,
                        help=f"grid points per axis (default 256; at most {MAX_GRID_RESOLUTION}: the grid is "
                        "resolution^3 float32 on the CPU, 4 GiB at 1024)")
    parser.add_argument("--level", type=real_number(), default=REFERENCE_LEVEL,
                        help="raw sigma at the surface (default 10, the reference's)")
    parser.add_argument("--border", type=whole_number(0), default=None,
                        help="outer voxels treated as empty (default round(30 * resolution / 256))")
    parser.add_argument("--trunc", "--psi", dest="psi", type=real_number(TRUNCATION), default=0.7,
                        help="truncation psi (default 0.7; within -10..10)")
    parser.add_argument("--trunc-cutoff", "--cutoff", dest="cutoff", type=whole_number(0), default=TRUNCATION_CUTOFF,
                        help=f"truncate the first N style layers (default {TRUNCATION_CUTOFF})")
    parser.add_argument("--chunk", type=whole_number(1, MAX_CHUNK), default=1_000_000,
                        help=f"points per decoder forward (at most {MAX_CHUNK}, about 10 GB of decoder features)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--obj", action="store_true", help="also write .obj")
    parser.add_argument("--mrc", action="store_true", help="also write the sigma volume as .mrc (ChimeraX)")
    parser.add_argument("--colors", action="store_true", help="vertex colours: the decoder's RGB features")
    parser.add_argument("--largest-component", action="store_true", help="keep only the largest piece")
    parser.add_argument("--faces", type=whole_number(4), default=None,
                        help="simplify to at most FACES faces (quadric)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def parse_args(argv):
    parser = build_parser()
    args = parser.parse_args(argv)
    args.parser = parser
    if args.border is None:
        args.border = reference_border(args.resolution)
    if not 0 <= args.border < args.resolution // 2 - 1:
        parser.error(f"--border {args.border}: expected 0..{args.resolution // 2 - 2} for --resolution "
                     f"{args.resolution}")
    return args


@torch.no_grad()
def main(argv=None) -> int:
    args = parse_args(argv)
    G = open_generator(args.parser, args.snapshot, args.device)
    box_size = G.rendering_config.box_warp
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    missing = []
    for seed in args.seeds:
        ws = seed_ws(G, seed, truncation_psi=args.psi, truncation_cutoff=args.cutoff, device=args.device)
        sigma = sample_density_grid(generator_density(G, ws), resolution=args.resolution, box_size=box_size,
                                    chunk=args.chunk, device=args.device, progress=not args.quiet).numpy()
        stem = out / f"seed{seed:04d}"
        if args.mrc:
            write_mrc(stem.with_suffix(".mrc"), sigma, box_size=box_size)
        mesh = finish_mesh(G, ws, sigma, level=args.level, border=args.border, faces=args.faces,
                           largest=args.largest_component, colors=args.colors)
        if mesh is None:
            print(f"seed {seed}: {level_advice(sigma, args.level)}", file=sys.stderr)
            missing.append(seed)
            continue
        mesh.export(stem.with_suffix(".ply"))
        if args.obj:
            mesh.export(stem.with_suffix(".obj"))
        print(f"wrote {stem}.ply: {len(mesh.vertices)} vertices, {len(mesh.faces)} faces, "
              f"watertight {mesh.is_watertight}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
