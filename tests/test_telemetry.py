"""The stats reporter, the Prometheus exporter scraped over HTTP, and the record a training run produces."""

import json
import math
import socket
import urllib.request

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from distributed_helpers import run_on_workers
from eg3d.training.stats import StatsReporter, memory_usage
from monitoring.exporter import PrometheusExporter, targets_url, write_targets
from monitoring.metrics import BY_NAME, METRICS


# --- the reporter -----------------------------------------------------------------------------------------

def test_means_and_totals_are_collected_then_reset():
    stats = StatsReporter()
    stats.report("loss/G", torch.tensor([1.0, 2.0, 6.0]))
    stats.report("loss/G", 3.0)
    stats.add("seconds/Gmain", 0.25)
    stats.add("seconds/Gmain", 0.5)
    run_wide, ranks = stats.collect_all()
    assert run_wide == {"loss/G": 3.0}  # (1 + 2 + 6 + 3) / 4; totals stay per rank
    assert ranks == [{"loss/G": 3.0, "seconds/Gmain": 0.75}]
    assert stats.collect_all() == ({}, [{}])


def collect_on_worker(rank: int):
    import torch.distributed as dist

    from cluster.backends import DDPSync

    stats = StatsReporter()
    for value in range(rank + 1):  # rank 0 reports [10], rank 1 reports [10, 11]
        stats.report("loss/D", 10.0 + value)
    stats.report("nonfinite", float("inf") if rank == 1 else 0.0)
    stats.add("images", 4 * (rank + 1))
    assert dist.get_world_size() == 2
    return stats.collect_all(DDPSync())


def test_every_rank_gets_the_means_over_all_reports_and_each_ranks_own_values():
    results = run_on_workers(collect_on_worker, 2, args=())
    expected_mean = (10.0 + 10.0 + 11.0) / 3  # over every report, not the mean of the rank means
    for run_wide, ranks in results:
        assert run_wide["loss/D"] == pytest.approx(expected_mean)
        assert math.isnan(run_wide["nonfinite"])
        assert [r["loss/D"] for r in ranks] == [10.0, 10.5]
        assert [r["images"] for r in ranks] == [4.0, 8.0]


def test_resident_memory_agrees_with_the_kernel_status_file():
    rss = memory_usage(torch.device("cpu"))["memory/rss_bytes"]
    with open("/proc/self/status") as status:
        kilobytes = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    assert rss == pytest.approx(kilobytes * 1024, rel=0.05)


# --- the exporter -------------------------------------------------------------------------------------------

