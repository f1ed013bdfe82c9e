"""A scaling model of data-parallel training: per GPU, a step's compute, its gradient all-reduces, the data it
reads and the checkpoints it writes, for ffhq512 on 8 to 128 GPUs; and the same formula checked against what
this machine can measure (tiny on 2 gloo workers, bench/scaling.py).

    python bench/scaling_model.py                                   # ffhq512, step time from FLOPs and an MFU
    python bench/scaling_model.py --precision fp32 --mfu 0.25       # other assumptions
    python bench/scaling_model.py --measured-step-s 0.2             # a step measured on one GPU, batch 4
    python bench/scaling_model.py --gpu-check RESULTS/gpu_check.jsonl     # that step, from bench/gpu_check.sh
    python bench/scaling_model.py --check-tiny                      # + tiny on 2 gloo workers: predicted vs measured
    python bench/scaling_model.py --check-tiny --tiny-step-s 0.5 0.55 0.6 --gloo-gbytes 1 --gloo-latency-us 50

Counted from the real code, not typed in:
- FLOPs per image of each phase (Gmain, Greg, Dmain, Dreg): torch's FlopCounterMode around the trainer's own
  `accumulate_gradients` on the meta device (shapes only, so seconds even for ffhq512), at batch 1, with the
  schedule past its fades (no blur; the final pose-conditioning swap). Batch 1, because torch's formula for a
  convolution's weight gradient ignores `groups`, and StyleGAN's modulated convolutions are one grouped
  convolution with a group per image: at batch n it counts their weight gradients n times over. The backward
  pass's share is counted apart (inside the trainer's `GradientSync.backward`): it is what a reduction can
  overlap with. Matmuls and convolutions only, forward, backward and R1's double backward; the tri-plane
  lookups and the volume rendering's elementwise work are not FLOPs here (a reason for a low MFU).
- The bytes each phase all-reduces: the parameters with a gradient after it (what cluster.backends.DDPSync
  reduces), x 4 (fp32 gradients, today) or x 2 (bf16).
- The checkpoint: G, G_ema and D (parameters and buffers) and Adam's two moments of G and D, float32.

The model. A phase that runs every k-th step (Greg k = 4, Dreg k = 16) counts 1/k of its cost per step. Each GPU
trains 4 images a step (the paper's 32 on 8 GPUs), so the global batch grows with the GPUs: 128 on 32, 256 on 64.
  step (one GPU)  measured, or the sum over phases of 4 x FLOPs per image / (MFU x peak) / k, with the phases
                  under autocast (Gmain, Dmain) at the bf16 peak under --precision bf16, and Greg and Dreg, which
                  the trainer always runs in float32, at the TF32 one (cuDNN runs float32 convolutions on TF32
                  tensor cores by default, and convolutions are nearly all the FLOPs)
  all-reduce      of B bytes on N GPUs: a ring within a node (N <= 8): 2 (N-1)/N x B / bw + 2 (N-1) alpha;
                  across M nodes of 8 (hierarchical): that ring within each node (its reduce-scatter and
                  all-gather), plus a ring over the M nodes of each GPU's 1/8 of B on its share of the network
  today           each due phase all-reduces its gradients after its backward (nothing overlaps), then one float
                  (are they finite?); each step also sums G's tracked w: latency terms
  overlapped      the reduction runs in buckets during the phase's backward: exposed is what the backward does not
                  cover, and at least the last bucket (25 MiB, DDP's)
  checkpoint      rank 0 uploads trainer.pt while every rank waits (eg3d.training.loop.save_checkpoint), every
                  run.checkpoint_kimg (as the --batch rule scales it: x batch / 32) or run.checkpoint_minutes,
                  whichever comes first: bytes / write bandwidth, spread over that interval
  efficiency      compute / (compute + exposed communication + checkpoint)
NCCL chooses its own rings and trees; this is the bandwidth-optimal schedule with a latency term, a lower bound
on its time. Not modelled: the snapshots' quality measurement (split over the ranks, so the same share of time at
any size), host-side work between phases, stragglers.
"""

import argparse
import copy
import json
import math
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from eg3d.config.batch_rule import batch_rule
from eg3d.config.presets import get_preset
from eg3d.training.schedules import Schedule
from eg3d.training.trainer import SingleProcess, Trainer

