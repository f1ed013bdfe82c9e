"""Images (and depth maps) of seeds from a snapshot, one PNG per seed.

    python -m eg3d.generate SNAPSHOT --seeds 0-63 --out DIR [--trunc 0.7 --yaw 0.3 --pitch -0.1 --depth]
    python -m eg3d.generate SNAPSHOT --seeds 1,5,9 --out DIR --label data/ffhq/dataset.json:12
    python -m eg3d.generate SNAPSHOT --seeds 0-7 --out DIR --mix-seed 100 --mix-layers 4

Writes DIR/seedNNNN.png; with --depth also DIR/seedNNNN-depth.png (16-bit grey, that image's depth range
scaled to 0..65535, near = bright) and DIR/seedNNNN-depth.npy (float32 [h, w], depth along the ray at the
neural rendering resolution). Seed s's z is numpy.random.RandomState(s).randn(1, z_dim) (as the reference's), so
an image does not depend on the batch or the other seeds. Views are conditioned on the frontal camera.
"""

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from dataloading import storage

from .cli.arguments import (ANGLE, CAMERA_DISTANCE, FIELD_OF_VIEW, MAX_SEED, PITCH, TRUNCATION, HelpFormatter,
                            real_number, seeds_list, whole_number)
from .cli.snapshots import open_generator
from .networks import camera, orbit
from .networks.sample_grid import to_uint8

FFHQ_FOV_DEGREES = 18.837  # the diagonal FOV of camera.FFHQ_FOCAL

TRUNCATION_CUTOFF = 14  # style layers truncated by default (--trunc-cutoff)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The snapshot, seeds, truncation, camera distance and lens, batch and device: shared with eg3d.video."""
    parser.add_argument("snapshot", help="snapshot folder (G_ema.safetensors + config.json): a path or any fsspec URL")
    parser.add_argument("--seeds", type=seeds_list, required=True, help="a range '0-63', a list '1,5,9' or both '0-3,10'")
    parser.add_argument("--trunc", type=real_number(TRUNCATION), default=0.7,
                        help="truncation psi (1: none; within -10..10, beyond which every layer saturates)")
    parser.add_argument("--trunc-cutoff", type=whole_number(0), default=TRUNCATION_CUTOFF,
                        help="truncate the first N style layers")
    parser.add_argument("--radius", type=real_number(CAMERA_DISTANCE), default=camera.FFHQ_RADIUS,
                        help="camera distance to the origin (at most 100; the data sets' cameras sit at 1.7 to 2.7)")
    parser.add_argument("--fov", type=real_number(FIELD_OF_VIEW), default=FFHQ_FOV_DEGREES,
                        help="diagonal field of view, degrees, in (0, 180)")
    parser.add_argument("--batch", type=whole_number(1), default=8, help="renders per forward pass")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")


def dataset_camera(parser: argparse.ArgumentParser, spec: str, argument: str = "--label") -> torch.Tensor:
    """--label (or `argument`) FILE:INDEX -> the camera label [1, 25] of entry INDEX (a number or an image name) of dataset.json."""
    url, _, index = spec.rpartition(":")
    expected = "expected FILE:INDEX, FILE a dataset.json (path or fsspec URL), INDEX an entry number or image name"
    if not url or not index:
        parser.error(f"{argument} {spec}: {expected}")
    try:
        labels = json.loads(storage.read_bytes(url))["labels"]
    except (FileNotFoundError, KeyError, ValueError) as error:
        parser.error(f"{argument} {spec}: {expected} ({type(error).__name__}: {error})")
    by_name = {name: label for name, label in labels}
    if index.isdigit() and int(index) < len(labels):
        label = labels[int(index)][1]
    elif index in by_name:
        label = by_name[index]
    else:
        parser.error(f"{argument} {spec}: no entry {index} among the {len(labels)} labels; {expected}")
    return torch.tensor(label, dtype=torch.float32).reshape(1, 25)


def depth_png(depth: np.ndarray) -> Image.Image:
    """float depth [h, w] -> 16-bit grey PNG, this image's range scaled to 0..65535, near = bright."""
    lo, hi = depth.min(), depth.max()
    scaled = (hi - depth) / max(hi - lo, 1e-8) * 65535
    return Image.fromarray(scaled.round().astype(np.uint16))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m eg3d.generate", description=__doc__.splitlines()[0],
                                     formatter_class=HelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--out", required=True, help="folder to write the PNGs into")
    parser.add_argument("--yaw", type=real_number(ANGLE), default=0.0,
                        help="radians from frontal (orbit yaw pi/2 + YAW)")
    parser.add_argument("--pitch", type=real_number(PITCH), default=0.0,
                        help="radians from frontal (orbit pitch pi/2 + PITCH), in (-pi/2, pi/2)")
    parser.add_argument("--label", metavar="FILE:INDEX", help="render from a dataset.json camera instead")
    parser.add_argument("--mix-seed", type=whole_number(0, MAX_SEED),
                        help="style mixing: the fine layers from this seed")
    parser.add_argument("--mix-layers", type=whole_number(0), default=0,
                        help="how many of the last (finest) layers to mix")
    parser.add_argument("--depth", action="store_true", help="also write depth maps (16-bit PNG and float .npy)")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.mix_layers and args.mix_seed is None:
        parser.error(f"--mix-layers {args.mix_layers}: expected --mix-seed too (the seed whose finest layers are "
                     f"mixed in)")

    G = open_generator(parser, args.snapshot, args.device)
    if not 0 <= args.mix_layers <= G.num_ws:
        parser.error(f"--mix-layers {args.mix_layers}: expected 0..{G.num_ws} (this generator's style layers)")
    focal = camera.focal_from_fov(args.fov)
    if args.label:
        view = dataset_camera(parser, args.label)
    else:
        view = camera.orbit_camera(math.pi / 2 + args.yaw, math.pi / 2 + args.pitch, radius=args.radius, focal=focal)
    condition = orbit.frontal_camera(radius=args.radius, focal=focal).to(args.device)
    z = orbit.seed_latents(args.seeds, G.model_config.z_dim).to(args.device)
    mix_z = None if args.mix_seed is None else orbit.seed_latents([args.mix_seed], G.model_config.z_dim).to(args.device)
    ws = orbit.styles(G, z, condition, truncation_psi=args.trunc, truncation_cutoff=args.trunc_cutoff,
                      mix_z=mix_z, mix_layers=args.mix_layers)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cameras = view.to(args.device).expand(len(ws), -1)
    seeds = iter(args.seeds)
    batches = orbit.render_batches(G, ws, cameras, args.batch)
    for rendered in tqdm(batches, total=math.ceil(len(ws) / args.batch), unit="batch", desc="generate"):
        for image, depth in zip(to_uint8(rendered["image"]), rendered["image_depth"][:, 0].cpu().numpy()):
            name = f"seed{next(seeds):04d}"
            Image.fromarray(image).save(out / f"{name}.png")
            if args.depth:
                depth_png(depth).save(out / f"{name}-depth.png")
                np.save(out / f"{name}-depth.npy", depth.astype(np.float32))
    print(f"wrote {len(args.seeds)} images to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
