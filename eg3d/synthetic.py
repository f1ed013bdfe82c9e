"""Procedural 3D scenes rendered to the reference dataset format, for tests and smoke runs.

    python -m eg3d.synthetic OUT --count 2000 --resolution 64 --seed 0 [--zip] [--workers 2]

OUT receives the reference format (images and dataset.json "labels") plus ground truth for evaluators
that learn depth and object class: a depth side file beside each image (`img00000000.depth.npy`, float16,
NaN on the background) and dataset.json keys "class_names" and "classes". Reference loaders ignore both
(they list image files and read "labels"); `python -m dataloading.build` carries them into the shards.
The scenes and the rendering are in dataloading/synthetic.py.
"""

import argparse
import os

import torch

from dataloading.synthetic import generate_dataset


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m eg3d.synthetic", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="output folder, or a .zip file")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--zip", action="store_true", help="write an uncompressed zip")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="rendering processes")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the per-image torch work is tiny; threads only add overhead
    generate_dataset(args.out, count=args.count, resolution=args.resolution, seed=args.seed,
                     as_zip=args.zip, workers=args.workers)
    print(f"next: python -m dataloading.build {args.out} SHARDS (or train on it: python -m eg3d.train --data "
          f"{args.out} --name NAME)")


if __name__ == "__main__":
    main()
