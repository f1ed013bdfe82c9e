"""Image quality during training: FID and KID of G_ema against the dataset, measured by all workers.

Real statistics are computed once per dataset and feature network and cached next to the shards (in the
run folder when the data folder cannot be written). Generated statistics come from `num_generated`
images of G_ema at a snapshot: random z, cameras drawn from the dataset's labels, no truncation. The
work is split into fixed chunks of `metrics.batch_size` images, each seeded by its index, and dealt out
to the workers, so the measurement is the same whatever the number of workers.

With Inception-v3 weights this is FID/KID as in the literature. Without them a seeded random-feature
network stands in; its numbers are labelled "random" everywhere and are not FID.
"""

import hashlib
import logging
import time
from typing import Protocol

import numpy as np
import torch

from dataloading import storage
from dataloading.shard_reader import decode_sample, load_manifest, read_shard
from eg3d.config import TrainConfig
from eg3d.config.seeds import step_seed

from .fid import FeatureStatistics, frechet_distance, kernel_distance
from .inception import feature_network

KEPT_FEATURES = 10000  # features kept per set for KID subsets (the means and covariances use every image)
QUALITY_SEED_KEY = 0x51A1  # separates the measurement's random draws from the training steps'

log = logging.getLogger("eg3d")


class WorkerSync(Protocol):
    """What the measurement uses of the trainer's gradient sync (eg3d.training.trainer.SingleProcess and its
    subclasses), without importing the training layer."""

    rank: int
    world_size: int

    def all_gather_object(self, value) -> list: ...

    def broadcast_object(self, value): ...


