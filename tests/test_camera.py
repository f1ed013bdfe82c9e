"""Camera conventions: look-at, orbit cameras, mirrored labels and pixel rays.

Every expected value is derived by hand or recomputed independently in float64 numpy.
"""

import math

import numpy as np
import pytest
import torch

from eg3d.networks.camera import (FFHQ_FOCAL, FFHQ_RADIUS, look_at, make_label, mirror_label, orbit_camera,
                                  pixel_rays, split_label)


def random_cameras(rng, n, *, principal_half=False, skew=False):
    """Labels [n,25] (float32) for look-at cameras at random positions with random intrinsics."""
    origins = rng.normal(size=(n, 3))
    origins = origins / np.linalg.norm(origins, axis=1, keepdims=True) * rng.uniform(1.5, 4.0, size=(n, 1))
    targets = rng.uniform(-0.3, 0.3, size=(n, 3))
    cam2world = look_at(torch.tensor(origins, dtype=torch.float32), torch.tensor(targets, dtype=torch.float32))
    K = np.zeros((n, 3, 3))
    K[:, 0, 0] = rng.uniform(1.5, 5.0, size=n)
    K[:, 1, 1] = rng.uniform(1.5, 5.0, size=n)
    K[:, 0, 2] = 0.5 if principal_half else rng.uniform(0.4, 0.6, size=n)
    K[:, 1, 2] = 0.5 if principal_half else rng.uniform(0.4, 0.6, size=n)
    if skew:
        K[:, 0, 1] = rng.uniform(-0.1, 0.1, size=n)
    K[:, 2, 2] = 1.0
    return make_label(cam2world, torch.tensor(K, dtype=torch.float32)), origins, targets


def project(cam2world, K, points):
    """World points [M,3] -> normalized pixel coordinates [M,2] (float64, via world2cam and K)."""
    world2cam = np.linalg.inv(np.asarray(cam2world, dtype=np.float64))
    cam = points @ world2cam[:3, :3].T + world2cam[:3, 3]
    image = cam @ np.asarray(K, dtype=np.float64).T
    return image[:, :2] / image[:, 2:]


# ----------------------------------------------------------------------------------------------- look_at

def test_look_at_frontal_camera_columns():
    cam2world = look_at(torch.tensor([[0.0, 0.0, 2.7]]), torch.zeros(1, 3))[0].numpy()
    expected = np.array([[1, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 2.7], [0, 0, 0, 1]], dtype=np.float64)
    np.testing.assert_allclose(cam2world, expected, atol=1e-6)


def test_look_at_random_origins_orthonormal_pointing_no_roll():
    rng = np.random.default_rng(0)
    origins = rng.normal(size=(64, 3)) * 3
    targets = rng.normal(size=(64, 3)) * 0.5
    cam2world = look_at(torch.tensor(origins), torch.tensor(targets)).numpy()  # float64 in, float64 out
    R = cam2world[:, :3, :3]
    np.testing.assert_allclose(R.transpose(0, 2, 1) @ R, np.broadcast_to(np.eye(3), R.shape), atol=1e-10)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-10)
    forward = (targets - origins) / np.linalg.norm(targets - origins, axis=1, keepdims=True)
    np.testing.assert_allclose(R[:, :, 2], forward, atol=1e-10)
    np.testing.assert_allclose(R[:, 1, 0], 0.0, atol=1e-10)  # right vector is horizontal: no roll
    # The camera's "down" axis points down-ish in the y-up world (no upside-down cameras).
    assert (R[:, 1, 1] <= 1e-12).all()
    np.testing.assert_allclose(cam2world[:, :3, 3], origins, atol=1e-12)
    np.testing.assert_allclose(cam2world[:, 3], np.broadcast_to([0, 0, 0, 1.0], (64, 4)), atol=0)


# ------------------------------------------------------------------------------------------ orbit_camera

