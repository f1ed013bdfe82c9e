"""Quality during training, measured by all workers at every snapshot: FID and KID of G_ema against the data
set, and the 3D quality of the dataset-trained evaluator (`eg3d.metrics.generator_metrics`).

Real statistics are computed once per dataset and feature network and cached next to the shards (in the
run folder when the data folder cannot be written); so is the evaluator (`eg3d.metrics.evaluator_training`),
which rank 0 trains on first use and hands to the other workers. Generated images: `num_generated` images of
G_ema at a snapshot, random z, cameras drawn from the dataset's labels, no truncation, split into fixed chunks
of `metrics.batch_size` images, each seeded by its index, and dealt out to the workers; the consistency
objects likewise, one seed each. So the measurement is the same whatever the number of workers. Both
measurements read the same generated images.

With Inception-v3 weights the image features give FID/KID as in the literature. Without them a seeded
random-feature network stands in; its numbers are labelled "random" everywhere and are not FID.
metrics.extractor "none" leaves only the evaluator's measurement.
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

from .consistency import view_pairs
from .evaluator_training import dataset_digest, from_bytes, local_cache_folder, prepare_evaluator
from .fid import FeatureStatistics, frechet_distance, kernel_distance
from .generator_metrics import GeneratorMetrics
from .inception import feature_network

KEPT_FEATURES = 10000  # features kept per set for KID subsets (the means and covariances use every image)
QUALITY_SEED_KEY = 0x51A1  # separates the measurement's random draws from the training steps'
PROGRESS_SECONDS = 30.0  # the evaluator's training says how far it is at least this often

log = logging.getLogger("eg3d")


class WorkerSync(Protocol):
    """What the measurement uses of the trainer's gradient sync (eg3d.training.trainer.GradientSync and its
    subclasses), without importing the training layer."""

    rank: int
    world_size: int

    def all_gather_object(self, value) -> list: ...

    def broadcast_object(self, value): ...


class QualityMeter:
    """The measurement of G_ema at snapshots. `log` prints rank 0's news (the evaluator's training);
    `progress(stage, done, total)`, when given, follows the slow parts instead of lines in the log: the
    evaluator's "decoding" and "training" (rank 0, first use), then "generated images" and "consistency
    objects" (this rank's share). With `skip_failed`, a metric that cannot be computed (too few images: a
    covariance needs 2 feature vectors, the evaluator 4 real images) is left out of the result, with one warning
    in the log per reason, instead of raising: a training run measures at every snapshot and must go on."""

    def __init__(self, config: TrainConfig, *, manifest_url: str, run_url: str, camera_pool: torch.Tensor,
                 device: torch.device, sync: WorkerSync, log=print, progress=None, skip_failed: bool = False):
        q = config.metrics
        self.config, self.manifest_url, self.run_url = config, manifest_url, run_url
        self.camera_pool, self.device, self.sync, self.log = camera_pool, device, sync, log
        self.skip_failed, self._warned = skip_failed, set()
        self.progress = progress or self._log_progress
        self._last_progress = 0.0
        self.extractor, self.network = None, None
        if q.extractor != "none":
            try:
                self.extractor, network = feature_network(q.extractor, weights=q.inception_weights,
                                                          sha256=q.inception_sha256, seed=q.random_features_seed)
            except (OSError, ValueError) as error:  # at start, before any training: say how to go on
                raise ValueError(f"metrics.inception_weights: {error}. Give a reachable copy of the file (a path, "
                                 "s3:// or https:// URL), or --set metrics.extractor=random (not FID), or "
                                 "--set metrics.num_generated=0 (no quality measurement)") from error
            self.network = network.to(device).eval().requires_grad_(False)
        self._real: FeatureStatistics | None = None
        self._evaluator, self._evaluator_failure = None, None
        self.views = view_pairs(camera_pool) if config.evaluator.enabled else None

    # --- the evaluator ------------------------------------------------------------------------------

    def evaluator(self):
        """The data set's evaluator (eg3d.metrics.evaluator_training.TrainedEvaluator): rank 0 loads it from
        the cache beside the shards (or the run folder) or trains it, and sends it to the other ranks. With
        skip_failed, None when it cannot be trained (every rank learns why from rank 0; it is not tried again)."""
        if self._evaluator is None and self._evaluator_failure is None:
            cache_urls = [storage.parent(self.manifest_url), self.run_url, local_cache_folder()]
            payload = None
            if self.sync.rank == 0:
                try:
                    self._evaluator, payload = prepare_evaluator(self.manifest_url, self.config.evaluator,
                                                                 cache_urls=cache_urls, device=self.device,
                                                                 log=self.log, progress=self.progress)
                except ValueError as error:
                    if not self.skip_failed:
                        raise
                    payload = error
            payload = self.sync.broadcast_object(payload)
            if isinstance(payload, ValueError):
                self._evaluator_failure = payload
                self._skip("the 3D quality metrics (the dataset-trained evaluator)", payload)
            elif self.sync.rank != 0:
                self._evaluator = from_bytes(payload, digest=dataset_digest(load_manifest(self.manifest_url)),
                                             config=self.config.evaluator, where="rank 0's evaluator")
            if self._evaluator is not None:
                self._evaluator.network.to(self.device)
        return self._evaluator

    def _skip(self, what: str, error: Exception) -> None:
        """Say once per reason (rank 0) that `what` is left out of the measurements."""
        line = f"warning: {what}: not computed ({error}); missing from this measurement and log.jsonl, training goes on"
        if self.sync.rank == 0 and line not in self._warned:
            self._warned.add(line)
            self.log(line + " (said once)")

    def _computed(self, what: str, compute):
        """compute(); with skip_failed, None instead of its ValueError (too few images), said once by `_skip`.
        Every rank computes the same from the same gathered statistics, so all of them skip together."""
        try:
            return compute()
        except ValueError as error:  # numpy's LinAlgError too
            if not self.skip_failed:
                raise
            self._skip(what, error)
            return None

    def _log_progress(self, stage: str, done: int, total: int) -> None:
        """The evaluator's training in the log: a line at most every PROGRESS_SECONDS and at the end of each
        stage (the measurement itself takes seconds and says nothing)."""
        now = time.perf_counter()
        if stage not in ("decoding", "training"):
            return
        if done == total or now - self._last_progress >= PROGRESS_SECONDS:
            self.log(f"evaluator: {stage} {done}/{total}")
            self._last_progress = now

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
        """Every worker must call this at the same point. {"extractor", "num_real", "num_generated",
        "frechet_distance", "kernel_distance", "seconds"} of the image features (unless metrics.extractor is
        none), and "evaluator": GeneratorMetrics.combine's values plus "seconds" (when evaluator.enabled). With
        skip_failed, the metrics that cannot be computed are absent."""
        start = time.perf_counter()
        real = self.real_statistics() if self.network is not None else None
        evaluator_start = time.perf_counter()  # the evaluator's time: its training (first use) and its share below
        evaluator = self.evaluator() if self.views is not None else None
        three_d = GeneratorMetrics(evaluator, device=self.device) if evaluator is not None else None
        evaluator_seconds = time.perf_counter() - evaluator_start
        mine, kept, seconds = self._generate(G_ema, three_d, neural_rendering_resolution)
        evaluator_seconds += seconds
        result = {}
        if three_d is not None:
            evaluator_start = time.perf_counter()
            objects = range(self.sync.rank, self.config.evaluator.consistency_objects, self.sync.world_size)
            for done, index in enumerate(objects, 1):
                three_d.add_consistency(G_ema, self._object(index), self.views,
                                        neural_rendering_resolution=neural_rendering_resolution)
                self.progress("consistency objects", done, len(objects))
            partials = self.sync.all_gather_object(three_d.partial())
            values = self._computed("the 3D quality metrics", lambda: GeneratorMetrics.combine(partials, evaluator))
            if values is not None:
                result["evaluator"] = {**values, "seconds": evaluator_seconds + time.perf_counter() - evaluator_start}
        if mine is not None:
            generated, q = self._gather(mine, kept), self.config.metrics
            result.update({"extractor": self.extractor, "num_real": real.count, "num_generated": generated.count})
            distances = {
                "frechet_distance": lambda: frechet_distance(real.mean(), real.covariance(), generated.mean(),
                                                             generated.covariance()),
                "kernel_distance": lambda: kernel_distance(real.kept, generated.kept, num_subsets=q.kid_subsets,
                                                           max_subset_size=q.kid_subset_size, seed=self.config.run.seed)}
            for key, compute in distances.items():
                value = self._computed(f"{key} ({self.extractor} features)", compute)
                if value is not None:
                    result[key] = value
            result["seconds"] = time.perf_counter() - start - result.get("evaluator", {}).get("seconds", 0.0)
        return result

    def _generate(self, G_ema: torch.nn.Module, three_d: GeneratorMetrics | None, neural_rendering_resolution: int
                  ) -> tuple[FeatureStatistics | None, dict[int, torch.Tensor], float]:
        """This rank's chunks of generated images: their feature statistics (None without a feature network),
        the features kept for KID by image index, and the evaluator's seconds (`three_d` takes the images too)."""
        q = self.config.metrics
        chunks = range(self.sync.rank, -(-q.num_generated // q.batch_size), self.sync.world_size)
        mine = FeatureStatistics(self.network.feature_dim) if self.network is not None else None
        kept, evaluator_seconds = {}, 0.0
        for done, chunk in enumerate(chunks, 1):
            first = chunk * q.batch_size
            z, c = self._latents(chunk, min(q.batch_size, q.num_generated - first))
            torch.manual_seed(step_seed(self.config.run.seed, QUALITY_SEED_KEY, chunk, 1))  # the synthesis noise
            output = G_ema(z, c, neural_rendering_resolution=neural_rendering_resolution)
            if mine is not None:
                features = self._features(output["image"].float().clamp(-1, 1))
                mine.add(features)
                if first < KEPT_FEATURES:
                    kept[first] = features[:KEPT_FEATURES - first].float()
            if three_d is not None:
                evaluator_start = time.perf_counter()
                three_d.add_images(output, c)
                evaluator_seconds += time.perf_counter() - evaluator_start
            self.progress("generated images", done, len(chunks))
        return mine, kept, evaluator_seconds

    def _object(self, index: int) -> torch.Tensor:
        """z [1, z_dim] of consistency object `index`, seeded by it."""
        generator = torch.Generator().manual_seed(step_seed(self.config.run.seed, QUALITY_SEED_KEY, index, 2))
        return torch.randn(1, self.config.model.z_dim, generator=generator).to(self.device)

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


def record_values(result: dict, nimg: int) -> dict:
    """The log-record keys of a measurement of the snapshot at `nimg` images: FID/KID by name only for the
    Inception network; the evaluator's values under their own names (never "fid"), with its floor."""
    values = {}
    extractor = result.get("extractor")
    distances = {key: result[key] for key in ("frechet_distance", "kernel_distance") if key in result}
    if extractor is not None and distances:  # none when neither could be computed (QualityMeter's skip_failed)
        values.update({f"{key}/{extractor}": value for key, value in distances.items()})
        values.update({f"quality_seconds/{extractor}": result["seconds"], f"quality_nimg/{extractor}": nimg})
        if extractor == "inception_v3":
            values.update({{"frechet_distance": "fid", "kernel_distance": "kid"}[k]: v for k, v in distances.items()})
    evaluator = result.get("evaluator")
    if evaluator is not None:
        values.update({key: evaluator[key] for key in EVALUATOR_KEYS if evaluator.get(key) is not None})
        values.update({f"evaluator_floor/{key}": value for key, value in evaluator["floor"].items()
                       if key in ("pose_error_deg", "depth_error")})
        values.update({"quality_seconds/evaluator": evaluator["seconds"], "quality_nimg/evaluator": nimg})
    return values


EVALUATOR_KEYS = ("fd_data", "pose_error_deg", "depth_error", "consistency_raw", "consistency_final")
