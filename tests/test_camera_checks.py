"""Do the cameras see the tri-plane box: hand-derived cases, a brute-force reference, and the likely fixes."""

import numpy as np
import pytest
import torch

from dataloading.camera_checks import (DEPTHS, GRID, CameraCheck, axis_distance, check_cameras, flip_yz,
                                       fraction_inside, look_at_point)
from dataloading.synthetic import random_camera
from eg3d.networks.camera import FFHQ_FOCAL, intrinsics, look_at, make_label, pixel_rays

ANY_DEPTH = CameraCheck()
FFHQ_RANGE = CameraCheck(box_warp=1.0, ray_start=2.25, ray_end=3.3)  # ffhq512, afhq512 and tiny
SHAPENET_RANGE = CameraCheck(box_warp=1.6, ray_start=0.1, ray_end=2.6)


def labels_looking_at(origins, targets, focal=FFHQ_FOCAL) -> np.ndarray:
    """float64 labels [N,25] of look-at cameras (OpenCV axes) via eg3d.networks.camera."""
    origins = torch.tensor(origins, dtype=torch.float64).reshape(-1, 3)
    targets = torch.tensor(targets, dtype=torch.float64).reshape(-1, 3).expand_as(origins)
    return make_label(look_at(origins, targets), intrinsics(focal).double().expand(len(origins), 3, 3)).numpy()


FRONTAL = labels_looking_at([0, 0, 2.7], [0, 0, 0])


def test_frontal_camera_at_ffhq_radius_sees_the_box():
    assert axis_distance(FRONTAL)[0] == pytest.approx(0, abs=1e-12)
    # Half field of view 0.5/4.2647: at the box's front face (depth 2.2) every ray is within 0.26 of the axis.
    assert fraction_inside(FRONTAL, ANY_DEPTH)[0] == 1.0
    # Samples at depths 2.25 + (k + 0.5)/16 * 1.05; the box's back face is at depth 3.2 on the axis (k <= 13:
    # 14 of 16) and at 3.2/cos(angle) = 3.23 for the corner rays (15 of 16): the fraction lies between.
    assert 14 / 16 <= fraction_inside(FRONTAL, FFHQ_RANGE)[0] <= 15 / 16
    statistics = check_cameras(FRONTAL, FFHQ_RANGE).statistics()
    assert statistics["radius"] == {"min": 2.7, "mean": 2.7, "max": 2.7}
    assert statistics["look_at_distance"] == 0 and statistics["seeing_nothing"] == 0


def test_the_same_camera_in_opengl_axes_is_rejected_and_the_flip_is_named():
    opengl = flip_yz(FRONTAL)  # looks down +z, away from the origin
    np.testing.assert_array_equal(opengl[0, :16].reshape(4, 4)[:3, :3], np.eye(3))  # hand-derived: x, y up, z back
    for check in (ANY_DEPTH, FFHQ_RANGE):
        report = check_cameras(opengl, check)
        assert report.fraction[0] == 0 and report.axis_distance[0] == pytest.approx(2.7)
        assert report.blind.tolist() == [True]
        problem = report.problem()
        assert "OpenGL" in problem and "python -m dataloading.convert" in problem
        assert "recentre" not in problem
        assert "axes flipped (OpenGL/Blender -> OpenCV) it would see" in report.blind_faults()[0]


def test_cameras_looking_at_a_point_three_units_off_are_rejected_with_recentre():
    target = np.array([3.0, 0.0, 0.0])
    yaw = np.linspace(-0.4, 0.4, 5)
    origins = target + 2.7 * np.stack([np.sin(yaw), np.zeros(5), np.cos(yaw)], axis=1)
    labels = labels_looking_at(origins, target)
    np.testing.assert_allclose(look_at_point(labels[:, :16].reshape(-1, 4, 4)), target, atol=1e-9)  # every axis passes through it
    report = check_cameras(labels, ANY_DEPTH)
    assert report.blind.all()
    # Each axis is a line through (3,0,0) from its camera; the nearest point to the origin on the forward half.
    origin_to_axis = [np.linalg.norm(np.cross(target - o, -o)) / np.linalg.norm(target - o) for o in origins]
    np.testing.assert_allclose(report.axis_distance, origin_to_axis, rtol=1e-9)
    problem = report.problem()
    assert "recentre" in problem and "(3.00, 0.00, 0.00), 3.00 from the origin" in problem
    assert "OpenGL" not in problem


def test_look_at_point_of_two_crossing_axes():
    labels = labels_looking_at([[2.0, 0.3, 0.0], [0.0, 0.3, 2.0]], [0.0, 0.3, 0.0])
    np.testing.assert_allclose(look_at_point(labels[:, :16].reshape(-1, 4, 4)), [0.0, 0.3, 0.0], atol=1e-12)


