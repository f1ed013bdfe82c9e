"""Quality against wall time: what a run's snapshots looked like, and when.

    python bench/time_to_result.py runs/tiny                        # one row per snapshot
    python bench/time_to_result.py runs/tiny runs/tiny-old --montage docs/time-to-result.png
    python bench/time_to_result.py runs/tiny runs/tiny-old --curves curves.png   # needs matplotlib (.[bench])

For each run (a local folder or any fsspec URL of a run) it reads `starts.json` (when training started),
`log.jsonl` (images seen, images/s and quality per log interval) and the snapshots' `grid.png`, and prints
one row per measured snapshot: kimg, minutes of wall time since the run's first start (snapshot and metric
time included, as a user waits for them), the interval's images/s and every quality value logged at that
snapshot, all lower-is-better:
  frechet_distance/<extractor>, kernel_distance/<extractor>   FID/KID with inception_v3, or the random-feature
      distance (`random`)
  fd_data                          Frechet distance in the features of the evaluator trained on the dataset
                                   (what the embedded default measures)
  pose_error_deg, depth_error      G's camera and depth against the evaluator's estimates on G's images
  consistency_raw, consistency_final   colour error of one object warped between two views through its depth,
      over the error through a flat picture, for the neural rendering and the super-resolved image
  evaluator_floor/<metric>         the evaluator's own error on held-out real images: the floor of <metric>

`--montage OUT.png` draws the first latent codes of every snapshot's grid (five views each), one band per
snapshot and runs side by side, each band labelled with kimg, minutes and the distance.
`--evaluate DATA` measures the 3D quality of every snapshot now (`python -m eg3d.evaluate`, seed 0) instead of
reading the logged values: for runs logged by an older evaluator, or by none, so that runs compare.
`--curves OUT.png` draws each quality value against wall minutes, one panel per value, the runs overlaid and
labelled, and each run's evaluator floor as a dashed line in the panel of its metric.
"""

import argparse
import io
import json
import math
import sys

from PIL import Image, ImageDraw

from dataloading import storage
from eg3d.training.loop import GRID_VIEWS, snapshot_url

LABEL_HEIGHT = 14
PROGRESS_KEYS = ("kimg", "nimg", "minutes", "images_per_second")
# What each measurement (named by the extractor of its quality_nimg/<extractor> key) puts in the record.
EVALUATOR_KEYS = ("fd_data", "pose_error_deg", "depth_error", "consistency_raw", "consistency_final")
FLOOR = "evaluator_floor/"
PANEL_INCHES = (4.0, 3.0)
DPI = 100


def run_name(run_url: str) -> str:
    return run_url.rstrip("/").split("/")[-1]


def measured_values(record: dict, extractor: str) -> dict:
    """The values of the measurement that `extractor` names, as they stand in `record`."""
    if extractor == "evaluator":
        return {k: v for k, v in record.items() if k in EVALUATOR_KEYS or k.startswith(FLOOR)}
    return {k: record[k] for k in (f"frechet_distance/{extractor}", f"kernel_distance/{extractor}") if k in record}


def snapshot_rows(run_url: str) -> list[dict]:
    """One dict per measured snapshot: kimg, nimg, minutes (at the first log record after it),
    images_per_second (that record's interval) and every value measured on it."""
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
        for key, measured in record.items():
            if not key.startswith("quality_nimg/"):
                continue
            row = rows.setdefault(measured, {"kimg": measured / 1000, "nimg": measured,
                                             "minutes": (record["timestamp"] - start) / 60,
                                             "images_per_second": record["images_per_second"]})
            for name, value in measured_values(record, key.removeprefix("quality_nimg/")).items():
                row.setdefault(name, value)
    return list(rows.values())


def remeasure(run_url: str, rows: list[dict], data: str, seed: int = 0) -> list[dict]:
    """The rows with every snapshot's evaluator values measured now (`eg3d.evaluate`) against `data`, in place
    of those logged: for runs measured by an older evaluator, or by none. Every snapshot of the run gets a row
    (minutes: the first log record at or after it)."""
    from eg3d.evaluate import manifest_of, measure, snapshot_config
    from eg3d.networks.snapshot import load_generator

    manifest_url = manifest_of(data, None, quiet=True)
    filesystem, folder = storage.open_filesystem(storage.join(run_url, "snapshots"))
    names = sorted(path.rstrip("/").rsplit("/", 1)[-1] for path in filesystem.ls(folder, detail=False))
    by_nimg = {row["nimg"]: row for row in rows}
    records = [json.loads(line) for line in
               storage.read_bytes(storage.join(run_url, "log.jsonl")).decode().splitlines() if line.strip()]
    start = json.loads(storage.read_bytes(storage.join(run_url, "starts.json")))[0]["time"]
    measured = []
    for name in names:
        nimg = int(name.removeprefix("snapshot-"))
        url = snapshot_url(run_url, nimg)
        record = next((r for r in records if r["nimg"] >= nimg), records[-1])
        row = {key: value for key, value in by_nimg.get(nimg, {}).items() if key in PROGRESS_KEYS} or {
            "kimg": nimg / 1000, "nimg": nimg, "minutes": (record["timestamp"] - start) / 60,
            "images_per_second": record["images_per_second"]}
        values = measure(load_generator(url, read_bytes=storage.read_bytes), snapshot_config(url), manifest_url,
                         seed=seed, log=lambda line: print(line, file=sys.stderr), progress=lambda *_: None)
        row.update({key: values[key] for key in EVALUATOR_KEYS if values.get(key) is not None})
        row.update({FLOOR + key: values["floor"][key] for key in ("pose_error_deg", "depth_error")
                    if key in values["floor"]})
        measured.append(row)
    return measured


