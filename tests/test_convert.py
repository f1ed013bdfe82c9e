"""python -m dataloading.convert: synthetic scenes round-tripped through transforms.json and COLMAP text models.

The writers here are the test's own: OpenGL axes by negating the camera's y and z columns, COLMAP's
world2cam quaternions from scipy (which orders them x, y, z, w). Expected crops are derived by hand.
"""

import json
import math
import shutil

import numpy as np
import pytest
from PIL import Image
from scipy.spatial.transform import Rotation

from dataloading.build import build
from dataloading.camera_checks import CameraCheck, check_cameras
from dataloading.convert import convert, main, quaternion_to_rotation
from dataloading.synthetic import generate_dataset
from eg3d.networks.camera import orbit_camera

FLIP_YZ = np.diag([1.0, -1.0, -1.0, 1.0])
RESOLUTION = 16


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """(image paths, float64 labels [N,25]) of a tiny synthetic data set."""
    root = tmp_path_factory.mktemp("synthetic") / "data"
    generate_dataset(root, count=4, resolution=RESOLUTION, seed=1, progress_every=10**9)
    entries = json.loads((root / "dataset.json").read_text())["labels"]
    return [root / name for name, _ in entries], np.array([label for _, label in entries])


def with_intrinsics(labels, fx, fy, cx, cy):
    """Labels with other normalized intrinsics (the converter never looks at the pixels)."""
    labels = labels.copy()
    labels[:, 16:] = [fx, 0, cx, 0, fy, cy, 0, 0, 1]
    return labels


def write_transforms(folder, labels, images, *, top=None, per_frame=None):
    """A NeRF transforms.json with OpenGL cam2world; images copied to train/r_<i>.png, named without extension."""
    (folder / "train").mkdir(parents=True)
    frames = []
    for index, (label, image) in enumerate(zip(labels, images)):
        shutil.copy(image, folder / "train" / f"r_{index}.png")
        cam2world = label[:16].reshape(4, 4) @ FLIP_YZ
        frames.append({"file_path": f"./train/r_{index}", "transform_matrix": cam2world.tolist(),
                       **(per_frame or {}).get(index, {})})
    path = folder / "transforms.json"
    path.write_text(json.dumps({**(top or {}), "frames": frames}, indent=1))
    return path


def colmap_quaternion(rotation):
    x, y, z, w = Rotation.from_matrix(rotation).as_quat().tolist()
    return w, x, y, z


def write_colmap(folder, labels, images, size):
    """A COLMAP text model in folder/sparse/0, images in folder/images as 'view <i>.png'; even images get
    a PINHOLE camera, odd ones SIMPLE_PINHOLE (which needs fx == fy). Every other image has no 2D points."""
    model, image_folder = folder / "sparse" / "0", folder / "images"
    model.mkdir(parents=True)
    image_folder.mkdir()
    cameras = ["# Camera list with one line of data per camera:", "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]"]
    lines = ["# Image list with two lines of data per image:",
             "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME", "#   POINTS2D[] as (X, Y, POINT3D_ID)"]
    for index, (label, image) in enumerate(zip(labels, images)):
        K = (label[16:].reshape(3, 3) * size).tolist()  # python floats: repr() is exact
        if index % 2 == 0:
            cameras.append(f"{index + 1} PINHOLE {size} {size} {K[0][0]!r} {K[1][1]!r} {K[0][2]!r} {K[1][2]!r}")
        else:
            assert K[0][0] == K[1][1]
            cameras.append(f"{index + 1} SIMPLE_PINHOLE {size} {size} {K[0][0]!r} {K[0][2]!r} {K[1][2]!r}")
        world2cam = np.linalg.inv(label[:16].reshape(4, 4))
        q, t = colmap_quaternion(world2cam[:3, :3]), world2cam[:3, 3].tolist()
        name = f"view {index}.png"
        shutil.copy(image, image_folder / name)
        lines.append(f"{index + 10} {' '.join(map(repr, q))} {' '.join(map(repr, t))} {index + 1} {name}")
        lines.append("12.5 3.25 -1 4.0 5.5 17" if index % 2 == 0 else "")
    (model / "cameras.txt").write_text("\n".join(cameras) + "\n")
    (model / "images.txt").write_text("\n".join(lines) + "\n")
    return model