def scrape(exporter: PrometheusExporter) -> dict[tuple, float]:
    """{(sample name, sorted labels): value} from the exporter's /metrics, parsed by prometheus_client."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{exporter.port}/metrics", timeout=5).read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples
            if not sample.name.endswith("_created")}


def labels(rank="1", **extra):
    return tuple(sorted({"run": "demo", "rank": rank, **extra}.items()))


@pytest.fixture
def exporter():
    exporter = PrometheusExporter(run="demo", rank=1, host="127.0.0.1", port=0)
    yield exporter
    exporter.close()


def test_a_record_becomes_gauges_and_counters_on_metrics(exporter):
    record = {"nimg": 4000, "target_nimg": 10000, "world_size": 2, "blur_sigma": 1.5, "gpc_prob": None,
              "frechet_distance/random": 12.5}
    mine = {"loss/G": 0.7, "loss/D": float("nan"), "seconds/Gmain": 2.0, "skipped_steps/D": 0.0, "images": 8}
    exporter.update(record, mine)
    exporter.update({**record, "nimg": 4008}, {**mine, "seconds/Gmain": 3.0, "images": 8})
    samples = scrape(exporter)
    assert samples[("eg3d_images_seen", labels())] == 4008  # a gauge: the latest value
    assert samples[("eg3d_world_size", labels())] == 2
    assert samples[("eg3d_blur_sigma_pixels", labels())] == 1.5
    assert samples[("eg3d_loss", labels(loss="G"))] == 0.7
    assert math.isnan(samples[("eg3d_loss", labels(loss="D"))])  # the non-finite-loss alert needs to see it
    assert samples[("eg3d_phase_seconds_total", labels(phase="Gmain"))] == 5.0  # a counter: the sum
    assert samples[("eg3d_trained_images_total", labels())] == 16
    assert samples[("eg3d_nonfinite_steps_total", labels(network="D"))] == 0  # exported while still 0
    assert samples[("eg3d_frechet_distance", labels(extractor="random"))] == 12.5
    assert not any(name == "eg3d_gpc_probability" for name, _ in samples)  # None: not exported
    assert not any(name == "eg3d_gpu_memory_allocated_bytes" for name, _ in samples)  # never reported


def test_the_exporter_exports_only_catalog_metrics_with_their_declared_types(exporter):
    text = urllib.request.urlopen(f"http://127.0.0.1:{exporter.port}/metrics", timeout=5).read().decode()
    families = {family.name: family.type for family in text_string_to_metric_families(text)}
    declared = {m.name.removesuffix("_total") if m.kind == "counter" else m.name: m.kind for m in METRICS}
    assert families == declared


def test_a_taken_port_falls_back_to_a_free_one():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        exporter = PrometheusExporter(run="demo", rank=0, host="127.0.0.1", port=taken)
        try:
            assert exporter.port not in (taken, 0)
            assert scrape(exporter) == {}
        finally:
            exporter.close()


def test_targets_file_is_prometheus_file_sd(tmp_path):
    url = targets_url(str(tmp_path), "run-a")
    write_targets(url, "run-a", {0: ("127.0.0.1", 9400), 1: ("0.0.0.0", 9401)})
    groups = json.loads((tmp_path / "prometheus-targets" / "run-a.json").read_text())
    assert groups == [{"targets": ["127.0.0.1:9400"], "labels": {"run": "run-a", "rank": "0"}},
                      {"targets": ["127.0.0.1:9401"], "labels": {"run": "run-a", "rank": "1"}}]


def test_catalog_names_follow_prometheus_conventions():
    for metric in METRICS:
        assert metric.name.startswith("eg3d_") and metric.name == metric.name.lower(), metric.name
        assert (metric.kind == "counter") == metric.name.endswith("_total"), metric.name
        assert metric.kind in ("gauge", "counter")
        assert not metric.name.endswith(("_milliseconds", "_kilobytes", "_kimg")), "base units"
    assert len(BY_NAME) == len(METRICS)


def test_the_status_line_shows_a_quality_measurement_in_the_interval_it_was_taken():
    from eg3d.training.loop import status_line

    record = {"kimg": 1.2, "nimg": 1200, "target_nimg": 2000, "images_per_second": 5.0, "world_size": 2,
              "loss/G": 0.5, "loss/D": 1.25, "quality_nimg/random": 1000, "frechet_distance/random": 7.05}
    # 800 images left at 5 images/s: 160 s.
    assert status_line(record, 800) == ("kimg 1.200/2.000 (60.0%)  img/s 5.0  ETA 0:02:40  workers 2  "
                                        "G 0.500  D 1.250  random-feature FD 7.05")
    assert "FD" not in status_line(record, 1200)  # measured in an earlier interval
    record.update({"quality_nimg/inception_v3": 1200, "frechet_distance/inception_v3": 12.5})
    assert status_line(record, 1000).endswith("D 1.250  FID 12.50")


def test_the_status_line_shows_graphs_compiled_in_the_interval():
    from eg3d.training.loop import status_line

    record = {"kimg": 0.4, "nimg": 400, "target_nimg": 2000, "images_per_second": 5.0, "world_size": 1,
              "loss/G": 0.5, "loss/D": 1.25, "ranks": [{"seconds/Gmain": 9.0}]}
    assert "compiled" not in status_line(record, 0)
    record["ranks"][0].update({"compile/graphs": 11.0, "compile/seconds": 95.25})
    assert status_line(record, 0).endswith("D 1.250  compiled 11 graphs in 95.2 s")


@pytest.mark.parametrize("nimg, target_nimg, images_per_second, expected", [
    (400, 2000, 6.9, "kimg 0.400/2.000 (20.0%)  img/s 6.9  ETA 0:03:52"),  # 1600 / 6.9 = 231.9 s
    (0, 25_000_000, 32.0, "kimg 0.000/25000.000 (0.0%)  img/s 32.0  ETA 9 days, 1:00:50"),  # 781250 s
    (2000, 2000, 7.0, "kimg 2.000/2.000 (100.0%)  img/s 7.0  ETA 0:00:00"),
    (8, 2000, 0.0, "kimg 0.008/2.000 (0.4%)  img/s 0.0  ETA unknown"),
    (56, 50, 7.4, "kimg 0.056/0.050 (112.0%)  img/s 7.4  ETA 0:00:00"),  # the last batch passes the target
])
def test_progress_shows_target_percentage_speed_and_time_left(nimg, target_nimg, images_per_second, expected):
    from eg3d.training.loop import progress_text

    assert progress_text(nimg, target_nimg, images_per_second) == expected
