"""Training the evaluator (`eg3d.metrics.evaluator`) on a data set's real images, and its cache.

    trained = prepare_evaluator(manifest_url, config.evaluator, cache_urls=[...], device=device, log=print)
    trained.network, trained.floor, trained.real  # the CNN, its own held-out errors, real feature statistics

The evaluator is trained once per data set and settings, deterministically for a seed (on one device type and
thread count), and cached as one file named after the data set's content digest (its shards' SHA-256s) and the
settings. The file also records both, the evaluator version, its floor (its own error on held-out real images:
no generator can be measured better than that) and the real feature statistics that `fd_data` compares with.
A cache file written for another data set, other settings or another version, or one that cannot be read, is
set aside (renamed, never deleted) and the evaluator trained again, saying why.
"""

import dataclasses
import hashlib
import io
import itertools
import json
import math
import os
import time
import typing
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from dataloading import storage
from dataloading.shard_reader import Manifest, decode_ground_truth, decode_sample, load_manifest, read_shard
from eg3d.config.schema import EvaluatorConfig

from .evaluator import (Evaluator, EvaluatorShape, angle_degrees, colour_histogram, depth_errors,
                        depth_errors_against, prepare_images, resample_map, view_direction, z_depth)
from .fid import FeatureStatistics, frechet_distance
from .inception import default_cache_dir

EVALUATOR_VERSION = 4  # raise when the network, its training or its targets change: older caches are retrained
CACHE_FORMAT = "eg3d-evaluator"
VIEW_LOSS_WEIGHT = 10.0  # 1 - cos of a 10-degree error is 0.015: weighted up to count beside the other heads
BLUR_PROBABILITY, MAX_BLUR_SIGMA = 0.5, 1.5  # input augmentation (pixels of the evaluator's input)
NOISE_PROBABILITY, MAX_NOISE_STD = 0.5, 0.05


class StaleCache(ValueError):
    """A cache file that is not this data set's, these settings' or this version's evaluator."""


@dataclass
class RealData:
    """A data set's images at the evaluator's resolution R and what it knows about them."""
    images: torch.Tensor  # uint8 [N, 3, R, R]
    cameras: torch.Tensor  # float32 [N, 25]
    depth: torch.Tensor | None  # float32 [N, R/2, R/2] along the optical axis, NaN where a pixel is not wholly on the object
    classes: torch.Tensor | None  # int64 [N]
    class_names: tuple[str, ...] | None


@dataclass
class TrainedEvaluator:
    """The evaluator in eval mode, its floor on held-out real images ({"pose_error_deg", "fd_data",
    "depth_error" where the data has depth, "class_accuracy" where it has classes}), the real feature statistics
    of its training images (what fd_data compares with) and of the held-out ones, the data set's digest and the
    seconds its training took."""
    network: Evaluator
    floor: dict
    real: FeatureStatistics
    holdout: FeatureStatistics
    dataset_digest: str
    train_seconds: float


# --- the data ------------------------------------------------------------------------------------------

def dataset_digest(manifest: Manifest) -> str:
    """SHA-256 of a data set's content: its resolution and its shards' digests, in order (the shards hold the
    images, cameras and any ground truth), so the same data sharded again with the same settings, anywhere,
    gives the same digest."""
    content = json.dumps([manifest.resolution, [shard.sha256 for shard in manifest.shards]])
    return hashlib.sha256(content.encode()).hexdigest()


DECODE_CHUNK = 128  # samples per decoding job


