"""Does the --batch rule hold? `tiny` trained at several global batches, compared at equal images seen.

    python bench/batch_scaling.py --out runs/batch-scaling                     # batches 8 32 128, seeds 0 1 2
    python bench/batch_scaling.py --out runs/batch-scaling --lr-rule sqrt --batches 128 --seeds 0
    python bench/batch_scaling.py --out runs/batch-scaling --report --curves docs/batch-scaling.png

Each run is `tiny` with `--batch B` as `python -m eg3d.train` applies it (eg3d.config.batch_rule: the EMA
half-life, the blur fade and the checkpoint interval scaled with the batch, everything else kept) and one seed;
gradient accumulation in micro-batches of 8 gives the arithmetic of B / 8 workers at 8 images each on one process. `--lr-rule sqrt`
also multiplies both learning rates by sqrt(B / 8) (the square-root rule of Krizhevsky 2014 and Malladi et al.
2022 for Adam), the rule the reference does not apply. Runs go in parallel (`--parallel`, one torch thread
each: on 2 cores two 1-thread processes train more images than one 2-thread one) and resume where they stopped.

The report reads every run's log.jsonl: per batch and snapshot (kimg), the mean and the spread (min-max) over
seeds of fd_data, pose_error_deg and depth_error (all lower is better), and each relative to batch 8 at the
same kimg. `--curves` draws them against images seen and, below, against optimizer steps, one colour per batch
(the square-root rule dashed) with the seeds' range shaded (needs matplotlib: pip install -e '.[bench]').
"""

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dataloading import storage  # noqa: E402

METRICS = ("fd_data", "pose_error_deg", "depth_error")
BASE_BATCH = 8


def run_name(batch: int, lr_rule: str, seed: int) -> str:
    return f"batch{batch}-{lr_rule}-seed{seed}"


def run_config(batch: int, lr_rule: str, seed: int, kimg: float):
    """`tiny` at `batch` as `python -m eg3d.train --batch` resolves it (the --batch rule), micro-batches of 8, and
    with lr_rule "sqrt" both learning rates x sqrt(batch / tiny's batch)."""
    from eg3d.config.presets import tiny
    from eg3d.train import build_config, parse_args

    preset = tiny()
    settings = [f"run.micro_batch={BASE_BATCH}"] if batch > BASE_BATCH else []
    if lr_rule == "sqrt":
        factor = math.sqrt(batch / preset.run.batch_size)
        settings += [f"optimizer.g_lr={preset.optimizer.g_lr * factor}",
                     f"optimizer.d_lr={preset.optimizer.d_lr * factor}"]
    argv = ["--preset", "tiny", "--batch", str(batch), "--seed", str(seed), "--kimg", str(kimg)]
    return build_config(parse_args(argv + [arg for item in settings for arg in ("--set", item)]), log=lambda _: None)


def train_one(out: str, data: str, batch: int, lr_rule: str, seed: int, kimg: float) -> None:
    """One run in this process (one torch thread), into OUT/<run_name>."""
    import torch

    from eg3d.train import prepare_data
    from eg3d.training.loop import train

    torch.set_num_threads(1)
    config = run_config(batch, lr_rule, seed, kimg)
    manifest_url = prepare_data(config, data, storage.join(out, "data"))
    name = run_name(batch, lr_rule, seed)
    start = time.time()
    train(config, manifest_url=manifest_url, run_url=storage.join(out, name),
          log=lambda line: print(f"[{name} {(time.time() - start) / 60:5.1f} min] {line}", flush=True))


def train_all(args) -> None:
    """Every (batch, seed) run, `args.parallel` at a time, each in its own 1-thread process."""
    if args.data is None:  # build the synthetic shards once, before the runs share them
        from eg3d.train import prepare_data

        args.data = prepare_data(run_config(BASE_BATCH, "none", 0, args.kimg), None, storage.join(args.out, "data"))
    jobs = [(batch, seed) for seed in args.seeds for batch in args.batches]
    running: list[subprocess.Popen] = []
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    for batch, seed in jobs:
        while len([p for p in running if p.poll() is None]) >= args.parallel:
            time.sleep(5)
        log_file = open(Path(args.out) / f"{run_name(batch, args.lr_rule, seed)}.log", "a")
        running.append(subprocess.Popen(
            [sys.executable, __file__, "--out", args.out, "--data", args.data, "--kimg", str(args.kimg),
             "--lr-rule", args.lr_rule, "--one", str(batch), str(seed)], env=env, stdout=log_file,
            stderr=subprocess.STDOUT))
        print(f"started {run_name(batch, args.lr_rule, seed)} (log {log_file.name})", flush=True)
    failed = [p.args for p in running if p.wait() != 0]
    if failed:
        raise SystemExit(f"{len(failed)} run(s) failed; see their logs in {args.out}")


