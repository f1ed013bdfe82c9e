"""Training-step throughput, memory, MFU and profile for each preset this machine can run.

    python bench/train_step.py                        # tiny on CPU; ffhq512 too when a GPU is present
    python bench/train_step.py --presets tiny ffhq512 --steps 5 --dtype bf16
    python bench/train_step.py --profile              # top operators and time per phase of one iteration
    python bench/train_step.py --loop --presets ffhq512 --set run.batch_size=4   # through the worker loop, on real shards
    python bench/train_step.py --presets --g-forward ffhq512        # only the G forward time at batch 1
    python bench/train_step.py --compile --threads 1  # run.compile, one torch thread
    python bench/train_step.py --syncs --set augment.kind=ada --set augment.p=0.2  # host syncs per step (GPU)
    python bench/train_step.py --presets ffhq512 --set run.batch_size=4 --phases --dtype bf16   # per phase

The default rows time `Trainer.train_step` on a resident synthetic batch. `--loop` times the single-process
worker loop (`eg3d.training.loop.train`: shard reader, trainer, logging) on a local shard folder it writes
first (synthetic 64 px renders, upscaled to the preset's resolution), reading the loop's own images/s of
its last log interval, which leaves out the first interval (warm-up) and the final snapshot and checkpoint.
Both run whole lazy-regularization periods, so every phase weighs as in training.

`--profile` runs one iteration with every phase due (step 0) under torch.profiler (CPU activity, and CUDA
on a GPU) and prints the top operators by self time, then the time per phase from the trainer's
`record_function` labels (eg3d.training.trainer.PROFILER_LABEL): each phase's forward and backward passes,
its optimizer step, the EMA update. Under a profiler the trainer synchronizes after each phase (and only
then), so on a GPU the CPU column of a phase's optimizer step includes waiting for the phase's kernels; the
CUDA column is the kernels' own time.

`--syncs` counts the times an ordinary step (the trainer alone: no log, checkpoint or snapshot) makes the
host wait for the GPU, over whole lazy periods, with torch.cuda.set_sync_debug_mode("warn"), which warns at
every synchronizing CUDA call (a read of a device value, a copy from pageable host memory, a synchronize).
With ADA on, its adjustment reads its signal once every augment.interval steps (the expected count is
printed beside). On a CPU there is nothing to wait for: the steps run and the count is n/a
(tests/test_host_syncs.py counts there the calls that would wait on a GPU).

`--phases` runs iterations with every phase due and gives each phase (and the rest of the step: buffers, EMA,
bookkeeping) a row: milliseconds per run (synchronized before and after it), peak GPU memory, host syncs per run
(a second pass under the sync debug mode) and MFU from the phase's own FLOPs (FlopCounterMode, as
bench/scaling_model.py counts them) over the peak of the precision it runs in (Greg and Dreg always float32;
the scaling model assumes TF32 for those, this uses the float32 peak of the table below, so cuDNN's TF32
convolutions can read above 100%). The paragraph below is the MFU of the default and --loop rows.

MFU (model FLOPs utilization) = training FLOPs per image x images/s / the device's peak FLOP/s, where

    training FLOPs per image = 4 G + 8 D
        Gmain: G forward and backward (2x forward)                                    3 G
               D forward and backward to its input only (D's weights are frozen)      2 D
        Dmain: G forward without gradients                                            1 G
               D forward and backward (weights and activations) on a fake and a real  2 x 3 D

with G and D the forward FLOPs per image of eg3d.summary (matmuls and convolutions, plus the tri-plane
lookups) at the neural rendering resolution the trainer is at. The lazy regularizers (Greg, Dreg) are
not counted though their time is in images/s, so the MFU slightly understates what the device computes.
The peak is --peak-tflops, else the datasheet figure for the device and --dtype from PEAK_TFLOPS (bf16:
dense tensor cores; fp32: without tensor cores, though cuDNN runs fp32 convolutions on TF32 tensor cores
by default, so an fp32 MFU can pass 100%); on a CPU, or an unknown GPU, it is n/a without the flag.

With --compile (run.compile), the seconds spent in phases that compiled graphs (the warm-up's first step)
are a column of their own and are not part of the iteration time. torch.compile keeps compiled kernels in
its cache folder (TORCHINDUCTOR_CACHE_DIR), so a second run compiles much faster than the first.
"""

