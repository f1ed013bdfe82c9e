"""Does a gloo collective slow this process's later training steps? Times `tiny` steps before and after one.

    python bench/collective_slowdown.py                      # a 2 MB all_gather in a gloo group of one rank
    python bench/collective_slowdown.py --op all_reduce --mb 2

Found on a 2-core CPU machine: the embedded default trained at 16 img/s until its first snapshot and at
12 img/s after it, through the rest of the run. The snapshot's quality measurement gathered its features with
`all_gather_object` over the gloo group Ray Train sets up; one plain `dist.all_gather` of 2 MB in a fresh
process reproduces it (0.36 -> 0.53 s per step).

The cause: gloo's all-gather copies its output inside one of gloo's worker threads, and a copy of more than
32k elements runs as an OpenMP parallel region there, which starts a second OpenMP team. Once a process has
more OpenMP threads than CPUs, libgomp shortens every thread's spin-wait from 300,000 to 100 spins (see
GOMP_SPINCOUNT in the libgomp manual), so the compute threads go to sleep between operations. Evidence:
`GOMP_SPINCOUNT=100 ... --op none` is as slow as "after" with no collective; `OMP_WAIT_POLICY=PASSIVE` makes
"before" as slow as "after"; `--op all_reduce` and `--op broadcast`, which work in place, change nothing; and
the all-gather adds one thread to the process. `cluster.backends.DistributedSync.all_gather_object` therefore
gathers objects with an in-place all-reduce.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import fake_batch, make_trainer  # noqa: E402

from eg3d.config.presets import get_preset  # noqa: E402


def seconds_per_step(trainer, img, c, steps: int) -> float:
    for _ in range(2):
        trainer.train_step(img, c)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        trainer.train_step(img, c)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def collective(op: str, megabytes: float) -> None:
    n = int(megabytes * 2**20)
    if op == "all_gather":
        dist.all_gather([torch.empty(n, dtype=torch.uint8)], torch.ones(n, dtype=torch.uint8))
    elif op == "all_reduce":
        dist.all_reduce(torch.ones(n // 4))
    elif op == "broadcast":
        dist.broadcast(torch.ones(n, dtype=torch.uint8), src=0)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--op", choices=["all_gather", "all_reduce", "broadcast", "none"], default="all_gather")
    parser.add_argument("--mb", type=float, default=2.0, help="payload, MiB")
    parser.add_argument("--steps", type=int, default=8, help="timed steps before and after")
    args = parser.parse_args(argv)
    device = torch.device("cpu")
    with tempfile.TemporaryDirectory() as scratch:
        dist.init_process_group("gloo", store=dist.FileStore(str(Path(scratch) / "store"), 1), rank=0,
                                world_size=1)
        try:
            config = get_preset("tiny")
            trainer = make_trainer(config, device)
            img, c = fake_batch(config, config.run.batch_size, device)
            before = seconds_per_step(trainer, img, c, args.steps)
            if args.op != "none":
                collective(args.op, args.mb)
            after = seconds_per_step(trainer, img, c, args.steps)
        finally:
            dist.destroy_process_group()
    print(f"tiny, {torch.get_num_threads()} threads, gloo {args.op} of {args.mb:g} MiB at world size 1")
    print(f"seconds per step: before {before:.3f}, after {after:.3f} ({after / before:.2f}x)")


if __name__ == "__main__":
    main()