def converted(out):
    """(float64 labels [N,25], uint8 images) of a converted folder, in name order."""
    entries = sorted(json.loads((out / "dataset.json").read_text())["labels"])
    labels = np.array([label for _, label in entries])
    return labels, [np.asarray(Image.open(out / name)) for name, _ in entries]


def assert_same_images(images, paths):
    assert len(images) == len(paths)
    for image, path in zip(images, paths):
        np.testing.assert_array_equal(image, np.asarray(Image.open(path).convert("RGB")))


def blank_images(folder, count, width, height):
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        Image.new("RGB", (width, height), (index, 2 * index, 3 * index)).save(folder / f"{index}.png")
    return [folder / f"{index}.png" for index in range(count)]


# --- round trips ----------------------------------------------------------------------------------------

def test_quaternion_matches_scipy():
    rotations = Rotation.random(20, random_state=3)
    for quaternion, matrix in zip(rotations.as_quat(), rotations.as_matrix()):
        x, y, z, w = quaternion
        np.testing.assert_allclose(quaternion_to_rotation([w, x, y, z]), matrix, atol=1e-12)
        np.testing.assert_allclose(quaternion_to_rotation([-2 * w, -2 * x, -2 * y, -2 * z]), matrix, atol=1e-12)


def test_transforms_json_with_field_of_view(synthetic, tmp_path):
    paths, labels = synthetic
    fov = 2 * math.atan(0.5 / labels[0, 16])  # horizontal: tan(fov/2) = (W/2) / fx_pixels
    source = write_transforms(tmp_path / "nerf", labels, paths, top={"camera_angle_x": fov})
    convert(source, tmp_path / "out", progress=False)
    got, images = converted(tmp_path / "out")
    np.testing.assert_allclose(got, labels, atol=1e-6)
    assert_same_images(images, paths)


def test_transforms_json_with_two_fields_of_view(synthetic, tmp_path):
    paths, labels = synthetic
    expected = with_intrinsics(labels, 1.9, 2.3, 0.5, 0.5)  # over the 16x16 centre square of 20x16 images
    images = blank_images(tmp_path / "images", len(labels), 20, 16)
    top = {"camera_angle_x": 2 * math.atan(10 / (1.9 * 16)), "camera_angle_y": 2 * math.atan(8 / (2.3 * 16))}
    convert(write_transforms(tmp_path / "nerf", expected, images, top=top), tmp_path / "out", progress=False)
    np.testing.assert_allclose(converted(tmp_path / "out")[0], expected, atol=1e-6)


def test_transforms_json_with_pixel_intrinsics(synthetic, tmp_path):
    paths, labels = synthetic
    expected = with_intrinsics(labels, 1.9, 2.1, 7 / 16, 9 / 16)
    expected[1, 16 + 2] = 8.5 / 16  # frame 1 has its own cx
    top = {"fl_x": 1.9 * 16, "fl_y": 2.1 * 16, "cx": 7.0, "cy": 9.0, "w": 16, "h": 16}
    source = write_transforms(tmp_path / "nerf", expected, paths, top=top, per_frame={1: {"cx": 8.5}})
    convert(source.parent, tmp_path / "out", progress=False)  # the folder holding transforms.json works too
    got, _ = converted(tmp_path / "out")
    np.testing.assert_allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("calibrated_size", [RESOLUTION, 2 * RESOLUTION])  # 2x: images are a downscaled copy
def test_colmap_pinhole_and_simple_pinhole(synthetic, tmp_path, calibrated_size):
    paths, labels = synthetic
    expected = labels.copy()
    expected[0::2] = with_intrinsics(labels[0::2], 1.9, 2.1, 7 / 16, 9 / 16)  # the PINHOLE cameras
    model = write_colmap(tmp_path / "project", expected, paths, calibrated_size)
    convert(model, tmp_path / "out", progress=False)  # images found at project/images
    got, images = converted(tmp_path / "out")
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert_same_images(images, paths)
    sources = json.loads((tmp_path / "out" / "dataset.json").read_text())["sources"]
    assert [s.rsplit("/", 1)[-1] for _, s in sources] == [f"view {i}.png" for i in range(len(paths))]


