"""Reader for the reference dataset format: a folder or zip of images plus `dataset.json`.

`dataset.json` is `{"labels": [["00000/img00000000.png", [25 floats]], ...]}` with paths relative to the
root; each label is a camera (row-major 4x4 cam2world, then the 3x3 normalized intrinsics). Everything is
checked when the dataset is opened, so a bad file fails early with a message naming it. Zip files are
opened lazily, once per process, so a dataset object can be handed to data-loader worker processes.
Pixels go through `dataloading.pixels.to_rgb8`, the conversion the shard builder stores, so this reader
and the shards agree (EXIF orientation applied, 16-bit to 8-bit, alpha over a background colour).
"""

import io
import json
import math
import os
import warnings
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from .pixels import WHITE, oriented_size, to_rgb8

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
LABEL_SIZE = 25
METADATA = "dataset.json"


def load_label_list(raw: bytes, where: str) -> list:
    """The "labels" list of a dataset.json; a ValueError naming `where` when there is none."""
    try:
        metadata = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{where}: not valid JSON ({error})") from error
    entries = metadata.get("labels") if isinstance(metadata, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f'{where}: expected a non-empty "labels" list of [image path, [25 floats]] pairs')
    return entries


def parse_label_entry(entry) -> tuple[str | None, np.ndarray | None, str | None]:
    """(image name, float64 label [25], fault) of one dataset.json entry; the fault is None when valid."""
    if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)):
        return None, None, f"entry {str(entry)[:80]} is not an [image path, [25 floats]] pair"
    name, values = entry[0].replace("\\", "/"), entry[1]
    if not isinstance(values, list) or len(values) != LABEL_SIZE:
        found = f"{len(values)} values" if isinstance(values, list) else type(values).__name__
        return name, None, f"label of {name} has {found}, expected {LABEL_SIZE} numbers (4x4 cam2world + 3x3 intrinsics)"
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in values):
        return name, None, f"label of {name} has a value that is not a finite number, expected {LABEL_SIZE} finite numbers"
    return name, np.array(values, dtype=np.float64), None


class ReferenceDataset:
    """Images (uint8 HWC RGB) and camera labels (float32 [25]) of a folder or zip in the reference format.

    Items are sorted by file name. `resolution`, when given, is the image size every file must have (once
    turned upright); transparent pixels are composited over `background` (RGB, 0..255 each).
    """

    def __init__(self, path, *, resolution: int | None = None, background: tuple[int, int, int] = WHITE):
        self.path = str(path)
        self.background = tuple(background)
        self._zip: zipfile.ZipFile | None = None
        self._zip_pid: int | None = None
        self._is_zip = os.path.isfile(self.path) and zipfile.is_zipfile(self.path)
        if not (self._is_zip or os.path.isdir(self.path)):
            raise ValueError(f"{self.path}: expected a folder or a zip file in the reference dataset format")
        try:
            files = self._zip_files() if self._is_zip else self._folder_files()
            labels = self._read_metadata(files)
            self._check_files_match(labels, files)
            self.names = sorted(labels)
            self.labels = np.stack([labels[name] for name in self.names]).astype(np.float32)
            self.resolution = self._check_image_sizes(resolution)
        finally:
            self._close()  # reopened on first use, in whichever process uses it

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        name = self.names[index]
        with self._open_image(name) as image:
            try:
                array = np.asarray(to_rgb8(image, self.background)[0])
            except ValueError as error:
                raise ValueError(f"{self._where(name)}: {error}") from None
        if array.shape != (self.resolution, self.resolution, 3):
            raise ValueError(f"{self._where(name)}: image is {array.shape[1]}x{array.shape[0]}, expected "
                             f"{self.resolution}x{self.resolution}")
        return array, self.labels[index].copy()

    # --- files ---------------------------------------------------------------------------------------

    def _folder_files(self) -> set[str]:
        root = Path(self.path)
        return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}

    def _zip_files(self) -> set[str]:
        members = [info for info in self._zipfile().infolist() if not info.is_dir()]
        if any(info.compress_type != zipfile.ZIP_STORED for info in members):
            warnings.warn(f"{self.path}: zip members are compressed; this reads fine, but the reference "
                          f"format uses an uncompressed (stored) zip, which loads faster", stacklevel=3)
        return {info.filename for info in members}

    def _zipfile(self) -> zipfile.ZipFile:
        if self._zip is None or self._zip_pid != os.getpid():  # a forked worker opens its own handle
            self._zip, self._zip_pid = zipfile.ZipFile(self.path), os.getpid()
        return self._zip

    def _close(self) -> None:
        if self._zip is not None and self._zip_pid == os.getpid():
            self._zip.close()
        self._zip = self._zip_pid = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_zip"] = state["_zip_pid"] = None
        return state

    def __del__(self):
        self._close()

    def _read_bytes(self, name: str) -> bytes:
        if self._is_zip:
            return self._zipfile().read(name)
        return (Path(self.path) / name).read_bytes()

    def _open_image(self, name: str) -> Image.Image:
        try:
            return Image.open(io.BytesIO(self._read_bytes(name)))
        except (OSError, SyntaxError) as error:  # PIL raises these for truncated or unknown files
            raise ValueError(f"{self._where(name)}: cannot read the image ({error})") from error

    def _where(self, name: str) -> str:
        return f"{self.path}: {name}"

    # --- validation ----------------------------------------------------------------------------------

    def _read_metadata(self, files: set[str]) -> dict[str, np.ndarray]:
        """dataset.json -> {image name: float64 label [25]}, every entry checked."""
        if METADATA not in files:
            raise ValueError(f"{self.path}: no {METADATA}; expected one at the root listing "
                             f'{{"labels": [[image path, [25 floats]], ...]}}')
        labels = {}
        for entry in load_label_list(self._read_bytes(METADATA), self._where(METADATA)):
            name, label, fault = parse_label_entry(entry)
            if fault is not None:
                raise ValueError(f"{self._where(METADATA)}: {fault}")
            if name in labels:
                raise ValueError(f"{self._where(METADATA)}: {name} is listed twice")
            labels[name] = label
        return labels

    def _check_files_match(self, labels: dict[str, np.ndarray], files: set[str]) -> None:
        missing = sorted(set(labels) - files)
        if missing:
            raise ValueError(f"{self.path}: {missing[0]} is listed in {METADATA} but missing "
                             f"({len(missing)} listed images missing in all)")
        images = {f for f in files if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS}
        unlisted = sorted(images - set(labels))
        if unlisted:
            raise ValueError(f"{self.path}: {len(unlisted)} images have no label in {METADATA}, e.g. "
                             f"{', '.join(unlisted[:5])}; expected every image to be listed")

    def _check_image_sizes(self, resolution: int | None) -> int:
        """Reads every image header: all must be square and of one size (`resolution` when given)."""
        reason = "the requested resolution"
        for name in self.names:
            with self._open_image(name) as image:
                width, height = oriented_size(image)
            if width != height:
                raise ValueError(f"{self._where(name)}: image is {width}x{height}, expected a square image")
            if resolution is None:
                resolution, reason = width, f"the size of {name}"
            elif width != resolution:
                raise ValueError(f"{self._where(name)}: image is {width}x{height}, expected "
                                 f"{resolution}x{resolution} ({reason})")
        return resolution
