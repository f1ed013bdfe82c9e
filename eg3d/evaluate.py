"""How good and how 3D a snapshot's generator is, measured by the data set's own evaluator.

    python -m eg3d.evaluate SNAPSHOT --data DATA [--json OUT] [--num-generated 512] [--seed 0]

SNAPSHOT: a snapshot folder or URL (runs/NAME/snapshots/snapshot-NNNNNNNNN). DATA: the data set it was
trained on: a shard manifest (or its folder; local or s3://), or a data set folder or zip in the reference
format (sharded first into a cache folder, once). Prints, and with --json writes:

- fd_data: the Frechet distance between generated and real images in the evaluator's feature space (not FID);
- pose_error_deg: the mean angle between the camera G was asked for and the one the evaluator sees;
- depth_error: G's rendered depth against the evaluator's estimate, scale- and shift-invariant (data with depth);
- consistency_raw / consistency_final: colour error of one object across views, warped through G's depth,
  over that of a flat picture (0 perfect, 1 no better than a 2D picture), for the neural rendering and the
  super-resolved image;
- the evaluator's floor: its own errors on held-out real images, which no generator can beat.

The evaluator is trained on first use (a minute or two for the tiny synthetic data on 2 CPU cores) and cached
beside the shards, so a training run and this command share it. See eg3d/metrics/generator_metrics.py.
"""

import argparse
import dataclasses
import hashlib
import json
import sys
import time

import torch
from tqdm import tqdm

from dataloading import storage

