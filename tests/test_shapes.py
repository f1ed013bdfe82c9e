"""Shape extraction (python -m eg3d.shapes): grid, marching cubes, world units, .mrc, the command end to end.

The analytic case: sigma = K * (R0 - |x|) crosses the level at radius R = R0 - level / K. Marching cubes
puts each vertex on a grid edge by linear interpolation of sigma; |x| is convex with second derivative at
most 1/R along any line, so a vertex lies at most h^2 / (8R) inside the sphere (h the grid spacing), never
outside. A triangle's points are within L / sqrt(3) of a vertex (L <= sqrt(3) h, its longest possible
edge in a cell), so a chord sags at most (L / sqrt(3))^2 / (2R) = h^2 / (2R) further in. The mesh therefore
lies between the radii R - 5 h^2 / (8R) and R, and so does its volume between those spheres' volumes.
"""

import math

import mrcfile
import numpy as np
import pytest
import torch
import trimesh

from model_helpers import micro_config
from eg3d import shapes
from eg3d.networks.density_grid import generator_density, grid_spacing, sample_density_grid
from eg3d.networks.generator import TriPlaneGenerator
from eg3d.networks.snapshot import save_snapshot

K, R0, LEVEL = 100.0, 0.3, 10.0
RADIUS = R0 - LEVEL / K  # 0.2 world units


def sphere_density(points: torch.Tensor) -> torch.Tensor:
    return K * (R0 - points.norm(dim=-1))


def check_sphere(mesh: trimesh.Trimesh, spacing: float):
    band = 5 * spacing ** 2 / (8 * RADIUS)
    assert mesh.is_watertight
    radii = np.linalg.norm(mesh.vertices, axis=1)
    assert RADIUS - band - 1e-6 <= radii.min() and radii.max() <= RADIUS + 1e-6, (radii.min(), radii.max())
    lower, upper = (4 / 3 * math.pi * r ** 3 for r in (RADIUS - band - 1e-6, RADIUS + 1e-6))
    assert lower <= mesh.volume <= upper, (lower, mesh.volume, upper)
    assert np.abs(mesh.centroid).max() < 1e-3 * spacing
    # Outward faces: every face normal points away from the centre.
    assert (np.einsum("ij,ij->i", mesh.face_normals, mesh.triangles_center) > 0).all()


@pytest.mark.parametrize("box_size", [1.0, 1.6])
def test_sphere_is_meshed_in_world_units(box_size):
    resolution = 64
    sigma = sample_density_grid(sphere_density, resolution=resolution, box_size=box_size, chunk=50_000).numpy()
    mesh = shapes.extract_mesh(sigma, box_size=box_size, level=LEVEL, border=shapes.reference_border(resolution))
    check_sphere(mesh, grid_spacing(resolution, box_size))


def test_an_off_centre_sphere_stays_where_it_is():
    """The grid's x, y and z are the world's: a sphere at (0.1, -0.05, 0.02) comes back there."""
    centre = torch.tensor([0.1, -0.05, 0.02])
    sigma = sample_density_grid(lambda p: sphere_density(p - centre), resolution=48, box_size=1.0).numpy()
    assert np.unravel_index(sigma.argmax(), sigma.shape) == tuple(round((c + 0.5) * 47) for c in centre.tolist())
    mesh = shapes.extract_mesh(sigma, box_size=1.0, level=LEVEL, border=0)
    np.testing.assert_allclose(mesh.centroid, centre.numpy(), atol=1e-3)


def test_chunks_give_the_same_grid_as_one_forward():
    whole = sample_density_grid(sphere_density, resolution=20, box_size=1.6, chunk=20 ** 3)
    chunked = sample_density_grid(sphere_density, resolution=20, box_size=1.6, chunk=777)
    assert torch.equal(whole, chunked)


def test_the_border_closes_a_surface_that_leaves_the_box():
    """A slab crossing the whole box: without trimming it would be open at the box faces."""
    sigma = sample_density_grid(lambda p: K * (0.1 - p[:, 1].abs()), resolution=32, box_size=1.0).numpy()
    mesh = shapes.extract_mesh(sigma, box_size=1.0, level=0.0, border=0)
    assert mesh.is_watertight and mesh.volume > 0
    assert shapes.extract_mesh(sigma, box_size=1.0, level=1e4, border=2) is None  # never reaches the level


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    config = micro_config()
    torch.manual_seed(0)
    G = TriPlaneGenerator(config.model, config.rendering).eval()
    return save_snapshot(G, config, tmp_path_factory.mktemp("snapshot")), G


def test_command_writes_the_sphere_and_its_volume(snapshot, tmp_path, monkeypatch):
    """The command's files for an analytic density: .ply/.obj in world units, .mrc in MRC axis order."""
    directory, G = snapshot
    monkeypatch.setattr(shapes, "generator_density", lambda G, ws: sphere_density)
    resolution, box_size = 40, G.rendering_config.box_warp
    assert shapes.main([str(directory), "--seeds", "3", "--resolution", str(resolution), "--out", str(tmp_path),
                        "--obj", "--mrc", "--chunk", "5000", "--quiet"]) == 0
    spacing = grid_spacing(resolution, box_size)
    for suffix in (".ply", ".obj"):
        check_sphere(trimesh.load(tmp_path / f"seed0003{suffix}", process=suffix == ".obj"), spacing)
    expected = sample_density_grid(sphere_density, resolution=resolution, box_size=box_size).numpy()
    with mrcfile.open(tmp_path / "seed0003.mrc") as mrc:
        assert mrc.data.shape == (resolution,) * 3
        np.testing.assert_array_equal(mrc.data.transpose(2, 1, 0), expected)  # MRC stores [z, y, x]
        np.testing.assert_allclose(mrc.voxel_size.tolist(), [spacing] * 3, rtol=1e-6)
        np.testing.assert_allclose([mrc.header.origin[a] for a in "xyz"], [-box_size / 2] * 3, rtol=1e-6)


def test_command_runs_a_real_generator_end_to_end(snapshot, tmp_path):
    directory, G = snapshot
    resolution = 16
    # An untrained generator's sigma is small: pick a level inside its range, from the same grid.
    ws = shapes.seed_ws(G, 1, truncation_psi=0.7, truncation_cutoff=14, device="cpu")
    sigma = sample_density_grid(generator_density(G, ws), resolution=resolution, box_size=1.0).numpy()
    level = float(np.median(sigma[2:-2, 2:-2, 2:-2]))
    assert shapes.main([str(directory), "--seeds", "1-2", "--resolution", str(resolution), "--out", str(tmp_path),
                        "--level", str(level), "--mrc", "--colors", "--largest-component", "--faces", "60",
                        "--quiet"]) == 0
    with mrcfile.open(tmp_path / "seed0001.mrc") as mrc:
        np.testing.assert_array_equal(mrc.data.transpose(2, 1, 0), sigma)  # z and w reproduced from the seed
    mesh = trimesh.load(tmp_path / "seed0001.ply")
    assert 0 < len(mesh.faces) <= 60 and len(mesh.split(only_watertight=False)) == 1
    assert mesh.visual.vertex_colors.shape == (len(mesh.vertices), 4)
    assert (tmp_path / "seed0002.ply").is_file()


@pytest.mark.parametrize("value", ["4", "x"])
def test_a_bad_resolution_exits_2_naming_the_option(snapshot, tmp_path, capsys, value):
    with pytest.raises(SystemExit) as exit_info:
        shapes.main([str(snapshot[0]), "--resolution", value, "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "--resolution" in capsys.readouterr().err
