"""The reader of the reference dataset format: round trips, and a clear ValueError for each bad input."""

import json
import pickle
import zipfile

import numpy as np
import pytest
from PIL import Image

from dataloading.reference_format import ReferenceDataset
from dataloading.synthetic import generate_dataset, render_example

LABEL = [float(i) for i in range(25)]


def write_dataset(root, images, labels=None, metadata=None):
    """A hand-made folder dataset: `images` maps name -> PIL image; labels default to LABEL for each."""
    for name, image in images.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        image.save(root / name)
    if metadata is None:
        labels = labels if labels is not None else [[name, LABEL] for name in images]
        metadata = json.dumps({"labels": labels})
    if metadata is not False:
        (root / "dataset.json").write_text(metadata)
    return root


def rgb(size=(8, 8), value=(10, 20, 30)):
    return Image.new("RGB", size, value)


def zip_folder(folder, destination, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(destination, "w", compression) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(folder).as_posix())
    return destination


@pytest.mark.parametrize("as_zip", [False, True])
def test_round_trip_of_a_synthetic_dataset(tmp_path, as_zip):
    out = tmp_path / ("data.zip" if as_zip else "data")
    generate_dataset(out, count=3, resolution=32, seed=4, as_zip=as_zip)
    dataset = ReferenceDataset(out)
    assert len(dataset) == 3 and dataset.resolution == 32
    assert dataset.names == ["00000/img00000000.png", "00000/img00000001.png", "00000/img00000002.png"]
    assert dataset.labels.shape == (3, 25) and dataset.labels.dtype == np.float32
    for index in range(3):
        image, label = dataset[index]
        expected_image, expected_label = render_example(4, index, 32)
        assert image.dtype == np.uint8 and image.shape == (32, 32, 3)
        np.testing.assert_array_equal(image, expected_image)
        np.testing.assert_array_equal(label, expected_label)


def test_zip_dataset_survives_pickling_after_use(tmp_path):
    generate_dataset(tmp_path / "data.zip", count=2, resolution=16, seed=0)
    dataset = ReferenceDataset(tmp_path / "data.zip")
    first = dataset[1][0]
    copy = pickle.loads(pickle.dumps(dataset))  # what a spawned data-loader worker receives
    np.testing.assert_array_equal(copy[1][0], first)


def test_compressed_zip_is_read_with_a_warning(tmp_path):
    folder = write_dataset(tmp_path / "data", {"a.png": rgb()})
    archive = zip_folder(folder, tmp_path / "data.zip", zipfile.ZIP_DEFLATED)
    with pytest.warns(UserWarning, match="uncompressed"):
        dataset = ReferenceDataset(archive)
    np.testing.assert_array_equal(dataset[0][0], np.full((8, 8, 3), (10, 20, 30), dtype=np.uint8))


def test_labels_follow_sorted_names_and_backslashes_are_normalized(tmp_path):
    images = {"b/x.png": rgb(), "a.png": rgb()}
    write_dataset(tmp_path, images, labels=[["b\\x.png", [1.0] * 25], ["a.png", [2] * 25]])
    dataset = ReferenceDataset(tmp_path)
    assert dataset.names == ["a.png", "b/x.png"]
    np.testing.assert_array_equal(dataset.labels[:, 0], [2.0, 1.0])


def test_grayscale_palette_and_rgba_become_rgb(tmp_path):
    palette = rgb((4, 4), (9, 8, 7)).convert("P", palette=Image.Palette.ADAPTIVE)
    write_dataset(tmp_path, {"gray.png": Image.new("L", (4, 4), 77), "palette.png": palette,
                             "alpha.png": Image.new("RGBA", (4, 4), (1, 2, 3, 0)),
                             "half.png": Image.new("RGBA", (4, 4), (100, 0, 50, 51))})
    dataset = ReferenceDataset(tmp_path)
    images = {name: dataset[i][0] for i, name in enumerate(dataset.names)}
    np.testing.assert_array_equal(images["gray.png"], np.full((4, 4, 3), 77, dtype=np.uint8))
    # alpha is composited over white: 0 gives white; 51/255 = 0.2 gives 0.2 * rgb + 0.8 * 255
    np.testing.assert_array_equal(images["alpha.png"], np.full((4, 4, 3), 255, dtype=np.uint8))
    np.testing.assert_array_equal(images["half.png"], np.full((4, 4, 3), (224, 204, 214), dtype=np.uint8))
    black = ReferenceDataset(tmp_path, background=(0, 0, 0))
    np.testing.assert_array_equal(black[black.names.index("half.png")][0], np.full((4, 4, 3), (20, 0, 10), np.uint8))
    np.testing.assert_array_equal(images["palette.png"], np.full((4, 4, 3), (9, 8, 7), dtype=np.uint8))