import argparse
import copy
import json
import resource
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from eg3d.config import apply_overrides
from eg3d.config.presets import get_preset
from eg3d.networks import camera
from eg3d.networks.generator import TriPlaneGenerator
from eg3d.summary import flops_per_image
from eg3d.training.threads import flush_denormals, set_threads
from eg3d.training.trainer import PROFILER_LABEL, Trainer

# Peak dense TFLOP/s (bf16 on tensor cores, fp32 without), from NVIDIA's datasheets (the sparse figures
# there are twice these). Matched in order as substrings of torch.cuda.get_device_name().
PEAK_TFLOPS = (
    ("H200 NVL", {"bf16": 836.0, "fp32": 60.0}),
    ("H200", {"bf16": 989.5, "fp32": 67.0}),  # H200 SXM
    ("H100 PCIe", {"bf16": 756.0, "fp32": 51.0}),
    ("H100 NVL", {"bf16": 835.0, "fp32": 60.0}),
    ("H100", {"bf16": 989.5, "fp32": 67.0}),  # H100 SXM ("NVIDIA H100 80GB HBM3")
    ("A100", {"bf16": 312.0, "fp32": 19.5}),
    ("L4", {"bf16": 121.0, "fp32": 30.3}),
    # AWS's A10G has no NVIDIA datasheet: these are the A10's (the same GA102 chip; AWS's part may clock
    # differently), so pass --peak-tflops for an exact figure.
    ("A10G", {"bf16": 125.0, "fp32": 31.2}),
)


def peak_tflops(device: torch.device, dtype: str, override: float | None) -> float | None:
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peaks[dtype] for key, peaks in PEAK_TFLOPS if key in name), None)


def training_flops_per_image(config, neural_rendering_resolution: int) -> float:
    """4 G + 8 D (the module docstring says why) at the given neural rendering resolution."""
    config = copy.deepcopy(config)
    config.rendering.neural_rendering_resolution_final = neural_rendering_resolution
    flops = flops_per_image(config)
    return 4 * flops["G_forward"] + 8 * flops["D_forward"]


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


def bench_config(name: str, device: torch.device, *, dtype: str, overrides: list[str], compile: bool = False):
    config = apply_overrides(get_preset(name), overrides)
    config.run.device = device.type
    config.run.precision = dtype
    config.run.compile = compile
    return config


def make_trainer(config, device: torch.device) -> Trainer:
    return Trainer(config, camera_pool=fake_batch(config, 64, device)[1], device=device)


