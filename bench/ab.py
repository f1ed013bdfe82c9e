"""Is this tree faster than another commit? Training iterations of both, interleaved, in one table.

    python bench/ab.py --base 23332bd                       # tiny, 7 pairs, this checkout against 23332bd
    python bench/ab.py --base main --pairs 9 --threads 1 --set rendering.depth_resolution=16

A claim of "faster" is measured against the previous main in the same session with runs interleaved, so
that a machine whose speed drifts (other work, thermal limits) moves both sides alike. This script checks
`--base` out into a temporary git worktree, then times `--pairs` pairs of fresh processes, alternating
which tree goes first, each running whole lazy-regularization periods of `Trainer.train_step` on a resident
synthetic batch (as `bench/train_step.py` does). The child imports only what every tree has had since the
trainer existed (the preset, `apply_overrides`, `Trainer`, `orbit_camera`), so one script times both.
Both sides get the same `--set` overrides (the base's preset as the base defines it): to compare the same
workload when a preset changed between the trees, give its old values with `--set`.

Prints the median seconds per iteration and images/s of each tree, the ratio, and every pair.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
THIS_TREE = "this tree"


def child(preset: str, overrides: list[str], threads: int, periods: int, warmup: int) -> None:
    """Run in a fresh process with PYTHONPATH at one tree: print {"seconds_per_iteration", "batch"}."""
    import time

    import torch

    from eg3d.config import apply_overrides
    from eg3d.config.presets import get_preset
    from eg3d.networks.camera import orbit_camera
    from eg3d.training.trainer import Trainer

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = apply_overrides(get_preset(preset), overrides)
    config.run.device = "cpu"
    batch, res = config.run.batch_size, config.model.image_resolution

    def cameras(n):
        yaw = torch.pi / 2 + (torch.rand(n) - 0.5)
        return orbit_camera(yaw, torch.full_like(yaw, torch.pi / 2))

    trainer = Trainer(config, camera_pool=cameras(64), device="cpu")
    img, c = torch.rand(batch, 3, res, res) * 2 - 1, cameras(batch)
    for _ in range(warmup):
        trainer.train_step(img, c)
    loss = config.loss
    steps = periods * max(loss.r1_interval, loss.density_reg_interval if loss.density_reg > 0 else 1)
    trainer.step_index = 0  # whole periods: every phase weighs as in training
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(img, c)
    print(json.dumps({"seconds_per_iteration": (time.perf_counter() - start) / steps, "batch": batch}))


def run_child(tree: Path, args) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", "--preset", args.preset,
               "--threads", str(args.threads), "--periods", str(args.periods), "--warmup", str(args.warmup)]
    for override in args.set:
        command += ["--set", override]
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": str(args.threads)}
    result = subprocess.run(command, env=env, cwd=tree, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"the timing run in {tree} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--base", help="the commit to compare against (any git revision)")
    parser.add_argument("--preset", default="tiny", help="the preset both trees train")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="config override for both trees (repeatable)")
    parser.add_argument("--pairs", type=int, default=7, help="timed runs of each tree, interleaved")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads of each run")
    parser.add_argument("--periods", type=int, default=1, help="lazy-regularization periods timed per run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.preset, args.set, args.threads, args.periods, args.warmup)
    if not args.base:
        parser.error("--base is required: the git revision to compare this tree against")
    base_commit = subprocess.run(["git", "rev-parse", "--short", args.base], cwd=REPO, capture_output=True,
                                 text=True)
    if base_commit.returncode != 0:
        parser.error(f"--base {args.base!r} is not a git revision of this repository: {base_commit.stderr.strip()}")
    with tempfile.TemporaryDirectory(prefix="eg3d-ab-") as scratch:
        base_tree = Path(scratch) / "base"
        subprocess.run(["git", "worktree", "add", "--detach", str(base_tree), args.base], cwd=REPO, check=True,
                       capture_output=True)
        try:
            base_name = f"base {base_commit.stdout.strip()}"
            trees = {THIS_TREE: REPO, base_name: base_tree}
            times, batches = {name: [] for name in trees}, {}
            for pair in range(args.pairs):
                order = list(trees) if pair % 2 == 0 else list(reversed(trees))
                for name in order:
                    result = run_child(trees[name], args)
                    times[name].append(result["seconds_per_iteration"])
                    batches[name] = result["batch"]
                print(f"pair {pair + 1}/{args.pairs}: " + "  ".join(f"{n} {times[n][-1]:.3f} s" for n in trees),
                      file=sys.stderr, flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base_tree)], cwd=REPO, capture_output=True)
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"{args.preset}, {args.threads} thread(s), {args.pairs} interleaved pairs"
          + (f", --set {' '.join(args.set)}" if args.set else ""))
    print(f"{'tree':<20} {'median s/iter':>14} {'img/s':>7}  all runs (s/iter)")
    for name, values in times.items():
        print(f"{name:<20} {medians[name]:>14.3f} {batches[name] / medians[name]:>7.2f}  "
              + " ".join(f"{v:.3f}" for v in values))
    speed = {name: batches[name] / medians[name] for name in trees}  # images/s
    print(f"speed-up in images/s (this tree's over the base's): {speed[THIS_TREE] / speed[base_name]:.2f}x")


if __name__ == "__main__":
    main()