class QualityMeter:
    def __init__(self, config: TrainConfig, *, manifest_url: str, run_url: str, camera_pool: torch.Tensor,
                 device: torch.device, sync: WorkerSync):
        q = config.metrics
        self.config, self.manifest_url, self.run_url = config, manifest_url, run_url
        self.camera_pool, self.device, self.sync = camera_pool, device, sync
        try:
            self.extractor, network = feature_network(q.extractor, weights=q.inception_weights,
                                                      sha256=q.inception_sha256, seed=q.random_features_seed)
        except (OSError, ValueError) as error:  # at start, before any training: say how to go on
            raise ValueError(f"metrics.inception_weights: {error}. Give a reachable copy of the file (a path, "
                             "s3:// or https:// URL), or --set metrics.extractor=random (not FID), or "
                             "--set metrics.num_generated=0 (no quality measurement)") from error
        self.network = network.to(device).eval().requires_grad_(False)
        self._real: FeatureStatistics | None = None

    # --- real images ------------------------------------------------------------------------------

    def cache_name(self) -> str:
        """Names the dataset (its manifest's digest), the feature network and the number of images."""
        q = self.config.metrics
        network = f"seed{q.random_features_seed}"
        if self.extractor == "inception_v3":  # the weights' digest, or where they came from
            network = q.inception_sha256 or "at" + hashlib.sha256(str(q.inception_weights).encode()).hexdigest()[:8]
        dataset = hashlib.sha256(storage.read_bytes(self.manifest_url)).hexdigest()[:12]
        return f"feature-stats-{dataset}-{self.extractor}-{network}-{q.num_real or 'all'}.npz"

    def real_statistics(self) -> FeatureStatistics:
        """From the cache, or computed by every worker over its share of the shards and then cached."""
        if self._real is None:
            urls = [storage.join(storage.parent(self.manifest_url), self.cache_name()),
                    storage.join(self.run_url, self.cache_name())]
            cached = self.sync.broadcast_object(next((u for u in urls if storage.exists(u)), None)
                                                if self.sync.rank == 0 else None)
            if cached is not None:
                self._real = FeatureStatistics.from_bytes(storage.read_bytes(cached))
            else:
                self._real = self._gather(*self._real_features_of_my_shards())
                if self.sync.rank == 0:
                    self._write_cache(urls, self._real.to_bytes())
        return self._real

    def _real_features_of_my_shards(self) -> tuple[FeatureStatistics, dict[int, torch.Tensor]]:
        manifest = load_manifest(self.manifest_url)
        limit = min(self.config.metrics.num_real or manifest.sample_count, manifest.sample_count)
        stats, kept = FeatureStatistics(self.network.feature_dim), {}
        for shard in manifest.shards[self.sync.rank::self.sync.world_size]:
            if shard.first_index >= limit:
                break
            images, features = [], []
            for index, members in read_shard(shard):
                if index < limit:
                    images.append(decode_sample(manifest, index, members)[0])
                if len(images) == self.config.metrics.batch_size:
                    features.append(self._features(_to_float(images)))
                    images = []
            if images:
                features.append(self._features(_to_float(images)))
            shard_features = torch.cat(features)
            stats.add(shard_features)
            if shard.first_index < KEPT_FEATURES:
                kept[shard.first_index] = shard_features[:KEPT_FEATURES - shard.first_index].float()
        return stats, kept

    def _write_cache(self, urls: list[str], payload: bytes) -> None:
        for url in urls:
            try:
                storage.write_bytes_atomic(url, payload)
                log.info(f"real feature statistics cached at {url}")
                return
            except OSError as error:  # a read-only dataset location: fall back to the run folder
                log.warning(f"cannot cache real feature statistics at {url} ({error})")

    # --- generated images ---------------------------------------------------------------------------

    @torch.no_grad()
    def measure(self, G_ema: torch.nn.Module, *, neural_rendering_resolution: int) -> dict:
        """Distances between real and generated features; every worker must call this at the same point."""
        start = time.perf_counter()
        real = self.real_statistics()
        q = self.config.metrics
        chunks = range(self.sync.rank, -(-q.num_generated // q.batch_size), self.sync.world_size)
        mine, kept = FeatureStatistics(self.network.feature_dim), {}
        for chunk in chunks:
            first = chunk * q.batch_size
            z, c = self._latents(chunk, min(q.batch_size, q.num_generated - first))
            torch.manual_seed(step_seed(self.config.run.seed, QUALITY_SEED_KEY, chunk, 1))  # the synthesis noise
            images = G_ema(z, c, neural_rendering_resolution=neural_rendering_resolution)["image"]
            features = self._features(images.float().clamp(-1, 1))
            mine.add(features)
            if first < KEPT_FEATURES:
                kept[first] = features[:KEPT_FEATURES - first].float()
        generated = self._gather(mine, kept)
        result = {
            "extractor": self.extractor, "num_real": real.count, "num_generated": generated.count,
            "frechet_distance": frechet_distance(real.mean(), real.covariance(), generated.mean(),
                                                 generated.covariance()),
            "kernel_distance": kernel_distance(real.kept, generated.kept, num_subsets=q.kid_subsets,
                                               max_subset_size=q.kid_subset_size, seed=self.config.run.seed),
        }
        result["seconds"] = time.perf_counter() - start
        return result

    def _latents(self, chunk: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(step_seed(self.config.run.seed, QUALITY_SEED_KEY, chunk))
        z = torch.randn(count, self.config.model.z_dim, generator=generator)
        cameras = torch.randint(len(self.camera_pool), (count,), generator=generator)
        return z.to(self.device), self.camera_pool[cameras.to(self.camera_pool.device)].to(self.device)

    # --- shared -------------------------------------------------------------------------------------

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(images.to(self.device)).double().cpu()

    def _gather(self, mine: FeatureStatistics, kept: dict[int, torch.Tensor]) -> FeatureStatistics:
        """Every rank's statistics merged; the features kept for KID are the first ones by image index,
        whichever worker computed them."""
        every = self.sync.all_gather_object((mine, kept))  # [(mine, kept)] for one process
        merged = FeatureStatistics(self.network.feature_dim, max_kept=KEPT_FEATURES)
        for statistics, _ in every:
            merged.merge(statistics)
        parts = {first: rows for _, rank_kept in every for first, rows in rank_kept.items()}
        merged.keep(torch.cat([parts[first] for first in sorted(parts)]) if parts
                    else torch.zeros(0, self.network.feature_dim))
        return merged


def _to_float(images: list[np.ndarray]) -> torch.Tensor:
    """uint8 HWC images -> float NCHW in [-1, 1]."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1)


def record_values(result: dict) -> dict:
    """The log-record keys of a measurement: FID/KID by name only for the Inception network."""
    extractor = result["extractor"]
    values = {f"frechet_distance/{extractor}": result["frechet_distance"],
              f"kernel_distance/{extractor}": result["kernel_distance"],
              f"quality_seconds/{extractor}": result["seconds"]}
    if extractor == "inception_v3":
        values.update(fid=result["frechet_distance"], kid=result["kernel_distance"])
    return values