def test_not_a_dataset(tmp_path):
    with pytest.raises(ValueError, match="missing_dir.*expected a folder or a zip"):
        ReferenceDataset(tmp_path / "missing_dir")
    (tmp_path / "file.txt").write_text("hello")
    with pytest.raises(ValueError, match="file.txt.*expected a folder or a zip"):
        ReferenceDataset(tmp_path / "file.txt")


@pytest.mark.parametrize("as_zip", [False, True])
def test_missing_dataset_json(tmp_path, as_zip):
    path = write_dataset(tmp_path / "data", {"a.png": rgb()}, metadata=False)
    if as_zip:
        path = zip_folder(path, tmp_path / "data.zip")
    with pytest.raises(ValueError, match=r"data(\.zip)?: no dataset\.json"):
        ReferenceDataset(path)


@pytest.mark.parametrize("metadata, expected", [
    ("{not json", "dataset.json: not valid JSON"),
    (json.dumps({"images": []}), 'dataset.json: expected a non-empty "labels" list'),
    (json.dumps({"labels": None}), 'dataset.json: expected a non-empty "labels" list'),
    (json.dumps([1, 2]), 'dataset.json: expected a non-empty "labels" list'),
    (json.dumps({"labels": [["a.png"]]}), r"entry \['a.png'\] is not an \[image path"),
])
def test_malformed_dataset_json(tmp_path, metadata, expected):
    write_dataset(tmp_path, {"a.png": rgb()}, metadata=metadata)
    with pytest.raises(ValueError, match=expected):
        ReferenceDataset(tmp_path)


@pytest.mark.parametrize("label, expected", [
    ([0.0] * 24, "label of a.png has 24 values, expected 25 numbers"),
    ([0.0] * 26, "label of a.png has 26 values, expected 25 numbers"),
    ({"pose": 1}, "label of a.png has dict, expected 25 numbers"),
    ([0.0] * 24 + [float("nan")], "label of a.png has a value that is not a finite number"),
    ([0.0] * 24 + [float("inf")], "label of a.png has a value that is not a finite number"),
    ([0.0] * 24 + ["1.0"], "label of a.png has a value that is not a finite number"),
])
def test_bad_label(tmp_path, label, expected):
    write_dataset(tmp_path, {"a.png": rgb()}, labels=[["a.png", label]])
    with pytest.raises(ValueError, match=expected):
        ReferenceDataset(tmp_path)


def test_duplicate_label(tmp_path):
    write_dataset(tmp_path, {"a.png": rgb()}, labels=[["a.png", LABEL], ["a.png", LABEL]])
    with pytest.raises(ValueError, match="a.png is listed twice"):
        ReferenceDataset(tmp_path)


@pytest.mark.parametrize("as_zip", [False, True])
def test_listed_image_missing(tmp_path, as_zip):
    labels = [["a.png", LABEL], ["sub/gone.png", LABEL]]
    path = write_dataset(tmp_path / "data", {"a.png": rgb()}, labels=labels)
    if as_zip:
        path = zip_folder(path, tmp_path / "data.zip")
    with pytest.raises(ValueError, match="sub/gone.png is listed in dataset.json but missing"):
        ReferenceDataset(path)


def test_unlisted_images(tmp_path):
    images = {name: rgb() for name in ["a.png", "extra1.png", "extra2.jpg"]}
    write_dataset(tmp_path, images, labels=[["a.png", LABEL]])
    (tmp_path / "notes.txt").write_text("not an image, so not reported")
    expected = "2 images have no label in dataset.json, e.g. extra1.png, extra2.jpg"
    with pytest.raises(ValueError, match=expected):
        ReferenceDataset(tmp_path)


def test_non_square_image(tmp_path):
    write_dataset(tmp_path, {"a.png": rgb(), "wide.png": rgb((8, 6))})
    with pytest.raises(ValueError, match="wide.png: image is 8x6, expected a square image"):
        ReferenceDataset(tmp_path)


def test_image_size_differs_from_the_others(tmp_path):
    write_dataset(tmp_path, {"a.png": rgb(), "b.png": rgb((16, 16))})
    with pytest.raises(ValueError, match=r"b.png: image is 16x16, expected 8x8 \(the size of a.png\)"):
        ReferenceDataset(tmp_path)


def test_image_size_differs_from_the_requested_resolution(tmp_path):
    write_dataset(tmp_path, {"a.png": rgb()})
    with pytest.raises(ValueError, match=r"a.png: image is 8x8, expected 16x16 \(the requested resolution\)"):
        ReferenceDataset(tmp_path, resolution=16)
    assert ReferenceDataset(tmp_path, resolution=8).resolution == 8


def test_unreadable_image(tmp_path):
    write_dataset(tmp_path, {"a.png": rgb()})
    (tmp_path / "a.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="a.png: cannot read the image"):
        ReferenceDataset(tmp_path)