def lazy_period_steps(config, steps: int) -> int:
    """`steps` rounded to whole lazy-regularization periods (at least one), as the trainer's phases run."""
    loss = config.loss
    period = max(loss.r1_interval, loss.density_reg_interval if loss.density_reg > 0 else 1)
    return max(steps // period, 1) * period


def bench_training(config, device: torch.device, steps: int, warmup: int) -> dict:
    trainer = make_trainer(config, device)
    img, c = fake_batch(config, config.run.batch_size, device)
    for _ in range(warmup):
        trainer.train_step(img, c)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    steps = lazy_period_steps(config, steps)
    trainer.step_index = 0
    compile_before = trainer.compile_seconds  # a phase compiling in the timed steps is counted apart
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(img, c)
    synchronize(device)
    seconds = time.perf_counter() - start - (trainer.compile_seconds - compile_before)
    return result_row(config, trainer, device, "train_step", steps * config.run.batch_size / seconds, steps)


def count_syncs(config, device: torch.device, steps: int, warmup: int) -> dict:
    """Host synchronizations per ordinary step of `Trainer.train_step` (CUDA's sync debug mode warns at each),
    over `steps` rounded to whole lazy periods after `warmup` steps; None on a CPU."""
    trainer = make_trainer(config, device)
    img, c = fake_batch(config, config.run.batch_size, device)
    for _ in range(warmup):
        trainer.train_step(img, c)
    steps = lazy_period_steps(config, steps)
    trainer.step_index = 0  # whole periods: every phase as often as in training
    synchronize(device)
    syncs = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(steps):
                trainer.train_step(img, c)
        finally:
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode("default")
                syncs = sum("synchroniz" in str(warning.message) for warning in caught)
    augment = config.augment
    adjustments = sum(step % augment.interval == 0 for step in range(1, steps + 1)) if augment.kind == "ada" else 0
    return {"preset": config.preset, "how": "syncs", "device": device_name(device), "dtype": config.run.precision,
            "batch": config.run.batch_size, "steps": steps, "augment": augment.kind,
            "syncs_per_step": None if syncs is None else syncs / steps, "expected_per_step": adjustments / steps}


def print_syncs(row: dict) -> None:
    found = "n/a (a CPU waits for nothing)" if row["syncs_per_step"] is None else f"{row['syncs_per_step']:.2f}"
    print(f"{row['preset']} {row['dtype']} batch {row['batch']}, augment {row['augment']}: host syncs per ordinary "
          f"step {found} over {row['steps']} steps (ADA's adjustments alone: {row['expected_per_step']:.2f}), "
          f"{row['device']}")


def phase_costs(config) -> dict:
    """{phase name: (FLOPs per image, whether it runs in bf16 under run.precision bf16)} of each phase's forward
    and backward passes, counted by FlopCounterMode on the meta device after the fades (bench/scaling_model.py's
    count_phases), as many at any precision."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from scaling_model import count_phases

    config = copy.deepcopy(config)
    config.run.precision = "fp32"  # autocast has no meta device
    return {phase.name: (phase.flops, phase.low_precision) for phase in count_phases(config).phases}


def measure_phases(config, device: torch.device, steps: int, warmup: int, peak_override: float | None) -> list[dict]:
    """Per phase of an iteration with every phase due (Gmain, Greg, Dmain, Dreg, as at step 0), then the rest
    of the step (buffers, EMA, bookkeeping): milliseconds per run (synchronized before and after, so each is
    the phase's own), peak memory, host syncs per run (a second pass without the synchronizes, CUDA's sync
    debug mode) and MFU = the phase's FLOPs per image x batch / its time / the device's peak for the precision
    the phase runs in (the bf16 peak for Gmain and Dmain under bf16; the float32 one, without tensor cores, for
    Greg and Dreg, which always run in float32, and for every phase at fp32)."""
    trainer = make_trainer(config, device)
    img, c = fake_batch(config, config.run.batch_size, device)
    for _ in range(warmup):  # every phase due in each, so that a compiled run compiles them all here
        trainer.step_index = 0
        trainer.train_step(img, c)
    seconds, peaks = time_phases(trainer, img, c, steps)
    syncs = count_phase_syncs(trainer, img, c, steps) if device.type == "cuda" else None  # a CPU waits for nothing
    costs = phase_costs(config)
    rows = []
    for name in [phase.name for phase in trainer.phases] + ["rest"]:
        ms = 1000 * seconds[name] / steps
        flops, low_precision = costs.get(name, (0.0, False))
        phase_flops = flops * config.run.batch_size
        # Greg and Dreg run in float32 whatever run.precision: their peak is the float32 one
        dtype = "bf16" if config.run.precision == "bf16" and low_precision else "fp32"
        peak = peak_tflops(device, dtype, peak_override)
        rows.append({"preset": config.preset, "how": "phase", "phase": name, "device": device_name(device),
                     "dtype": config.run.precision, "compile": config.run.compile, "batch": config.run.batch_size,
                     "steps": steps, "ms": ms, "peak_memory_mib": peaks[name] / 2**20 if name in peaks else None,
                     "syncs": None if syncs is None else syncs.get(name, 0) / steps, "gflops": phase_flops / 1e9,
                     "mfu": phase_flops / (ms / 1000) / (peak * 1e12) if peak and phase_flops else None})
    return rows


def each_phase(trainer: Trainer, around) -> None:
    """Wrap `trainer._run_phase` (one phase of train_step) in `around(name, run)`; `None` unwraps it."""
    if around is None:
        del trainer._run_phase
        return
    names, run_phase = [phase.name for phase in trainer.phases], trainer._run_phase
    trainer._run_phase = lambda phase_index, *args: around(names[phase_index],
                                                            lambda: run_phase(phase_index, *args))


def time_phases(trainer: Trainer, img, c, steps: int) -> tuple[dict, dict]:
    """({phase or "rest": seconds over `steps` iterations with every phase due}, {phase: peak GPU bytes})."""
    device, seconds, peaks = trainer.device, {}, {}

    def timed(name, run):
        synchronize(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        finite = run()
        synchronize(device)
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start
        if device.type == "cuda":  # a CPU has only the process's peak RSS, no peak per phase
            peaks[name] = max(peaks.get(name, 0), peak_memory_bytes(device))
        return finite

    each_phase(trainer, timed)
    for _ in range(steps):
        trainer.step_index = 0
        in_phases = sum(seconds.values()) - seconds.get("rest", 0.0)
        synchronize(device)
        start = time.perf_counter()
        trainer.train_step(img, c)
        synchronize(device)
        step_phases = sum(seconds.values()) - seconds.get("rest", 0.0) - in_phases
        seconds["rest"] = seconds.get("rest", 0.0) + time.perf_counter() - start - step_phases
    each_phase(trainer, None)
    return seconds, peaks


def count_phase_syncs(trainer: Trainer, img, c, steps: int) -> dict:
    """{phase or "rest": host syncs over `steps` iterations with every phase due}, by CUDA's sync debug mode."""
    syncs = {}

    def counted(name, run):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            finite = run()
        syncs[name] = syncs.get(name, 0) + sum("synchroniz" in str(warning.message) for warning in caught)
        return finite

    each_phase(trainer, counted)
    for _ in range(steps):
        trainer.step_index = 0
        synchronize(trainer.device)
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:  # what the phases' own catches leave
                warnings.simplefilter("always")
                trainer.train_step(img, c)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        syncs["rest"] = syncs.get("rest", 0) + sum("synchroniz" in str(warning.message) for warning in caught)
    each_phase(trainer, None)
    return syncs


def print_phases(rows: list[dict]) -> None:
    first = rows[0]
    print(f"{first['preset']} {first['dtype']}{' compiled' if first['compile'] else ''}, batch {first['batch']}, "
          f"every phase due, {first['steps']} iterations, {first['device']}")
    print(f"{'phase':<6} {'ms':>9} {'peak MiB':>9} {'syncs':>6} {'GFLOP':>8} {'MFU':>6}")
    for r in rows:
        peak = "" if r["peak_memory_mib"] is None else f"{r['peak_memory_mib']:.0f}"
        syncs = "n/a" if r["syncs"] is None else f"{r['syncs']:.1f}"
        mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        print(f"{r['phase']:<6} {r['ms']:>9.1f} {peak:>9} {syncs:>6} {r['gflops']:>8.0f} {mfu:>6}")


def bench_loop(config, device: torch.device, steps: int, warmup: int) -> dict:
    """Images/s of the worker loop's last log interval: `steps` (whole lazy periods) after `warmup` such
    intervals (0: the one interval timed includes the first step)."""
    from eg3d.training.loop import train

    steps = lazy_period_steps(config, steps)
    batch = config.run.batch_size
    config = copy.deepcopy(config)
    config.data.backend = "pytorch"
    config.metrics.num_generated = 0  # no quality measurement at the final snapshot
    config.run.log_kimg = steps * batch / 1000
    config.run.total_kimg = (warmup + 1) * steps * batch / 1000
    config.run.snapshot_kimg = config.run.checkpoint_kimg = 10 * config.run.total_kimg  # only at the end
    records = []
    root = Path(tempfile.mkdtemp(prefix="eg3d-bench-loop-"))
    try:
        manifest = write_shards(root, config.model.image_resolution, count=max(4 * batch, 32))
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        trainer = train(config, manifest_url=manifest, run_url=root / "run", device=device,
                        report=records.append, log=lambda line: None)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return result_row(config, trainer, device, "worker loop", records[-1]["images_per_second"], steps)


def write_shards(root: Path, resolution: int, count: int) -> str:
    """A local shard folder of `count` synthetic images (bench/data.py's datasets); its manifest path."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from data import make_dataset

    from dataloading.build import build

    folder, _ = make_dataset(root, resolution, count, seed=0, workers=2)
    build(str(folder), str(root / "shards"), workers=1, progress=False)
    return str(root / "shards" / "manifest.json")


def result_row(config, trainer: Trainer, device: torch.device, how: str, images_per_second: float,
               steps: int) -> dict:
    return {"preset": config.preset, "how": how, "device": device_name(device), "dtype": config.run.precision,
            "batch": config.run.batch_size, "steps": steps, "images_per_second": images_per_second,
            "seconds_per_iteration": config.run.batch_size / images_per_second,
            "peak_memory_mib": peak_memory_bytes(device) / 2**20, "compile": config.run.compile,
            "compile_seconds": trainer.compile_seconds,
            "neural_rendering_resolution": trainer.schedule.neural_rendering_resolution}


def with_mfu(row: dict, config, device: torch.device, peak_override: float | None) -> dict:
    flops = training_flops_per_image(config, row["neural_rendering_resolution"])
    peak = peak_tflops(device, config.run.precision, peak_override)
    return {**row, "training_gflops_per_image": flops / 1e9, "peak_tflops": peak,
            "mfu": flops * row["images_per_second"] / (peak * 1e12) if peak else None}


@torch.no_grad()
def bench_g_forward(name: str, device: torch.device, dtype: str, repeats: int = 3) -> dict:
    config = get_preset(name)
    G = TriPlaneGenerator(config.model, config.rendering).to(device).eval()
    z = torch.randn(1, config.model.z_dim, device=device)
    c = fake_batch(config, 1, device)[1]
    resolution = config.rendering.neural_rendering_resolution_initial
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16")
    with autocast:
        G(z, c, neural_rendering_resolution=resolution)
        synchronize(device)
        start = time.perf_counter()
        for _ in range(repeats):
            G(z, c, neural_rendering_resolution=resolution)
        synchronize(device)
    return {"preset": name, "how": "G forward, batch 1", "device": device_name(device), "dtype": dtype,
            "neural_rendering_resolution": resolution, "seconds": (time.perf_counter() - start) / repeats}


def profile_iteration(config, device: torch.device, warmup: int, top: int = 25) -> None:
    """Print the top operators of one iteration with every phase due, and the time per phase."""
    from torch.profiler import ProfilerActivity, profile

    trainer = make_trainer(config, device)
    img, c = fake_batch(config, config.run.batch_size, device)
    for _ in range(warmup):
        trainer.train_step(img, c)
    trainer.step_index = 0  # every lazy regularizer is due
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    synchronize(device)
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        trainer.train_step(img, c)
        synchronize(device)
        seconds = time.perf_counter() - start
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = prof.key_averages()
    print(f"\n{config.preset} ({config.run.precision}, batch {config.run.batch_size}, {device_name(device)}): "
          f"one iteration with every phase, {seconds * 1000:.1f} ms; top {top} operators by {sort}")
    print(events.table(sort_by=sort, row_limit=top))
    print(phase_table(events, seconds, cuda=device.type == "cuda"))


def phase_table(events, iteration_seconds: float, *, cuda: bool) -> str:
    """The trainer's labelled regions: CPU (and CUDA) time, in ms and as a share of the iteration."""
    cpu, gpu = {}, {}
    for event in events:  # a label can appear as a CPU and as a GPU-side annotation row: keep the larger
        if event.key.startswith(PROFILER_LABEL):
            name = event.key[len(PROFILER_LABEL):]
            cpu[name] = max(cpu.get(name, 0.0), event.cpu_time_total / 1000)
            gpu[name] = max(gpu.get(name, 0.0), event.device_time_total / 1000)
    lines = [f"{'region':<20} {'CPU ms':>9} {'% iter':>7}" + (f" {'CUDA ms':>9}" if cuda else "")]
    for name in cpu:  # in the order the trainer runs them
        lines.append(f"{name:<20} {cpu[name]:>9.1f} {100 * cpu[name] / (iteration_seconds * 1000):>6.1f}%"
                     + (f" {gpu[name]:>9.1f}" if cuda else ""))
    total = sum(cpu.values())
    lines.append(f"{'(labelled, total)':<20} {total:>9.1f} {100 * total / (iteration_seconds * 1000):>6.1f}%")
    return "\n".join(lines)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def print_rows(rows: list[dict]) -> None:
    print(f"{'preset':<10} {'how':<12} {'dtype':<5} {'compile':>7} {'batch':>5} {'img/s':>8} {'s/iter':>8} "
          f"{'compile s':>9} {'peak MiB':>9} {'GFLOP/img':>9} {'MFU':>6}")
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        print(f"{r['preset']:<10} {r['how']:<12} {r['dtype']:<5} {'yes' if r['compile'] else 'no':>7} {r['batch']:>5} "
              f"{r['images_per_second']:>8.2f} {r['seconds_per_iteration']:>8.3f} {r['compile_seconds']:>9.1f} "
              f"{r['peak_memory_mib']:>9.0f} {r['training_gflops_per_image']:>9.1f} {mfu:>6}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="*", default=None, help="default: tiny, and ffhq512 on a GPU")
    parser.add_argument("--steps", type=int, default=16, help="timed iterations (rounded to lazy periods, 16)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations (--loop: log intervals)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override a config field of every preset, e.g. run.batch_size=4")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                        help="run.precision: bf16 runs the forward passes under bfloat16 autocast")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (default: table)")
    parser.add_argument("--profile", action="store_true", help="profile one iteration of each preset")
    parser.add_argument("--loop", action="store_true", help="time the worker loop on a local shard folder")
    parser.add_argument("--syncs", action="store_true", help="count the host syncs of ordinary steps (CUDA)")
    parser.add_argument("--phases", action="store_true",
                        help="per phase: time, peak memory, host syncs and MFU, every phase due")
    parser.add_argument("--g-forward", default="ffhq512", metavar="PRESET|none",
                        help="time G's forward pass at batch 1 for this preset (default ffhq512)")
    parser.add_argument("--json", default=None, metavar="PATH", help="append each result as a JSON line")
    parser.add_argument("--compile", action="store_true", help="run.compile: torch.compile G and D")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: the cores this process may run on)")
    args = parser.parse_args()
    flush_denormals()  # as a CPU worker does (cluster.launch)
    set_threads(requested=args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    presets = args.presets if args.presets is not None else (["tiny", "ffhq512"] if device.type == "cuda" else ["tiny"])
    print(f"device: {device_name(device)}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"dtype {args.dtype}")
    rows, sync_rows = [], []
    for name in presets:
        try:
            config = bench_config(name, device, dtype=args.dtype, overrides=args.overrides, compile=args.compile)
        except ValueError as error:
            parser.error(str(error))
        if args.profile:
            profile_iteration(config, device, args.warmup)
        elif args.phases:
            phase_rows = measure_phases(config, device, args.steps, args.warmup, args.peak_tflops)
            print_phases(phase_rows)
            sync_rows += phase_rows
        elif args.syncs:
            sync_rows.append(count_syncs(config, device, args.steps, args.warmup))
            print_syncs(sync_rows[-1])
        elif args.loop:
            rows.append(with_mfu(bench_loop(config, device, args.steps, args.warmup), config, device,
                                 args.peak_tflops))
        else:
            rows.append(with_mfu(bench_training(config, device, args.steps, args.warmup), config, device,
                                 args.peak_tflops))
    if rows:
        print_rows(rows)
    if args.g_forward != "none":
        rows.append(bench_g_forward(args.g_forward, device, args.dtype))
        print(f"{args.g_forward} G forward, batch 1, neural rendering {rows[-1]['neural_rendering_resolution']}, "
              f"{args.dtype}: {rows[-1]['seconds']:.3f} s")
    if args.json:
        with open(args.json, "a") as file:
            file.writelines(json.dumps(row) + "\n" for row in rows + sync_rows)


if __name__ == "__main__":
    main()
