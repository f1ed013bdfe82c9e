"""Ground truth of the synthetic data (depth maps, object classes), carried into the shards and decoded back.

The depth is checked against an analytic ray-sphere intersection computed here from the camera label, not
through the renderer's rays; the classes against the first draw of each image's generator.
"""

import hashlib
import io
import json
import math
import shutil
import tarfile
import zipfile

import numpy as np
import pytest
import torch

from dataloading.build import _write_tar, build, main
from dataloading.reference_format import ReferenceDataset
from dataloading.shard_reader import BACKENDS, ShardReader, decode_ground_truth, load_manifest, read_shard
from dataloading.synthetic import (KINDS, Primitive, Scene, generate_dataset, image_name, image_rng, render_example,
                                   render_example_with_truth, render_scene)
from eg3d.networks.camera import orbit_camera

SEED = 2  # images 0..6 of this seed show all six kinds


def analytic_sphere(label, centre, radius: float, resolution: int, supersample: int):
    """(distance to the sphere along each traced ray, NaN where it misses; the ray's closest approach to
    the centre), both [R*s, R*s], from the label's cam2world and intrinsics."""
    label = np.asarray(label, dtype=np.float64)
    cam2world, intrinsics = label[:16].reshape(4, 4), label[16:].reshape(3, 3)
    traced = resolution * supersample
    centres = (np.arange(traced) + 0.5) / traced
    v, u = np.meshgrid(centres, centres, indexing="ij")
    x = (u - intrinsics[0, 2]) / intrinsics[0, 0]
    y = (v - intrinsics[1, 2]) / intrinsics[1, 1]
    directions = np.stack([x, y, np.ones_like(x)], axis=-1) @ cam2world[:3, :3].T
    directions /= np.linalg.norm(directions, axis=-1, keepdims=True)
    to_origin = cam2world[:3, 3] - np.asarray(centre)
    along = directions @ to_origin
    closest = np.sqrt(np.maximum(to_origin @ to_origin - along**2, 0.0))
    with np.errstate(invalid="ignore"):
        return -along - np.sqrt(radius**2 - closest**2), closest


def blocks(array: np.ndarray, resolution: int) -> np.ndarray:
    """[R*s, R*s] -> [R, R, s*s]: each pixel's traced rays."""
    s = array.shape[0] // resolution
    return array.reshape(resolution, s, resolution, s).transpose(0, 2, 1, 3).reshape(resolution, resolution, s * s)


@pytest.mark.parametrize("yaw, pitch", [(math.pi / 2, math.pi / 2), (math.pi / 2 + 0.5, math.pi / 2 - 0.25)])
def test_sphere_depth_is_the_analytic_ray_distance(yaw, pitch):
    centre, radius, resolution, supersample = (0.05, -0.03, 0.04), 0.22, 32, 2
    label = orbit_camera(yaw, pitch)[0].numpy()
    render = render_scene(Scene((Primitive("sphere", (radius,), centre=centre),)), label, resolution,
                          supersample=supersample)
    depth = render.pixel_depth()
    assert depth.dtype == np.float32 and depth.shape == (resolution, resolution)
    distance, closest = (blocks(x, resolution) for x in analytic_sphere(label, centre, radius, resolution,
                                                                         supersample))
    # Rays within a footprint of the silhouette may go either way (tracing counts near-grazing rays as hits).
    margin = 2.7 / (label[16] * resolution * supersample)
    surely_hit = closest.max(axis=2) < radius - margin
    surely_missed = closest.max(axis=2) > radius + margin
    assert 200 < surely_hit.sum() and 200 < surely_missed.sum()
    assert np.isnan(depth[surely_missed]).all() and np.isfinite(depth[surely_hit]).all()
    expected = distance.mean(axis=2)
    error = expected[surely_hit] - depth[surely_hit]
    # Tracing stops short of the surface, by at most 1% of a footprint (0.0001) along the SDF's normal.
    assert error.min() > -1e-6 and error.max() < 5e-4 and np.median(error) < 1e-4
    both = np.isfinite(depth) & np.isfinite(expected)
    np.testing.assert_allclose(depth[both], expected[both], rtol=0, atol=2e-3)


