"""`python -m eg3d.train`: train EG3D (single process for now; the Ray driver will wrap this loop).

    python -m eg3d.train --preset tiny --data DATASET --out runs/tiny --kimg 20 --set loss.r1_gamma=2

With no --data, a synthetic camera-labelled dataset is rendered under the run directory on first use.
Running the same command again resumes from the newest checkpoint in --out.
"""

import argparse
import os
import shutil
import sys
from pathlib import Path

from .config import apply_overrides, validate
from .presets import PRESETS, get_preset


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m eg3d.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    parser.add_argument("--data", help="shard manifest URL (local or s3://, from python -m dataloading.build), or a "
                        "dataset folder/zip in the reference format to shard first (default: synthetic data)")
    parser.add_argument("--out", default=None, help="run directory (default: runs/<preset>)")
    parser.add_argument("--kimg", type=float, help="total training length in thousands of images")
    parser.add_argument("--batch", type=int, help="global batch size")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override a config field, e.g. --set loss.r1_gamma=2 (repeatable)")
    return parser.parse_args(argv)


def build_config(args: argparse.Namespace):
    overrides = list(args.overrides)
    for flag, key in (("kimg", "run.total_kimg"), ("batch", "run.batch_size"), ("seed", "run.seed")):
        if getattr(args, flag) is not None:
            overrides.append(f"{key}={getattr(args, flag)}")
    config = apply_overrides(get_preset(args.preset), overrides)
    validate(config)
    return config


def is_manifest(url: str) -> bool:
    from dataloading import storage

    return url.endswith(".json") or storage.exists(storage.join(url, "manifest.json"))


def prepare_data(config, data: str | None, run_dir: Path) -> str:
    """The manifest URL to train from: given, or shards built from a reference-format dataset (or synthetic)."""
    if data is not None and is_manifest(data):
        return data if data.endswith(".json") else data.rstrip("/") + "/manifest.json"
    from dataloading.build import build

    source = data or synthetic_dataset(config, run_dir)
    shards = run_dir / "shards"
    print(f"building shards of {source} into {shards}")
    manifest = build(source, str(shards), workers=1, progress=False)
    if manifest["resolution"] != config.model.image_resolution:
        raise ValueError(f"data {source}: images are {manifest['resolution']}x{manifest['resolution']}, but "
                         f"model.image_resolution is {config.model.image_resolution}")
    return str(shards / "manifest.json")


def synthetic_dataset(config, run_dir: Path) -> str:
    from .synthetic import generate_dataset

    path = run_dir / "synthetic-data"
    if not (path / "dataset.json").is_file():
        print(f"rendering {config.data.synthetic_count} synthetic images into {path}")
        partial = path.with_name(path.name + ".partial")  # an interrupted render is redone, never reused
        shutil.rmtree(partial, ignore_errors=True)
        generate_dataset(partial, count=config.data.synthetic_count, resolution=config.model.image_resolution,
                         seed=config.run.seed, workers=os.cpu_count() or 1)
        partial.rename(path)
    return str(path)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        config = build_config(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from .training_loop import train

    run_dir = Path(args.out or Path(config.run.out) / config.preset)
    try:
        manifest_url = prepare_data(config, args.data or config.data.path, run_dir)
    except (ValueError, FileNotFoundError, PermissionError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    train(config, manifest_url=manifest_url, run_dir=run_dir)
    print(f"done: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
