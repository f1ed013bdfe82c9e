"""python -m dataloading.build: shards equal to the source, validation, determinism, resume, storage errors."""

import io
import json
import os
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from dataloading import storage
from dataloading.build import build, main
from dataloading.camera_checks import CameraCheck
from dataloading.reference_format import ReferenceDataset
from dataloading.shard_reader import ShardReader, camera_labels, verify
from dataloading.synthetic import generate_dataset
from s3_fixtures import BUCKET, moto_server  # noqa: F401 - the fixture

SHARD_MB = 0.04  # 5 samples of 32 px (with depth and class) per shard: 24 images make 5 shards


@pytest.fixture(scope="module")
def source_zip(tmp_path_factory):
    path = tmp_path_factory.mktemp("source") / "data.zip"
    generate_dataset(path, count=24, resolution=32, seed=3, as_zip=True, progress_every=10**9)
    return path


def read_epoch(manifest_url: str, **options) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """manifest index -> (uint8 HWC image, label) for one epoch of a single-rank reader."""
    samples = {}
    with ShardReader(manifest_url, batch_size=4, seed=0, shuffle_buffer=8, **options) as reader:
        while reader.state_dict()["epoch"] == 0:
            batch = next(reader)
            images = ((batch["image"] + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
            for image, label, index in zip(images, batch["c"].numpy(), batch["index"].tolist()):
                assert index not in samples
                samples[index] = (image, label)
    return samples


def assert_equal_to_source(manifest_url: str, source) -> None:
    dataset = ReferenceDataset(source)
    samples = read_epoch(manifest_url)
    assert sorted(samples) == list(range(len(dataset)))
    for index, (image, label) in samples.items():
        expected_image, expected_label = dataset[index]
        np.testing.assert_array_equal(image, expected_image)
        np.testing.assert_array_equal(label, expected_label)
    np.testing.assert_array_equal(camera_labels(manifest_url), dataset.labels)


def test_local_build_reads_back_equal_to_source_with_a_dali_index(tmp_path, source_zip):
    manifest = build(source_zip, tmp_path / "shards", shard_size_mb=SHARD_MB, workers=1, progress=False)
    assert manifest["sample_count"] == 24 and manifest["resolution"] == 32 and manifest["label_dim"] == 25
    assert manifest["rejected"] == 0 and len(manifest["shards"]) == 5
    assert [s["sample_count"] for s in manifest["shards"]] == [5, 5, 5, 5, 4]
    assert_equal_to_source(str(tmp_path / "shards" / "manifest.json"), source_zip)
    # The index is what DALI's wds2idx writes: "v1.2 <samples>", then <ext> <data offset> <size> <name>.
    tar_path, index_path = tmp_path / "shards" / "shard-000001.tar", tmp_path / "shards" / "shard-000001.idx"
    with tarfile.open(tar_path) as tar:
        members = [(m.name.split(".", 1)[1], m.offset_data, m.size, m.name) for m in tar.getmembers()]
        assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 for m in tar.getmembers())
    header, *lines = index_path.read_text().splitlines()
    assert header == "v1.2 5"
    parts = [line.split() for line in lines]
    indexed = [(p[i], int(p[i + 1]), int(p[i + 2]), p[i + 3]) for p in parts for i in range(0, len(p), 4)]
    assert indexed == members and members[0][3] == "00000005.png"
    assert [p[0::4] for p in parts] == [["png", "cam.npy", "name.txt", "depth.npy", "cls"]] * 5


def test_s3_build_from_an_s3_source_reads_back_equal_to_source(moto_server, source_zip):
    storage.write_bytes_atomic(f"s3://{BUCKET}/raw/data.zip", source_zip.read_bytes())
    manifest = build(f"s3://{BUCKET}/raw/data.zip", f"s3://{BUCKET}/shards", shard_size_mb=SHARD_MB, workers=2,
                     progress=False)
    assert manifest["sample_count"] == 24 and len(manifest["shards"]) == 5
    listing = storage.list(f"s3://{BUCKET}/shards")
    assert {"manifest.json", "labels.npy", "rejects.json", "shard-000004.tar", "shard-000004.idx"} <= set(listing)
    assert not [name for name in listing if "tmp" in name]
    assert_equal_to_source(f"s3://{BUCKET}/shards/manifest.json", source_zip)


def broken_source(folder, fault: str):
    """A 6-image folder dataset with one fault in image 2 (or its label)."""
    generate_dataset(folder, count=6, resolution=32, seed=1, progress_every=10**9)
    metadata = json.loads((folder / "dataset.json").read_text())
    name, label = metadata["labels"][2]
    if fault == "corrupt image":
        (folder / name).write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    elif fault == "wrong-length label":
        metadata["labels"][2][1] = label[:24]
    elif fault == "not a rotation":
        metadata["labels"][2][1] = [2 * x for x in label[:3]] + label[3:]  # scales the first row
    (folder / "dataset.json").write_text(json.dumps(metadata))
    return folder, name


FAULTS = {"corrupt image": ("undecodable image", "cannot decode"), "wrong-length label": ("bad label", "24 values"),
          "not a rotation": ("bad cam2world", "not orthonormal")}


def test_invalid_samples_are_rejected_listed_and_counted(tmp_path):
    folder = tmp_path / "source"
    generate_dataset(folder, count=8, resolution=32, seed=1, progress_every=10**9)
    metadata = json.loads((folder / "dataset.json").read_text())
    (folder / metadata["labels"][1][0]).write_bytes(b"not an image")
    metadata["labels"][4][1] = metadata["labels"][4][1][:24]
    for flat in (0, 4, 8):  # mirrors the camera's x axis: orthonormal, but a reflection (det -1)
        metadata["labels"][6][1][flat] *= -1
    (folder / "dataset.json").write_text(json.dumps(metadata))

    manifest = build(folder, tmp_path / "shards", shard_size_mb=SHARD_MB, workers=1, progress=False)
    assert manifest["rejected"] == 3 and manifest["sample_count"] == 5
    rejects = json.loads((tmp_path / "shards" / "rejects.json").read_text())
    assert [r["file"] for r in rejects] == [metadata["labels"][i][0] for i in (1, 4, 6)]
    assert "cannot decode" in rejects[0]["fault"] and "24 values" in rejects[1]["fault"]
    assert "determinant -1" in rejects[2]["fault"]
    assert [r["kind"] for r in rejects] == ["undecodable image", "bad label", "bad cam2world"]
    assert manifest["rejected_by_kind"] == {"bad cam2world": 1, "bad label": 1, "undecodable image": 1}
    kept = [i for i in range(8) if i not in (1, 4, 6)]
    expected = np.array([metadata["labels"][i][1] for i in kept], dtype=np.float32)
    np.testing.assert_array_equal(camera_labels(str(tmp_path / "shards" / "manifest.json")), expected)


@pytest.mark.parametrize("fault", FAULTS)
def test_strict_fails_naming_file_and_fault_and_writes_the_rejects(tmp_path, fault):
    folder, name = broken_source(tmp_path / "source", fault)
    with pytest.raises(SystemExit) as error:
        main([str(folder), str(tmp_path / "shards"), "--strict", "--workers", "1", "--shard-size-mb", "1"])
    kind, reason = FAULTS[fault]
    assert "--strict" in str(error.value) and f"1 of 6 samples rejected, by kind:\n  {kind}: 1\n    {name}: " in \
        str(error.value) and reason in str(error.value)
    assert not (tmp_path / "shards" / "manifest.json").exists()
    rejects = json.loads((tmp_path / "shards" / "rejects.json").read_text())
    assert [(r["file"], r["kind"]) for r in rejects] == [(name, kind)] and reason in rejects[0]["fault"]


def save_as(path, image: Image.Image, image_format: str) -> None:
    """Write `image` in `image_format` to `path`, whatever its extension says."""
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    path.write_bytes(buffer.getvalue())


def test_rejects_are_counted_per_kind_with_the_first_three_of_each(tmp_path, capsys):
    folder = tmp_path / "source"
    generate_dataset(folder, count=12, resolution=32, seed=2, progress_every=10**9)
    metadata = json.loads((folder / "dataset.json").read_text())
    names = [name for name, _ in metadata["labels"]]
    for name in names[:4]:  # converted to JPEG, while dataset.json still lists the PNG
        save_as((folder / name).with_suffix(".jpg"), Image.open(folder / name).convert("RGB"), "JPEG")
        (folder / name).unlink()
    metadata["labels"][4][1][16:25] = [136.5, 0, 16, 0, 136.5, 16, 0, 0, 1]  # intrinsics of a 32-px image in pixels
    save_as(folder / names[5], Image.new("RGB", (32, 24)), "PNG")
    save_as(folder / names[6], Image.new("F", (32, 32)), "TIFF")  # 32-bit float pixels behind a .png name
    (folder / names[7]).unlink()
    (folder / "dataset.json").write_text(json.dumps(metadata))

    main([str(folder), str(tmp_path / "shards"), "--workers", "1"])
    out = capsys.readouterr().out
    assert "4 samples in 1 shards" in out and "8 of 12 samples rejected, by kind:\n  wrong extension: 4\n" in out
    for name in names[:3]:
        jpeg = name.replace(".png", ".jpg")
        assert f"    {name}: listed in dataset.json but missing; {jpeg} exists instead: the names in dataset.json " \
               f"must match the files exactly" in out
    assert names[3] + ":" not in out and "    ... and 1 more\n" in out
    assert f"  intrinsics in pixels: 1\n    {names[4]}: intrinsics look like pixel units" in out
    assert "divide fx and cx by the image width and fy and cy by the height" in out
    assert f"  wrong image size: 1\n    {names[5]}: image is 32x24, expected a square image: crop it" in out
    assert f"  unsupported pixel format: 1\n    {names[6]}: unsupported pixel format (PIL mode F)" in out
    assert f"  missing file: 1\n    {names[7]}: listed in dataset.json but the file is missing" in out
    assert "cameras (4): 2.70 from the origin" in out and "0 see nothing" in out
    rejects = json.loads((tmp_path / "shards" / "rejects.json").read_text())
    assert [(r["file"], r["kind"]) for r in rejects] == list(zip(names[:8], ["wrong extension"] * 4 + [
        "intrinsics in pixels", "wrong image size", "unsupported pixel format", "missing file"]))


def test_when_no_sample_is_valid_the_error_names_each_kind_and_rejects_json_is_written(tmp_path):
    folder = tmp_path / "source"
    generate_dataset(folder, count=6, resolution=32, seed=2, progress_every=10**9)
    names = [name for name, _ in json.loads((folder / "dataset.json").read_text())["labels"]]
    for name in names[:4]:
        save_as((folder / name).with_suffix(".jpg"), Image.open(folder / name).convert("RGB"), "JPEG")
        (folder / name).unlink()
    for name in names[4:]:
        (folder / name).write_bytes(b"not an image")
    with pytest.raises(SystemExit) as error:
        main([str(folder), str(tmp_path / "shards"), "--workers", "1"])
    message = str(error.value)
    assert "no valid image among the 6 entries" in message and "6 of 6 samples rejected" in message
    assert "  wrong extension: 4\n" in message and "    ... and 1 more\n" in message
    assert f"  undecodable image: 2\n    {names[4]}: cannot decode" in message
    rejects = json.loads((tmp_path / "shards" / "rejects.json").read_text())
    assert [r["kind"] for r in rejects] == ["wrong extension"] * 4 + ["undecodable image"] * 2
    assert f"Every reject is listed in {tmp_path / 'shards' / 'rejects.json'}" in message


def opengl_source(folder, flipped: list[int]):
    """A 6-image synthetic dataset whose labels `flipped` have OpenGL camera axes (cam2world columns 1, 2
    negated: the camera looks away from the object)."""
    generate_dataset(folder, count=6, resolution=32, seed=1, progress_every=10**9)
    metadata = json.loads((folder / "dataset.json").read_text())
    for index in flipped:
        for flat in (1, 2, 5, 6, 9, 10):
            metadata["labels"][index][1][flat] *= -1
    (folder / "dataset.json").write_text(json.dumps(metadata))
    return folder, [name for name, _ in metadata["labels"]]


def test_cameras_in_opengl_axes_fail_the_build_naming_the_conversion(tmp_path):
    folder, names = opengl_source(tmp_path / "source", flipped=list(range(6)))
    with pytest.raises(SystemExit) as error:
        main([str(folder), str(tmp_path / "shards"), "--workers", "1"])
    message = str(error.value)
    assert "6 of 6 cameras see none of the tri-plane box [-0.5, 0.5]^3" in message
    assert "OpenGL/Blender" in message and "python -m dataloading.convert" in message
    assert f"  camera sees nothing: 6\n    {names[0]}: camera sees none" in message
    rejects = json.loads((tmp_path / "shards" / "rejects.json").read_text())
    assert [r["kind"] for r in rejects] == ["camera sees nothing"] * 6
    assert not (tmp_path / "shards" / "manifest.json").exists()


def test_one_camera_looking_away_is_rejected_and_the_statistics_are_in_the_manifest(tmp_path):
    folder, names = opengl_source(tmp_path / "source", flipped=[3])
    manifest = build(folder, tmp_path / "shards", workers=1, progress=False,
                     camera_check=CameraCheck(box_warp=1.0, ray_start=2.25, ray_end=3.3))
    assert manifest["sample_count"] == 5 and manifest["rejected_by_kind"] == {"camera sees nothing": 1}
    rejects = json.loads((tmp_path / "shards" / "rejects.json").read_text())
    assert rejects[0]["file"] == names[3] and "python -m dataloading.convert" in rejects[0]["fault"]
    cameras = manifest["cameras"]
    assert cameras["count"] == 5 and cameras["check"] == {"box_warp": 1.0, "ray_start": 2.25, "ray_end": 3.3}
    assert cameras["radius"] == {"min": 2.7, "mean": 2.7, "max": 2.7} and cameras["seeing_nothing"] == 0
    assert cameras["look_at_distance"] < 1e-3 and cameras["axis_distance"]["max"] < 1e-3
    assert 0.85 < cameras["fraction_inside"]["min"] <= cameras["fraction_inside"]["max"] < 1
    assert manifest["settings"]["camera_check"] == cameras["check"]
    with pytest.raises(SystemExit, match=r"(?s)--strict.*1 of 6 cameras see none.*camera sees nothing: 1"):
        main([str(folder), str(tmp_path / "strict"), "--workers", "1", "--strict"])


def snapshot(folder) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def test_rerun_changes_nothing_and_an_interrupted_build_resumes(tmp_path, source_zip):
    dest = tmp_path / "shards"
    build(source_zip, dest, shard_size_mb=SHARD_MB, workers=1, progress=False)
    first = snapshot(dest)
    build(source_zip, dest, shard_size_mb=SHARD_MB, workers=1, progress=False)
    assert snapshot(dest) == first  # same bytes, and not one file rewritten

    # An interruption while shard 2 was being written: no marker, a partial tar, no manifest yet.
    (dest / "shard-000002.done.json").unlink()
    (dest / "manifest.json").unlink()
    with open(dest / "shard-000002.tar", "r+b") as tar:
        tar.truncate(1000)
    build(source_zip, dest, shard_size_mb=SHARD_MB, workers=1, progress=False)
    resumed = snapshot(dest)
    assert {name: data for name, (data, _) in resumed.items()} == {name: data for name, (data, _) in first.items()}
    rewritten = {name for name in first if resumed[name][1] != first[name][1]}
    assert rewritten == {"shard-000002.tar", "shard-000002.idx", "shard-000002.done.json", "manifest.json"}


def test_a_build_with_other_settings_is_refused(tmp_path, source_zip):
    build(source_zip, tmp_path, shard_size_mb=SHARD_MB, workers=1, progress=False)
    with pytest.raises(ValueError, match="other settings"):
        build(source_zip, tmp_path, shard_size_mb=SHARD_MB, image_format="jpeg", workers=1, progress=False)


def test_a_damaged_shard_is_an_error_naming_it(tmp_path, source_zip):
    build(source_zip, tmp_path, shard_size_mb=SHARD_MB, workers=1, progress=False)
    manifest_url = str(tmp_path / "manifest.json")
    shard = tmp_path / "shard-000001.tar"
    intact = shard.read_bytes()
    shard.write_bytes(intact[:-512])  # truncated
    with pytest.raises(ValueError, match="shard-000001.tar.*truncated"):
        verify(manifest_url)
    with pytest.raises(ValueError, match="shard-000001.tar"):
        read_epoch(manifest_url)
    shard.write_bytes(intact[:600] + bytes([intact[600] ^ 1]) + intact[601:])  # same size, one bit off
    with pytest.raises(ValueError, match="shard-000001.tar.*sha256"):
        verify(manifest_url)
    build(source_zip, tmp_path, shard_size_mb=SHARD_MB, workers=1, progress=False, verify=True)  # repairs it
    assert shard.read_bytes() == intact
    verify(manifest_url)


def test_missing_bucket_object_or_manifest_is_an_error_naming_the_url(moto_server, source_zip):
    for url in ["s3://no-such-bucket-eg3d/shards/manifest.json", f"s3://{BUCKET}/absent/manifest.json"]:
        with pytest.raises(FileNotFoundError, match=url):
            ShardReader(url, batch_size=2)
    with pytest.raises(FileNotFoundError, match="s3://no-such-bucket-eg3d/shards.*bucket"):
        build(source_zip, "s3://no-such-bucket-eg3d/shards", shard_size_mb=SHARD_MB, workers=1, progress=False)
    with pytest.raises(FileNotFoundError, match="s3://no-such-bucket-eg3d/x.zip"):
        build("s3://no-such-bucket-eg3d/x.zip", f"s3://{BUCKET}/y", workers=1, progress=False)


def test_transient_errors_are_retried_with_a_bounded_count(monkeypatch):
    monkeypatch.setattr(storage.time, "sleep", lambda seconds: None)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("connection reset")
        return "done"

    assert storage.with_retries(flaky, "s3://b/k") == "done" and len(calls) == 3
    calls.clear()
    with pytest.raises(OSError, match=r"s3://b/k: still failing after 3 attempts"):
        storage.with_retries(lambda: calls.append(1) or (_ for _ in ()).throw(TimeoutError()), "s3://b/k")
    assert len(calls) == 3

    class SlowDown(Exception):
        response = {"Error": {"Code": "SlowDown"}, "ResponseMetadata": {"HTTPStatusCode": 503}}

    assert storage.is_transient(SlowDown()) and not storage.is_transient(FileNotFoundError())
    calls.clear()
    with pytest.raises(PermissionError, match="s3://b/k: permission denied"):
        storage.with_retries(lambda: calls.append(1) or (_ for _ in ()).throw(PermissionError("denied")), "s3://b/k")
    assert len(calls) == 1


def test_atomic_write_leaves_no_temporary_file(tmp_path):
    storage.write_bytes_atomic(str(tmp_path / "a.json"), b"1")
    storage.write_bytes_atomic(str(tmp_path / "a.json"), b"2")
    assert os.listdir(tmp_path) == ["a.json"] and (tmp_path / "a.json").read_bytes() == b"2"
    assert storage.list(str(tmp_path)) == {"a.json": 1} and storage.list(str(tmp_path / "absent")) == {}