def test_converted_dataset_builds_without_rejects(synthetic, tmp_path):
    paths, labels = synthetic
    model = write_colmap(tmp_path / "project", labels, paths, RESOLUTION)
    convert(model, tmp_path / "out", images=tmp_path / "project" / "images", progress=False)
    manifest = build(str(tmp_path / "out"), str(tmp_path / "shards"), workers=1, progress=False)
    assert manifest["rejected"] == 0 and manifest["sample_count"] == len(paths)
    np.testing.assert_allclose(np.load(tmp_path / "shards" / "labels.npy"), labels, atol=1e-6)


# --- the world ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("up", ["+z", "auto"])
def test_moved_z_up_world_comes_back_centred(tmp_path, capsys, up):
    # Two rings of 8 cameras at radius 2.7 looking at the origin: their mean up vector is exactly +y.
    yaw = np.tile(np.linspace(0, 2 * math.pi, 8, endpoint=False), 2)
    pitch = np.repeat([math.pi / 2 - 0.3, math.pi / 2 + 0.2], 8)
    original = orbit_camera(yaw, pitch).double().numpy()
    cam2world = original[:, :16].reshape(-1, 4, 4)
    # Export into a z-up world (a quarter turn about x takes +y to +z, then a turn about z), scaled and moved.
    rotation = Rotation.from_euler("xz", [90, 40], degrees=True).as_matrix()  # extrinsic, x first
    np.testing.assert_allclose(rotation @ [0, 1, 0], [0, 0, 1], atol=1e-12)
    scale, translation = 0.37, np.array([1.5, -2.0, 0.7])
    moved = cam2world.copy()
    moved[:, :3, :3] = rotation @ cam2world[:, :3, :3]
    moved[:, :3, 3] = scale * cam2world[:, :3, 3] @ rotation.T + translation
    labels = np.concatenate([moved.reshape(-1, 16), original[:, 16:]], axis=1)
    images = blank_images(tmp_path / "images", len(labels), 8, 8)
    source = write_transforms(tmp_path / "nerf", labels, images, top={"camera_angle_x": 0.5})

    main([str(source), str(tmp_path / "out"), "--up", up, "--recenter", "--radius", "2.7"])
    got = converted(tmp_path / "out")[0][:, :16].reshape(-1, 4, 4)
    centres, forward = got[:, :3, 3], got[:, :3, 2]
    np.testing.assert_allclose(np.linalg.norm(centres, axis=1), 2.7, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(np.cross(centres, forward), axis=1), 0, atol=1e-6)  # axes hit 0
    assert (np.einsum("ij,ij->i", centres, forward) < 0).all()  # looking at the origin, not away
    # Up is +y again: heights and the cameras' tilt are the original ones (only a turn about y remains).
    np.testing.assert_allclose(centres[:, 1], cam2world[:, 1, 3], atol=1e-6)
    np.testing.assert_allclose(got[:, 1, :3], cam2world[:, 1, :3], atol=1e-6)
    printed = capsys.readouterr().out
    assert "16 images" in printed and "min 2.7, mean 2.7, max 2.7" in printed
    assert f"python -m dataloading.build {tmp_path / 'out'} SHARDS" in printed


def test_blender_scene_sees_the_ffhq_box_only_after_conversion(tmp_path):
    """A z-up, moved and scaled NeRF export of FFHQ-like cameras: read as EG3D labels it would see nothing of
    the box at ffhq512's ray range; converted with --up auto --recenter --radius 2.7 every camera passes the
    build's camera check at that range."""
    yaw = np.linspace(math.pi / 2 - 0.6, math.pi / 2 + 0.6, 12)
    original = orbit_camera(yaw, math.pi / 2 + 0.1, focal=4.2647).double().numpy()
    cam2world = original[:, :16].reshape(-1, 4, 4)
    rotation = Rotation.from_euler("x", 90, degrees=True).as_matrix()  # y-up -> z-up
    moved = cam2world.copy()
    moved[:, :3, :3] = rotation @ cam2world[:, :3, :3]
    moved[:, :3, 3] = 0.5 * cam2world[:, :3, 3] @ rotation.T + [3.0, 1.0, -2.0]
    labels = np.concatenate([moved.reshape(-1, 16), original[:, 16:]], axis=1)
    source = write_transforms(tmp_path / "nerf", labels, blank_images(tmp_path / "images", 12, 8, 8),
                              top={"camera_angle_x": 2 * math.atan(0.5 / 4.2647)})
    ffhq = CameraCheck(box_warp=1.0, ray_start=2.25, ray_end=3.3)
    as_given = json.loads(source.read_text())["frames"]
    raw = np.array([np.concatenate([np.ravel(f["transform_matrix"]), original[0, 16:]]) for f in as_given])
    assert check_cameras(raw, ffhq).blind.all()

    main([str(source), str(tmp_path / "out"), "--up", "auto", "--recenter", "--radius", "2.7"])
    report = check_cameras(converted(tmp_path / "out")[0], ffhq)
    assert not report.blind.any() and report.fraction.min() > 0.5 and report.problem(strict=True) is None
    manifest = build(str(tmp_path / "out"), str(tmp_path / "shards"), camera_check=ffhq, workers=1, progress=False)
    assert manifest["rejected"] == 0 and manifest["cameras"]["seeing_nothing"] == 0


