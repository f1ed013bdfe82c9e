"""Quality measurement during training: real statistics and their cache, generated statistics split
over workers, and the values a training run reports (log record, snapshot metadata, Prometheus)."""

import json
import urllib.request

import numpy as np
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from model_helpers import micro_config
from dataloading.build import build
from dataloading.reference_format import ReferenceDataset
from dataloading.shard_reader import camera_labels
from dataloading.synthetic import generate_dataset
from distributed_helpers import run_on_workers
from eg3d.metrics.fid import FeatureStatistics, frechet_distance
from eg3d.metrics.quality import QualityMeter
from eg3d.networks.generator import TriPlaneGenerator
from eg3d.training.loop import train
from monitoring.exporter import PrometheusExporter
from monitoring.metrics import METRICS


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("quality-data")
    generate_dataset(root / "data", count=12, resolution=32, seed=1)
    build(str(root / "data"), str(root / "shards"), workers=1, shard_size_mb=0.006, progress=False)  # several shards
    return root


def meter(config, shards, run_url, sync=None):
    from eg3d.training.trainer import SingleProcess

    manifest = str(shards / "manifest.json")
    return QualityMeter(config, manifest_url=manifest, run_url=str(run_url),
                        camera_pool=torch.from_numpy(camera_labels(manifest)), device=torch.device("cpu"),
                        sync=sync or SingleProcess())


def generator(config):
    torch.manual_seed(3)
    return TriPlaneGenerator(config.model, config.rendering).eval()


def test_real_statistics_are_the_dataset_features_and_are_cached_next_to_the_shards(dataset, tmp_path):
    config = micro_config("metrics.num_real=10")
    quality = meter(config, dataset / "shards", tmp_path)
    real = quality.real_statistics()
    images = np.stack([ReferenceDataset(dataset / "data")[i][0] for i in range(10)])  # an independent reader
    features = quality.network(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1).double()
    assert real.count == 10
    torch.testing.assert_close(torch.as_tensor(real.mean()), features.mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.as_tensor(real.covariance()), torch.cov(features.T), rtol=1e-4, atol=1e-6)
    cache = dataset / "shards" / quality.cache_name()
    assert cache.exists()
    planted = FeatureStatistics(quality.network.feature_dim)
    planted.add(features[:3])
    cache.write_bytes(planted.to_bytes())  # the next meter must read the cache, not decode the shards again
    try:
        assert meter(config, dataset / "shards", tmp_path / "other").real_statistics().count == 3
    finally:
        cache.unlink()


def test_an_unwritable_data_folder_caches_in_the_run_folder(dataset, tmp_path, monkeypatch):
    from dataloading import storage

    config = micro_config("metrics.num_real=7")
    quality = meter(config, dataset / "shards", tmp_path)
    real_write = storage.write_bytes_atomic

    def refuse_data_folder(url, data):
        if str(dataset) in str(url):
            raise PermissionError(f"read-only: {url}")
        real_write(url, data)

    monkeypatch.setattr(storage, "write_bytes_atomic", refuse_data_folder)
    assert quality.real_statistics().count == 7
    assert (tmp_path / quality.cache_name()).exists()


def measure_on_worker(rank: int, config: dict, shards: str, run_url: str):
    import torch.distributed as dist

    from cluster.backends import DDPSync
    from eg3d.config import TrainConfig

    assert dist.get_world_size() == 2
    config = TrainConfig.from_dict(config)
    return meter(config, shards, run_url, sync=DDPSync()).measure(generator(config), neural_rendering_resolution=16)


def test_the_measurement_does_not_depend_on_the_number_of_workers(dataset, tmp_path):
    config = micro_config("metrics.num_generated=10", "metrics.batch_size=3", "metrics.kid_subset_size=5")
    one = meter(config, dataset / "shards", tmp_path / "one").measure(generator(config), neural_rendering_resolution=16)
    two = run_on_workers(measure_on_worker, 2, args=(config.to_dict(), dataset / "shards", str(tmp_path / "two")))
    assert one["num_generated"] == 10 and one["num_real"] == 12 and one["extractor"] == "random"
    for result in two:  # chunks 0, 2 on rank 0 and 1, 3 on rank 1 (the last one 1 image)
        assert result["num_generated"] == 10
        assert result["frechet_distance"] == pytest.approx(one["frechet_distance"], rel=1e-6)
        assert result["kernel_distance"] == pytest.approx(one["kernel_distance"], rel=1e-6, abs=1e-9)