GPUS_PER_NODE = 8
PER_GPU_BATCH = 4  # images per GPU and step in every recipe (the paper's 32 on 8 GPUs)
RECIPES = (32, 128, 256)  # global batches: the paper's, and two larger ones at the same 4 per GPU
GPU_COUNTS = (8, 16, 32, 64, 128)
BUCKET_BYTES = 25 * 2**20  # DDP's default bucket_cap_mb
RAW_IMAGE_MB = 512 * 512 * 3 / 1e6  # an upper bound on an encoded 512x512 RGB image


@dataclass(frozen=True)
class Link:
    """What one GPU (or worker) has to one ring: bandwidth in bytes/s each way, latency (alpha) per ring step."""

    bandwidth: float
    latency: float


@dataclass(frozen=True)
class Fabric:
    name: str
    intra: Link  # within a node of GPUS_PER_NODE
    inter: Link  # across nodes, per GPU (a shared NIC: its bandwidth / GPUS_PER_NODE)


@dataclass(frozen=True)
class PhaseCost:
    """One phase of the trainer, per image: counted by `count_phases`."""

    name: str
    interval: int  # runs every this many steps
    low_precision: bool  # under run.precision's autocast (False: always float32)
    flops: float  # forward and backward passes (R1's double backward included)
    backward_flops: float  # of which in the backward that accumulates the gradients
    reduced_params: int  # parameters with a gradient after the phase: what DDPSync all-reduces


@dataclass(frozen=True)
class Counts:
    phases: list[PhaseCost]
    g_params: int
    d_params: int
    g_float_buffers: int  # G's tracked w and the like, summed over ranks every step
    checkpoint_bytes: int


# --- the model's formulas --------------------------------------------------------------------------------

def ring_all_reduce_seconds(nbytes: float, ranks: int, link: Link) -> float:
    """A ring all-reduce: a reduce-scatter and an all-gather, N-1 steps each, each moving 1/N of the bytes."""
    if ranks <= 1:
        return 0.0
    return 2 * (ranks - 1) / ranks * nbytes / link.bandwidth + 2 * (ranks - 1) * link.latency


