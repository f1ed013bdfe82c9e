"""Quality against wall time: what a run's snapshots looked like, and when.

    python bench/time_to_result.py runs/tiny                        # one row per snapshot
    python bench/time_to_result.py runs/tiny runs/tiny-old --montage docs/time-to-result.png

For each run (a local folder or any fsspec URL of a run) it reads `starts.json` (when training started),
`log.jsonl` (images seen, images/s and quality per log interval) and the snapshots' `grid.png`, and prints
one row per snapshot: kimg, minutes of wall time since the run's first start (snapshot and metric time
included, as a user waits for them), the interval's images/s and every quality value logged at that
snapshot (the embedded default measures the random-feature distance, `frechet_distance/random`: lower is
better; with 256 generated images it is noisy, so look at the grids too).

`--montage OUT.png` draws the first latent codes of every snapshot's grid (five views each), one band per
snapshot and runs side by side, each band labelled with kimg, minutes and the distance.
"""

import argparse
import io
import json
import sys

from PIL import Image, ImageDraw

from dataloading import storage
from eg3d.training.loop import GRID_VIEWS, snapshot_url

LABEL_HEIGHT = 14


def snapshot_rows(run_url: str) -> list[dict]:
    """One dict per measured snapshot: kimg, nimg, minutes (at the first log record after it),
    images_per_second (that record's interval) and the distances."""
    try:
        starts = json.loads(storage.read_bytes(storage.join(run_url, "starts.json")))
        records = [json.loads(line) for line in
                   storage.read_bytes(storage.join(run_url, "log.jsonl")).decode().splitlines() if line.strip()]
    except FileNotFoundError as error:
        print(f"skipping {run_url}: not a training run ({error}); expected starts.json and log.jsonl there",
              file=sys.stderr)
        return []
    start, rows = starts[0]["time"], {}
    for record in records:  # a measurement stays in every record until the next one; quality_nimg says whose
        measured = next((v for k, v in record.items() if k.startswith("quality_nimg/")), None)
        if measured is None or measured in rows:
            continue
        quality = {k: v for k, v in record.items() if k.startswith(("frechet_distance/", "kernel_distance/"))}
        rows[measured] = {"kimg": measured / 1000, "nimg": measured, "minutes": (record["timestamp"] - start) / 60,
                          "images_per_second": record["images_per_second"], **quality}
    return list(rows.values())


def grid_views(run_url: str, nimg: int, latents: int, scale: int) -> Image.Image | None:
    """The five views of the first `latents` codes of a snapshot's grid.png, enlarged `scale` times, or
    None when the snapshot has no grid."""
    url = storage.join(snapshot_url(run_url, nimg), "grid.png")
    if not storage.exists(url):
        return None
    grid = Image.open(io.BytesIO(storage.read_bytes(url))).convert("RGB")
    tile = grid.width // (2 * GRID_VIEWS)  # the views, then as many depth maps
    views = grid.crop((0, 0, GRID_VIEWS * tile, min(latents, grid.height // tile) * tile))
    return views.resize((views.width * scale, views.height * scale), Image.Resampling.NEAREST)


def montage(runs: dict[str, list[dict]], latents: int = 2, scale: int = 2) -> Image.Image:
    """Runs side by side, one labelled row per snapshot."""
    columns = []
    for run_url, rows in runs.items():
        tiles = [(row, grid_views(run_url, row["nimg"], latents, scale)) for row in rows]
        tiles = [(row, image) for row, image in tiles if image is not None]
        if not tiles:
            continue
        width = max(image.width for _, image in tiles)
        height = sum(image.height + LABEL_HEIGHT for _, image in tiles) + LABEL_HEIGHT
        column = Image.new("RGB", (width, height), "white")
        draw = ImageDraw.Draw(column)
        draw.text((2, 1), run_url.rstrip("/").split("/")[-1], fill="black")
        y = LABEL_HEIGHT
        for row, image in tiles:
            distance = next((v for k, v in row.items() if k.startswith("frechet_distance/")), None)
            label = f"{row['kimg']:g} kimg, {row['minutes']:.1f} min" + (f", FD {distance:.2f}" if distance else "")
            draw.text((2, y + 1), label, fill="black")
            column.paste(image, (0, y + LABEL_HEIGHT))
            y += image.height + LABEL_HEIGHT
        columns.append(column)
    if not columns:
        raise SystemExit("no snapshot grid.png found in the runs given")
    out = Image.new("RGB", (sum(c.width for c in columns) + 8 * (len(columns) - 1),
                            max(c.height for c in columns)), "white")
    x = 0
    for column in columns:
        out.paste(column, (x, 0))
        x += column.width + 8
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders or URLs (runs/NAME, or the --storage URL + NAME)")
    parser.add_argument("--montage", help="write a PNG of every snapshot's first grid rows, runs side by side")
    parser.add_argument("--latents", type=int, default=2, help="grid rows (latent codes) per snapshot in the montage")
    parser.add_argument("--scale", type=int, default=2, help="enlargement of the montage's images")
    args = parser.parse_args(argv)
    runs = {run: snapshot_rows(run) for run in args.runs}
    names = sorted({k for rows in runs.values() for row in rows for k in row} - {"kimg", "nimg", "minutes",
                                                                                 "images_per_second"})
    print(f"{'run':<24} {'kimg':>7} {'minutes':>8} {'img/s':>6} " + " ".join(f"{n:>24}" for n in names))
    for run, rows in runs.items():
        for row in rows:
            print(f"{run.rstrip('/').split('/')[-1]:<24} {row['kimg']:>7.3f} {row['minutes']:>8.1f} "
                  f"{row['images_per_second']:>6.1f} " + " ".join(f"{row.get(n, float('nan')):>24.3f}" for n in names))
    if args.montage:
        montage(runs, args.latents, args.scale).save(args.montage)
        print(f"wrote {args.montage}", file=sys.stderr)


if __name__ == "__main__":
    main()
