"""Data-parallel scaling: training images per second on 1 and N workers, per backend.

    python bench/scaling.py                                   # tiny on this machine's CPU cores
    python bench/scaling.py --preset ffhq512 --device cuda --workers 1 --backends ddp deepspeed:0 deepspeed:1

Each worker is a process in a real process group (gloo on CPU, NCCL on GPU) running the same trainer and
gradient sync as under Ray Train; batches are synthetic and resident, so the figures are the training
step alone (bench/data.py measures the reader). On CPU the machine's cores are shared out: 1 worker uses
them all, N workers use cores/N threads each, so efficiency = (img/s on N) / (img/s on 1) compares the
same hardware. `--threads T` gives every worker T threads instead, as a GPU each (bench/scaling_model.py
checks its model so); the ideal then grows with the workers. Steps cover whole lazy-regularization periods,
so every phase is weighted as in training.
"""

import argparse
import os
import pickle
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import fake_batch, peak_memory_bytes, synchronize  # noqa: E402

from eg3d.config import batch_split  # noqa: E402
from eg3d.config.presets import get_preset  # noqa: E402
from eg3d.training.trainer import Trainer  # noqa: E402


def worker(rank: int, world_size: int, port: int, args, backend: str, zero_stage: int, out: str) -> None:
    threads = args.threads or max((os.cpu_count() or 1) // world_size, 1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world_size))
    torch.set_num_threads(threads)
    device = torch.device(args.device, rank) if args.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world_size)
    from cluster.backends import make_sync

    config = get_preset(args.preset)
    if args.batch:
        config.run.batch_size = args.batch
    config.run.precision = args.precision
    split = batch_split(config, world_size)
    micro, steps_per_batch = split.largest_micro_batch, split.accumulation_steps
    sync = make_sync(backend, zero_stage=zero_stage)
    trainer = Trainer(config, camera_pool=fake_batch(config, 64, device)[1], device=device, sync=sync)
    images, cameras = fake_batch(config, split.shares[rank], device)
    for _ in range(args.warmup):
        trainer.train_step(images, cameras)
    period = max(p.interval for p in trainer.phases)
    steps = max(args.steps // period, 1) * period
    trainer.step_index = 0
    synchronize(device)
    dist.barrier()
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(images, cameras)
    synchronize(device)
    dist.barrier()
    seconds = time.perf_counter() - start
    if rank == 0:
        result = {"images_per_second": steps * config.run.batch_size / seconds, "seconds_per_step": seconds / steps,
                  "threads": threads, "micro": micro, "accumulation": steps_per_batch,
                  "peak_memory_mib": peak_memory_bytes(device) / 2 ** 20, "batch": config.run.batch_size}
        Path(out).write_bytes(pickle.dumps(result))
    dist.destroy_process_group()


def measure(args, backend: str, zero_stage: int, world_size: int) -> dict:
    from socket import socket

    with socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as scratch:
        out = os.path.join(scratch, "result.pkl")
        mp.spawn(worker, args=(world_size, port, args, backend, zero_stage, out), nprocs=world_size, join=True)
        return pickle.loads(Path(out).read_bytes())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch", type=int, help="global batch (default: the preset's)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--backends", nargs="+", default=["ddp", "deepspeed:0", "deepspeed:1"],
                        help="ddp, deepspeed:<zero stage>")
    parser.add_argument("--threads", type=int, help="torch threads per worker (default: the cores shared out)")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args(argv)
    header = (f"{'backend':<12} {'workers':>7} {'threads':>7} {'micro x acc':>11} {'img/s':>8} {'s/step':>8} "
              f"{'efficiency':>10} {'peak MiB':>9}")
    print(f"preset {args.preset}, device {args.device}, precision {args.precision}")
    print(header)
    print("-" * len(header))
    for spec in args.backends:
        backend, _, stage = spec.partition(":")
        if backend == "deepspeed":
            try:
                import deepspeed  # noqa: F401 - only to know it is there
            except ImportError:
                print(f"{spec:<12} skipped: deepspeed is not installed (pip install -e .[deepspeed])")
                continue
        baseline = None  # the first worker count's result
        for world_size in args.workers:
            r = measure(args, backend, int(stage or 0), world_size)
            baseline = baseline or (world_size, r["images_per_second"])
            each_its_own = args.device == "cuda" or args.threads  # else CPU cores shared out
            ideal = baseline[1] * (world_size / baseline[0] if each_its_own else 1)
            efficiency = r["images_per_second"] / ideal
            print(f"{spec:<12} {world_size:>7} {r['threads']:>7} {str(r['micro']) + ' x ' + str(r['accumulation']):>11} "
                  f"{r['images_per_second']:>8.2f} {r['seconds_per_step']:>8.3f} {efficiency:>10.2f} "
                  f"{r['peak_memory_mib']:>9.0f}")


if __name__ == "__main__":
    main()
