"""The dataset-trained evaluator's parts against hand-derived values and independent implementations: its
targets and errors, the warp behind the consistency metrics (checked with the synthetic data set's own sphere
tracer), its training (deterministic) and its cache (stale files set aside, never deleted)."""

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from dataloading import synthetic
from dataloading.build import build
from dataloading.synthetic import generate_dataset
from eg3d.config import EvaluatorConfig
from eg3d.metrics import evaluator_training
from eg3d.metrics.consistency import (consistency_sums, normalized_consistency, orbit_angles, plane_depth, project,
                                      view_pairs, warp)
from eg3d.metrics.evaluator import (UNCORRELATED_DEPTH_ERROR, Evaluator, EvaluatorShape, angle_degrees,
                                    colour_histogram, depth_errors, resample_map, view_direction, z_depth)
from eg3d.metrics.evaluator_training import (cache_name, dataset_digest, gaussian_blur, holdout_split,
                                             prepare_evaluator)
from eg3d.networks.camera import FFHQ_FOCAL, FFHQ_RADIUS, orbit_camera, pixel_rays

SMALL = EvaluatorConfig(resolution=32, kimg=0.064, batch_size=8, holdout=0.25)


# --- targets and errors ----------------------------------------------------------------------------------

def test_the_view_direction_is_the_optical_axis():
    frontal = orbit_camera([math.pi / 2], [math.pi / 2])  # on +z, looking at the origin: along -z
    torch.testing.assert_close(view_direction(frontal), torch.tensor([[0.0, 0.0, -1.0]]), atol=1e-6, rtol=0)
    turned = orbit_camera([math.pi / 2 + 0.3], [math.pi / 2])  # 0.3 rad of yaw: the axis turns by 0.3 rad
    assert float(angle_degrees(view_direction(frontal), view_direction(turned))) == pytest.approx(
        math.degrees(0.3), abs=1e-4)


def test_angles_are_accurate_at_zero_and_at_small_angles():
    a = torch.tensor([[1.0, 0.0, 0.0]] * 3)
    b = torch.tensor([[1.0, 0.0, 0.0], [math.cos(1e-4), math.sin(1e-4), 0.0], [-1.0, 0.0, 0.0]])
    torch.testing.assert_close(angle_degrees(a, b), torch.tensor([0.0, math.degrees(1e-4), 180.0],
                                                                 dtype=torch.float64), atol=1e-6, rtol=1e-4)


def test_depth_error_is_zero_up_to_an_affine_map_four_when_reversed_and_two_when_unrelated():
    generator = torch.Generator().manual_seed(0)
    depth = torch.rand(3, 16, 16, generator=generator, dtype=torch.float64)
    mask = torch.ones(3, 16, 16, dtype=torch.bool)
    assert depth_errors(2.5 * depth + 7, depth, mask).max() < 1e-12
    torch.testing.assert_close(depth_errors(-depth, depth, mask), torch.full((3,), 4.0, dtype=torch.float64))
    unrelated = depth_errors(torch.rand(3, 256, 256, generator=generator, dtype=torch.float64),
                             torch.rand(3, 256, 256, generator=generator, dtype=torch.float64),
                             torch.ones(3, 256, 256, dtype=torch.bool))
    torch.testing.assert_close(unrelated, torch.full((3,), 2.0, dtype=torch.float64), atol=0.03, rtol=0)


def test_depth_error_uses_only_the_masked_finite_pixels_and_needs_a_few():
    depth = torch.arange(16.0, dtype=torch.float64).reshape(1, 4, 4)
    reference = depth.clone()
    reference[0, 0] = float("nan")  # a silhouette pixel of the ground truth
    predicted = depth.clone()
    predicted[0, 0] = 1e6  # wrong where the reference has nothing: must not count
    predicted[0, 3] = -50.0  # wrong outside the mask: must not count
    mask = torch.ones(1, 4, 4, dtype=torch.bool)
    mask[0, 3] = False
    assert float(depth_errors(predicted, reference, mask)) < 1e-12
    few = torch.zeros(1, 4, 4, dtype=torch.bool)
    few[0, 1, :3] = True  # 3 pixels
    assert float(depth_errors(predicted, reference, few)) == UNCORRELATED_DEPTH_ERROR


