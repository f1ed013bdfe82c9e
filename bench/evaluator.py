"""The dataset-trained evaluator's training budget: measured on this machine, estimated from FLOPs for a GPU.

    python bench/evaluator.py                   # the tiny preset's data (2000 synthetic images at 64x64)
    python bench/evaluator.py --data SHARDS     # any shard manifest, with the settings of --preset
    python bench/evaluator.py --estimate-only   # only the FLOP estimate of the 512 presets' evaluator

Rows:
- measured: decoding the data set, training the evaluator with the preset's settings (evaluator.kimg at
  evaluator.resolution), its floor. Budget: the tiny data set in 2 minutes on 2 CPU cores.
- estimated: the 512 presets' evaluator (128x128, 500 kimg) on 70k images at 512: training FLOPs (forward
  and backward, counted by torch's FlopCounterMode on one batch) over the sustained FLOP/s of an H100 (a
  third of its dense TF32 peak, the fraction small convolutions reach), plus decoding 70k 512x512 PNGs at the
  speed measured here per core, on 16 cores. Budget: 10 minutes on one GPU.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from dataloading.build import build
from dataloading.shard_reader import load_manifest
from dataloading.synthetic import generate_dataset
from eg3d.config import get_preset
from eg3d.metrics.evaluator import Evaluator, EvaluatorShape
from eg3d.metrics.evaluator_training import describe_floor, load_real_data, train_evaluator

H100_TF32_DENSE_TFLOPS = 494.7  # datasheet, SXM
SUSTAINED_FRACTION = 1 / 3
FFHQ_IMAGES, FFHQ_RESOLUTION, GPU_HOST_CORES = 70000, 512, 16


def training_flops_per_image(config) -> float:
    """FLOPs of one training image (forward and backward) of the evaluator `config` describes, with a depth
    head (the largest layout)."""
    network = Evaluator(EvaluatorShape(resolution=config.resolution, num_classes=6, depth=True))
    images = torch.zeros(8, 3, config.resolution, config.resolution)
    with FlopCounterMode(display=False) as counter:
        out = network(images)
        (out.features.sum() + out.depth.sum() + out.foreground_logits.sum()).backward()
    return counter.get_total_flops() / len(images)


def png_decode_seconds(resolution: int, count: int = 20) -> float:
    """Seconds to decode one PNG of a synthetic image upscaled to `resolution`, on one core."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(small).resize((resolution, resolution), Image.BICUBIC).save(buffer, format="PNG")
    data = buffer.getvalue()
    start = time.perf_counter()
    for _ in range(count):
        np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    return (time.perf_counter() - start) / count


def measured_row(manifest_url: str, preset: str) -> str:
    config = get_preset(preset).evaluator
    start = time.perf_counter()
    data = load_real_data(manifest_url, config.resolution)
    decoded = time.perf_counter() - start
    trained = train_evaluator(data, config, device=torch.device("cpu"))
    images = load_manifest(manifest_url).sample_count
    return (f"| measured: {images} images, {preset}'s evaluator ({config.resolution}px, {config.kimg:g} kimg), "
            f"{torch.get_num_threads()} threads | {decoded:.1f} | {trained.train_seconds:.1f} | "
            f"{describe_floor(trained.floor)} |")


def estimated_row() -> str:
    config = get_preset("ffhq512").evaluator
    flops = training_flops_per_image(config) * config.kimg * 1000
    train_seconds = flops / (H100_TF32_DENSE_TFLOPS * 1e12 * SUSTAINED_FRACTION)
    decode_seconds = png_decode_seconds(FFHQ_RESOLUTION) * FFHQ_IMAGES / GPU_HOST_CORES
    return (f"| estimated: {FFHQ_IMAGES} images at {FFHQ_RESOLUTION}, ffhq512's evaluator ({config.resolution}px, "
            f"{config.kimg:g} kimg: {flops / 1e15:.2f} PFLOP), one H100 at {SUSTAINED_FRACTION:.2f} of its TF32 peak, "
            f"{GPU_HOST_CORES} cores decoding | {decode_seconds:.0f} | {train_seconds:.0f} | — |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="shard manifest URL (default: render and shard the tiny data set)")
    parser.add_argument("--preset", default="tiny", help="whose evaluator settings to time")
    parser.add_argument("--estimate-only", action="store_true")
    args = parser.parse_args(argv)
    print("| what | decoding (s) | training (s) | floor |")
    print("|---|---|---|---|")
    if not args.estimate_only:
        with tempfile.TemporaryDirectory() as scratch:
            manifest_url = args.data
            if manifest_url is None:
                config = get_preset("tiny")
                generate_dataset(Path(scratch) / "data", count=config.data.synthetic_count,
                                 resolution=config.model.image_resolution, seed=0, workers=2, progress_every=10**9)
                build(str(Path(scratch) / "data"), str(Path(scratch) / "shards"), progress=False)
                manifest_url = str(Path(scratch) / "shards" / "manifest.json")
            print(measured_row(manifest_url, args.preset), flush=True)
    print(estimated_row())
    return 0


if __name__ == "__main__":
    sys.exit(main())