def test_reference_dataset_with_opengl_labels_comes_back_in_opencv_axes(synthetic, tmp_path, capsys):
    """An EG3D-format dataset whose labels used OpenGL axes (a common slip): convert --axes opengl turns
    them back into the original labels, and the images are kept pixel for pixel."""
    paths, labels = synthetic
    source = tmp_path / "flipped"
    source.mkdir()
    for path in paths:
        shutil.copy(path, source / path.name)
    flipped = labels.copy()
    flipped[:, :16] = (labels[:, :16].reshape(-1, 4, 4) @ FLIP_YZ).reshape(-1, 16)
    entries = [[path.name, label.tolist()] for path, label in zip(paths, flipped)]
    (source / "dataset.json").write_text(json.dumps({"labels": entries}))
    main([str(source), str(tmp_path / "out"), "--axes", "opengl"])
    got, images = converted(tmp_path / "out")
    np.testing.assert_allclose(got, labels, atol=1e-9)
    assert_same_images(images, paths)
    assert "note:" not in capsys.readouterr().out  # the synthetic world is already EG3D's
    with pytest.raises(ValueError, match="--axes is for datasets in the reference format"):
        convert(write_transforms(tmp_path / "nerf", labels, paths, top={"camera_angle_x": 0.4}),
                tmp_path / "other", axes="opengl", progress=False)


def test_summary_notes_a_world_the_presets_cannot_render(synthetic, tmp_path, capsys):
    paths, labels = synthetic
    moved = labels.copy()
    moved[:, [3, 7, 11]] = moved[:, [3, 7, 11]] * 3 + [5.0, 0.0, 0.0]  # 8.1 away, looking at (5, 0, 0)
    source = write_transforms(tmp_path / "nerf", moved, paths, top={"camera_angle_x": 0.4})
    main([str(source), str(tmp_path / "out"), "--resolution", str(2 * RESOLUTION)])
    out = capsys.readouterr().out
    assert "note: the cameras look at a point far from the origin" in out and "add --recenter" in out
    assert "add --radius 2.7" in out
    assert f"note: 4 images were smaller than --resolution {2 * RESOLUTION} and were upscaled" in out


def test_exif_orientation_is_not_applied(tmp_path):
    """COLMAP and NeRF tools solve cameras on the stored pixels, ignoring EXIF orientation: the importer
    keeps that layout (a turned image would no longer match its camera) and writes no orientation tag."""
    pixels = np.zeros((16, 16, 3), np.uint8)
    pixels[:8] = 255  # a white top half
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    (tmp_path / "src").mkdir()
    Image.fromarray(pixels).save(tmp_path / "src" / "a.jpg", exif=exif.tobytes(), quality=100)
    frame = {"file_path": "src/a.jpg", "transform_matrix": np.eye(4).tolist()}
    (tmp_path / "transforms.json").write_text(json.dumps({"camera_angle_x": 0.5, "frames": [frame]}))
    main([str(tmp_path / "transforms.json"), str(tmp_path / "out")])
    name = json.loads((tmp_path / "out" / "dataset.json").read_text())["labels"][0][0]
    with Image.open(tmp_path / "out" / name) as image:
        assert 0x0112 not in image.getexif()
        stored = np.asarray(image)
    assert stored[:6].min() > 200 and stored[10:].max() < 50  # still the top half, not the left or right