def test_the_colour_histogram_counts_pixels_per_bin():
    image = torch.zeros(1, 3, 2, 2, dtype=torch.uint8)
    image[0, 0] = 255  # pure red: bin (3, 0, 0) = 48
    image[0, :, 1, 1] = torch.tensor([64, 128, 191], dtype=torch.uint8)  # bin (1, 2, 2) = 16 + 8 + 2 = 26
    expected = torch.zeros(1, 64)
    expected[0, 48], expected[0, 26] = 0.75, 0.25
    torch.testing.assert_close(colour_histogram(image), expected)


def test_resample_map_averages_down_and_a_nan_spoils_its_cell():
    values = torch.arange(16.0).reshape(1, 4, 4)
    values[0, 0, 1] = float("nan")
    small = resample_map(values, 2)
    assert torch.isnan(small[0, 0, 0]) and not torch.isnan(small[0, 1:, :]).any()
    assert float(small[0, 1, 1]) == (10 + 11 + 14 + 15) / 4


def test_the_blur_matches_scipy():
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(2, 3, 12, 12, generator=generator, dtype=torch.float64)
    sigma = torch.tensor([0.7, 1.3], dtype=torch.float64)
    blurred = gaussian_blur(images, sigma)
    for n in range(2):
        for c in range(3):  # scipy's "mirror" is torch's "reflect"; radius 3 taps as ours
            expected = ndimage.gaussian_filter(images[n, c].numpy(), float(sigma[n]), mode="mirror",
                                               truncate=3 / float(sigma[n]))
            np.testing.assert_allclose(blurred[n, c].numpy(), expected, atol=1e-12)
    torch.testing.assert_close(gaussian_blur(images, torch.zeros(2, dtype=torch.float64)), images)


def test_the_network_sees_any_input_size_and_has_the_heads_it_is_asked_for():
    network = Evaluator(EvaluatorShape(resolution=32, num_classes=6, depth=True)).eval()
    out = network(torch.zeros(2, 3, 64, 64, dtype=torch.uint8))
    assert out.features.shape == (2, network.feature_dim) and out.class_logits.shape == (2, 6)
    assert out.depth.shape == out.foreground_logits.shape == (2, 16, 16)
    torch.testing.assert_close(out.view_direction.norm(dim=1), torch.ones(2))
    bare = Evaluator(EvaluatorShape(resolution=32, num_classes=0, depth=False)).eval()(torch.zeros(1, 3, 32, 32))
    assert bare.class_logits is None and bare.depth is None
    with pytest.raises(ValueError, match="power of two"):
        Evaluator(EvaluatorShape(resolution=48, num_classes=0, depth=False))


# --- the views and the warp ------------------------------------------------------------------------------

def test_projection_inverts_the_pixel_rays():
    cameras = orbit_camera(torch.tensor([1.2, 1.9]), torch.tensor([1.4, 1.7]), pivot=(0.0, 0.05, 0.1))
    origins, directions = pixel_rays(cameras.double(), 8)
    depth = 2.0 + torch.rand(2, 64, 1, dtype=torch.float64)
    uv, distance, in_front = project(origins + directions * depth, cameras.double())
    centres = (torch.arange(8, dtype=torch.float64) + 0.5) / 8
    v, u = torch.meshgrid(centres, centres, indexing="ij")
    torch.testing.assert_close(uv, torch.stack([u, v], -1).reshape(1, 64, 2).expand(2, 64, 2))
    torch.testing.assert_close(distance, depth[..., 0])
    assert in_front.all()