def brute_force_fraction(label: np.ndarray, check: CameraCheck) -> float:
    """The fraction, by explicit loops over eg3d.networks.camera.pixel_rays at GRID pixels (torch, not our numpy)."""
    origins, directions = pixel_rays(torch.tensor(label, dtype=torch.float64).reshape(1, 25), GRID)
    origin, half = origins[0, 0].numpy(), check.box_warp / 2
    inside = []
    for direction in directions[0].numpy():
        if check.ray_start is None:  # does any point at a positive depth lie in the box? march finely
            depths = np.linspace(0, 12, 24001)
            points = origin + depths[:, None] * direction
            inside.append(bool((np.abs(points) <= half).all(axis=1).any()))
        else:
            for k in range(DEPTHS):
                depth = check.ray_start + (k + 0.5) / DEPTHS * (check.ray_end - check.ray_start)
                inside.append(bool(all(abs(x) <= half for x in origin + depth * direction)))
    return float(np.mean(inside))


@pytest.mark.parametrize("check, radius", [(ANY_DEPTH, 2.7), (FFHQ_RANGE, 2.7), (SHAPENET_RANGE, 1.3)])
def test_fraction_inside_equals_a_brute_force_count(check, radius):
    rng = np.random.default_rng(0)
    directions = rng.normal(size=(6, 3))
    origins = radius * directions / np.linalg.norm(directions, axis=1, keepdims=True)
    targets = rng.uniform(-0.7, 0.7, size=(6, 3))  # off-centre: partial views, some of nothing
    labels = labels_looking_at(origins, targets, focal=1.7 if check is SHAPENET_RANGE else 2.5)
    labels[:, 16:] = labels[:, 16:] + np.array([0, 0.01, 0.03, 0, 0.05, -0.02, 0, 0, 0])  # skew, off-centre point
    measured = fraction_inside(labels, check)
    expected = [brute_force_fraction(label, check) for label in labels]
    np.testing.assert_allclose(measured, expected, atol=1e-12)
    assert len(set(np.round(expected, 6))) > 2  # the cases differ: a real test of the geometry


def test_pixel_intrinsics_are_named_as_the_likely_fix():
    labels = FRONTAL.copy()
    labels[0, [16, 18, 20, 21]] = [100.0, 128.0, 100.0, 128.0]  # fx, cx, fy, cy of a 256-px image, in pixels
    report = check_cameras(labels, ANY_DEPTH)
    assert report.blind.all() and "divide fx and cx by the image width" in report.problem()


def test_cameras_too_far_for_the_ray_range_are_told_to_scale():
    labels = labels_looking_at([0, 0, 6.0], [0, 0, 0])
    # Any depth: a ray hits the box's front face (depth 5.5) when |u - 0.5| / 4.2647 * 5.5 <= 0.5, true for
    # 6 of the 8 pixel centres per axis.
    assert fraction_inside(labels, ANY_DEPTH)[0] == 36 / 64
    problem = check_cameras(labels, FFHQ_RANGE).problem()
    assert "sit 6.00 from the origin" in problem and "scale the camera positions" in problem


def test_a_minority_of_blind_cameras_is_accepted_unless_strict():
    labels = np.concatenate([np.repeat(FRONTAL, 3, axis=0), flip_yz(FRONTAL)])
    report = check_cameras(labels, ANY_DEPTH)
    assert report.blind.tolist() == [False, False, False, True]
    assert report.problem() is None and "1 of 4 cameras" in report.problem(strict=True)
    assert check_cameras(np.concatenate([FRONTAL, flip_yz(FRONTAL)]), ANY_DEPTH).problem() is None  # half: kept
    assert check_cameras(np.concatenate([FRONTAL, flip_yz(FRONTAL), flip_yz(FRONTAL)]), ANY_DEPTH).problem()


def test_synthetic_cameras_see_the_box_with_every_preset_range():
    rng = np.random.default_rng(0)
    labels = np.stack([random_camera(rng) for _ in range(200)])
    for check in (ANY_DEPTH, FFHQ_RANGE):
        statistics = check_cameras(labels, check).statistics()
        assert statistics["seeing_nothing"] == 0 and statistics["fraction_inside"]["min"] > 0.85
        assert statistics["radius"]["min"] == pytest.approx(2.7, abs=1e-4)
        assert statistics["look_at_distance"] < 1e-4 and statistics["axis_distance"]["max"] < 1e-4


def test_invalid_checks_are_errors():
    with pytest.raises(ValueError, match="both"):
        CameraCheck(ray_start=2.0)
    with pytest.raises(ValueError, match="ray_start < ray_end"):
        CameraCheck(ray_start=3.0, ray_end=2.0)
    with pytest.raises(ValueError, match="box_warp"):
        CameraCheck(box_warp=0)
