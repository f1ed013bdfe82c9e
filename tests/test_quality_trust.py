"""The 3D quality metrics can be trusted: on the embedded default's data and snapshots of its run at 2, 8 and
16 kimg (kept in tests/assets/tiny-run with float16 weights), measured over 3 evaluation seeds,

- real held-out images sit at the evaluator's floor (fd_data near zero against the trained generator's);
- an untrained generator is clearly worse than the final snapshot in every metric (by 5 standard deviations);
- a generator broken on purpose (eg3d.metrics.sensitivity) is clearly worse in the metric it breaks: the
  final snapshot with its camera ignored or mirrored, flat, or in greyscale, and the data's own renderer (a
  perfect 3D generator) made flat;
- over the run, fd_data, pose_error_deg and depth_error improve or hold within their noise.

The evaluator is trained here on the rendered data set, as a run trains it (about a minute), once per session.
"""

import statistics
from pathlib import Path

import pytest
import torch

from dataloading.build import build
from dataloading.synthetic import generate_dataset
from eg3d.evaluate import measure, snapshot_config
from eg3d.metrics.consistency import view_pairs
from eg3d.metrics.sensitivity import CameraIgnored, CameraMirrored, DataRenderer, FlatDepth, Greyscale
from eg3d.networks.generator import TriPlaneGenerator
from eg3d.networks.snapshot import load_generator

pytestmark = pytest.mark.slow

ASSETS = Path(__file__).parent / "assets" / "tiny-run"
SNAPSHOTS = sorted(ASSETS.glob("snapshot-*"))
SEEDS = (0, 1, 2)
METRICS = ("fd_data", "pose_error_deg", "depth_error", "consistency_raw", "consistency_final")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> str:
    """The embedded default's data set (the tiny preset's synthetic images), sharded."""
    config = snapshot_config(str(SNAPSHOTS[-1]))
    root = tmp_path_factory.mktemp("tiny-data")
    generate_dataset(root / "data", count=config.data.synthetic_count, resolution=config.model.image_resolution,
                     seed=config.run.seed, workers=2)
    build(str(root / "data"), str(root / "shards"), workers=2, progress=False)
    return str(root / "shards" / "manifest.json")


def measured(G, manifest: str, **sample) -> dict[str, list[float]]:
    """Every metric over SEEDS, and the floor; `sample`: eg3d.evaluate.measure's num_generated and objects."""
    config = snapshot_config(str(SNAPSHOTS[-1]))
    runs = [measure(G, config, manifest, seed=seed, log=lambda _: None, progress=lambda *_: None, **sample)
            for seed in SEEDS]
    values = {metric: [run[metric] for run in runs] for metric in METRICS}
    values["floor"] = runs[0]["floor"]
    return values


@pytest.fixture(scope="module")
def final(manifest) -> dict:
    return measured(load_generator(SNAPSHOTS[-1]), manifest)


def clearly_worse(worse: list[float], better: list[float], sigmas: float = 5.0) -> bool:
    """The means differ by at least `sigmas` times the larger of the two standard deviations over seeds."""
    spread = max(statistics.stdev(worse), statistics.stdev(better), 1e-12)
    return statistics.mean(worse) - statistics.mean(better) >= sigmas * spread


def test_the_assets_are_the_run_the_readme_shows():
    assert [path.name for path in SNAPSHOTS] == [f"snapshot-{kimg * 1000:09d}" for kimg in (2, 8, 16)]


def test_real_held_out_images_sit_at_the_floor(final):
    floor = final["floor"]
    assert floor["fd_data"] < 0.25 * min(final["fd_data"])  # held-out real against real: near zero, relatively
    assert floor["pose_error_deg"] <= min(final["pose_error_deg"])
    assert floor["depth_error"] <= min(final["depth_error"])
    assert floor["class_accuracy"] > 0.8


def test_an_untrained_generator_is_clearly_worse_in_every_metric(final, manifest):
    config = snapshot_config(str(SNAPSHOTS[-1]))
    torch.manual_seed(0)
    untrained = measured(TriPlaneGenerator(config.model, config.rendering).eval().requires_grad_(False), manifest)
    for metric in METRICS:
        assert clearly_worse(untrained[metric], final[metric]), (metric, untrained[metric], final[metric])


