"""Can the 3D quality metrics be trusted? Their values, mean +- standard deviation over evaluation seeds, for
real held-out images, an untrained generator, trained snapshots, and a trained generator broken on purpose.

    python bench/quality_trust.py runs/tiny/snapshots/snapshot-000010000 --data runs/tiny/shards
    python bench/quality_trust.py runs/tiny/snapshots/snapshot-0000{02,04,06,08,10}000 --data runs/tiny/shards \\
        --seeds 0,1,2 --no-broken              # a run's snapshots: each metric should improve or hold

Rows:
- "real held-out": the evaluator on the real images it did not train on (its floor): the best any generator
  can score (fd_data: held-out against training images).
- "untrained": a generator of the last snapshot's config with fresh weights (torch seed 0).
- each SNAPSHOT, by its kimg.
- the last snapshot broken on purpose (eg3d.metrics.sensitivity): camera ignored, camera mirrored, flat
  depth, greyscale, colours permuted. Each should be clearly worse than the snapshot in the metric it breaks
  (but a permutation of the synthetic data's uniform hues is no change a distribution can show).
- the synthetic data's own renderer as a generator (perfectly 3D), and the same made flat: where the trained
  generator's geometry is too poor for flattening it to show, the ideal one shows what flattening costs.

Prints a Markdown table (docs/monitoring.md's) and, with --json, writes every value.
"""

import argparse
import json
import statistics
import sys

import torch

from dataloading import storage
from eg3d.evaluate import manifest_of, measure, snapshot_config
from eg3d.metrics.consistency import view_pairs
from eg3d.metrics.sensitivity import (CameraIgnored, CameraMirrored, ColoursPermuted, DataRenderer, FlatDepth,
                                      Greyscale)
from eg3d.networks.generator import TriPlaneGenerator
from eg3d.networks.snapshot import load_generator

METRICS = ("fd_data", "pose_error_deg", "depth_error", "consistency_raw", "consistency_final")


def generators(snapshots: list[str], broken: bool, camera_pool: torch.Tensor):
    """(row name, generator, config) to measure, in table order."""
    config = snapshot_config(snapshots[-1])
    torch.manual_seed(0)
    yield "untrained", TriPlaneGenerator(config.model, config.rendering).eval().requires_grad_(False), config
    for url in snapshots:
        nimg = json.loads(storage.read_bytes(storage.join(url, "config.json")))["metadata"].get("nimg", 0)
        yield f"{nimg / 1000:g} kimg", load_generator(url, read_bytes=storage.read_bytes), snapshot_config(url)
    if broken:
        G = load_generator(snapshots[-1], read_bytes=storage.read_bytes)
        median_view = view_pairs(camera_pool)[2]
        for wrapper in (CameraIgnored(G, median_view), CameraMirrored(G), FlatDepth(G), Greyscale(G),
                        ColoursPermuted(G)):
            yield f"{wrapper.description}", wrapper.eval(), config
        ideal = DataRenderer(config)
        yield ideal.description, ideal, config
        yield f"{ideal.description}, {FlatDepth.description}", FlatDepth(ideal), config


def summary(values: list[float | None]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.3g}"
    return f"{statistics.mean(values):.3g} ± {statistics.stdev(values):.2g}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("snapshots", nargs="+", help="snapshot folders or URLs, oldest first")
    parser.add_argument("--data", required=True, help="the data set they were trained on (as eg3d.evaluate takes)")
    parser.add_argument("--seeds", default="0,1,2", help="evaluation seeds, comma-separated")
    parser.add_argument("--num-generated", type=int, help="generated images per measurement (default: the config's)")
    parser.add_argument("--no-broken", action="store_true", help="leave out the broken generators")
    parser.add_argument("--json", dest="json_out", help="write every value here")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    manifest_url = manifest_of(args.data, None, quiet=True)
    from dataloading.shard_reader import camera_labels

    camera_pool = torch.from_numpy(camera_labels(manifest_url))
    rows, everything = [], {}
    floor = None
    for name, G, config in generators(args.snapshots, not args.no_broken, camera_pool):
        runs = [measure(G, config, manifest_url, seed=seed, num_generated=args.num_generated,
                        log=lambda line: print(line, file=sys.stderr), progress=lambda *_: None) for seed in seeds]
        floor = floor or runs[0]["floor"]
        everything[name] = runs
        rows.append((name, [summary([run.get(metric) for run in runs]) for metric in METRICS]))
        print(f"{name}: " + ", ".join(f"{m} {v}" for m, v in zip(METRICS, rows[-1][1])), file=sys.stderr)
    real = ["%.3g" % floor[key] if key in floor else "" for key in ("fd_data", "pose_error_deg", "depth_error")]
    print(f"| generator ({len(seeds)} seeds) | " + " | ".join(METRICS) + " |")
    print("|---" * (len(METRICS) + 1) + "|")
    print(f"| real held-out ({floor['holdout_images']} images) | " + " | ".join(real + ["", ""]) + " |")
    for name, cells in rows:
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.json_out:
        storage.write_bytes_atomic(args.json_out, json.dumps({"floor": floor, "rows": everything}, indent=1).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
