"""Training-step throughput and memory for each preset this machine can run.

    python bench/train_step.py                 # tiny on CPU; ffhq512 too when a GPU is present
    python bench/train_step.py --presets tiny ffhq512 --steps 5
    python bench/train_step.py --compile --threads 1   # run.compile, one torch thread

Prints one table: images per second for a full training iteration (every phase, lazy regularizers
amortized by running whole intervals), peak memory, and the G forward time at batch 1 for ffhq512.
With --compile, the seconds spent in phases that compiled graphs (the warm-up's first step) are a
column of their own and are not part of the iteration time. torch.compile keeps compiled kernels in
its cache folder (TORCHINDUCTOR_CACHE_DIR), so a second run compiles much faster than the first.
"""

import argparse
import resource
import time

import torch

from eg3d.config.presets import get_preset
from eg3d.networks import camera
from eg3d.networks.generator import TriPlaneGenerator
from eg3d.training.threads import set_threads
from eg3d.training.trainer import Trainer


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # process peak RSS (Linux: KiB)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fake_batch(config, n: int, device: torch.device):
    res = config.model.image_resolution
    yaw = torch.pi / 2 + (torch.rand(n) - 0.5)
    c = camera.orbit_camera(yaw, torch.full_like(yaw, torch.pi / 2))
    return torch.rand(n, 3, res, res, device=device) * 2 - 1, c.to(device)


def bench_training(name: str, device: torch.device, steps: int, warmup: int, compile: bool = False) -> dict:
    config = get_preset(name)
    config.run.device = device.type
    config.run.compile = compile
    pool = fake_batch(config, 64, device)[1]
    trainer = Trainer(config, camera_pool=pool, device=device)
    img, c = fake_batch(config, config.run.batch_size, device)
    for _ in range(warmup):
        trainer.train_step(img, c)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    # A whole number of lazy-regularization periods, so each phase is weighted by how often it runs.
    period = max(p.interval for p in trainer.phases)
    steps = max(steps // period, 1) * period
    trainer.step_index = 0
    compile_before = trainer.compile_seconds  # a phase compiling in the timed steps is counted apart
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(img, c)
    synchronize(device)
    seconds = time.perf_counter() - start - (trainer.compile_seconds - compile_before)
    return {"preset": name, "device": device.type, "batch": config.run.batch_size, "compile": compile,
            "images_per_second": steps * config.run.batch_size / seconds, "seconds_per_iteration": seconds / steps,
            "compile_seconds": trainer.compile_seconds,
            "peak_memory_mib": peak_memory_bytes(device) / 2**20, "lazy_period": period, "steps": steps}


@torch.no_grad()
def bench_g_forward(device: torch.device, repeats: int = 3) -> float:
    config = get_preset("ffhq512")
    G = TriPlaneGenerator(config.model, config.rendering).to(device).eval()
    z = torch.randn(1, config.model.z_dim, device=device)
    c = fake_batch(config, 1, device)[1]
    G(z, c, neural_rendering_resolution=64)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        G(z, c, neural_rendering_resolution=64)
    synchronize(device)
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=None)
    parser.add_argument("--steps", type=int, default=16, help="timed iterations (tiny's lazy period is 16)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="run.compile: torch.compile G and D")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: the cores this process may run on)")
    parser.add_argument("--no-g-forward", action="store_true", help="skip the ffhq512 G forward timing")
    args = parser.parse_args()
    set_threads(requested=args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    presets = args.presets or (["tiny", "ffhq512"] if device.type == "cuda" else ["tiny"])
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"{'preset':<10} {'device':<6} {'batch':>5} {'compile':>7} {'img/s':>8} {'s/iter':>8} {'compile s':>9} "
          f"{'peak MiB':>9}")
    for name in presets:
        r = bench_training(name, device, args.steps, args.warmup, compile=args.compile)
        print(f"{r['preset']:<10} {r['device']:<6} {r['batch']:>5} {'yes' if r['compile'] else 'no':>7} "
              f"{r['images_per_second']:>8.2f} {r['seconds_per_iteration']:>8.3f} {r['compile_seconds']:>9.1f} "
              f"{r['peak_memory_mib']:>9.0f}")
    if not args.no_g_forward:
        print(f"ffhq512 G forward, batch 1, neural rendering 64: {bench_g_forward(device):.3f} s")


if __name__ == "__main__":
    main()