def test_orbit_angles_invert_orbit_cameras_and_the_pairs_span_the_data_range():
    generator = torch.Generator().manual_seed(2)
    yaw = math.pi / 2 + (torch.rand(400, generator=generator) - 0.5) * 1.2
    pitch = math.pi / 2 + (torch.rand(400, generator=generator) - 0.5) * 0.6
    pool = orbit_camera(yaw, pitch)
    got_yaw, got_pitch = orbit_angles(pool)
    torch.testing.assert_close(got_yaw, yaw.double(), atol=1e-5, rtol=0)
    torch.testing.assert_close(got_pitch, pitch.double(), atol=1e-5, rtol=0)
    views_a, views_b, centre = view_pairs(pool)
    (yaw_a, pitch_a), (yaw_b, pitch_b), (yaw_c, pitch_c) = orbit_angles(views_a), orbit_angles(views_b), orbit_angles(centre)
    yaw_span = float(torch.quantile(yaw.double(), 0.95) - torch.quantile(yaw.double(), 0.05))
    pitch_span = float(torch.quantile(pitch.double(), 0.95) - torch.quantile(pitch.double(), 0.05))
    torch.testing.assert_close(yaw_b - yaw_a, torch.tensor([yaw_span / 2, yaw_span, 0], dtype=torch.float64),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(pitch_b - pitch_a, torch.tensor([0, 0, pitch_span], dtype=torch.float64),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close((yaw_a + yaw_b) / 2, yaw_c.expand(3), atol=1e-5, rtol=0)
    torch.testing.assert_close((pitch_a + pitch_b) / 2, pitch_c.expand(3), atol=1e-5, rtol=0)
    assert float(centre[0, 16]) == pytest.approx(FFHQ_FOCAL)
    assert float(centre[0, :16].reshape(4, 4)[:3, 3].norm()) == pytest.approx(FFHQ_RADIUS, rel=1e-5)


def traced_views(index: int, cameras: torch.Tensor, resolution: int = 48):
    """The synthetic data set's scene `index` sphere traced from each camera: images [N, 3, R, R] in [-1, 1],
    depth [N, 1, R, R] (the background at the far plane), object masks [N, R, R]."""
    scene = synthetic.random_scene(synthetic.image_rng(0, index))
    images, depths = [], []
    for camera in cameras:
        render = synthetic.render_scene(scene, camera.numpy(), resolution)
        images.append(torch.from_numpy(render.image).permute(2, 0, 1).float() * 2 - 1)
        depths.append(torch.from_numpy(render.pixel_depth()).float())
    depth = torch.stack(depths)
    return torch.stack(images), torch.nan_to_num(depth, nan=3.3)[:, None], torch.isfinite(depth)


def test_true_depth_warps_one_view_onto_another_far_better_than_a_flat_picture():
    """The sphere tracer of the synthetic data set renders every view of a scene consistently (texture in
    object space, light in world space): warped through its own depth, view B reproduces view A far better
    than lifted by a plane facing the camera, and the plane itself scores exactly 1."""
    pool = torch.stack([torch.from_numpy(synthetic.random_camera(np.random.default_rng(i))) for i in range(200)])
    views_a, views_b, _ = view_pairs(pool)
    true_sums, flat_sums = np.zeros(2), np.zeros(2)
    for index in (5, 6, 9):  # a chequered sphere, a plain torus, a striped capsule
        image_a, depth_a, mask_a = traced_views(index, views_a)
        image_b, depth_b, mask_b = traced_views(index, views_b)
        for sums, (lift_a, lift_b) in ((true_sums, (depth_a, depth_b)),
                                       (flat_sums, (plane_depth(views_a, 48), plane_depth(views_b, 48)))):
            error, flat_error, pixels = consistency_sums(image_a, lift_a, views_a, image_b, lift_b, views_b,
                                                         mask_a=mask_a, mask_b=mask_b)
            assert (pixels > 100).all()
            sums += [float(error.sum()), float(flat_error.sum())]
    true, flat = normalized_consistency(*true_sums), normalized_consistency(*flat_sums)
    assert true < 0.3 and flat == pytest.approx(1.0, abs=1e-12), (true, flat)  # measured: 0.15


def test_z_depth_of_a_plane_facing_the_camera_is_constant():
    cameras = orbit_camera(torch.tensor([1.3, 1.8]), torch.tensor([1.5, 1.6]))
    z = z_depth(plane_depth(cameras, 16)[:, 0], cameras)
    torch.testing.assert_close(z, torch.full_like(z, FFHQ_RADIUS), atol=1e-5, rtol=0)
    depth = plane_depth(cameras, 16)[:, 0]
    assert float(depth.max() - depth.min()) > 0.01  # along the rays it is a bowl


def test_a_view_warped_onto_itself_is_exact_and_hidden_points_do_not_count():
    camera = orbit_camera([math.pi / 2], [math.pi / 2])
    image, depth, mask = traced_views(5, camera)
    warped, visible, _ = warp(image, depth, camera, depth, camera)
    torch.testing.assert_close(warped, image, atol=1e-5, rtol=0)
    assert visible.all()
    nearer = depth - 0.5  # B sees a surface half a unit in front of every point of A: all hidden
    assert not warp(image, nearer, camera, depth, camera)[1].any()
    assert normalized_consistency(0.0, 0.0) is None


# --- training and the cache ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluator-data")
    generate_dataset(root / "data", count=24, resolution=32, seed=3)
    build(str(root / "data"), str(root / "shards"), workers=1, progress=False)
    return root / "shards"


def test_the_held_out_split_is_seeded_disjoint_and_complete():
    train, held = holdout_split(40, 0.1, seed=0)
    assert len(held) == 4 and sorted(torch.cat([train, held]).tolist()) == list(range(40))
    assert torch.equal(held, holdout_split(40, 0.1, seed=0)[1]) and not torch.equal(held, holdout_split(40, 0.1, 1)[1])
    with pytest.raises(ValueError, match="at least 4 real images"):
        holdout_split(3, 0.5, 0)


def test_training_is_deterministic_for_a_seed(shards):
    data = evaluator_training.load_real_data(str(shards / "manifest.json"), 32)
    assert data.images.shape == (24, 3, 32, 32) and data.depth.shape == (24, 16, 16)
    assert data.class_names == tuple(synthetic.KINDS) and data.classes.shape == (24,)
    first = evaluator_training.train_evaluator(data, SMALL, device=torch.device("cpu"))
    second = evaluator_training.train_evaluator(data, SMALL, device=torch.device("cpu"))
    for (name, a), b in zip(first.network.state_dict().items(), second.network.state_dict().values()):
        assert torch.equal(a, b), name
    other = evaluator_training.train_evaluator(data, EvaluatorConfig(**{**SMALL.__dict__, "seed": 1}),
                                               device=torch.device("cpu"))
    assert not torch.equal(first.network.view_head.weight, other.network.view_head.weight)
    assert set(first.floor) == {"pose_error_deg", "fd_data", "depth_error", "class_accuracy", "holdout_images"}
    assert first.floor["holdout_images"] == 6 and first.real.count == 18 and first.holdout.count == 6


def test_the_cache_is_reused_and_a_stale_one_set_aside_with_the_reason(shards, tmp_path, monkeypatch):
    manifest = str(shards / "manifest.json")
    lines = []
    prepare = lambda config=SMALL: prepare_evaluator(manifest, config, cache_urls=[str(tmp_path)],
                                                     device=torch.device("cpu"), log=lines.append)
    trained, payload = prepare()
    name = cache_name(dataset_digest(evaluator_training.load_manifest(manifest)), SMALL)
    assert (tmp_path / name).read_bytes() == payload and "evaluator cached at" in lines[-1]
    lines.clear()
    again, _ = prepare()
    assert lines[0].startswith(f"evaluator from {tmp_path / name}") and again.floor == trained.floor
    version = evaluator_training.EVALUATOR_VERSION
    for problem, expected in ((b"not a torch file", "cannot be read as an evaluator"),
                              (None, f"written by evaluator version {version}, this is version 99")):
        lines.clear()
        if problem is not None:
            (tmp_path / name).write_bytes(problem)
        else:
            monkeypatch.setattr(evaluator_training, "EVALUATOR_VERSION", 99)
            monkeypatch.setattr(evaluator_training, "cache_name", lambda digest, config: name)
        prepare()
        assert expected in lines[0] and "training the evaluator again" in lines[0], lines[0]
        stale = [path for path in tmp_path.iterdir() if ".stale-" in path.name]
        assert stale and any(path.read_bytes() == (problem or payload) for path in stale)  # kept, not deleted
        payload = (tmp_path / name).read_bytes()


def test_the_cache_name_does_not_depend_on_how_a_number_was_written():
    digest = "0" * 64
    assert cache_name(digest, EvaluatorConfig(kimg=18)) == cache_name(digest, EvaluatorConfig(kimg=18.0))
    assert cache_name(digest, EvaluatorConfig(kimg=18)) != cache_name(digest, EvaluatorConfig(kimg=19))


def test_a_cache_of_another_data_set_is_not_used(shards, tmp_path):
    manifest = str(shards / "manifest.json")
    digest = dataset_digest(evaluator_training.load_manifest(manifest))
    trained, payload = prepare_evaluator(manifest, SMALL, cache_urls=[str(tmp_path / "a")],
                                         device=torch.device("cpu"), log=lambda _: None)
    with pytest.raises(evaluator_training.StaleCache, match="trained on another data set"):
        evaluator_training.from_bytes(payload, digest="0" * 64, config=SMALL, where="x")
    with pytest.raises(evaluator_training.StaleCache, match="other settings"):
        evaluator_training.from_bytes(payload, digest=digest, config=EvaluatorConfig(**{**SMALL.__dict__, "kimg": 1}),
                                      where="x")