from .cli.arguments import HelpFormatter, whole_number
from .cli.snapshots import open_generator
from .config import EvaluatorConfig, TrainConfig
from .config.presets import PRESETS, get_preset
from .metrics.inception import default_cache_dir
from .networks.snapshot import CONFIG_FILE, default_neural_rendering_resolution


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m eg3d.evaluate", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1], formatter_class=HelpFormatter)
    parser.add_argument("snapshot", help="snapshot folder or URL")
    parser.add_argument("--data", required=True, help="shard manifest (or its folder), or a data set folder or zip")
    parser.add_argument("--json", dest="json_out", help="also write the values to this JSON file (path or URL)")
    parser.add_argument("--num-generated", type=whole_number(1), help="generated images (default: the snapshot's "
                        "metrics.num_generated, or 512)")
    parser.add_argument("--objects", type=whole_number(1), help="objects rendered from each view pair for the "
                        "consistency metrics (default: the snapshot's evaluator.consistency_objects)")
    parser.add_argument("--seed", type=whole_number(0), default=0, help="seeds the latent codes and cameras")
    parser.add_argument("--batch", type=whole_number(1), default=64, help="images per generator call")
    parser.add_argument("--cache", help="folder for shards built from a data set folder or zip (default: "
                        "$EG3D_CACHE or ~/.cache/eg3d, under datasets/)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    args.parser = parser
    return args


def snapshot_config(url: str) -> TrainConfig:
    """The snapshot's training config; a snapshot written before the evaluator existed gets its preset's
    evaluator settings (or the defaults)."""
    values = json.loads(storage.read_bytes(storage.join(url, CONFIG_FILE)))["config"]
    config = TrainConfig.from_dict(values)
    if "evaluator" not in values:
        config.evaluator = get_preset(config.preset).evaluator if config.preset in PRESETS else EvaluatorConfig()
    return config


def manifest_of(data: str, cache: str | None, *, quiet: bool) -> str:
    """DATA's shard manifest URL: given, or built from a reference-format folder or zip into the cache (once;
    rebuilt when the source changed)."""
    from dataloading.build import DestinationMismatch, build

    if data.endswith(".json"):
        return data
    if storage.exists(storage.join(data, "manifest.json")):
        return storage.join(data, "manifest.json")
    if not storage.exists(data):
        raise FileNotFoundError(f"--data {data}: no such file or folder")
    source = data if "://" in data else str(storage.open_filesystem(data)[1])
    key = hashlib.sha256(source.encode()).hexdigest()[:16]
    shards = storage.join(cache or storage.join(default_cache_dir(), "datasets"), f"shards-{key}")
    try:
        build(source, shards, progress=not quiet)
    except DestinationMismatch as error:
        print(f"{shards} holds shards of an earlier version of {data} ({error}); building them again")
        storage.delete(shards, recursive=True)
        build(source, shards, progress=not quiet)
    return storage.join(shards, "manifest.json")


class Bars:
    """One tqdm bar per stage of the measurement (QualityMeter's `progress`)."""

    def __init__(self, quiet: bool):
        self.quiet, self.bars = quiet, {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self.quiet:
            return
        if stage not in self.bars:
            self.bars[stage] = tqdm(total=total, desc=stage, unit="step" if stage == "training" else "",
                                    leave=True, file=sys.stderr)
        bar = self.bars[stage]
        bar.update(done - bar.n)
        if done >= total:
            bar.close()


def evaluate(args: argparse.Namespace) -> dict:
    """The measurement (see the module docstring) as a dict; ValueError/FileNotFoundError for bad input."""
    start = time.perf_counter()
    G = open_generator(args.parser, args.snapshot, args.device)
    config = snapshot_config(args.snapshot)
    manifest_url = manifest_of(args.data, args.cache, quiet=args.quiet)
    values = measure(G, config, manifest_url, data=args.data, seed=args.seed, num_generated=args.num_generated,
                     objects=args.objects, batch=args.batch, device=torch.device(args.device),
                     progress=Bars(args.quiet))
    return {"snapshot": args.snapshot, "data": args.data, "manifest": manifest_url, "seed": args.seed, **values,
            "seconds": time.perf_counter() - start}


def measure(G, config: TrainConfig, manifest_url: str, *, data: str | None = None, seed: int = 0,
            num_generated: int | None = None, objects: int | None = None, batch: int = 64,
            device: torch.device = torch.device("cpu"), progress=None, log=None) -> dict:
    """The evaluator's measurement of generator G (trained with `config`, or anything answering like one)
    against the shards of `manifest_url`: GeneratorMetrics.combine's values plus "seconds". The evaluator
    is config.evaluator's, trained on first use; num_generated and objects default to the config's.
    ValueError when G's images are not the data's size."""
    from dataloading.shard_reader import camera_labels, load_manifest
    from eg3d.metrics.quality import QualityMeter
    from eg3d.training.trainer import SingleProcess

    resolution = G.model_config.image_resolution
    size = load_manifest(manifest_url).resolution
    if size != resolution:
        raise ValueError(f"the generator makes {resolution}x{resolution} images, but data {data or manifest_url} "
                         f"holds {size}x{size} ones: evaluate a snapshot against the data set it was trained on")
    config = dataclasses.replace(
        config, metrics=dataclasses.replace(config.metrics, extractor="none", batch_size=batch,
                                            num_generated=num_generated or config.metrics.num_generated or 512),
        evaluator=dataclasses.replace(config.evaluator, enabled=True,
                                      consistency_objects=objects or config.evaluator.consistency_objects),
        run=dataclasses.replace(config.run, seed=seed))
    meter = QualityMeter(config, manifest_url=manifest_url, run_url=storage.parent(manifest_url),
                         camera_pool=torch.from_numpy(camera_labels(manifest_url)), device=device,
                         sync=SingleProcess(), log=log or (lambda line: print(line, file=sys.stderr)),
                         progress=progress)
    return meter.measure(G, neural_rendering_resolution=default_neural_rendering_resolution(G))["evaluator"]


def report(result: dict) -> str:
    """The values and the floor as aligned lines."""
    floor = result["floor"]
    rows = [("fd_data", result["fd_data"], floor.get("fd_data"), "Frechet distance in the evaluator's features"),
            ("pose_error_deg", result["pose_error_deg"], floor.get("pose_error_deg"), "degrees"),
            ("depth_error", result.get("depth_error"), floor.get("depth_error"), "0 perfect, 1 flat, 2 unrelated"),
            ("consistency_raw", result["consistency_raw"], None, "0 perfect, 1 no better than a flat picture"),
            ("consistency_final", result["consistency_final"], None, "the same after the super-resolution")]
    lines = [f"{'metric':<18} {'value':>9} {'floor':>9}"]
    for name, value, lowest, note in rows:
        if name == "depth_error" and value is None:
            continue
        shown = "n/a" if value is None else f"{value:.4g}"
        lines.append(f"{name:<18} {shown:>9} {'' if lowest is None else f'{lowest:.4g}':>9}  {note}")
    lines.append(f"({result['num_generated']} generated images, seed {result['seed']}; floor: the evaluator on "
                 f"{floor['holdout_images']} held-out real images)")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        result = evaluate(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(report(result))
    if args.json_out:
        storage.write_bytes_atomic(args.json_out, json.dumps(result, indent=2).encode())
        print(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
