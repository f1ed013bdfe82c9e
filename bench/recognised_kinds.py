"""Which kinds of object a generator draws recognisably: its images classified by the data set's evaluator.

    python bench/recognised_kinds.py runs/tiny/snapshots/snapshot-000012000 [SNAPSHOT ...] --data runs/tiny/shards

For data sets whose evaluator has a class head (the synthetic data: sphere, box, torus, cylinder, capsule,
pair; eg3d/metrics/evaluator.py), each snapshot's G_ema draws `--count` images (random z, no truncation,
cameras from the data set's labels) and the evaluator classifies them. One row per snapshot: the mean top
class probability, the share classified with probability above `--confident`, and how many of those fell in
each class. The real data set has every class equally often and its held-out images are classified
(the evaluator's floor, printed first) nearly all correctly; a generator whose images of some class are
never recognised does not draw that class so that it can be told apart. A picture does not show this over
hundreds of images; this table does.
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dataloading import storage  # noqa: E402
from dataloading.shard_reader import camera_labels, load_manifest  # noqa: E402
from eg3d.cli.snapshots import open_snapshot  # noqa: E402
from eg3d.evaluate import manifest_of, snapshot_config  # noqa: E402
from eg3d.metrics.evaluator_training import local_cache_folder, prepare_evaluator, to_uint8  # noqa: E402
from eg3d.networks.snapshot import default_neural_rendering_resolution  # noqa: E402


@torch.no_grad()
def class_probabilities(G, evaluator, cameras: torch.Tensor, *, count: int, seed: int,
                        batch: int = 64) -> torch.Tensor:
    """[count, K] softmax of the evaluator's class logits on G's images (z ~ N(0, I), psi 1, cameras drawn
    from `cameras` [N, 25])."""
    generator = torch.Generator().manual_seed(seed)
    resolution = default_neural_rendering_resolution(G)
    probabilities = []
    for start in range(0, count, batch):
        n = min(batch, count - start)
        z = torch.randn(n, G.mapping.z_dim, generator=generator)
        c = cameras[torch.randint(len(cameras), (n,), generator=generator)]
        images = G(z, c, neural_rendering_resolution=resolution, noise_mode="const")["image"]
        probabilities.append(torch.softmax(evaluator(to_uint8(images.float())).class_logits, dim=1))
    return torch.cat(probabilities)


def summary(probabilities: torch.Tensor, confident: float) -> tuple[float, float, list[int]]:
    """(mean top probability, share above `confident`, per class the count of those above it)."""
    top, classes = probabilities.max(dim=1)
    sure = top > confident
    return float(top.mean()), float(sure.float().mean()), torch.bincount(classes[sure],
                                                                         minlength=probabilities.shape[1]).tolist()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python bench/recognised_kinds.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("snapshots", nargs="+", help="snapshot folders or URLs")
    parser.add_argument("--data", required=True, help="the shards the snapshots were trained on (or a data set)")
    parser.add_argument("--count", type=int, default=512, help="generated images per snapshot")
    parser.add_argument("--confident", type=float, default=0.9, help="the top probability that counts as recognised")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    manifest_url = manifest_of(args.data, None, quiet=True)
    config = snapshot_config(args.snapshots[0])
    trained, _ = prepare_evaluator(manifest_url, config.evaluator, cache_urls=[storage.parent(manifest_url),
                                                                             local_cache_folder()],
                                   device=torch.device("cpu"), log=lambda line: print(line, file=sys.stderr))
    evaluator = trained.network
    if evaluator.class_head is None:
        parser.error(f"the evaluator of {args.data} has no class head: the data set has no classes")
    names = load_manifest(manifest_url).class_names or [str(k) for k in range(evaluator.class_head.out_features)]
    cameras = torch.from_numpy(camera_labels(manifest_url))
    print(f"{'snapshot':<40} {'mean top p':>10} {'> ' + format(args.confident, 'g'):>6}  " +
          " ".join(f"{name:>8}" for name in names))
    for url in args.snapshots:
        G = open_snapshot(url, "cpu")
        mean, share, counts = summary(class_probabilities(G, evaluator, cameras, count=args.count,
                                                          seed=args.seed), args.confident)
        name = "/".join(url.rstrip("/").split("/")[-3:])[-40:]
        print(f"{name:<40} {mean:>10.3f} {share:>6.2f}  " + " ".join(f"{n:>8}" for n in counts))


if __name__ == "__main__":
    main()