def quality_names(runs: dict[str, list[dict]]) -> list[str]:
    """Every quality value any row has, floors included, sorted."""
    return sorted({k for rows in runs.values() for row in rows for k in row} - set(PROGRESS_KEYS))


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
        draw.text((2, 1), run_name(run_url), fill="black")
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


X_AXES = {"minutes": ("wall minutes", "wall time since the first start"), "kimg": ("kimg (images seen / 1000)",
                                                                             "images seen")}


def curves(runs: dict[str, list[dict]], x: str = "minutes"):
    """A matplotlib Figure: one panel per quality value (floors aside) against `x` ("minutes": wall minutes;
    "kimg": images seen, for runs timed on machines under different loads), runs overlaid, each run's evaluator
    floor dashed in its colour."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise SystemExit("--curves needs matplotlib: pip install -e '.[bench]'") from None
    names = [name for name in quality_names(runs) if not name.startswith(FLOOR)]
    if not names:
        raise SystemExit("no quality measurement found in the runs given")
    columns = min(3, len(names))
    rows_of_panels = math.ceil(len(names) / columns)
    figure = Figure(figsize=(PANEL_INCHES[0] * columns, PANEL_INCHES[1] * rows_of_panels), dpi=DPI,
                    layout="constrained")
    axes = list(figure.subplots(rows_of_panels, columns, squeeze=False).flat)
    for ax, name in zip(axes, names):
        for index, (run_url, rows) in enumerate(runs.items()):
            color = f"C{index % 10}"
            points = [(row[x], row[name]) for row in rows if name in row]
            if points:
                ax.plot(*zip(*points), marker="o", markersize=3, color=color, label=run_name(run_url))
            floors = [row[FLOOR + name] for row in rows if FLOOR + name in row]
            if floors:
                ax.axhline(floors[-1], linestyle="--", linewidth=1, color=color,
                           label=f"{run_name(run_url)} evaluator floor")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(X_AXES[x][0], fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes[len(names):]:  # the grid's empty cells
        ax.set_visible(False)
    figure.suptitle(f"Quality against {X_AXES[x][1]} (lower is better)", fontsize=11)
    return figure


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders or URLs (runs/NAME, or the --storage URL + NAME)")
    parser.add_argument("--montage", help="write a PNG of every snapshot's first grid rows, runs side by side")
    parser.add_argument("--latents", type=int, default=2, help="grid rows (latent codes) per snapshot in the montage")
    parser.add_argument("--scale", type=int, default=2, help="enlargement of the montage's images")
    parser.add_argument("--curves", help="write a PNG of every quality value against wall minutes, runs overlaid")
    parser.add_argument("--x", choices=tuple(X_AXES), default="minutes", help="the curves' x axis: wall minutes, or "
                        "images seen (for runs timed under different loads)")
    parser.add_argument("--evaluate", metavar="DATA", help="measure every snapshot's 3D quality now against DATA "
                        "(as python -m eg3d.evaluate takes it) instead of reading the logged values")
    args = parser.parse_args(argv)
    runs = {run: snapshot_rows(run) for run in args.runs}
    if args.evaluate:
        runs = {run: remeasure(run, rows, args.evaluate) for run, rows in runs.items()}
    names = quality_names(runs)
    widths = [max(len(name), 8) for name in names]
    print(f"{'run':<24} {'kimg':>7} {'minutes':>8} {'img/s':>6} " + " ".join(f"{n:>{w}}" for n, w in zip(names, widths)))
    for run, rows in runs.items():
        for row in rows:
            print(f"{run_name(run):<24} {row['kimg']:>7.3f} {row['minutes']:>8.1f} {row['images_per_second']:>6.1f} "
                  + " ".join(f"{row.get(n, float('nan')):>{w}.3f}" for n, w in zip(names, widths)))
    if args.montage:
        montage(runs, args.latents, args.scale).save(args.montage)
        print(f"wrote {args.montage}", file=sys.stderr)
    if args.curves:
        curves(runs, args.x).savefig(args.curves)
        print(f"wrote {args.curves}", file=sys.stderr)


if __name__ == "__main__":
    main()