def test_the_generated_statistics_are_those_of_the_seeded_images(dataset, tmp_path):
    """Recompute the distance from the same seeded generator calls, independently of the meter's bookkeeping."""
    config = micro_config("metrics.num_generated=6", "metrics.batch_size=6")
    quality = meter(config, dataset / "shards", tmp_path)
    G = generator(config)
    result = quality.measure(G, neural_rendering_resolution=16)
    z, c = quality._latents(0, 6)
    from eg3d.config.seeds import step_seed
    from eg3d.metrics.quality import QUALITY_SEED_KEY

    torch.manual_seed(step_seed(config.run.seed, QUALITY_SEED_KEY, 0, 1))
    with torch.no_grad():
        features = quality.network(G(z, c, neural_rendering_resolution=16)["image"].clamp(-1, 1)).double().numpy()
    real = quality.real_statistics()
    expected = frechet_distance(np.asarray(real.mean()), np.asarray(real.covariance()), features.mean(0),
                                np.cov(features, rowvar=False))
    assert result["frechet_distance"] == pytest.approx(expected, rel=1e-6)


def test_a_run_reports_every_catalog_metric(dataset, tmp_path):
    """The log record of a real run, through the exporter: every metric of the catalog is exported except
    those that cannot exist here (listed with the reason)."""
    config = micro_config("run.total_kimg=0.008", "run.log_kimg=0.004", "run.snapshot_kimg=0.004",
                          "run.checkpoint_kimg=0.004", "data.backend=pytorch", "model.disc_mbstd_group=2",
                          "loss.r1_interval=2", "loss.density_reg_interval=2")
    train(config, manifest_url=str(dataset / "shards" / "manifest.json"), run_url=tmp_path / "run", log=lambda _: None)
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["nimg"] for r in records] == [4, 8]
    assert sum(r["ranks"][0]["images"] for r in records) == 8
    assert records[0]["restarts"] == 0
    assert [r["checkpoint_nimg"] for r in records] == [4, 8]  # published before the interval's snapshot and record
    assert "fid" not in records[-1] and records[-1]["quality_nimg/random"] == 8  # random features: never "fid"
    metadata = json.loads((tmp_path / "run/snapshots/snapshot-000000008/config.json").read_text())["metadata"]
    assert metadata["quality"]["extractor"] == "random"
    assert metadata["quality"]["frechet_distance"] == records[-1]["frechet_distance/random"]

    exporter = PrometheusExporter(run="run", rank=0, port=0)
    try:
        for record in records:
            exporter.update(record, record["ranks"][0])
        text = urllib.request.urlopen(f"http://127.0.0.1:{exporter.port}/metrics", timeout=5).read().decode()
    finally:
        exporter.close()
    exported = {(sample.name.removesuffix("_total"), tuple(sorted(sample.labels.items())))
                for family in text_string_to_metric_families(text) for sample in family.samples}
    cannot_exist_here = {
        "eg3d_gpu_memory_allocated_bytes": "no GPU", "eg3d_gpu_memory_reserved_bytes": "no GPU",
        "eg3d_gpu_memory_peak_bytes": "no GPU",
        "eg3d_run_start_timestamp_seconds": "driver only", "eg3d_dataset_images": "driver only",
        "eg3d_data_preparation_seconds": "driver only",
    }
    for metric in METRICS:
        name = metric.name.removesuffix("_total")
        present = {dict(labels).get(metric.label) for sample_name, labels in exported if sample_name == name}
        if metric.name in cannot_exist_here:
            assert not present
        elif metric.label == "extractor":  # no Inception weights in this run; the evaluator measures too
            assert present == set(metric.values) - {"inception_v3"}, metric.name
        elif metric.label:
            assert present == set(metric.values), metric.name
        else:
            assert present == {None}, metric.name


def test_unreachable_inception_weights_fail_at_start_and_say_what_to_do(dataset, tmp_path):
    config = micro_config("metrics.extractor=inception_v3", f"metrics.inception_weights={tmp_path}/missing.pth")
    with pytest.raises(ValueError, match=r"metrics.inception_weights: .*missing.pth.*metrics.extractor=random"):
        meter(config, dataset / "shards", tmp_path)


def test_the_cache_name_tells_datasets_and_feature_networks_apart(dataset, tmp_path, monkeypatch):
    import eg3d.metrics.quality
    from eg3d.metrics.inception import RandomFeatures

    name = lambda *extra: meter(micro_config(*extra), dataset / "shards", tmp_path).cache_name()
    assert name() == name() and name() != name("metrics.random_features_seed=1") != name("metrics.num_real=5")
    monkeypatch.setattr(eg3d.metrics.quality, "feature_network", lambda *a, **k: ("inception_v3", RandomFeatures()))
    inception = lambda *extra: name("metrics.extractor=inception_v3", *extra)
    assert inception("metrics.inception_weights=a.pth") != inception("metrics.inception_weights=b.pth")
    assert inception("metrics.inception_weights=a.pth", "metrics.inception_sha256=6726825d") == \
        inception("metrics.inception_weights=b.pth", "metrics.inception_sha256=6726825d")  # same file