@pytest.mark.parametrize("broken, metrics", [
    ("camera ignored", ("pose_error_deg",)),
    ("camera mirrored", ("pose_error_deg",)),
    ("flat", ("consistency_raw",)),
    ("greyscale", ("fd_data",)),
])
def test_a_generator_broken_on_purpose_is_clearly_worse_where_it_is_broken(broken, metrics, final, manifest):
    from dataloading.shard_reader import camera_labels

    G = load_generator(SNAPSHOTS[-1])
    wrapper = {"camera ignored": lambda: CameraIgnored(G, view_pairs(torch.from_numpy(camera_labels(manifest)))[2]),
               "camera mirrored": lambda: CameraMirrored(G), "flat": lambda: FlatDepth(G),
               "greyscale": lambda: Greyscale(G)}[broken]()
    values = measured(wrapper.eval(), manifest)
    for metric in metrics:
        assert clearly_worse(values[metric], final[metric]), (metric, values[metric], final[metric])


def test_a_perfect_3d_generator_made_flat_is_clearly_worse_in_depth_and_consistency(manifest):
    """The trained tiny generator's own geometry is no better than a flat picture's (docs/monitoring.md, 3D quality), so
    flattening it shows little in depth_error; the data's own renderer, perfectly 3D, shows what it costs.
    The renderer sphere-traces on the CPU, so a quarter of the images and objects: its fd_data, from 128
    images against the floor's 200, carries more of the Frechet distance's small-sample bias, which falls
    about as 1/n with the sample size n, so the floor is scaled by 200/128 before the comparison. (On the data
    of commit 3cf56c0, seeds 0, 1, 2: 19.3, 11.3, 11.4 against a floor of 5.9, 9.2 scaled to 128 images.)"""
    config = snapshot_config(str(SNAPSHOTS[-1]))
    sample = {"num_generated": 128, "objects": 8}
    ideal = measured(DataRenderer(config), manifest, **sample)
    flat = measured(FlatDepth(DataRenderer(config)), manifest, **sample)
    assert statistics.mean(ideal["pose_error_deg"]) <= 1.2 * ideal["floor"]["pose_error_deg"]
    floor_at_this_size = ideal["floor"]["fd_data"] * ideal["floor"]["holdout_images"] / sample["num_generated"]
    assert statistics.mean(ideal["fd_data"]) <= 2 * floor_at_this_size  # its images are the data's
    for metric in ("depth_error", "consistency_raw", "consistency_final"):
        assert clearly_worse(flat[metric], ideal[metric]), (metric, flat[metric], ideal[metric])


@pytest.fixture(scope="module")
def series(final, manifest) -> list[dict]:
    return [measured(load_generator(path), manifest) for path in SNAPSHOTS[:-1]] + [final]


@pytest.mark.parametrize("metric", ["fd_data", "pose_error_deg", "depth_error"])
def test_the_metric_improves_or_holds_over_the_run(metric, series):
    """Every later snapshot (8 and 16 kimg) is no worse than the first (2 kimg) beyond the noise: three standard
    deviations of the difference of the two means over seeds. (From one snapshot to the next a GAN's generator
    moves by more than the measurement's noise, so consecutive snapshots are not compared: this run is worse
    than at 2 kimg in pose at 4 kimg and in depth at 6 (its grid there shows background in front of the
    object), and better in both from 8 on; the kept snapshots are 2, 8 and 16, docs/monitoring.md has them
    all.) The consistency values get worse over this run, as docs/monitoring.md reports: its geometry does not
    become a surface."""
    first = series[0]
    for later in series[1:]:
        noise = (statistics.variance(first[metric]) / len(SEEDS)
                 + statistics.variance(later[metric]) / len(SEEDS)) ** 0.5
        assert statistics.mean(later[metric]) <= statistics.mean(first[metric]) + 3 * noise + 1e-9, (
            metric, [statistics.mean(values[metric]) for values in series])
