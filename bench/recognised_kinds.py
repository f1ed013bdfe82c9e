"""Which kinds of object a generator draws recognisably: its images classified by the data set's evaluator.

    python bench/recognised_kinds.py runs/tiny/snapshots/snapshot-000016000 [SNAPSHOT ...] --data runs/tiny/shards

For data sets whose evaluator has a class head (the synthetic data: sphere, box, torus, cylinder, capsule,
pair; eg3d/metrics/evaluator.py), each snapshot's G_ema draws `--count` images (random z, no truncation,
cameras from the data set's labels) and the evaluator classifies them. One row per snapshot: the mean top
class probability, the share classified with probability above `--confident`, and how many of those fell in
each class. The real data set has every class equally often and its held-out images are classified
(the evaluator's floor, printed first) nearly all correctly; a generator whose images of some class are
never recognised does not draw that class so that it can be told apart. A picture does not show this over
hundreds of images; this table does.

`--picture kinds.png` also draws, for the first snapshot, one row per kind: real images of that kind beside the
first generated images the evaluator recognises as it (`kinds_picture`).
"""

import argparse
import sys
from pathlib import Path

import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dataloading import storage  # noqa: E402
from dataloading.shard_reader import camera_labels, load_manifest  # noqa: E402
from eg3d.cli.arguments import (MAX_SEED, HelpFormatter, Interval, image_file, make_parent, real_number,  # noqa: E402
                                whole_number)
from eg3d.cli.snapshots import EXPECTED, open_snapshot, refuse_what_is_no_snapshot  # noqa: E402
from eg3d.evaluate import manifest_of, snapshot_config  # noqa: E402
from eg3d.metrics.evaluator_training import (load_real_data, local_cache_folder, prepare_evaluator,  # noqa: E402
                                             to_uint8)
from eg3d.networks.snapshot import SnapshotError, default_neural_rendering_resolution  # noqa: E402

# Real samples read for the picture, the first in the shards' order: 8 of each kind of the synthetic data, whose
# kinds are drawn at random per image; a data set stored sorted by class would leave later kinds' rows white.
REAL_FOR_PICTURE = 600