def load_real_data(manifest_url: str, resolution: int, *, limit: int | None = None, workers: int = 8,
                   progress: Callable[[int, int], None] | None = None) -> RealData:
    """The first `limit` (default all) samples of a shard manifest, read in order and decoded in `workers`
    threads, resized to `resolution` (antialiased bilinear from [-1, 1] floats, then rounded to uint8, as
    generated images are); depth, where the data has it, along the optical axis (`evaluator.z_depth`) and
    averaged to resolution / 2 (a cell touching the background is NaN). `progress(done, total)` as samples arrive. ValueError naming a sample that does not
    decode."""
    manifest = load_manifest(manifest_url)
    total = min(limit or manifest.sample_count, manifest.sample_count)

    def decode(chunk: list[tuple[int, dict]]):  # numpy and PIL only: see the note below
        images, cameras, depths, classes = [], [], [], []
        for index, members in chunk:
            pixels, camera = decode_sample(manifest, index, members)
            depth, class_index = decode_ground_truth(manifest, index, members)
            images.append(pixels)
            cameras.append(camera)
            depths.append(depth)
            classes.append(class_index)
        return np.stack(images), np.stack(cameras), np.stack(depths) if manifest.has_depth else None, classes

    def to_tensors(part):
        images, cameras, depths, classes = part
        images = to_uint8(prepare_images(torch.from_numpy(images).permute(0, 3, 1, 2), resolution))
        cameras = torch.from_numpy(cameras)
        depth = None
        if depths is not None:
            depth = resample_map(z_depth(torch.from_numpy(depths), cameras), resolution // 2)
        return images, cameras, depth, classes

    def chunks():
        chunk = []
        for shard in manifest.shards:
            if shard.first_index >= total:
                break
            for index, members in read_shard(shard):
                if index >= total:
                    break
                chunk.append((index, members))
                if len(chunk) == DECODE_CHUNK:
                    yield chunk
                    chunk = []
        if chunk:
            yield chunk

    # Torch runs in this thread only: a torch operation in a pool thread starts an OpenMP team there, and once
    # a process has more OpenMP threads than CPUs libgomp shortens every spin-wait for good, which slows every
    # later training step of the process (docs/performance.md: the gloo all-gather slowdown).
    # At most 2 x workers chunks are read ahead (Executor.map would read every shard into memory first).
    parts, done, pending = [], 0, deque()
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for chunk in itertools.chain(chunks(), [None] * 2 * workers):
            if chunk is not None:
                pending.append(pool.submit(decode, chunk))
            if pending and (chunk is None or len(pending) > 2 * workers):
                part = pending.popleft().result()
                parts.append(to_tensors(part))
                done += len(part[0])
                if progress is not None:
                    progress(done, total)
    class_names = manifest.class_names
    return RealData(images=torch.cat([p[0] for p in parts]), cameras=torch.cat([p[1] for p in parts]),
                    depth=torch.cat([p[2] for p in parts]) if manifest.has_depth else None,
                    classes=(torch.tensor([c for p in parts for c in p[3]], dtype=torch.int64)
                             if class_names is not None else None),
                    class_names=class_names)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 0..255 (rounded, clamped), as an image is saved."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


# --- training ------------------------------------------------------------------------------------------

def holdout_split(count: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(training indices, held-out indices): a seeded permutation's last round(count * fraction) samples are
    held out (at least 2, and at least 2 left to train on)."""
    if count < 4:
        raise ValueError(f"the evaluator needs at least 4 real images (2 to train, 2 held out), got {count}")
    held = min(max(2, round(count * fraction)), count - 2)
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    return order[:count - held].sort().values, order[count - held:].sort().values


def train_evaluator(data: RealData, config: EvaluatorConfig, *, device: torch.device,
                    progress: Callable[[int, int], None] | None = None) -> TrainedEvaluator:
    """Train an evaluator on `data` (run.seed-independent: config.seed decides the split, the initial weights,
    the batches and the augmentation); `progress(step, steps)` after each step."""
    start = time.perf_counter()
    train_index, holdout_index = holdout_split(len(data.images), config.holdout, config.seed)
    shape = EvaluatorShape(resolution=config.resolution, num_classes=len(data.class_names or ()),
                           depth=data.depth is not None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        network = Evaluator(shape).to(device)
    steps = max(1, math.ceil(config.kimg * 1000 / config.batch_size))
    optimizer = torch.optim.AdamW(network.parameters(), lr=config.learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.learning_rate, total_steps=steps,
                                                   pct_start=0.15)
    generator = torch.Generator().manual_seed(config.seed + 1)
    batches = _batches(train_index, config.batch_size, generator)
    network.train()
    with torch.enable_grad():  # also when called under no_grad, as the quality measurement is
        for step in range(steps):
            loss = _loss(network, data, next(batches), generator, device)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            if progress is not None:
                progress(step + 1, steps)
    network.eval().requires_grad_(False)
    outputs = evaluate_real(network, data, device=device)
    real, holdout = _statistics(outputs["features"][train_index]), _statistics(outputs["features"][holdout_index])
    floor = _floor(outputs, data, holdout_index, real, holdout)
    return TrainedEvaluator(network=network, floor=floor, real=real, holdout=holdout, dataset_digest="",
                            train_seconds=time.perf_counter() - start)


def _batches(indices: torch.Tensor, batch_size: int, generator: torch.Generator):
    """Endless batches of `indices`, reshuffled every epoch; a batch never spans two epochs."""
    size = min(batch_size, len(indices))
    while True:
        order = indices[torch.randperm(len(indices), generator=generator)]
        for first in range(0, len(order) - size + 1, size):
            yield order[first:first + size]


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Float images [N, 3, R, R] in [-1, 1], some blurred and some with noise: generated images, early in
    training especially, are blurrier and noisier than real ones, and the evaluator must still read their
    pose and depth. Neither changes the targets (pose, depth, class, colour histogram)."""
    n = len(images)
    sigma = torch.rand(n, generator=generator) * MAX_BLUR_SIGMA
    sigma = torch.where(torch.rand(n, generator=generator) < BLUR_PROBABILITY, sigma, torch.zeros(n))
    noise_std = torch.rand(n, generator=generator) * MAX_NOISE_STD
    noise_std = torch.where(torch.rand(n, generator=generator) < NOISE_PROBABILITY, noise_std, torch.zeros(n))
    noise = torch.randn(images.shape, generator=generator)
    blurred = gaussian_blur(images, sigma.to(images.device))
    return blurred + noise.to(images.device) * noise_std.to(images.device)[:, None, None, None]


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with a per-image standard deviation sigma [N] in pixels (0: unchanged);
    a 7-tap kernel, reflected at the borders."""
    taps = torch.arange(-3, 4, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-0.5 * (taps[None] / sigma.clamp(min=1e-3)[:, None]) ** 2)  # [N, 7]
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    n, c, h, w = images.shape
    x = F.pad(images, (3, 3, 3, 3), mode="reflect").reshape(1, n * c, h + 6, w + 6)
    weights = kernel.repeat_interleave(c, dim=0)  # [N * C, 7]
    x = F.conv2d(x, weights[:, None, None, :], groups=n * c)
    x = F.conv2d(x, weights[:, None, :, None], groups=n * c)
    return x.reshape(n, c, h, w)


def _loss(network: Evaluator, data: RealData, index: torch.Tensor, generator: torch.Generator,
          device: torch.device) -> torch.Tensor:
    images = data.images[index]
    inputs = augment(images.float().div(127.5).sub(1), generator).to(device)
    out = network(inputs)
    target_view = view_direction(data.cameras[index]).to(device)
    loss = VIEW_LOSS_WEIGHT * (1 - (out.view_direction * target_view).sum(dim=1)).mean()
    loss = loss - (colour_histogram(images).to(device) * F.log_softmax(out.colour_logits, dim=1)).sum(1).mean()
    if out.class_logits is not None:
        loss = loss + F.cross_entropy(out.class_logits, data.classes[index].to(device))
    if out.depth is not None:
        depth = data.depth[index].to(device)
        on_object = torch.isfinite(depth)
        loss = loss + depth_errors(out.depth, depth, on_object).mean()
        loss = loss + F.binary_cross_entropy_with_logits(out.foreground_logits, on_object.float())
    return loss


@torch.no_grad()
def evaluate_real(network: Evaluator, data: RealData, *, device: torch.device, batch_size: int = 256) -> dict:
    """The evaluator's outputs on every real image, on the CPU: {"features" [N, F] float64, "view" [N, 3],
    "class_logits" or None, "depth_error" [N] against the ground truth or None}."""
    features, views, logits, depth = [], [], [], []
    for first in range(0, len(data.images), batch_size):
        out = network(data.images[first:first + batch_size].to(device))
        features.append(out.features.double().cpu())
        views.append(out.view_direction.cpu())
        if out.class_logits is not None:
            logits.append(out.class_logits.cpu())
        if out.depth is not None:
            depth.append(depth_errors_against(out, data.depth[first:first + batch_size]).cpu())
    return {"features": torch.cat(features), "view": torch.cat(views),
            "class_logits": torch.cat(logits) if logits else None, "depth_error": torch.cat(depth) if depth else None}


def _statistics(features: torch.Tensor) -> FeatureStatistics:
    statistics = FeatureStatistics(features.shape[1])
    statistics.add(features)
    return statistics


def _floor(outputs: dict, data: RealData, holdout: torch.Tensor, real: FeatureStatistics,
           held: FeatureStatistics) -> dict:
    """The evaluator's own errors on the held-out real images."""
    floor = {"pose_error_deg": float(angle_degrees(outputs["view"][holdout],
                                                   view_direction(data.cameras[holdout])).mean()),
             "fd_data": frechet_distance(held.mean(), held.covariance(), real.mean(), real.covariance()),
             "holdout_images": len(holdout)}
    if outputs["depth_error"] is not None:
        floor["depth_error"] = float(outputs["depth_error"][holdout].mean())
    if outputs["class_logits"] is not None:
        predicted = outputs["class_logits"][holdout].argmax(dim=1)
        floor["class_accuracy"] = float((predicted == data.classes[holdout]).double().mean())
    return floor


def describe_floor(floor: dict) -> str:
    """"pose 3.1 deg, depth 0.12, class 97.0%, fd_data 0.45 (on 200 held-out images)"."""
    parts = [f"pose {floor['pose_error_deg']:.2f} deg"]
    if "depth_error" in floor:
        parts.append(f"depth {floor['depth_error']:.3f}")
    if "class_accuracy" in floor:
        parts.append(f"class {100 * floor['class_accuracy']:.1f}%")
    parts.append(f"fd_data {floor['fd_data']:.3f}")
    return ", ".join(parts) + f" (on {floor['holdout_images']} held-out real images)"


# --- the cache -----------------------------------------------------------------------------------------

def settings(config: EvaluatorConfig) -> dict:
    """The fields that decide the trained weights (not consistency_objects, which is a measurement setting),
    each as its field's type (a preset's kimg=18 and a config file's 18.0 are one setting)."""
    types = typing.get_type_hints(EvaluatorConfig)
    return {key: types[key](value) for key, value in dataclasses.asdict(config).items()
            if key in ("resolution", "kimg", "batch_size", "learning_rate", "holdout", "seed")}


def cache_name(digest: str, config: EvaluatorConfig) -> str:
    settings_digest = hashlib.sha256(json.dumps([EVALUATOR_VERSION, settings(config)], sort_keys=True).encode())
    return f"evaluator-{digest[:16]}-{settings_digest.hexdigest()[:8]}.pt"


def to_bytes(trained: TrainedEvaluator, config: EvaluatorConfig) -> bytes:
    payload = {
        "format": CACHE_FORMAT, "version": EVALUATOR_VERSION, "dataset_digest": trained.dataset_digest,
        "settings": settings(config), "shape": dataclasses.asdict(trained.network.shape),
        "state_dict": trained.network.state_dict(), "floor": trained.floor, "train_seconds": trained.train_seconds,
        "real": _statistics_dict(trained.real), "holdout": _statistics_dict(trained.holdout),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def from_bytes(data: bytes, *, digest: str, config: EvaluatorConfig, where: str) -> TrainedEvaluator:
    """The evaluator in a cache file's bytes; StaleCache saying why when it is not the one asked for."""
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # truncated, not a torch file, not loadable safely: all mean "not usable"
        raise StaleCache(f"{where}: cannot be read as an evaluator ({type(error).__name__}: {error})") from None
    if not isinstance(payload, dict) or payload.get("format") != CACHE_FORMAT:
        raise StaleCache(f"{where}: not an evaluator cache (no \"format\": \"{CACHE_FORMAT}\")")
    if payload.get("version") != EVALUATOR_VERSION:
        raise StaleCache(f"{where}: written by evaluator version {payload.get('version')}, this is version "
                         f"{EVALUATOR_VERSION}")
    if payload.get("dataset_digest") != digest:
        raise StaleCache(f"{where}: trained on another data set (content digest "
                         f"{str(payload.get('dataset_digest'))[:16]}..., this one is {digest[:16]}...)")
    if payload.get("settings") != settings(config):
        raise StaleCache(f"{where}: trained with other settings ({payload.get('settings')}, now {settings(config)})")
    try:
        network = Evaluator(EvaluatorShape(**payload["shape"]))
        network.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:  # a layout this code does not build
        raise StaleCache(f"{where}: its weights do not fit this evaluator ({str(error).splitlines()[0]})") from None
    return TrainedEvaluator(network=network.eval().requires_grad_(False), floor=payload["floor"],
                            real=_statistics_from(payload["real"]), holdout=_statistics_from(payload["holdout"]),
                            dataset_digest=digest, train_seconds=payload["train_seconds"])


def _statistics_dict(statistics: FeatureStatistics) -> dict:
    return {"count": statistics.count, "sum": statistics.sum, "outer": statistics.outer}


def _statistics_from(values: dict) -> FeatureStatistics:
    statistics = FeatureStatistics(values["sum"].shape[0])
    statistics.count, statistics.sum, statistics.outer = values["count"], values["sum"], values["outer"]
    return statistics


def prepare_evaluator(manifest_url: str, config: EvaluatorConfig, *, cache_urls: list[str], device: torch.device,
                      log: Callable[[str], None] = print,
                      progress: Callable[[str, int, int], None] | None = None) -> tuple[TrainedEvaluator, bytes]:
    """The data set's evaluator and its cache file's bytes: from the first of `cache_urls` (folders) that holds
    it, else trained and written to the first of them but the last that can be written, and to the last one
    (meant for this machine's cache, `local_cache_folder`). A cache file that is not usable is renamed to
    NAME.stale-TIMESTAMP (never deleted) and the evaluator trained again; `log` says why.
    `progress(stage, done, total)` follows the slow parts ("decoding", "training")."""
    manifest = load_manifest(manifest_url)
    digest = dataset_digest(manifest)
    name = cache_name(digest, config)
    for folder in cache_urls:
        url = storage.join(folder, name)
        if not storage.exists(url):
            continue
        data = storage.read_bytes(url)
        try:
            trained = from_bytes(data, digest=digest, config=config, where=url)
            log(f"evaluator from {url}; its floor: {describe_floor(trained.floor)}")
            return trained, data
        except StaleCache as error:
            stale = f"{url}.stale-{time.strftime('%Y%m%d-%H%M%S')}"
            storage.write_bytes_atomic(stale, data)
            storage.delete(url)
            log(f"{error}; moved it to {stale} and training the evaluator again")
    log(f"training the evaluator on {manifest_url} ({manifest.sample_count} images, {config.kimg:g} kimg at "
        f"{config.resolution}x{config.resolution}; once per data set, then cached)")
    data = load_real_data(manifest_url, config.resolution,
                          progress=None if progress is None else lambda d, t: progress("decoding", d, t))
    trained = train_evaluator(data, config, device=device,
                              progress=None if progress is None else lambda d, t: progress("training", d, t))
    trained.dataset_digest = digest
    payload = to_bytes(trained, config)
    log(f"evaluator trained in {trained.train_seconds:.0f} s; its floor: {describe_floor(trained.floor)}")
    written = _write_cache(cache_urls[:-1], name, payload, log)  # beside the data, or the run
    written = _write_cache(cache_urls[-1:], name, payload, log) or written  # and this machine's cache
    if not written:
        log("warning: the evaluator could not be cached anywhere; the next run trains it again")
    return trained, payload


def _write_cache(folders: list[str], name: str, payload: bytes, log: Callable[[str], None]) -> bool:
    """Write to the first folder that can be written; whether one could."""
    for folder in folders:
        url = storage.join(folder, name)
        try:
            storage.makedirs(folder)
            storage.write_bytes_atomic(url, payload)
            log(f"evaluator cached at {url}")
            return True
        except OSError as error:  # a read-only data location: try the next folder
            log(f"cannot cache the evaluator at {url} ({error})")
    return False


def local_cache_folder() -> str:
    """This machine's evaluator cache ($EG3D_CACHE or ~/.cache/eg3d, under evaluators/): another run on the same
    data (the same synthetic images under another run name, say) finds its evaluator there."""
    return os.path.join(default_cache_dir(), "evaluators")
