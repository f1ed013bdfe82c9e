"""What telemetry costs a training step: each part timed on its own, and the sum as a share of the step.

    python bench/telemetry.py                    # tiny on CPU (ffhq512 too when a GPU is present)
    python bench/telemetry.py --presets tiny --steps 8

Per step, the trainer times each phase and the data wait and takes one gradient norm per phase; per log
interval, the loop samples memory, gathers the statistics and updates the Prometheus exporter, which
Prometheus then scrapes (every 5 s in monitoring/prometheus/local.yml). Each part is timed many times
in isolation, on the trainer's real gradients and a real log record; the per-interval parts are spread
over the steps of one log interval of the preset. A before/after comparison of whole steps cannot
resolve 1% on this machine (steps vary by several percent), so the table also shows that comparison
only as a cross-check. The quality measurement at snapshots is reported separately: it is work the
run asks for, not overhead, and its cost is set by metrics.num_generated.
"""

import argparse
import statistics
import sys
import time
import urllib.request
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import fake_batch, synchronize  # noqa: E402

from eg3d.config.presets import get_preset  # noqa: E402
from eg3d.training import trainer as trainer_module  # noqa: E402
from eg3d.training.loop import interval_record  # noqa: E402
from eg3d.training.trainer import Trainer, gradient_norm  # noqa: E402
from monitoring.exporter import PrometheusExporter  # noqa: E402

SCRAPE_SECONDS = 5.0  # monitoring/prometheus/local.yml


def per_call_seconds(fn, repeats: int, device: torch.device) -> float:
    fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / repeats


def timed_steps(trainer: Trainer, img, c, steps: int, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(img, c)
    synchronize(device)
    return (time.perf_counter() - start) / steps


def bench(name: str, device: torch.device, steps: int) -> dict:
    config = get_preset(name)
    trainer = Trainer(config, camera_pool=fake_batch(config, 64, device)[1], device=device)
    img, c = fake_batch(config, config.run.batch_size, device)
    period = max(p.interval for p in trainer.phases)
    steps = max(steps // period, 1) * period
    for _ in range(period):
        trainer.train_step(img, c)
    step_seconds = timed_steps(trainer, img, c, steps, device)
    phases_per_step = sum(1 / p.interval for p in trainer.phases)

    # Per step: a norm, a timer and a few reporter calls per phase, the data-wait timer.
    norm = statistics.mean(per_call_seconds(lambda: trainer.stats.report("x", gradient_norm(net)), 50, device)
                           for net in (trainer.G, trainer.D))
    bookkeeping = per_call_seconds(lambda: (time.perf_counter(), trainer.stats.add("y", 1.0)), 10000, device)
    per_step = phases_per_step * (norm + 3 * bookkeeping) + 2 * bookkeeping

    # Per log interval: memory, gather, record, exporter update; and Prometheus's scrapes meanwhile.
    steps_per_interval = max(config.run.log_kimg * 1000 / config.run.batch_size, 1)
    exporter = PrometheusExporter(run="bench", rank=0, port=0)
    standing = {"target_nimg": 1, "world_size": 1, "micro_batch": 1, "accumulation_steps": 1, "restarts": 0,
                "checkpoint_nimg": 0, "frechet_distance/random": 1.0, "kernel_distance/random": 1.0}

    trainer.train_step(img, c)
    reported, added = list(trainer.stats._sums), list(trainer.stats._totals)  # what a real interval holds

    def log_interval():  # refilling the reporter is counted too, which overstates the cost a little
        for name in reported:
            trainer.stats.report(name, 1.0)
        for name in added:
            trainer.stats.add(name, 1.0)
        record = interval_record(trainer, standing, 1.0)
        exporter.update(record, record["ranks"][0])

    interval = per_call_seconds(log_interval, 200, device)
    url = f"http://127.0.0.1:{exporter.port}/metrics"
    scrape = per_call_seconds(lambda: urllib.request.urlopen(url).read(), 200, device)
    exporter.close()
    per_interval = interval / steps_per_interval + scrape * step_seconds / SCRAPE_SECONDS

    # Cross-check: whole steps with the per-step parts switched off, interleaved with normal ones.
    with_telemetry, without = [], []
    original_norm, original_add = trainer_module.gradient_norm, trainer.stats.add
    for _ in range(3):
        with_telemetry.append(timed_steps(trainer, img, c, steps, device))
        trainer_module.gradient_norm, trainer.stats.add = (lambda net: torch.zeros(())), (lambda *a: None)
        without.append(timed_steps(trainer, img, c, steps, device))
        trainer_module.gradient_norm, trainer.stats.add = original_norm, original_add
    overhead = per_step + per_interval
    return {"preset": name, "device": device.type, "step_ms": step_seconds * 1e3,
            "norm_ms": norm * 1e3, "per_step_ms": per_step * 1e3, "interval_ms": interval * 1e3,
            "scrape_ms": scrape * 1e3, "steps_per_interval": steps_per_interval,
            "overhead_percent": 100 * overhead / step_seconds,
            "ab_percent": 100 * (statistics.median(with_telemetry) / statistics.median(without) - 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cuda = torch.cuda.is_available()
    parser.add_argument("--presets", nargs="+", default=["tiny", "ffhq512"] if cuda else ["tiny"])
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    device = torch.device("cuda" if cuda else "cpu")
    rows = [bench(name, device, args.steps) for name in args.presets]
    print("| preset | device | step ms | grad norm ms | telemetry per step ms | log interval ms | scrape ms "
          "| steps per interval | overhead % of step | A/B step difference % |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['preset']} | {r['device']} | {r['step_ms']:.1f} | {r['norm_ms']:.3f} | {r['per_step_ms']:.3f} "
              f"| {r['interval_ms']:.2f} | {r['scrape_ms']:.2f} | {r['steps_per_interval']:.0f} "
              f"| {r['overhead_percent']:.3f} | {r['ab_percent']:+.1f} |")


if __name__ == "__main__":
    main()