def all_reduce_seconds(nbytes: float, gpus: int, fabric: Fabric, per_node: int = GPUS_PER_NODE) -> float:
    """One ring within a node; across nodes, the node's ring plus a ring over the nodes of each GPU's 1/per_node."""
    if gpus <= per_node:
        return ring_all_reduce_seconds(nbytes, gpus, fabric.intra)
    if gpus % per_node:
        raise ValueError(f"{gpus} GPUs do not fill nodes of {per_node}")
    return (ring_all_reduce_seconds(nbytes, per_node, fabric.intra)
            + ring_all_reduce_seconds(nbytes / per_node, gpus // per_node, fabric.inter))


def exposed_seconds(reduce_seconds: float, backward_seconds: float, last_bucket_seconds: float, *,
                    overlap: bool) -> float:
    """The part of a reduction that the step waits for: all of it today; overlapped with the backward in buckets,
    what the backward does not cover, and at least the last bucket (reduced once the backward is done)."""
    if not overlap:
        return reduce_seconds
    return max(reduce_seconds - backward_seconds, min(last_bucket_seconds, reduce_seconds))


def per_step(values: list[float], intervals: list[int]) -> float:
    """The per-step mean of per-phase values, a phase counting 1/interval."""
    return sum(value / interval for value, interval in zip(values, intervals))


def efficiency(compute_s: float, communication_s: float, checkpoint_s: float = 0.0) -> float:
    return compute_s / (compute_s + communication_s + checkpoint_s)


def checkpoint_interval_seconds(images_per_second: float, *, checkpoint_kimg: float,
                                checkpoint_minutes: float | None) -> float:
    """A checkpoint every checkpoint_kimg thousand images, or checkpoint_minutes, whichever comes first."""
    by_images = checkpoint_kimg * 1000 / images_per_second
    return by_images if checkpoint_minutes is None else min(by_images, 60 * checkpoint_minutes)


def phase_seconds(phases: list[PhaseCost], *, batch: int, mfu: float, peak_low: float, peak_fp32: float) -> list[float]:
    """Seconds of each phase on one GPU when it runs: its FLOPs / (MFU x its peak), float32 phases at peak_fp32."""
    return [batch * p.flops / (mfu * (peak_low if p.low_precision else peak_fp32)) for p in phases]


def shared_out(phases: list[PhaseCost], step_s: float, weights: list[float] | None = None) -> list[float]:
    """A measured step's seconds shared over the phases in proportion to `weights` (default: their FLOPs), so that
    their per-step mean is `step_s`."""
    weights = weights or [p.flops for p in phases]
    return [w * step_s / per_step(weights, [p.interval for p in phases]) for w in weights]


def step_communication(counts: Counts, seconds: list[float], gpus: int, fabric: Fabric, *, grad_bytes: int,
                       overlap: bool, per_node: int = GPUS_PER_NODE) -> float:
    """Exposed communication per step (mean over the lazy intervals): each due phase's gradient all-reduce and
    its finiteness check (one float), and every step the sum of G's float buffers."""
    exposed = []
    for phase, phase_s in zip(counts.phases, seconds):
        nbytes = phase.reduced_params * grad_bytes
        reduce_s = all_reduce_seconds(nbytes, gpus, fabric, per_node)
        last_bucket_s = all_reduce_seconds(min(nbytes, BUCKET_BYTES), gpus, fabric, per_node)
        backward_s = phase_s * phase.backward_flops / phase.flops
        exposed.append(exposed_seconds(reduce_s, backward_s, last_bucket_s, overlap=overlap)
                       + all_reduce_seconds(4, gpus, fabric, per_node))
    return (per_step(exposed, [p.interval for p in counts.phases])
            + all_reduce_seconds(4 * counts.g_float_buffers, gpus, fabric, per_node))


# --- counting on the real networks ---------------------------------------------------------------------

class _GlobalOnly:
    """Stands in for FlopCounterMode's module tracker, which only attributes FLOPs to modules and whose hooks
    refuse R1's torch.autograd.grad through a leaf input ("A leaf node was passed to _will_engine_execute_node
    but we are currently running autograd.grad()", torch 2.13): every FLOP counts under "Global"."""

    parents = {"Global"}

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return None


def flop_counter() -> FlopCounterMode:
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _GlobalOnly()
    return counter


class _BackwardCounting(SingleProcess):
    """One process whose backward passes count their FLOPs (an outer counter counts them too)."""

    backward_flops = 0

    def backward(self, phase, loss: torch.Tensor) -> None:
        with flop_counter() as counter:
            loss.backward()
        self.backward_flops += counter.get_total_flops()


class _NoStats:
    """Takes the losses' statistics and drops them: a reporter may read values back, which meta tensors lack."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def after_fades_nimg(config) -> int:
    """Images seen once the blur, the pose-conditioning swap and the neural rendering resolution stop changing."""
    loss, rendering = config.loss, config.rendering
    fades = [loss.blur_fade_kimg, loss.gpc_fade_kimg]
    if rendering.neural_rendering_resolution_final is not None:
        fades.append(rendering.neural_rendering_resolution_fade_kimg)
    return int(1000 * max(fades))


def state_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def checkpoint_bytes(trainer: Trainer) -> int:
    """trainer.pt's tensors: G, G_ema and D, and Adam's two moments of every parameter (created at its first step)."""
    moments = sum(2 * p.numel() * p.element_size() for opt in (trainer.opt_G, trainer.opt_D)
                  for group in opt.param_groups for p in group["params"])
    return state_bytes(trainer.G) + state_bytes(trainer.G_ema) + state_bytes(trainer.D) + moments


def count_phases(config) -> Counts:
    """FLOPs per image and reduced parameters of each phase, from the trainer's own code on the meta device."""
    config = copy.deepcopy(config)
    config.run.batch_size, config.run.micro_batch, config.run.compile = 1, None, False
    sync = _BackwardCounting()
    m = config.model
    with torch.device("meta"):
        trainer = Trainer(config, camera_pool=torch.zeros(1, m.c_dim), device="meta", sync=sync)
        trainer.loss.stats = _NoStats()
        schedule = Schedule.at(config, after_fades_nimg(config))
        real_img = torch.zeros(1, 3, m.image_resolution, m.image_resolution)
        real_c = torch.zeros(1, m.c_dim)
        phases = []
        for index, phase in enumerate(trainer.phases):
            sync.backward_flops = 0
            with flop_counter() as counter:
                trainer.accumulate_gradients(index, real_img, real_c, schedule)
            reduced = sum(p.numel() for p in phase.network.parameters() if p.grad is not None)
            phases.append(PhaseCost(phase.name, phase.interval, phase.low_precision, counter.get_total_flops(),
                                    sync.backward_flops, reduced))
    numel = lambda module: sum(p.numel() for p in module.parameters())
    buffers = sum(b.numel() for b in trainer.G.buffers() if b.is_floating_point())
    return Counts(phases, numel(trainer.G), numel(trainer.D), buffers, checkpoint_bytes(trainer))


def measured_step_from_gpu_check(path: str, precision: str) -> float:
    """seconds_per_iteration of bench/gpu_check.sh's ffhq512 worker-loop record (batch 4, one GPU) in `precision`."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("how") == "worker loop" and r.get("preset") == "ffhq512"
            and r.get("batch") == PER_GPU_BATCH and r.get("dtype") == precision and not r.get("compile")]
    if not rows:
        raise ValueError(f"{path}: no ffhq512 worker-loop record at batch {PER_GPU_BATCH} in {precision} "
                         "(bench/gpu_check.sh writes them)")
    return rows[-1]["seconds_per_iteration"]


# --- the tables -------------------------------------------------------------------------------------------

# (name, bytes per gradient value, reduced during the backward, checkpoints by run.checkpoint_minutes only)
VARIANTS = (("today", 4, False, False), ("bf16", 2, False, False), ("overlap", 4, True, False),
            ("both", 2, True, False), ("+ckpt", 2, True, True))


def fabrics(args) -> list[Fabric]:
    nvlink = Link(args.nvlink_gbytes * 1e9, args.nvlink_latency_us * 1e-6)
    return [Fabric(f"InfiniBand {args.ib_gbit:g} Gb/s per GPU", nvlink,
                   Link(args.ib_gbit * 1e9 / 8, args.ib_latency_us * 1e-6)),
            Fabric(f"Ethernet {args.ethernet_gbit:g} Gb/s per node", nvlink,
                   Link(args.ethernet_gbit * 1e9 / 8 / GPUS_PER_NODE, args.ethernet_latency_us * 1e-6))]


def checkpoint_every(step_s: float, gpus: int, config, *, by_time_only: bool = False) -> float:
    """Seconds of training between two checkpoints at `step_s` a step, with run.checkpoint_kimg as the --batch
    rule scales the preset's (`config`) to the batch of `gpus` (by_time_only: run.checkpoint_kimg ignored)."""
    checkpoint_kimg = dict(batch_rule(config, gpus * PER_GPU_BATCH))["run.checkpoint_kimg"]
    return checkpoint_interval_seconds(gpus * PER_GPU_BATCH / step_s,
                                       checkpoint_kimg=math.inf if by_time_only else checkpoint_kimg,
                                       checkpoint_minutes=config.run.checkpoint_minutes)


def upload_seconds(counts: Counts, args) -> float:
    return counts.checkpoint_bytes / (args.storage_write_mbytes * 1e6)


def print_assumptions(args, step_source: str) -> None:
    print(f"assumptions: {PER_GPU_BATCH} images per GPU and step, nodes of {GPUS_PER_NODE} GPUs; "
          f"step time {step_source}")
    print(f"  all-reduce: NVLink {args.nvlink_gbytes:g} GB/s each way per GPU (the H100's 900 GB/s counts both "
          f"directions), alpha {args.nvlink_latency_us:g} us; InfiniBand {args.ib_gbit:g} Gb/s per GPU (a NIC each), "
          f"alpha {args.ib_latency_us:g} us; Ethernet {args.ethernet_gbit:g} Gb/s per node (one NIC for "
          f"{GPUS_PER_NODE} GPUs), alpha {args.ethernet_latency_us:g} us; alpha per ring step")
    print(f"  data: {args.image_mb:g} MB per encoded 512x512 image (FFHQ's PNGs; raw RGB is {RAW_IMAGE_MB:.2f} MB), "
          f"object storage {args.storage_read_mbytes:g} MB/s per connection, one shard stream per GPU")
    print(f"  checkpoint: uploaded by rank 0 at {args.storage_write_mbytes:g} MB/s (one connection), "
          "every rank waiting")


def print_phases(counts: Counts, seconds: list[float], precision: str) -> None:
    print(f"\n{'phase':<6} {'every':>5} {'GFLOP/img':>9} {'backward':>8} {'runs in':>7} {'ms (4 img)':>10} "
          f"{'reduced params':>14} {'MB fp32':>8} {'MB bf16':>8}")
    for p, s in zip(counts.phases, seconds):
        dtype = "bf16" if precision == "bf16" and p.low_precision else "fp32"
        print(f"{p.name:<6} {p.interval:>5} {p.flops / 1e9:>9.1f} {p.backward_flops / p.flops:>8.0%} {dtype:>7} "
              f"{1000 * s:>10.1f} {p.reduced_params:>14,} {4 * p.reduced_params / 1e6:>8.1f} "
              f"{2 * p.reduced_params / 1e6:>8.1f}")
    mean = lambda values: per_step(values, [p.interval for p in counts.phases])
    print(f"{'a step':<6} {'':>5} {mean([p.flops for p in counts.phases]) / 1e9:>9.1f} {'':>8} {'':>7} "
          f"{1000 * mean(seconds):>10.1f} {'':>14} {mean([4 * p.reduced_params / 1e6 for p in counts.phases]):>8.1f} "
          f"{mean([2 * p.reduced_params / 1e6 for p in counts.phases]):>8.1f}")
    print(f"(FLOPs per image; 'a step' is the mean over the lazy intervals; G {counts.g_params:,} parameters, "
          f"D {counts.d_params:,}; a checkpoint {counts.checkpoint_bytes / 1e6:,.0f} MB)")


def print_recipes(counts: Counts, seconds: list[float], config, args) -> None:
    step_s = per_step(seconds, [p.interval for p in counts.phases])
    print(f"\nper GPU, at each recipe (all-reduce: exposed ms per step, today's fp32 gradients and bf16 ones)")
    print(f"{'batch':>5} {'GPUs':>4} {'step ms':>7} {'img/s':>6} | "
          + " | ".join(f"{f.name:>28}" for f in fabrics(args))
          + f" | {'data MB/s (of a connection)':>27} | {'checkpoint every, upload':>24}")
    for batch in RECIPES:
        gpus = batch // PER_GPU_BATCH
        cells = []
        for fabric in fabrics(args):
            fp32, bf16 = (1000 * step_communication(counts, seconds, gpus, fabric, grad_bytes=b, overlap=False)
                          for b in (4, 2))
            cells.append(f"{fp32:>7.2f} ({bf16:.2f}) ms")
        data = PER_GPU_BATCH / step_s * args.image_mb
        data_cell = f"{data:.1f} ({data / args.storage_read_mbytes:.0%})"
        checkpoint_cell = f"{checkpoint_every(step_s, gpus, config):.0f} s, {upload_seconds(counts, args):.1f} s"
        print(f"{batch:>5} {gpus:>4} {1000 * step_s:>7.1f} {PER_GPU_BATCH / step_s:>6.1f} | "
              + " | ".join(f"{c:>28}" for c in cells)
              + f" | {data_cell:>27} | {checkpoint_cell:>24}")


def print_efficiency(counts: Counts, seconds: list[float], config, args) -> None:
    step_s = per_step(seconds, [p.interval for p in counts.phases])
    print(f"\nefficiency = compute / (compute + exposed communication + checkpoint), per network. today: fp32 "
          f"gradients reduced after each backward, a checkpoint every {config.run.checkpoint_kimg:g} kimg x batch / "
          f"{config.run.batch_size} (the --batch rule) or "
          f"{config.run.checkpoint_minutes:g} min; bf16: bf16 gradients; overlap: reduced in buckets during the "
          f"backward; both; +ckpt: both, and checkpoints every {config.run.checkpoint_minutes:g} min only. "
          "limit: the larger cost today, as a share of the step")
    names = " ".join(f"{name:>7}" for name, *_ in VARIANTS) + f" {'limit':>15}"
    print(f"{'':>4} {'':>5} | " + " | ".join(f"{f.name:<{len(names)}}" for f in fabrics(args)))
    print(f"{'GPUs':>4} {'batch':>5} | " + " | ".join(names for _ in fabrics(args)))
    for gpus in GPU_COUNTS:
        cells = []
        for fabric in fabrics(args):
            values = []
            for name, grad_bytes, overlap, by_time_only in VARIANTS:
                comm = step_communication(counts, seconds, gpus, fabric, grad_bytes=grad_bytes, overlap=overlap)
                wall_s = step_s + comm  # a step's time between checkpoints; each takes its upload on top
                checkpoint = upload_seconds(counts, args) / checkpoint_every(wall_s, gpus, config,
                                                                             by_time_only=by_time_only) * wall_s
                values.append(efficiency(step_s, comm, checkpoint))
                if name == "today":
                    total = step_s + comm + checkpoint
                    limit = (f"all-reduce {comm / total:.0%}" if comm > checkpoint
                             else f"checkpoint {checkpoint / total:.0%}")
            cells.append(" ".join(f"{v:>7.1%}" for v in values) + f" {limit:>15}")
        print(f"{gpus:>4} {gpus * PER_GPU_BATCH:>5} | " + " | ".join(cells))


# --- the check on this machine: tiny on 2 gloo workers ------------------------------------------------------

def _gloo_worker(rank: int, world_size: int, port: int, sizes: list[int], repeats: int, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)  # as the workers of the check
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    medians = []
    for size in sizes:
        tensor = torch.ones(size)
        times = []
        for _ in range(repeats):
            dist.barrier()
            start = time.perf_counter()
            dist.all_reduce(tensor)
            times.append(time.perf_counter() - start)
        medians.append(statistics.median(times))
    if rank == 0:
        Path(out).write_text(json.dumps(medians))
    dist.destroy_process_group()


def measure_gloo(world_size: int, large_floats: int, repeats: int = 30) -> Link:
    """Median times of a gloo all-reduce of one float (the latency) and of `large_floats` floats (the bandwidth)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as scratch:
        out = os.path.join(scratch, "gloo.json")
        mp.spawn(_gloo_worker, args=(world_size, port, [1, large_floats], repeats, out), nprocs=world_size)
        small_s, large_s = json.loads(Path(out).read_text())
    steps = 2 * (world_size - 1)
    bandwidth = steps / world_size * 4 * large_floats / max(large_s - small_s, 1e-9)
    return Link(bandwidth, small_s / steps)


def measure_tiny_steps(steps: int) -> tuple[float, float, float]:
    """Seconds per step of tiny (ddp, 4 images and one thread per worker) by bench/scaling.py: 1 worker alone; two
    1-worker runs at once (every core busy, no collective: the compute of 2 workers on this CPU); 2 workers."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from scaling import measure

    def run(workers: int) -> float:
        args = argparse.Namespace(preset="tiny", batch=PER_GPU_BATCH * workers, device="cpu", precision="fp32",
                                  threads=1, steps=steps, warmup=2)
        return measure(args, "ddp", 0, workers)["seconds_per_step"]

    alone = run(1)
    with ThreadPoolExecutor(2) as pool:
        side_by_side = statistics.mean(pool.map(run, [1, 1]))
    return alone, side_by_side, run(2)


def check_tiny(args) -> None:
    """The model's formula with this CPU's figures, each worker a core as each GPU its own device."""
    counts = count_phases(get_preset("tiny"))
    if args.gloo_gbytes is not None and args.gloo_latency_us is not None:
        gloo, how = Link(args.gloo_gbytes * 1e9, args.gloo_latency_us * 1e-6), "given"
    else:
        largest = max(p.reduced_params for p in counts.phases)
        gloo, how = measure_gloo(2, largest), f"measured by all-reduces of 1 and {largest:,} floats"
    alone, side_by_side, two = args.tiny_step_s or measure_tiny_steps(args.tiny_steps)
    fabric = Fabric("gloo", gloo, gloo)
    comm = step_communication(counts, shared_out(counts.phases, alone), 2, fabric, grad_bytes=4, overlap=False,
                              per_node=2)
    megabytes = per_step([4 * p.reduced_params / 1e6 for p in counts.phases], [p.interval for p in counts.phases])
    print(f"\ntiny on 2 gloo workers, {PER_GPU_BATCH} images and 1 thread each (`python bench/scaling.py --preset tiny "
          f"--backends ddp --threads 1 --batch {PER_GPU_BATCH} --workers 1`, then --batch {2 * PER_GPU_BATCH} "
          f"--workers 2)")
    print(f"  gloo {how}: {gloo.bandwidth / 1e9:.2f} GB/s, alpha {gloo.latency * 1e6:.0f} us per ring step; "
          f"{megabytes:.2f} MB all-reduced per step")
    print(f"  s/step: 1 worker {alone:.3f}; two 1-worker runs at once (no collective) {side_by_side:.3f}; "
          f"2 workers measured {two:.3f}, predicted {alone + comm:.3f} from 1 worker, {side_by_side + comm:.3f} "
          f"from the two at once (+ {1000 * comm:.1f} ms of all-reduce)")
    print(f"  efficiency on 2 workers: measured {alone / two:.1%}; predicted {efficiency(alone, comm):.1%} with the "
          f"compute of 1 worker (the GPU model), {alone / (side_by_side + comm):.1%} with the compute of 2 at once")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="ffhq512")
    step = parser.add_argument_group("the step time of one GPU at batch 4 (default: FLOPs / (MFU x peak))")
    step.add_argument("--measured-step-s", type=float, help="a measured step, seconds (whole lazy periods)")
    step.add_argument("--gpu-check", metavar="JSONL",
                      help="bench/gpu_check.sh's gpu_check.jsonl: its ffhq512 loop step")
    step.add_argument("--precision", choices=("bf16", "fp32"), default="bf16",
                      help="run.precision (default bf16: the fastest compute, so the largest share for "
                           "communication): Gmain and Dmain at the bf16 peak")
    step.add_argument("--mfu", type=float, default=0.35, help="assumed model FLOPs utilization (default 0.35)")
    step.add_argument("--peak-bf16-tflops", type=float, default=989.5, help="H100 SXM, dense (default 989.5)")
    step.add_argument("--peak-fp32-tflops", type=float, default=494.7,
                      help="float32 phases: the H100 SXM's dense TF32, which cuDNN uses for float32 convolutions "
                           "by default (default 494.7)")
    net = parser.add_argument_group("the network")
    net.add_argument("--nvlink-gbytes", type=float, default=450.0, help="GB/s each way per GPU (default 450)")
    net.add_argument("--nvlink-latency-us", type=float, default=5.0)
    net.add_argument("--ib-gbit", type=float, default=400.0, help="InfiniBand Gb/s per GPU (default 400)")
    net.add_argument("--ib-latency-us", type=float, default=5.0)
    net.add_argument("--ethernet-gbit", type=float, default=100.0, help="Ethernet Gb/s per node (default 100)")
    net.add_argument("--ethernet-latency-us", type=float, default=25.0)
    store = parser.add_argument_group("object storage and data")
    store.add_argument("--image-mb", type=float, default=0.5,
                       help="MB of an encoded 512x512 image (default 0.5: FFHQ's PNGs)")
    store.add_argument("--storage-read-mbytes", type=float, default=100.0, help="MB/s per connection (default 100)")
    store.add_argument("--storage-write-mbytes", type=float, default=100.0, help="MB/s of one upload (default 100)")
    tiny = parser.add_argument_group("the check on this machine")
    tiny.add_argument("--check-tiny", action="store_true", help="tiny on 2 gloo workers: predicted vs measured")
    tiny.add_argument("--tiny-step-s", type=float, nargs=3, metavar=("ALONE", "SIDE_BY_SIDE", "TWO"),
                      help="s/step of tiny: 1 worker, two 1-worker runs at once, 2 workers (--check-tiny prints "
                           "them), instead of running them")
    tiny.add_argument("--tiny-steps", type=int, default=16, help="timed steps of each run (default 16)")
    tiny.add_argument("--gloo-gbytes", type=float, help="gloo bandwidth, GB/s (with --gloo-latency-us: not measured)")
    tiny.add_argument("--gloo-latency-us", type=float, help="gloo latency per ring step, microseconds")
    args = parser.parse_args(argv)

    config = get_preset(args.preset)
    counts = count_phases(config)
    peak_low = args.peak_bf16_tflops if args.precision == "bf16" else args.peak_fp32_tflops
    seconds = phase_seconds(counts.phases, batch=PER_GPU_BATCH, mfu=args.mfu, peak_low=peak_low * 1e12,
                            peak_fp32=args.peak_fp32_tflops * 1e12)
    source = (f"FLOPs / (MFU {args.mfu:g} x peak), {args.precision}: bf16 phases at {args.peak_bf16_tflops:g} "
              f"TFLOP/s, float32 ones at {args.peak_fp32_tflops:g} (TF32)")
    measured = measured_step_from_gpu_check(args.gpu_check, args.precision) if args.gpu_check else args.measured_step_s
    if measured is not None:
        seconds = shared_out(counts.phases, measured, weights=seconds)
        source = f"measured, {measured:.3f} s, shared over the phases as " + source
    print(f"{args.preset}: FLOPs counted by FlopCounterMode on the meta device, batch 1, after the fades")
    print_assumptions(args, source)
    print_phases(counts, seconds, args.precision)
    print_recipes(counts, seconds, config, args)
    print_efficiency(counts, seconds, config, args)
    if args.check_tiny:
        check_tiny(args)


if __name__ == "__main__":
    main()