def test_a_resumed_run_reports_the_last_measurement_until_the_next(dataset, tmp_path):
    manifest = str(dataset / "shards" / "manifest.json")
    for kimg in (0.008, 0.016):  # measured at 8 images; the resumed run measures next at 16
        config = micro_config(f"run.total_kimg={kimg}", "run.log_kimg=0.004", "run.snapshot_kimg=0.008",
                              "run.checkpoint_kimg=0.008", "data.backend=pytorch", "model.disc_mbstd_group=2")
        train(config, manifest_url=manifest, run_url=tmp_path, log=lambda _: None)
    first, _, resumed, last = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    measured = json.loads((tmp_path / "snapshots/snapshot-000000008/config.json").read_text())["metadata"]["quality"]
    assert "quality_nimg/random" not in first  # nothing measured yet at 4 images
    assert resumed["nimg"] == 12 and resumed["restarts"] == 1
    assert resumed["quality_nimg/random"] == 8
    assert resumed["frechet_distance/random"] == measured["frechet_distance"]
    assert last["quality_nimg/random"] == 16


def test_a_one_image_data_set_checkpoints_first_and_leaves_out_what_cannot_be_measured(tmp_path):
    """One image: no covariance of 1 feature vector (FD), no KID, no evaluator (4 images needed). Each is said once
    and missing from log.jsonl; the checkpoints and snapshots are written."""
    generate_dataset(tmp_path / "data", count=1, resolution=32, seed=1)
    build(str(tmp_path / "data"), str(tmp_path / "shards"), workers=1, progress=False)
    config = micro_config("run.total_kimg=0.008", "run.log_kimg=0.004", "run.snapshot_kimg=0.004",
                          "run.checkpoint_kimg=0.004", "data.backend=pytorch", "model.disc_mbstd_group=2")
    lines = []
    train(config, manifest_url=str(tmp_path / "shards" / "manifest.json"), run_url=tmp_path / "run", log=lines.append)
    warnings = [line for line in lines if line.startswith("warning: ")]
    assert warnings == [
        "warning: the 3D quality metrics (the dataset-trained evaluator): not computed (the evaluator needs at least 4 "
        "real images (2 to train, 2 held out), got 1); missing from this measurement and log.jsonl, training goes on "
        "(said once)",
        "warning: frechet_distance (random features): not computed (statistics of 1 feature vectors; at least 2 "
        "needed); missing from this measurement and log.jsonl, training goes on (said once)",
        "warning: kernel_distance (random features): not computed (KID needs at least 2 feature vectors per set, got 1 "
        "and 8); missing from this measurement and log.jsonl, training goes on (said once)"]  # at 4 images, not at 8
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["checkpoint_nimg"] for r in records] == [4, 8]
    assert not any(key.startswith(("frechet_distance", "kernel_distance", "quality_", "fd_data", "pose_error"))
                   for r in records for key in r)
    for nimg in (4, 8):
        metadata = json.loads((tmp_path / f"run/snapshots/snapshot-00000000{nimg}/config.json").read_text())["metadata"]
        assert set(metadata["quality"]) == {"extractor", "num_real", "num_generated", "seconds"}  # no distance


def test_a_sample_too_small_for_a_metric_leaves_it_out_or_raises(dataset, tmp_path):
    """One generated image has no covariance (FD) and is too few for KID (2 per set): a training run leaves both
    out; the evaluate command (skip_failed off) raises. The same for an empty real sample."""
    config = micro_config("metrics.num_generated=1", "evaluator.enabled=false")
    quality = meter(config, dataset / "shards", tmp_path)
    with pytest.raises(ValueError, match="statistics of 1 feature vectors; at least 2 needed"):
        quality.measure(generator(config), neural_rendering_resolution=16)
    quality.skip_failed = True
    result = quality.measure(generator(config), neural_rendering_resolution=16)
    assert result["num_generated"] == 1 and "frechet_distance" not in result and "kernel_distance" not in result
    quality._real = FeatureStatistics(quality.network.feature_dim)  # an empty real sample
    quality.config = micro_config("metrics.num_generated=4", "evaluator.enabled=false")
    result = quality.measure(generator(config), neural_rendering_resolution=16)
    assert result["num_real"] == 0 and "frechet_distance" not in result and "kernel_distance" not in result