def test_examples_keep_their_images_and_carry_the_drawn_kind():
    classes = set()
    for index in range(8):
        image, label, depth, class_index = render_example_with_truth(SEED, index, 16)
        expected_image, expected_label = render_example(SEED, index, 16)
        np.testing.assert_array_equal(image, expected_image)
        np.testing.assert_array_equal(label, expected_label)
        assert class_index == KINDS.index(str(image_rng(SEED, index).choice(KINDS)))  # the scene's first draw
        classes.add(class_index)
        assert depth.dtype == np.float32 and depth.shape == (16, 16)
        background = (image == 255).all(axis=2)
        assert np.isnan(depth[background]).all() and 0 < np.isfinite(depth).sum() < 16 * 16
        assert np.all((depth[np.isfinite(depth)] > 2.7 - 0.3) & (depth[np.isfinite(depth)] < 2.7 + 0.3))
    assert classes == set(range(len(KINDS)))


def read_source(path) -> dict[str, bytes]:
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return {name: archive.read(name) for name in archive.namelist()}
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_generated_folder_and_zip_hold_depth_side_files_and_classes(tmp_path):
    generate_dataset(tmp_path / "data", count=3, resolution=16, seed=SEED, progress_every=10**9)
    generate_dataset(tmp_path / "data.zip", count=3, resolution=16, seed=SEED, progress_every=10**9)
    folder, archive = read_source(tmp_path / "data"), read_source(tmp_path / "data.zip")
    assert folder == archive
    metadata = json.loads(folder["dataset.json"])
    assert list(metadata) == ["labels", "class_names", "classes"] and metadata["class_names"] == list(KINDS)
    classes = []
    for index in range(3):
        name = image_name(index)
        _, label, depth, class_index = render_example_with_truth(SEED, index, 16)
        classes.append([name, class_index])
        stored = np.load(io.BytesIO(folder[name.replace(".png", ".depth.npy")]), allow_pickle=False)
        assert stored.dtype == np.float16 and stored.shape == (16, 16)
        np.testing.assert_array_equal(stored, depth.astype(np.float16))  # NaN where NaN
        assert metadata["labels"][index] == [name, label.tolist()]
    assert metadata["classes"] == classes
    with zipfile.ZipFile(tmp_path / "data.zip") as opened:
        assert {info.compress_type for info in opened.infolist()} == {zipfile.ZIP_STORED}
        assert {info.date_time for info in opened.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    # The reference format's reader lists the images only.
    assert ReferenceDataset(tmp_path / "data.zip").names == [image_name(i) for i in range(3)]


# --- the shards ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A 24-image synthetic folder of 16 px with depth side files and classes."""
    folder = tmp_path_factory.mktemp("truth") / "data"
    generate_dataset(folder, count=24, resolution=16, seed=SEED, progress_every=10**9)
    return folder


def copy_of(source, destination, *, depth: bool = True, classes: bool = True):
    """A copy of the source folder, without its depth side files or class keys when asked."""
    shutil.copytree(source, destination)
    if not depth:
        for path in destination.rglob("*.depth.npy"):
            path.unlink()
    if not classes:
        metadata = json.loads((destination / "dataset.json").read_text())
        (destination / "dataset.json").write_text(json.dumps({"labels": metadata["labels"]}))
    return destination


def tar_members(path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(member.name, tar.extractfile(member).read()) for member in tar.getmembers()]


def test_build_carries_depth_and_class_members(tmp_path, source):
    manifest = build(source, tmp_path / "shards", workers=1, progress=False)
    assert manifest["ground_truth"] == {"depth": True, "class_names": list(KINDS)}
    metadata = json.loads((source / "dataset.json").read_text())
    members = tar_members(tmp_path / "shards" / "shard-000000.tar")
    assert len(members) == 5 * 24
    for index in range(24):
        key, name = f"{index:08d}", image_name(index)
        sample = dict(members[5 * index:5 * index + 5])
        assert list(sample) == [f"{key}.png", f"{key}.cam.npy", f"{key}.name.txt", f"{key}.depth.npy", f"{key}.cls"]
        assert sample[f"{key}.depth.npy"] == (source / name.replace(".png", ".depth.npy")).read_bytes()
        assert sample[f"{key}.cls"] == str(metadata["classes"][index][1]).encode()
    index_lines = (tmp_path / "shards" / "shard-000000.idx").read_text().splitlines()[1:]
    assert index_lines[0].split()[0::4] == ["png", "cam.npy", "name.txt", "depth.npy", "cls"]


def test_shard_plan_counts_the_depth_bytes(tmp_path, source):
    shard_mb = 0.03  # about 5 samples of 16 px with depth and class
    manifest = build(source, tmp_path / "shards", shard_size_mb=shard_mb, workers=1, progress=False)
    assert len(manifest["shards"]) > 2
    for shard in manifest["shards"][:-1]:
        with tarfile.open(tmp_path / "shards" / shard["name"]) as tar:
            last = tar.getmembers()[-1]
        content = last.offset_data + -(-last.size // 512) * 512  # bytes before the end-of-archive padding
        assert 0.7 * shard_mb * 2**20 < content < 1.15 * shard_mb * 2**20


def test_a_source_without_ground_truth_builds_as_before(tmp_path, source):
    plain = copy_of(source, tmp_path / "plain", depth=False, classes=False)
    shard_mb = 0.02
    manifest = build(plain, tmp_path / "shards", shard_size_mb=shard_mb, workers=1, progress=False)
    assert manifest["ground_truth"] == {"depth": False, "class_names": None}
    assert list(manifest) == ["format", "sample_count", "resolution", "label_dim", "image_extension",
                              "samples_per_shard", "rejected", "rejected_by_kind", "labels", "rejects", "cameras",
                              "ground_truth", "settings", "shards"]
    # The plan of image + camera (one .npy) + name members, each a header block and padded data.
    blocks_of = lambda size: 512 + -(-size // 512) * 512  # noqa: E731
    mean_image = np.mean([len((plain / image_name(i)).read_bytes()) for i in range(16)])
    assert manifest["samples_per_shard"] == int(shard_mb * 2**20 // (blocks_of(int(mean_image)) + 1024 + 1024))
    names = [name for shard in manifest["shards"] for name, _ in tar_members(tmp_path / "shards" / shard["name"])]
    assert names == [f"{i:08d}.{extension}" for i in range(24) for extension in ("png", "cam.npy", "name.txt")]
    loaded = load_manifest(str(tmp_path / "shards" / "manifest.json"))
    assert loaded.has_depth is False and loaded.class_names is None
    _, members = next(read_shard(loaded.shards[0]))
    assert decode_ground_truth(loaded, 0, members) == (None, None)


def test_decode_ground_truth_gives_the_source_depth_and_class(tmp_path, source):
    build(source, tmp_path / "shards", shard_size_mb=0.03, workers=1, progress=False)
    manifest = load_manifest(str(tmp_path / "shards" / "manifest.json"))
    assert manifest.has_depth is True and manifest.class_names == KINDS
    classes = dict(map(tuple, json.loads((source / "dataset.json").read_text())["classes"]))
    seen = 0
    for shard in manifest.shards:
        for index, members in read_shard(shard):
            depth, class_index = decode_ground_truth(manifest, index, members)
            expected = np.load(source / image_name(index).replace(".png", ".depth.npy")).astype(np.float32)
            assert depth.dtype == np.float32 and depth.shape == (16, 16)
            np.testing.assert_array_equal(depth, expected)
            assert class_index == classes[image_name(index)]
            seen += 1
    assert seen == 24
    url = manifest.url
    with pytest.raises(ValueError, match=f"{url}: sample 3: no depth.npy member"):
        decode_ground_truth(manifest, 3, {k: v for k, v in members.items() if k != "depth.npy"})
    with pytest.raises(ValueError, match=f"{url}: sample 3: class member is b'6', expected a decimal index below 6"):
        decode_ground_truth(manifest, 3, {**members, "cls": b"6"})
    with pytest.raises(ValueError, match=f"{url}: sample 3: depth is float16 \\(16, 15\\)"):
        decode_ground_truth(manifest, 3, {**members, "depth.npy": npy_bytes(np.zeros((16, 15), np.float16))})


def test_a_manifest_from_before_ground_truth_reads_as_none(tmp_path, source):
    plain = copy_of(source, tmp_path / "plain", depth=False, classes=False)
    build(plain, tmp_path / "shards", workers=1, progress=False)
    path = tmp_path / "shards" / "manifest.json"
    raw = json.loads(path.read_text())
    del raw["ground_truth"]
    path.write_text(json.dumps(raw))
    manifest = load_manifest(str(path))
    assert manifest.has_depth is False and manifest.class_names is None
    raw["ground_truth"] = {"depth": "yes", "class_names": None}
    path.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=f"{path}: ground_truth is"):
        load_manifest(str(path))


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def test_bad_depth_and_bad_classes_reject_their_samples(tmp_path, source):
    folder = copy_of(source, tmp_path / "source")
    metadata = json.loads((folder / "dataset.json").read_text())
    depth_name = lambda index: image_name(index).replace(".png", ".depth.npy")  # noqa: E731
    (folder / depth_name(1)).write_bytes(npy_bytes(np.zeros((16, 15), np.float16)))
    (folder / depth_name(2)).write_bytes(npy_bytes(np.zeros((16, 16), np.int32)))
    (folder / depth_name(3)).write_bytes(b"not an array")
    metadata["classes"][4][1] = len(KINDS)
    del metadata["classes"][5]
    (folder / "dataset.json").write_text(json.dumps(metadata))
    manifest = build(folder, tmp_path / "shards", workers=1, progress=False)
    rejects = json.loads((tmp_path / "shards" / "rejects.json").read_text())
    assert [(r["file"], r["kind"]) for r in rejects] == [(image_name(i), kind) for i, kind in [
        (1, "bad depth"), (2, "bad depth"), (3, "bad depth"), (4, "bad class"), (5, "bad class")]]
    assert rejects[0]["fault"].startswith(f"{depth_name(1)}: depth is float16 (16, 15), expected a float array "
                                          f"of shape (16, 16)")
    assert rejects[1]["fault"].startswith(f"{depth_name(2)}: depth is int32 (16, 16)")
    assert rejects[2]["fault"].startswith(f"{depth_name(3)}: not a .npy array")
    assert rejects[3]["fault"] == 'class 6 is out of range: dataset.json has 6 "class_names"'
    assert 'no class in dataset.json\'s "classes"' in rejects[4]["fault"]
    assert manifest["sample_count"] == 19 and manifest["rejected_by_kind"] == {"bad class": 2, "bad depth": 3}
    assert manifest["ground_truth"] == {"depth": True, "class_names": list(KINDS)}  # every kept sample has depth
    (folder / depth_name(7)).unlink()
    manifest = build(folder, tmp_path / "again", workers=1, progress=False)
    assert manifest["sample_count"] == 19 and manifest["ground_truth"]["depth"] is False


@pytest.mark.parametrize("change, message", [
    (lambda m: m.update(classes={"a": 1}), '"classes" is'),
    (lambda m: m["classes"][2].__setitem__(1, "3"), r'"classes"\[2\] is'),
    (lambda m: m["classes"][2].__setitem__(1, 3.0), r'"classes"\[2\] is'),
    (lambda m: m["classes"].append(m["classes"][0]), '"classes" lists 00000/img00000000.png twice'),
    (lambda m: m.pop("class_names"), '"class_names" is None'),
])
def test_malformed_classes_are_an_error_naming_dataset_json_and_the_key(tmp_path, source, change, message):
    folder = copy_of(source, tmp_path / "source")
    metadata = json.loads((folder / "dataset.json").read_text())
    change(metadata)
    (folder / "dataset.json").write_text(json.dumps(metadata))
    with pytest.raises(SystemExit, match=f"{folder}: dataset.json: {message}"):
        main([str(folder), str(tmp_path / "shards"), "--workers", "1"])


def without_ground_truth(shards, destination):
    """A copy of a build whose tars hold the same samples less their depth and class members (same layout)."""
    destination.mkdir()
    manifest = json.loads((shards / "manifest.json").read_text())
    for shard in manifest["shards"]:
        samples = {}
        for name, data in tar_members(shards / shard["name"]):
            if not name.endswith((".depth.npy", ".cls")):
                samples.setdefault(name.split(".", 1)[0], []).append((name, data))
        _write_tar(str(destination / shard["name"]), list(samples.items()))
        shard["size"] = (destination / shard["name"]).stat().st_size
        shard["sha256"] = hashlib.sha256((destination / shard["name"]).read_bytes()).hexdigest()
    manifest["ground_truth"] = {"depth": False, "class_names": None}
    (destination / "manifest.json").write_text(json.dumps(manifest))
    shutil.copy(shards / "labels.npy", destination / "labels.npy")


@pytest.mark.parametrize("backend", BACKENDS)
def test_training_readers_ignore_the_ground_truth_members(tmp_path, source, backend):
    build(source, tmp_path / "shards", shard_size_mb=0.03, workers=1, progress=False)
    without_ground_truth(tmp_path / "shards", tmp_path / "plain")
    assert len(tar_members(tmp_path / "plain" / "shard-000000.tar")) < len(tar_members(tmp_path / "shards" /
                                                                                       "shard-000000.tar"))
    options = dict(batch_size=4, seed=1, xflip=True, shuffle_buffer=6, backend=backend)
    batches = []
    for folder in ("shards", "plain"):
        with ShardReader(str(tmp_path / folder / "manifest.json"), **options) as reader:
            batches.append([next(reader) for _ in range(8)])  # one epoch (6 batches) and two into the next
    for with_truth, plain in zip(*batches):
        assert with_truth.keys() == plain.keys() == {"image", "c", "index"}
        for key in plain:
            assert torch.equal(with_truth[key], plain[key]), key