@torch.no_grad()
def classify_generated(G, evaluator, cameras: torch.Tensor, *, count: int, seed: int, batch: int = 64,
                       keep_images: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The softmax of the evaluator's class logits ([count, K]) on `count` of G's images (z ~ N(0, I), psi 1,
    cameras drawn from `cameras` [N, 25]), and with `keep_images` the images themselves (uint8 [count, 3, R, R],
    R G's output resolution after super-resolution; None otherwise: 400 MB for 512 images of a 512-pixel G)."""
    generator = torch.Generator().manual_seed(seed)
    resolution = default_neural_rendering_resolution(G)
    images, probabilities = [], []
    for start in range(0, count, batch):
        n = min(batch, count - start)
        z = torch.randn(n, G.mapping.z_dim, generator=generator)
        c = cameras[torch.randint(len(cameras), (n,), generator=generator)]
        drawn = to_uint8(G(z, c, neural_rendering_resolution=resolution, noise_mode="const")["image"].float())
        probabilities.append(torch.softmax(evaluator(drawn).class_logits, dim=1))
        if keep_images:
            images.append(drawn)
    return torch.cat(probabilities), torch.cat(images) if keep_images else None


def kinds_picture(real_images: torch.Tensor, real_classes: torch.Tensor, generated: torch.Tensor,
                  probabilities: torch.Tensor, names: list[str], *, per_kind: int = 8,
                  confident: float = 0.9) -> Image.Image:
    """One row per kind: the first `per_kind` real images of that kind (uint8 [N, 3, R, R], classes [N]), a gap,
    then the first `per_kind` generated images (uint8 [M, 3, R, R], the same R; in draw order) that the evaluator
    assigns to it with probability above `confident` (probabilities [M, K], K = len(names), in the order of
    `names`); a tile stays white where fewer were recognised. The picture is (64 + 2 * per_kind * R + 16) wide
    and K * R high, kind names in the 64-pixel margin. The generated half is chosen by the
    evaluator, not by hand, and shows the generator's best-recognised draws of each kind: read it beside
    `summary`'s counts, and beside a sheet of undrawn codes (`python -m eg3d.sample_grid --layout codes`)."""
    resolution, label_width, gap = real_images.shape[-1], 64, 16
    top, guessed = probabilities.max(dim=1)
    sheet = Image.new("RGB", (label_width + 2 * per_kind * resolution + gap, len(names) * resolution), "white")
    draw = ImageDraw.Draw(sheet)
    for row, name in enumerate(names):
        draw.text((4, row * resolution + resolution // 2 - 6), name, fill="black")
        real = real_images[real_classes == row][:per_kind]
        drawn = generated[(guessed == row) & (top > confident)][:per_kind]
        for column, image in enumerate(real):
            sheet.paste(Image.fromarray(image.permute(1, 2, 0).numpy()), (label_width + column * resolution,
                                                                          row * resolution))
        for column, image in enumerate(drawn):
            sheet.paste(Image.fromarray(image.permute(1, 2, 0).numpy()),
                        (label_width + (per_kind + column) * resolution + gap, row * resolution))
    return sheet


def summary(probabilities: torch.Tensor, confident: float) -> tuple[float, float, list[int]]:
    """(mean top probability, share above `confident`, per class the count of those above it)."""
    top, classes = probabilities.max(dim=1)
    sure = top > confident
    return float(top.mean()), float(sure.float().mean()), torch.bincount(classes[sure],
                                                                         minlength=probabilities.shape[1]).tolist()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python bench/recognised_kinds.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("snapshots", nargs="+", help="snapshot folders or URLs")
    parser.add_argument("--data", required=True, help="the shards the snapshots were trained on (or a data set)")
    parser.add_argument("--count", type=whole_number(1), default=512, help="generated images per snapshot")
    parser.add_argument("--confident", type=real_number(Interval(0, 1, high_open=True)), default=0.9,
                        help="the top probability that counts as recognised")
    parser.add_argument("--seed", type=whole_number(0, MAX_SEED), default=0, help="seed of the latent codes and cameras")
    parser.add_argument("--picture", metavar="PNG", type=image_file,
                        help="also draw, per kind, real images beside the first generated ones recognised as it "
                             "(of the first snapshot)")
    args = parser.parse_args(argv)
    # Every argument is checked before the evaluator and the first snapshot's work.
    try:
        manifest_url = manifest_of(args.data, None, quiet=True)
    except (OSError, ValueError) as error:
        parser.error(str(error))
    configs = []
    for url in args.snapshots:
        try:
            configs.append(snapshot_config(url))
        except (OSError, ValueError, KeyError) as error:
            try:  # what the path is instead (a run's folder, a missing path, ...), as the commands say it
                refuse_what_is_no_snapshot(url)
            except SnapshotError as named:
                parser.error(f"SNAPSHOT {named}")
            parser.error(f"SNAPSHOT {url}: {EXPECTED} ({type(error).__name__}: {error})")
    if args.picture:
        make_parent(args.picture)
    config = configs[0]
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
    for index, url in enumerate(args.snapshots):
        G = open_snapshot(url, "cpu")
        picture = bool(args.picture) and index == 0
        probabilities, generated = classify_generated(G, evaluator, cameras, count=args.count, seed=args.seed,
                                                      keep_images=picture)
        mean, share, counts = summary(probabilities, args.confident)
        name = "/".join(url.rstrip("/").split("/")[-3:])[-40:]
        print(f"{name:<40} {mean:>10.3f} {share:>6.2f}  " + " ".join(f"{n:>8}" for n in counts))
        if picture:
            real = load_real_data(manifest_url, generated.shape[-1], limit=REAL_FOR_PICTURE)
            kinds_picture(real.images, real.classes, generated, probabilities, names,
                          confident=args.confident).save(args.picture)
            print(f"wrote {args.picture}", file=sys.stderr)


if __name__ == "__main__":
    main()
