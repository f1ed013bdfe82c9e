"""Every reader sees the same pixels: EXIF orientation, 16-bit, alpha, palette and grayscale sources are
stored as 8-bit RGB, and the PyTorch reader, the DALI reader and the reference reader all give the
pixels computed here independently from the source arrays."""

import io
import json
import struct
import tarfile
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from dataloading.build import build
from dataloading.reference_format import ReferenceDataset
from dataloading.shard_reader import BACKENDS, ShardReader
from dataloading.synthetic import random_camera

SIZE = 16
RNG = np.random.default_rng(7)
RGB = RNG.integers(0, 256, size=(SIZE, SIZE, 3), dtype=np.uint8)
WIDE = RNG.integers(0, 65536, size=(SIZE, SIZE, 3), dtype=np.uint16)  # 16-bit samples
ALPHA = RNG.integers(0, 256, size=(SIZE, SIZE, 1), dtype=np.uint8)
PALETTE = np.array([[200, 10, 10], [10, 200, 10], [10, 10, 200], [0, 0, 0]], dtype=np.uint8)
INDICES = RNG.integers(0, 4, size=(SIZE, SIZE), dtype=np.uint8)  # index 3 is transparent


def png16(samples: np.ndarray) -> bytes:
    """A 16-bit PNG (grayscale [H,W] or RGB [H,W,3]) written by hand, as a camera or a renderer would."""
    height, width = samples.shape[:2]
    colour_type = 2 if samples.ndim == 3 else 0
    rows = b"".join(b"\x00" + samples[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def encoded(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def jpeg_turned(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encoded(Image.fromarray(RGB), "JPEG", quality=95, exif=exif.tobytes())


def palette_png() -> bytes:
    image = Image.fromarray(INDICES, "P")
    image.putpalette(PALETTE.reshape(-1).tolist())
    return encoded(image, "PNG", transparency=3)


def over(rgb: np.ndarray, alpha: np.ndarray, background) -> np.ndarray:
    """Alpha compositing in floating point, rounded to the nearest integer."""
    mixed = (rgb * (alpha / 255.0) + np.asarray(background, dtype=np.float64) * (1 - alpha / 255.0))
    return np.round(mixed).astype(np.uint8)


def sources() -> dict[str, tuple[bytes, callable]]:
    """name -> (file bytes, expected uint8 [16,16,3] pixels as a function of the background colour)."""
    turned = Image.open(io.BytesIO(jpeg_turned(6)))
    assert turned.getexif()[0x0112] == 6
    raw = np.asarray(turned.convert("RGB"))  # PIL decodes without applying the orientation
    gray16 = WIDE[..., 0]
    return {
        # orientation 6: the stored image must be turned 90 degrees clockwise to be upright
        "a-turned.jpg": (jpeg_turned(6), lambda bg: np.rot90(raw, k=-1)),
        "b-gray16.png": (png16(gray16), lambda bg: np.repeat((gray16 >> 8)[..., None], 3, axis=2).astype(np.uint8)),
        "c-rgb16.png": (png16(WIDE), lambda bg: (WIDE >> 8).astype(np.uint8)),
        "d-rgba.png": (encoded(Image.fromarray(np.concatenate([RGB, ALPHA], axis=2), "RGBA"), "PNG"),
                       lambda bg: over(RGB, ALPHA, bg)),
        "e-palette.png": (palette_png(),
                          lambda bg: np.where((INDICES == 3)[..., None], np.uint8(bg), PALETTE[INDICES])),
        "f-gray.png": (encoded(Image.fromarray(RGB[..., 0], "L"), "PNG"),
                       lambda bg: np.repeat(RGB[..., :1], 3, axis=2)),
        "g-plain.png": (encoded(Image.fromarray(RGB), "PNG"), lambda bg: RGB),
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("conversion")
    folder = root / "source"
    folder.mkdir()
    rng = np.random.default_rng(0)
    labels = []
    for name, (data, _) in sources().items():
        (folder / name).write_bytes(data)
        labels.append([name, random_camera(rng).tolist()])
    (folder / "dataset.json").write_text(json.dumps({"labels": labels}))
    return root, folder


def read_all(manifest_url: str, backend: str) -> np.ndarray:
    """uint8 [N,16,16,3] in manifest order: one unshuffled, unflipped batch."""
    with ShardReader(manifest_url, backend=backend, batch_size=len(sources()), shuffle_buffer=1) as reader:
        batch = next(reader)
    order = batch["index"].argsort()
    images = ((batch["image"][order] + 1) * 127.5).round().to(torch.uint8)
    return images.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("background", [(255, 255, 255), (0, 64, 128)])
@pytest.mark.parametrize("backend", ["pytorch", pytest.param("dali", marks=pytest.mark.skipif(
    "dali" not in BACKENDS, reason="NVIDIA DALI is not installed (the `dali` extra)"))])
def test_every_reader_sees_the_independently_computed_pixels(dataset, backend, background):
    root, folder = dataset
    dest = root / f"shards-{'-'.join(map(str, background))}"
    manifest = build(folder, dest, workers=1, progress=False, background=background)
    assert manifest["rejected"] == 0 and manifest["settings"]["background"] == list(background)
    expected = {name: expect(background) for name, (_, expect) in sources().items()}
    images = read_all(str(dest / "manifest.json"), backend)
    for image, name in zip(images, sorted(expected)):
        np.testing.assert_array_equal(image, expected[name], err_msg=f"{backend}: {name}")
    reference = ReferenceDataset(folder, background=background)
    for index, name in enumerate(reference.names):
        np.testing.assert_array_equal(reference[index][0], expected[name], err_msg=f"reference: {name}")


def test_converted_images_are_reencoded_and_untouched_ones_keep_their_bytes(dataset):
    root, folder = dataset
    build(folder, root / "bytes", workers=1, progress=False)
    with tarfile.open(root / "bytes" / "shard-000000.tar") as tar:
        stored = {tar.extractfile(m.name.replace(".png", ".name.txt")).read().decode(): tar.extractfile(m).read()
                  for m in tar.getmembers() if m.name.endswith(".png")}
    assert stored["g-plain.png"] == (folder / "g-plain.png").read_bytes()
    for name, data in stored.items():
        with Image.open(io.BytesIO(data)) as image:
            assert (image.format, image.mode, image.getexif().get(0x0112)) == ("PNG", "RGB", None), name
            assert not any(";16" in str(tile.args) for tile in image.tile), name  # 8 bits per sample


def test_a_turned_image_is_measured_upright(tmp_path):
    """A 16x12 JPEG with orientation 6 is 12x16 once upright: not square, whichever way it is read."""
    exif = Image.Exif()
    exif[0x0112] = 6
    (tmp_path / "a.jpg").write_bytes(encoded(Image.new("RGB", (16, 12)), "JPEG", exif=exif.tobytes()))
    (tmp_path / "b.png").write_bytes(encoded(Image.new("RGB", (16, 16)), "PNG"))
    rng = np.random.default_rng(0)
    labels = [[name, random_camera(rng).tolist()] for name in ("a.jpg", "b.png")]
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": labels}))
    manifest = build(tmp_path, tmp_path / "shards", workers=1, progress=False)
    rejects = json.loads((tmp_path / "shards" / "rejects.json").read_text())
    assert manifest["sample_count"] == 1 and rejects[0]["kind"] == "wrong image size"
    assert "image is 12x16 (turned upright by its EXIF orientation)" in rejects[0]["fault"]