def snapshot_values(run_url: str) -> dict[float, dict]:
    """{kimg: {metric: value}} of a run's evaluator measurements (log.jsonl's quality_nimg/evaluator)."""
    values = {}
    for line in storage.read_bytes(storage.join(run_url, "log.jsonl")).decode().splitlines():
        record = json.loads(line) if line.strip() else {}
        nimg = record.get("quality_nimg/evaluator")
        if nimg is not None and all(record.get(m) is not None for m in METRICS):
            values.setdefault(round(nimg / 500) / 2, {m: record[m] for m in METRICS})  # kimg to 0.5: batches land apart
    return values


def collect(out: str) -> dict[tuple[int, str], dict[float, dict[str, list[float]]]]:
    """{(batch, lr_rule): {kimg: {metric: [value per seed]}}} of every finished run folder under `out`."""
    table: dict = {}
    for folder in sorted(Path(out).glob("batch*-*-seed*")):
        if not folder.is_dir() or not (folder / "log.jsonl").exists():
            continue
        batch_text, lr_rule, _ = folder.name.split("-")
        key = (int(batch_text.removeprefix("batch")), lr_rule)
        for kimg, values in snapshot_values(str(folder)).items():
            for metric, value in values.items():
                table.setdefault(key, {}).setdefault(kimg, {}).setdefault(metric, []).append(value)
    return table


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def report(table) -> str:
    """The table: per configuration and kimg, mean [min-max] (n seeds) of each metric and its ratio to batch 8
    (the same lr rule's, else 'none') at that kimg."""
    lines = [f"{'batch':>5} {'lr':>4} {'kimg':>5} " + " ".join(f"{m:>27}" for m in METRICS)]
    for (batch, lr_rule), by_kimg in sorted(table.items()):
        base = table.get((BASE_BATCH, lr_rule)) or table.get((BASE_BATCH, "none"), {})
        for kimg, values in sorted(by_kimg.items()):
            cells = []
            for metric in METRICS:
                seeds = values[metric]
                ratio = (f" x{mean(seeds) / mean(base[kimg][metric]):.2f}" if kimg in base and batch != BASE_BATCH
                         else "")
                cells.append(f"{mean(seeds):7.2f} [{min(seeds):.2f}-{max(seeds):.2f}] n{len(seeds)}{ratio}")
            lines.append(f"{batch:>5} {lr_rule:>4} {kimg:>5g} " + " ".join(f"{c:>27}" for c in cells))
    return "\n".join(lines)


def draw_curves(table, path: str) -> None:
    """Two rows of panels, one per metric: against images seen (the rule's claim) and against optimizer steps
    (log scale); one colour per batch, the square-root rule dashed, the seeds' range shaded."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise SystemExit("--curves needs matplotlib: pip install -e '.[bench]'") from None
    figure = Figure(figsize=(12, 6.4), dpi=100, layout="constrained")
    panels = figure.subplots(2, len(METRICS))
    batches = sorted({batch for batch, _ in table})
    for row, (x_name, x_of) in enumerate((("kimg (images seen / 1000)", lambda kimg, batch: kimg),
                                          ("optimizer steps", lambda kimg, batch: 1000 * kimg / batch))):
        for ax, metric in zip(panels[row], METRICS):
            for (batch, lr_rule), by_kimg in sorted(table.items()):
                kimgs = sorted(by_kimg)
                seeds = [by_kimg[k][metric] for k in kimgs]
                x = [x_of(k, batch) for k in kimgs]
                color = f"C{batches.index(batch)}"
                label = f"batch {batch}" + ("" if lr_rule == "none" else ", lr x sqrt(B/8)") + f" (n={len(seeds[-1])})"
                ax.plot(x, [mean(s) for s in seeds], marker="o", markersize=3, color=color,
                        linestyle="-" if lr_rule == "none" else "--", label=label)
                ax.fill_between(x, [min(s) for s in seeds], [max(s) for s in seeds], color=color, alpha=0.12)
            ax.set_title(f"{metric} (lower is better)", fontsize=10)
            ax.set_xlabel(x_name, fontsize=8)
            if row == 1:
                ax.set_xscale("log")
            ax.tick_params(labelsize=8)
            ax.grid(alpha=0.3)
    panels[0][0].legend(fontsize=7)
    figure.savefig(path)
    print(f"wrote {path}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python bench/batch_scaling.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder of the runs")
    parser.add_argument("--data", help="shards manifest to train on (default: the synthetic data, built under OUT)")
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--kimg", type=float, default=12.0)
    parser.add_argument("--lr-rule", choices=("none", "sqrt"), default="none")
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--report", action="store_true", help="only print the table of the runs under OUT")
    parser.add_argument("--curves", help="also draw the curves into this PNG")
    parser.add_argument("--one", type=int, nargs=2, metavar=("BATCH", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if any(b % BASE_BATCH for b in args.batches):
        parser.error(f"--batches: each must be a multiple of {BASE_BATCH} (micro-batches of {BASE_BATCH})")
    if args.one:
        return train_one(args.out, args.data, args.one[0], args.lr_rule, args.one[1], args.kimg)
    if not args.report:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        train_all(args)
    table = collect(args.out)
    print(report(table))
    if args.curves:
        draw_curves(table, args.curves)


if __name__ == "__main__":
    main()