def test_orbit_camera_frontal_and_intrinsics():
    c = orbit_camera(math.pi / 2, math.pi / 2)
    assert c.shape == (1, 25)
    cam2world, K = split_label(c)
    expected = np.array([[1, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 2.7], [0, 0, 0, 1]], dtype=np.float64)
    np.testing.assert_allclose(cam2world[0].numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(K[0].numpy(), [[4.2647, 0, 0.5], [0, 4.2647, 0.5], [0, 0, 1]], atol=1e-6)
    np.testing.assert_allclose(c[0, 16:].numpy(), [4.2647, 0, 0.5, 0, 4.2647, 0.5, 0, 0, 1], atol=1e-6)
    assert FFHQ_RADIUS == 2.7 and FFHQ_FOCAL == pytest.approx(4.2647)


def test_orbit_camera_hand_checked_pose():
    # yaw h = 2pi/3, pitch v = pi/4: phi = arccos(1 - 1/2) = pi/3, pi - h = pi/3.
    # origin = 2.7 * (sin(pi/3) cos(pi/3), cos(pi/3), sin(pi/3) sin(pi/3)) = 2.7 * (sqrt(3)/4, 1/2, 3/4).
    c = orbit_camera(2 * math.pi / 3, math.pi / 4)
    cam2world = split_label(c)[0][0].numpy().astype(np.float64)
    origin = 2.7 * np.array([math.sqrt(3) / 4, 0.5, 0.75])
    np.testing.assert_allclose(cam2world[:3, 3], origin, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(cam2world[:3, 3]), 2.7, atol=1e-5)
    np.testing.assert_allclose(cam2world[:3, 2], -origin / 2.7, atol=1e-5)  # looks at the origin
    np.testing.assert_allclose(cam2world[1, 0], 0.0, atol=1e-6)


def test_orbit_camera_batch_and_pivot_not_added():
    yaw = torch.tensor([math.pi / 2, 2 * math.pi / 3, 1.2])
    c = orbit_camera(yaw, math.pi / 4, pivot=(0.0, 0.0, 0.2))
    assert c.shape == (3, 25)
    cam2world = split_label(c)[0].numpy().astype(np.float64)
    h, phi = yaw.numpy().astype(np.float64), math.pi / 3
    origins = 2.7 * np.stack([np.sin(phi) * np.cos(np.pi - h), np.full(3, np.cos(phi)),
                              np.sin(phi) * np.sin(np.pi - h)], axis=1)
    np.testing.assert_allclose(cam2world[:, :3, 3], origins, atol=1e-5)
    to_pivot = np.array([0, 0, 0.2]) - origins
    np.testing.assert_allclose(cam2world[:, :3, 2], to_pivot / np.linalg.norm(to_pivot, axis=1, keepdims=True),
                               atol=1e-5)


# ------------------------------------------------------------------------------------------ mirror_label

def test_mirror_label_changes_exactly_the_listed_entries():
    c = torch.arange(1, 26, dtype=torch.float32)[None] / 32
    m = mirror_label(c)
    sign = np.ones(25)
    for i, j in [(0, 1), (0, 2), (1, 0), (2, 0), (0, 3)]:  # cam2world entries
        sign[4 * i + j] = -1
    sign[16 + 1] = -1  # skew
    expected = c[0].numpy() * sign
    expected[16 + 2] = 1 - c[0, 16 + 2].item()  # principal point x
    np.testing.assert_array_equal(m[0].numpy(), expected.astype(np.float32))
    np.testing.assert_array_equal(c.numpy(), (np.arange(1, 26, dtype=np.float32) / 32)[None])  # input untouched


def test_mirror_label_is_an_involution():
    c, _, _ = random_cameras(np.random.default_rng(1), 8, skew=True)
    np.testing.assert_allclose(mirror_label(mirror_label(c)).numpy(), c.numpy(), rtol=0, atol=1e-7)


@pytest.mark.parametrize("principal_half", [True, False])
def test_mirror_label_is_the_camera_of_the_x_mirrored_world(principal_half):
    c, _, _ = random_cameras(np.random.default_rng(2), 6, principal_half=principal_half, skew=not principal_half)
    S = np.diag([-1.0, 1, 1, 1])
    rng = np.random.default_rng(3)
    for label, mirrored in zip(c.numpy().astype(np.float64), mirror_label(c).numpy().astype(np.float64)):
        M, K = label[:16].reshape(4, 4), label[16:].reshape(3, 3)
        M_mirror, K_mirror = mirrored[:16].reshape(4, 4), mirrored[16:].reshape(3, 3)
        np.testing.assert_allclose(M_mirror, S @ M @ S, atol=1e-12)
        points = rng.uniform(-0.5, 0.5, size=(20, 3))
        uv = project(M, K, points)
        uv_mirror = project(M_mirror, K_mirror, points * [-1, 1, 1])
        np.testing.assert_allclose(uv_mirror, np.stack([1 - uv[:, 0], uv[:, 1]], axis=1), atol=1e-6)


def test_mirrored_camera_rays_are_the_mirrored_rays_at_the_mirrored_pixel():
    """For random poses and intrinsics (principal point off centre, skew), the mirrored camera's ray
    through pixel (row, R-1-col) is the x-mirror of the original camera's ray through (row, col)."""
    res = 16
    c, _, _ = random_cameras(np.random.default_rng(7), 8, skew=True)
    c = c.double()
    origins, directions = pixel_rays(c, res)
    mirrored_origins, mirrored_directions = pixel_rays(mirror_label(c), res)
    flip_columns = lambda x: x.reshape(len(c), res, res, 3).flip(2).reshape(len(c), res * res, 3)
    x_mirror = torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(mirrored_origins, origins * x_mirror, rtol=0, atol=1e-12)
    torch.testing.assert_close(flip_columns(mirrored_directions), directions * x_mirror, rtol=0, atol=1e-7)


def test_mirroring_only_cam2world_is_wrong_off_centre():
    """The reference's rule (cam2world only) misses the mirrored ray by about 0.05 at cx = 0.6: the fault
    the intrinsics part of mirror_label fixes."""
    res = 16
    c = orbit_camera(math.pi / 2 + 0.3, math.pi / 2, focal=2.0).double()
    c[:, 16 + 2] = 0.6
    _, directions = pixel_rays(c, res)
    cam2world_only = c.clone()
    cam2world_only[:, [1, 2, 4, 8, 3]] *= -1
    _, wrong = pixel_rays(cam2world_only, res)
    expected = directions.reshape(1, res, res, 3).flip(2).reshape(1, -1, 3) * torch.tensor([-1.0, 1, 1]).double()
    assert (wrong - expected).norm(dim=-1).max() > 0.04
    _, right = pixel_rays(mirror_label(c), res)
    assert (right - expected).norm(dim=-1).max() < 1e-9


# -------------------------------------------------------------------------------------------- pixel_rays

@pytest.mark.parametrize("skew", [False, True])
def test_pixel_rays_match_float64_inverse_intrinsics(skew):
    res = 8
    c, origins_np, _ = random_cameras(np.random.default_rng(4), 3, skew=skew)
    origins, directions = pixel_rays(c, res)
    assert origins.shape == directions.shape == (3, res * res, 3)
    np.testing.assert_allclose(directions.norm(dim=-1).numpy(), 1.0, atol=1e-6)
    labels = c.numpy().astype(np.float64)
    for n, label in enumerate(labels):
        M, K = label[:16].reshape(4, 4), label[16:].reshape(3, 3)
        np.testing.assert_allclose(origins[n].numpy(), np.broadcast_to(M[:3, 3], (res * res, 3)), atol=1e-6)
        np.testing.assert_allclose(M[:3, 3], origins_np[n], atol=1e-6)
        for row, col in [(0, 0), (0, res - 1), (res - 1, 0), (3, 5), (res - 1, res - 1), (5, 2)]:
            u, v = (col + 0.5) / res, (row + 0.5) / res
            d = M[:3, :3] @ np.linalg.inv(K) @ np.array([u, v, 1.0])
            d /= np.linalg.norm(d)
            got = directions[n, row * res + col].numpy()
            np.testing.assert_allclose(got, d, atol=2e-6, err_msg=f"camera {n} pixel ({row},{col})")
            # Walk along the ray and project back: lands on the pixel centre.
            points = M[:3, 3] + np.array([[0.7], [2.5]]) * got.astype(np.float64)
            np.testing.assert_allclose(project(M, K, points), [[u, v], [u, v]], atol=1e-5)


def test_pixel_rays_frontal_centre_and_corners():
    # Frontal FFHQ camera: camera x = world x, camera y = -world y, forward = -z.
    res = 4
    _, directions = pixel_rays(orbit_camera(math.pi / 2, math.pi / 2), res)
    d = directions[0].numpy().astype(np.float64)
    f = 4.2647
    # Top-left pixel (row 0, col 0): u = v = 1/8 -> camera (u-0.5)/f, (v-0.5)/f, 1 -> world x<0, y>0.
    x = (0.125 - 0.5) / f
    expected = np.array([x, -x, -1.0]) / math.sqrt(2 * x * x + 1)
    np.testing.assert_allclose(d[0], expected, atol=1e-6)
    # Row 0, last column: world x > 0, y > 0 (row-major order: index 3).
    np.testing.assert_allclose(d[res - 1], expected * [-1, 1, 1], atol=1e-6)
    # Last row, first column: world y < 0.
    np.testing.assert_allclose(d[res * (res - 1)], expected * [1, -1, 1], atol=1e-6)