# --- crops ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("width, height, cx, cy, expected_cx, expected_cy", [
    (41, 20, 22.0, 9.0, 12 / 20, 9 / 20),   # crop left = (41 - 20) // 2 = 10, top = 0
    (20, 41, 9.0, 22.0, 9 / 20, 12 / 20),   # crop left = 0, top = 10
])
def test_crop_shifts_principal_point(tmp_path, width, height, cx, cy, expected_cx, expected_cy):
    x, y = np.meshgrid(np.arange(width), np.arange(height))
    pixels = np.stack([x * 6, y * 6, np.full_like(x, 100)], axis=-1).astype(np.uint8)
    (tmp_path / "src").mkdir()
    Image.fromarray(pixels).save(tmp_path / "src" / "a.png")
    meta = {"fl_x": 30.0, "fl_y": 32.0, "cx": cx, "cy": cy, "w": width, "h": height,
            "frames": [{"file_path": "a.png", "transform_matrix": np.eye(4).tolist()}]}
    (tmp_path / "src" / "transforms.json").write_text(json.dumps(meta))
    expected_K = [30 / 20, 0, expected_cx, 0, 32 / 20, expected_cy, 0, 0, 1]

    convert(tmp_path / "src" / "transforms.json", tmp_path / "square", progress=False)
    labels, images = converted(tmp_path / "square")
    np.testing.assert_allclose(labels[0, 16:], expected_K, atol=1e-12)
    np.testing.assert_allclose(labels[0, :16], FLIP_YZ.reshape(16), atol=0)  # identity OpenGL pose
    left, top = (10, 0) if width > height else (0, 10)
    np.testing.assert_array_equal(images[0], pixels[top:top + 20, left:left + 20])

    convert(tmp_path / "src" / "transforms.json", tmp_path / "small", resolution=8, progress=False)
    labels, images = converted(tmp_path / "small")
    np.testing.assert_allclose(labels[0, 16:], expected_K, atol=1e-12)  # a resize keeps normalized intrinsics
    assert images[0].shape == (8, 8, 3)


def test_transparent_pixels_get_the_background(tmp_path):
    pixels = np.zeros((4, 4, 4), dtype=np.uint8)
    pixels[:2] = (200, 100, 50, 255)  # top half opaque, bottom half fully transparent black
    Image.fromarray(pixels, "RGBA").save(tmp_path / "a.png")
    frames = [{"file_path": "a", "transform_matrix": np.eye(4).tolist()}]
    (tmp_path / "transforms.json").write_text(json.dumps({"camera_angle_x": 0.6, "frames": frames}))
    for background, value in (("white", 255), ("black", 0)):
        convert(tmp_path / "transforms.json", tmp_path / background, background=background, progress=False)
        image = converted(tmp_path / background)[1][0]
        np.testing.assert_array_equal(image[:2], np.broadcast_to([200, 100, 50], (2, 4, 3)))
        np.testing.assert_array_equal(image[2:], np.full((2, 4, 3), value))


def test_images_of_different_sizes_need_a_resolution(tmp_path):
    for name, size in (("a", (8, 8)), ("b", (12, 10))):
        Image.new("RGB", size).save(tmp_path / f"{name}.png")
    frames = [{"file_path": name, "transform_matrix": np.eye(4).tolist()} for name in ("a", "b")]
    (tmp_path / "transforms.json").write_text(json.dumps({"camera_angle_x": 0.6, "frames": frames}))
    with pytest.raises(ValueError, match="different sizes.*--resolution"):
        convert(tmp_path / "transforms.json", tmp_path / "out", progress=False)
    convert(tmp_path / "transforms.json", tmp_path / "out", resolution=8, progress=False)
    assert [image.shape for image in converted(tmp_path / "out")[1]] == [(8, 8, 3)] * 2


# --- errors ---------------------------------------------------------------------------------------------

def edited_transforms(synthetic, folder, edit):
    """The synthetic scene's transforms.json with `edit` applied to its frames list."""
    paths, labels = synthetic
    source = write_transforms(folder, labels, paths, top={"camera_angle_x": 0.4})
    meta = json.loads(source.read_text())
    edit(meta["frames"])
    source.write_text(json.dumps(meta))
    return source


def test_missing_image_names_the_frame(synthetic, tmp_path):
    source = edited_transforms(synthetic, tmp_path / "nerf",
                               lambda frames: frames[1].update(file_path="./train/missing"))
    with pytest.raises(ValueError, match=r"transforms\.json: frame 1: file_path './train/missing': no image"):
        convert(source, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_transform_matrix_that_is_not_a_pose(synthetic, tmp_path):
    def scale_first_row(frames):
        frames[2]["transform_matrix"][0][0] *= 2

    source = edited_transforms(synthetic, tmp_path / "nerf", scale_first_row)
    with pytest.raises(ValueError, match=r"frame 2: transform_matrix: its 3x3 rotation is not a rotation"):
        convert(source, tmp_path / "out", progress=False)


def test_malformed_images_txt_line(synthetic, tmp_path):
    paths, labels = synthetic
    model = write_colmap(tmp_path / "project", labels, paths, RESOLUTION)
    lines = (model / "images.txt").read_text().splitlines()
    lines[5] = lines[5].replace(" ", " x", 1)  # line 6: the second image's QW is not a number
    (model / "images.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"images\.txt: line 6: expected IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME"):
        convert(model, tmp_path / "out", progress=False)


@pytest.mark.parametrize("line, message", [
    ("2 OPENCV_FISHEYE 16 16 20 20 8 8 0.1 0 0 0", "camera model 'OPENCV_FISHEYE' is not supported"),
    ("2 PINHOLE 16 16 20 20 8", "expected CAMERA_ID PINHOLE WIDTH HEIGHT FX FY CX CY"),
    ("2 PINHOLE 16 16 20 -20 8 8", "expected CAMERA_ID PINHOLE .* focal lengths > 0"),
])
def test_bad_camera_line(synthetic, tmp_path, line, message):
    paths, labels = synthetic
    model = write_colmap(tmp_path / "project", labels, paths, RESOLUTION)
    lines = (model / "cameras.txt").read_text().splitlines()
    lines[3] = line
    (model / "cameras.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=rf"cameras\.txt: line 4: {message}"):
        convert(model, tmp_path / "out", progress=False)


def test_simple_radial_warns_when_small_and_refuses_when_large(synthetic, tmp_path):
    paths, labels = synthetic
    model = write_colmap(tmp_path / "project", labels, paths, RESOLUTION)
    lines = (model / "cameras.txt").read_text().splitlines()
    # Corner (0, 0) with f = 20, c = (8, 8): x = y = -0.4, r^2 = 0.32; the radial shift is k r^2 * r * f px.
    for k in (0.001, 0.1):
        shift = k * 0.32 * math.sqrt(0.32) * 20
        lines[3] = f"2 SIMPLE_RADIAL 16 16 20 8 8 {k}"
        (model / "cameras.txt").write_text("\n".join(lines) + "\n")
        if k < 0.01:
            with pytest.warns(UserWarning, match=rf"cameras\.txt: line 4: lens distortion ignored.* {shift:.2f} px"):
                convert(model, tmp_path / "small", progress=False)
        else:
            with pytest.raises(ValueError, match=rf"cameras\.txt: line 4: .* {shift:.2f} px .*above --max-distortion"):
                convert(model, tmp_path / "large", progress=False)
            assert not (tmp_path / "large").exists()


def test_cli_refuses_a_non_empty_destination_and_overwrites_when_asked(synthetic, tmp_path):
    paths, labels = synthetic
    source = write_transforms(tmp_path / "nerf", labels, paths, top={"camera_angle_x": 0.4})
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit, match=r"^error: .*out: folder is not empty"):
        main([str(source), str(tmp_path / "out")])
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]
    main([str(source), str(tmp_path / "out"), "--overwrite"])
    assert not (tmp_path / "out" / "keep.txt").exists() and len(converted(tmp_path / "out")[1]) == len(paths)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nerf", "out"]  # no staging folder left behind


def test_recenter_refuses_parallel_cameras(tmp_path):
    images = blank_images(tmp_path, 3, 8, 8)
    poses = np.repeat(np.eye(4)[None], 3, axis=0)
    poses[:, 0, 3] = (0.0, 0.5, 1.0)  # side by side, all looking along -z: a forward-facing capture
    frames = [{"file_path": image.name, "transform_matrix": pose.tolist()} for image, pose in zip(images, poses)]
    (tmp_path / "transforms.json").write_text(json.dumps({"camera_angle_x": 0.6, "frames": frames}))
    with pytest.raises(ValueError, match="--recenter: the cameras' optical axes are .*parallel"):
        convert(tmp_path / "transforms.json", tmp_path / "out", recenter=True, progress=False)
    convert(tmp_path / "transforms.json", tmp_path / "out", progress=False)  # fine without --recenter
