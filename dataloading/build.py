"""Camera-labelled images -> webdataset shards on any storage URL.

    python -m dataloading.build SRC DEST [--shard-size-mb 64] [--format png|jpeg] [--reencode]
                                [--quality 95] [--resolution R] [--background 255,255,255]
                                [--ray-start S --ray-end E] [--box-warp 1] [--workers N] [--strict] [--verify]
                                [--accept-camera-conventions]

SRC is a dataset in the reference format (a folder or zip of images plus `dataset.json`; our synthetic
data is one) at a local path or any fsspec URL; a remote SRC is copied to a temporary folder first.
DEST is a local folder or `s3://bucket/prefix`. DEST receives:

- `shard-000000.tar`, ...: webdataset tars. Sample key `%08d` is the image's position in SRC (sorted
  by name); members `KEY.png` or `KEY.jpg` (the source bytes unless re-encoding is asked for or needed),
  `KEY.cam.npy` (float32[25] camera) and `KEY.name.txt` (the source file name), then the ground truth
  the source has: `KEY.depth.npy` (the bytes of the image's side file `<image stem>.depth.npy`, a 2-D
  float array of the image's resolution: per-pixel depth along each ray, NaN on the background) and
  `KEY.cls` (ASCII decimal class index, the webdataset convention, from dataset.json's "classes" pairs
  [[image path, index], ...] into its "class_names"). Headers carry no time or owner, so the same input
  gives the same bytes.
- `shard-000000.idx`: the index DALI's `wds2idx` writes ("v1.2 <samples>", then per sample
  `<ext> <data offset> <size> <member name>` for each member), for `fn.readers.webdataset`.
- `shard-000000.done.json`: written after the shard and its index are published; it records the
  settings, size, sha256, sample keys and rejects, so a re-run skips the shard.
- `labels.npy` (float32 [N,25] in manifest order, for the generator's camera sampler), `rejects.json`
  ([{file, kind, fault}]), and last `manifest.json`, which names only complete shards and carries the
  camera statistics ("cameras": radius, look-at point, optical-axis distance, fraction of the box seen,
  and "conventions": the data-set figures of `dataloading.camera_conventions`, its findings and whether
  they were accepted)
  and "ground_truth": {"depth": true when every sample has a depth member, "class_names": [...] or null}.

Shards hold fixed runs of source positions (a count measured from the first images to meet the target
size and recorded in the manifest), so the plan, and with it every shard, is the same on a re-run.
Every sample is validated: the image decodes, is square and of the expected resolution (the first
image's, or --resolution), in a pixel format with an 8-bit RGB form; its depth side file, if any, is a
2-D float array of that resolution; its class, when dataset.json has classes, is listed and indexes
"class_names" (a malformed "classes" or "class_names" is an error); the label is 25 finite floats
with normalized intrinsics and a cam2world whose rotation is a rotation, and its camera sees the
tri-plane box (`dataloading.camera_checks`; by default any ray hitting the box [-0.5, 0.5]^3, or the
samples between --ray-start and --ray-end in a --box-warp box: 2.25/3.3/1 for ffhq512, afhq512 and tiny,
0.1/2.6/1.6 for shapenet128). Images are stored as 8-bit RGB through `dataloading.pixels.to_rgb8`
(EXIF orientation applied, 16-bit to 8-bit, alpha composited over --background): whatever that changes
is re-encoded (PNG losslessly); other images keep their source bytes.

Rejects are skipped and listed in `rejects.json`, each with its kind (one of FAULT_KINDS); the summary,
and every error, counts them per kind and names the first few of each. The build fails, after writing
`rejects.json`, when no sample is valid or when more than half of the cameras see nothing (then it
names the likely fix), or when the labels as a whole look like a wrong convention (world2cam matrices,
transposed rotations, other camera axes, another world up: `dataloading.camera_conventions` names the
likely cause and the `dataloading.convert` options that fix it) unless --accept-camera-conventions.
--strict fails on any reject, and on the conventions' warnings, and publishes no manifest: before the
images are read when dataset.json or the cameras already show faults, else after the shards are written
(a later run without --strict reuses them).
"""

import argparse
import functools
import hashlib
import io
import json
import os
import tarfile
import tempfile
import zipfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import NoReturn

import numpy as np
from PIL import Image
from tqdm import tqdm

from . import storage
from .camera_checks import PIXEL_FOCAL, CameraCheck, CameraReport, check_cameras, describe_statistics
from .camera_conventions import ACCEPT_FLAG, check_conventions, describe_record
from .pixels import WHITE, orientation, oriented_size, to_rgb8
from .reference_format import IMAGE_EXTENSIONS, LABEL_SIZE, METADATA, load_label_list, parse_label_entry

MANIFEST, LABELS, REJECTS = "manifest.json", "labels.npy", "rejects.json"
MANIFEST_FORMAT = "eg3d-webdataset-1"
DALI_INDEX_VERSION = "v1.2"
TAR_BLOCK = 512
MEASURED_SAMPLES = 16  # images encoded up front to choose the samples per shard
TOLERANCE = 1e-3  # for the rotation and the fixed rows of the camera matrices
EXAMPLES_PER_KIND = 3  # rejects named per kind in summaries and errors
FAULT_KINDS = ("bad entry", "listed twice", "missing file", "wrong extension", "no label", "bad label",
               "bad cam2world", "intrinsics in pixels", "bad intrinsics", "camera sees nothing",
               "undecodable image", "unsupported pixel format", "wrong image size", "bad depth", "bad class")
DEPTH_SUFFIX = ".depth.npy"  # an image's depth side file is its stem + this: not an image extension, so
# reference loaders, which list files by image extension, skip it
_EXTENSION = {"png": "png", "jpeg": "jpg"}
_PIL_FORMAT = {"png": "PNG", "jpeg": "JPEG"}


def shard_stem(index: int) -> str:
    return f"shard-{index:06d}"


def depth_file(image: str) -> str:
    """The name of an image's depth side file: 00000/img00000000.png -> 00000/img00000000.depth.npy."""
    return os.path.splitext(image)[0] + DEPTH_SUFFIX


# --- the source ----------------------------------------------------------------------------------------

class Rejected(ValueError):
    """Why one sample is left out; `kind` (one of FAULT_KINDS) groups the reasons in summaries."""

    def __init__(self, kind: str, message: str):
        super().__init__(kind, message)  # both in args, so it survives pickling
        self.kind, self.message = kind, message

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class Entry:
    """One listed or found image: its key (position in the sorted source), label, any fault, and its
    ground truth: class index from dataset.json and depth side file name, when the source has them."""
    key: int
    name: str
    label: tuple[float, ...] | None
    fault: Rejected | None
    class_index: int | None = None
    depth: str | None = None


class SourceFiles:
    """Bytes of a reference-format folder or zip; the zip is opened once per process (picklable)."""

    def __init__(self, path: str):
        self.path = path
        self.is_zip = os.path.isfile(path) and zipfile.is_zipfile(path)
        if not (self.is_zip or os.path.isdir(path)):
            raise ValueError(f"{path}: expected a folder or a zip file in the reference dataset format")
        self._zip, self._zip_pid = None, None

    def names(self) -> set[str]:
        if self.is_zip:
            return {info.filename for info in self._zipfile().infolist() if not info.is_dir()}
        root = Path(self.path)
        return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}

    def read(self, name: str) -> bytes:
        if self.is_zip:
            return self._zipfile().read(name)
        return (Path(self.path) / name).read_bytes()

    def fingerprint(self) -> str:
        """sha256 over the metadata and each file's name and size (plus CRC in a zip)."""
        digest = hashlib.sha256(self.read(METADATA))
        if self.is_zip:
            files = sorted((i.filename, i.file_size, i.CRC) for i in self._zipfile().infolist())
        else:
            files = sorted((n, (Path(self.path) / n).stat().st_size) for n in self.names())
        digest.update(json.dumps(files).encode())
        return digest.hexdigest()

    def _zipfile(self) -> zipfile.ZipFile:
        if self._zip is None or self._zip_pid != os.getpid():
            self._zip, self._zip_pid = zipfile.ZipFile(self.path), os.getpid()
        return self._zip

    def __getstate__(self):
        return {**self.__dict__, "_zip": None, "_zip_pid": None}


def read_entries(files: SourceFiles) -> tuple[list[Entry], list[str] | None]:
    """(every image the metadata lists or the source holds, sorted by name, each with its fault if any;
    dataset.json's "class_names", None without classes). Only a missing or unreadable dataset.json, or
    malformed class keys in it, is an error: it leaves nothing to build."""
    names = files.names()
    if METADATA not in names:
        raise ValueError(f"{files.path}: no {METADATA}; expected one at the root listing "
                         f'{{"labels": [[image path, [25 floats]], ...]}}')
    metadata = files.read(METADATA)
    listed = load_label_list(metadata, f"{files.path}: {METADATA}")
    class_names, classes = read_classes(metadata, f"{files.path}: {METADATA}")
    images = {name for name in names if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS}
    by_stem = {}  # name without extension -> the first image with that stem
    for image in sorted(images):
        by_stem.setdefault(os.path.splitext(image)[0], image)
    found, claimed = {}, set()  # name -> (label or None, fault or None); images a mismatched entry names
    for position, item in enumerate(listed):
        name, label, problem = parse_label_entry(item)
        fault = Rejected("bad label" if name else "bad entry", problem) if problem else label_fault(label)
        name = name or f"{METADATA}[labels][{position}]"
        label = tuple(label.tolist()) if label is not None else None
        if name in found:
            fault = Rejected("listed twice", f"listed twice in {METADATA}")
        elif fault is None and name not in names:
            other = by_stem.get(os.path.splitext(name)[0])
            fault = missing_file_fault(name, other)
            claimed.add(other)
        found[name] = (label, fault)
    for name in images - set(found) - claimed:
        found[name] = (None, Rejected("no label", f"no label in {METADATA}; every image must be listed there"))
    entries = []
    for key, name in enumerate(sorted(found)):
        label, fault = found[name]
        if fault is None and class_names is not None:
            fault = class_fault(classes.get(name), class_names)
        depth = depth_file(name) if depth_file(name) in names else None
        entries.append(Entry(key, name, label, fault, classes.get(name), depth))
    return entries, class_names


def read_classes(metadata: bytes, where: str) -> tuple[list[str] | None, dict[str, int]]:
    """(dataset.json's "class_names", image name -> its index in "classes"); (None, {}) when it has neither
    key. A ValueError naming `where` and the key when either is malformed or only one is given."""
    raw = json.loads(metadata)  # load_label_list has checked that it parses
    class_names, classes = raw.get("class_names"), raw.get("classes")
    if class_names is None and classes is None:
        return None, {}
    if not (isinstance(class_names, list) and class_names and all(isinstance(x, str) for x in class_names)):
        raise ValueError(f'{where}: "class_names" is {str(class_names)[:80]}; expected a non-empty list of '
                         f'names beside "classes"')
    if not isinstance(classes, list):
        raise ValueError(f'{where}: "classes" is {str(classes)[:80]}; expected a list of [image path, class '
                         f'index] pairs beside "class_names"')
    by_name = {}
    for position, item in enumerate(classes):
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
                and isinstance(item[1], int) and not isinstance(item[1], bool)):
            raise ValueError(f'{where}: "classes"[{position}] is {str(item)[:80]}; expected an [image path, '
                             f'class index] pair')
        name = item[0].replace("\\", "/")
        if name in by_name:
            raise ValueError(f'{where}: "classes" lists {name} twice')
        by_name[name] = item[1]
    return class_names, by_name


def class_fault(class_index: int | None, class_names: list[str]) -> Rejected | None:
    if class_index is None:
        return Rejected("bad class", f'no class in {METADATA}\'s "classes"; every image must have one there')
    if not 0 <= class_index < len(class_names):
        return Rejected("bad class", f'class {class_index} is out of range: {METADATA} has {len(class_names)} '
                                     f'"class_names"')
    return None


def missing_file_fault(name: str, other: str | None) -> Rejected:
    """A listed file that is absent; a "wrong extension" when `other`, an image of the same stem, exists."""
    if other is None:
        return Rejected("missing file", f"listed in {METADATA} but the file is missing")
    return Rejected("wrong extension", f"listed in {METADATA} but missing; {other} exists instead: the names in "
                                       f"{METADATA} must match the files exactly (fix the entry, or convert the image "
                                       f"to {os.path.splitext(name)[1]})")


def label_fault(label: np.ndarray) -> Rejected | None:
    """What is wrong with a camera label (row-major 4x4 cam2world, then 3x3 normalized intrinsics)."""
    cam2world, intrinsics = label[:16].reshape(4, 4), label[16:].reshape(3, 3)
    if not np.allclose(cam2world[3], [0, 0, 0, 1], rtol=0, atol=TOLERANCE):
        return Rejected("bad cam2world", f"cam2world bottom row is {_numbers(cam2world[3])}, expected 0 0 0 1")
    rotation = cam2world[:3, :3]
    orthogonality = np.abs(rotation @ rotation.T - np.eye(3)).max()
    if orthogonality > TOLERANCE:
        return Rejected("bad cam2world", f"cam2world rotation is not orthonormal (max |R R^T - I| = "
                                         f"{orthogonality:.3g} > {TOLERANCE})")
    determinant = np.linalg.det(rotation)
    if abs(determinant - 1) > TOLERANCE:
        return Rejected("bad cam2world", f"cam2world rotation has determinant {determinant:.4g}, expected +1 "
                                         f"(not a reflection)")
    fx, fy, cx, cy = intrinsics[0, 0], intrinsics[1, 1], intrinsics[0, 2], intrinsics[1, 2]
    if fx > 0 and fy > 0 and cx >= 0 and cy >= 0 and (max(fx, fy) > PIXEL_FOCAL or max(cx, cy) > 1):
        guess = f" (cx={cx:.4g} suggests an image {2 * cx:.0f} pixels wide)" if cx > 1 else ""
        return Rejected("intrinsics in pixels", f"intrinsics look like pixel units: fx={fx:.4g}, fy={fy:.4g}, "
                        f"cx={cx:.4g}, cy={cy:.4g}{guess}; expected them normalized by the image size: divide fx "
                        f"and cx by the image width and fy and cy by the height (cx, cy near 0.5)")
    if not (fx > 0 and fy > 0):
        return Rejected("bad intrinsics", f"intrinsics have focal lengths fx={fx:.4g}, fy={fy:.4g}, expected both > 0")
    if not (0 <= cx <= 1 and 0 <= cy <= 1):
        return Rejected("bad intrinsics", f"intrinsics have principal point ({cx:.4g}, {cy:.4g}), expected within "
                                          f"[0, 1] (normalized)")
    if not np.allclose(intrinsics[2], [0, 0, 1], rtol=0, atol=TOLERANCE):
        return Rejected("bad intrinsics", f"intrinsics bottom row is {_numbers(intrinsics[2])}, expected 0 0 1")
    return None


def check_entry_cameras(entries: list[Entry], check: CameraCheck) -> tuple[list[Entry], CameraReport, dict[int, int]]:
    """(entries with the cameras that see nothing rejected, the report over every valid label, and
    entry key -> row of that report)."""
    valid = [entry for entry in entries if entry.fault is None]
    report = check_cameras(np.array([entry.label for entry in valid], dtype=np.float64).reshape(-1, LABEL_SIZE), check)
    blind = {valid[row].key: Rejected("camera sees nothing", text) for row, text in report.blind_faults().items()}
    entries = [replace(entry, fault=blind[entry.key]) if entry.key in blind else entry for entry in entries]
    return entries, report, {entry.key: row for row, entry in enumerate(valid)}


def _numbers(values) -> str:
    return " ".join(f"{x:.4g}" for x in values)


@contextmanager
def local_copy(url: str):
    """A local path for SRC: itself when local, else a temporary copy of the remote folder or zip."""
    if storage.is_local(url):
        yield str(url).removeprefix("file://")
        return
    fs, path = storage.open_filesystem(url)
    with tempfile.TemporaryDirectory(prefix="eg3d-build-source-") as folder:
        target = os.path.join(folder, path.rstrip("/").rsplit("/", 1)[-1])
        if storage.with_retries(lambda: fs.isfile(path), url):
            storage.with_retries(lambda: fs.get_file(path, target), url)
        else:
            storage.with_retries(lambda: fs.get(path.rstrip("/") + "/", target, recursive=True), url)
        yield target


# --- samples -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Settings:
    """Everything that decides the output bytes; a re-run must use the same, or DEST is refused."""
    image_format: str
    reencode: bool
    quality: int
    resolution: int | None
    background: tuple[int, int, int] = WHITE  # RGB that transparent pixels are composited over

    def encode_image(self, data: bytes) -> bytes:
        """The image bytes to store: the source bytes when they already decode to the stored 8-bit RGB
        pixels in the target format, else the converted image encoded. Rejected names the fault."""
        try:
            with Image.open(io.BytesIO(data)) as image:
                pixels, changed = to_rgb8(image, self.background)  # reads the bit depth before anything loads
                self._check_size(*pixels.size, turned=orientation(image) != 1)
                if not (changed or self.reencode) and image.format == _PIL_FORMAT[self.image_format]:
                    return data
                buffer = io.BytesIO()
                options = {"quality": self.quality} if self.image_format == "jpeg" else {}
                pixels.save(buffer, format=_PIL_FORMAT[self.image_format], **options)
                return buffer.getvalue()
        except Rejected:
            raise
        except (OSError, SyntaxError, Image.DecompressionBombError) as error:
            raise Rejected("undecodable image", f"cannot decode the image ({error})") from None
        except ValueError as error:  # UnsupportedPixelFormat, or mode I values beyond 16 bits
            raise Rejected("unsupported pixel format", str(error)) from None

    def _check_size(self, width: int, height: int, *, turned: bool = False) -> None:
        upright = " (turned upright by its EXIF orientation)" if turned else ""
        if width != height:
            raise Rejected("wrong image size", f"image is {width}x{height}{upright}, expected a square image: "
                                               f"crop it to a square (python -m dataloading.convert does, "
                                               f"adjusting the intrinsics)")
        if self.resolution is not None and width != self.resolution:
            raise Rejected("wrong image size", f"image is {width}x{height}{upright}, expected "
                                               f"{self.resolution}x{self.resolution} (the first valid image's size, "
                                               f"or --resolution)")


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def camera_bytes(label) -> bytes:
    return npy_bytes(np.asarray(label, dtype=np.float32))


def _member_bytes(size: int) -> int:
    return TAR_BLOCK + -(-size // TAR_BLOCK) * TAR_BLOCK


def load_depth(data: bytes, resolution: int) -> np.ndarray:
    """The array of a depth map's .npy bytes; a ValueError saying why unless it is a 2-D float array of the
    image's resolution."""
    try:
        depth = np.load(io.BytesIO(data), allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise ValueError(f"not a .npy array ({error})") from None
    if not isinstance(depth, np.ndarray):
        raise ValueError("an .npz archive, expected a .npy array")
    if depth.dtype.kind != "f" or depth.shape != (resolution, resolution):
        raise ValueError(f"depth is {depth.dtype} {depth.shape}, expected a float array of shape "
                         f"({resolution}, {resolution}), the image's resolution")
    return depth


def checked_depth(files: SourceFiles, name: str, resolution: int) -> bytes:
    """The bytes of depth side file `name`, once they prove a depth map (`load_depth`)."""
    data = files.read(name)
    try:
        load_depth(data, resolution)
    except ValueError as error:
        raise Rejected("bad depth", f"{name}: {error}") from None
    return data


def ground_truth_bytes(files: SourceFiles, entries: list[Entry]) -> float:
    """Mean tar bytes of the depth and class members over the first MEASURED_SAMPLES valid entries."""
    measured = [entry for entry in entries if entry.fault is None][:MEASURED_SAMPLES]
    sizes = [(_member_bytes(len(files.read(entry.depth))) if entry.depth is not None else 0)
             + (2 * TAR_BLOCK if entry.class_index is not None else 0) for entry in measured]
    return float(np.mean(sizes)) if sizes else 0.0


def measure_image_size(files: SourceFiles, entries: list[Entry],
                       settings: Settings) -> tuple[int | None, float, dict[int, Rejected]]:
    """(resolution, mean stored image bytes, {key: fault} of the images tried) from the first valid
    images; (None, 0, the fault of every image) when none is valid."""
    sizes, faults = [], {}
    for entry in entries:
        if entry.fault is not None:
            continue
        data = files.read(entry.name)
        trial = settings if settings.resolution is not None else replace(settings, resolution=_upright_width(data))
        try:
            sizes.append(len(trial.encode_image(data)))
        except Rejected as fault:
            faults[entry.key] = fault
            continue
        settings = trial
        if len(sizes) == MEASURED_SAMPLES:
            break
    return settings.resolution, float(np.mean(sizes)) if sizes else 0.0, faults


def _upright_width(data: bytes) -> int | None:
    """The width of a square image once turned upright; None for anything else (encode_image says why)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = oriented_size(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None
    return width if width == height else None


def reject_record(name: str, fault: Rejected) -> dict:
    """One entry of rejects.json."""
    return {"file": name, "kind": fault.kind, "fault": fault.message}


# --- one shard -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ShardJob:
    index: int
    entries: tuple[Entry, ...]
    files: SourceFiles
    dest: str
    settings: Settings
    plan: dict  # what the marker must match: the settings plus samples per shard and the source


def write_shard(job: ShardJob) -> dict:
    """Validate and write one shard, publish it with its index, then its marker; returns the marker."""
    stem, extension = shard_stem(job.index), _EXTENSION[job.settings.image_format]
    samples, rejects = [], []
    for entry in job.entries:
        try:
            if entry.fault is not None:
                raise entry.fault
            image = job.settings.encode_image(job.files.read(entry.name))
            depth = None if entry.depth is None else checked_depth(job.files, entry.depth, job.settings.resolution)
        except Rejected as fault:
            rejects.append(reject_record(entry.name, fault))
            continue
        key = f"{entry.key:08d}"
        members = [(f"{key}.{extension}", image), (f"{key}.cam.npy", camera_bytes(entry.label)),
                   (f"{key}.name.txt", entry.name.encode())]
        if depth is not None:
            members.append((f"{key}.depth.npy", depth))
        if entry.class_index is not None:
            members.append((f"{key}.cls", str(entry.class_index).encode()))
        samples.append((key, members))
    marker = {"shard": stem, "plan": job.plan, "keys": [int(key) for key, _ in samples],
              "rejects": rejects, "size": 0, "sha256": None}
    if samples:
        marker.update(_publish_tar(job.dest, stem, samples))
    storage.write_bytes_atomic(storage.join(job.dest, f"{stem}.done.json"), _json_bytes(marker))
    return marker


def _publish_tar(dest: str, stem: str, samples) -> dict:
    """Write the tar under a temporary name (beside DEST when local, so the rename stays on one disk)."""
    folder = dest.removeprefix("file://") if storage.is_local(dest) else None
    handle, temporary = tempfile.mkstemp(prefix=f".{stem}.", suffix=".tar.tmp", dir=folder)
    os.close(handle)
    try:
        index = _write_tar(temporary, samples)
        size, sha256 = os.path.getsize(temporary), file_sha256(temporary)
        storage.publish_file(temporary, storage.join(dest, f"{stem}.tar"))
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    storage.write_bytes_atomic(storage.join(dest, f"{stem}.idx"), index.encode())
    return {"size": size, "sha256": sha256}


def _write_tar(path: str, samples) -> str:
    """Deterministic USTAR members (no times, owners or names beyond the key); returns the DALI index."""
    lines = [f"{DALI_INDEX_VERSION} {len(samples)}"]
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, members in samples:
            components = []
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode, info.uid, info.gid = len(data), 0, 0o644, 0, 0
                info.uname = info.gname = ""
                header_offset = tar.offset
                tar.addfile(info, io.BytesIO(data))
                extension = name.split(".", 1)[1]  # DALI's rule: everything after the first dot
                components.append(f"{extension} {header_offset + TAR_BLOCK} {len(data)} {name}")
            lines.append(" ".join(components))
    return "\n".join(lines) + "\n"


# --- the whole build -----------------------------------------------------------------------------------

def build(src: str, dest: str, *, shard_size_mb: float = 64, image_format: str = "png", reencode: bool = False,
          quality: int = 95, resolution: int | None = None, background: tuple[int, int, int] = WHITE,
          camera_check: CameraCheck = CameraCheck(), workers: int | None = None, strict: bool = False,
          verify: bool = False, progress: bool = True, accept_camera_conventions: bool = False) -> dict:
    """Build (or finish, or confirm) the shards of SRC in DEST; returns the manifest.

    A ValueError when the data cannot be built: no valid sample, most cameras seeing nothing, labels in a
    wrong convention for the set as a whole (`dataloading.camera_conventions`; with `strict` its warnings
    too; never with `accept_camera_conventions`), or with `strict` any reject; its message counts the
    rejects per kind and names the first few of each, and rejects.json is written before it is raised."""
    _check_options(image_format, shard_size_mb, quality, background)
    dest = str(dest).rstrip("/")
    with local_copy(str(src)) as local_source:
        files = SourceFiles(local_source)
        entries, class_names = read_entries(files)
        entries, cameras, camera_rows = check_entry_cameras(entries, camera_check)
        storage.makedirs(dest)
        fail = functools.partial(_fail, str(src), dest, len(entries))
        conventions = check_conventions(cameras.labels)
        problems = [cameras.problem(strict=strict),
                    None if accept_camera_conventions else conventions.problem(strict=strict)]
        problem = "\n".join(p for p in problems if p)
        if problem or (strict and any(entry.fault for entry in entries)):
            fail(_entry_rejects(entries), ("--strict: " if strict else "") + (
                problem or "dataset.json and the file list already show faults (the images were not read yet)"))
        settings = Settings(image_format, reencode, int(quality), resolution, tuple(background))
        resolution, image_bytes, faults = measure_image_size(files, entries, settings)
        if resolution is None:
            fail(_entry_rejects([replace(entry, fault=entry.fault or faults[entry.key]) for entry in entries]),
                 f"no valid image among the {len(entries)} entries; nothing to build")
        settings = replace(settings, resolution=resolution)
        plan = _plan(settings, camera_check, shard_size_mb, image_bytes, ground_truth_bytes(files, entries),
                     len(entries), files.fingerprint())
        samples_per_shard = plan["samples_per_shard"]
        runs = [tuple(entries[start:start + samples_per_shard]) for start in range(0, len(entries), samples_per_shard)]
        present = storage.list(dest)
        markers = {index: _complete_marker(dest, index, plan, present, verify) for index in range(len(runs))}
        jobs = [ShardJob(index, run, files, dest, settings, plan)
                for index, run in enumerate(runs) if markers[index] is None]
        markers.update(_run(jobs, workers or os.cpu_count() or 1, progress))
    markers = [markers[index] for index in range(len(runs))]
    rejects = [reject for marker in markers for reject in marker["rejects"]]
    _write_if_changed(storage.join(dest, REJECTS), _json_bytes(rejects))
    if strict and rejects:
        fail(rejects, "--strict: some samples are invalid, so no manifest was published (the shards are kept; a "
                      "build without --strict reuses them)")
    if not any(marker["keys"] for marker in markers):
        fail(rejects, f"every one of the {len(entries)} source images was rejected")
    kept = cameras.subset([camera_rows[key] for marker in markers for key in marker["keys"]])
    statistics = {**kept.statistics(), "conventions": conventions.record(accepted=accept_camera_conventions)}
    return _publish_manifest(dest, entries, plan, markers, statistics, class_names)


def _plan(settings: Settings, camera_check: CameraCheck, shard_size_mb: float, image_bytes: float,
          ground_truth_bytes: float, source_entries: int, source_sha256: str) -> dict:
    """What decides the shards' bytes, as a marker holds it (JSON: tuples become lists)."""
    # the name member fits one block; the camera is a 228-byte .npy
    per_sample = _member_bytes(int(image_bytes)) + _member_bytes(len(camera_bytes(np.zeros(25)))) + 2 * TAR_BLOCK
    per_sample += ground_truth_bytes
    plan = {**asdict(settings), "camera_check": asdict(camera_check), "shard_size_mb": float(shard_size_mb),
            "samples_per_shard": max(1, int(shard_size_mb * 2**20 // per_sample)),
            "source_entries": source_entries, "source_sha256": source_sha256}
    return json.loads(json.dumps(plan))


def _check_options(image_format: str, shard_size_mb: float, quality: int, background) -> None:
    if image_format not in _EXTENSION:
        raise ValueError(f"--format must be one of {sorted(_EXTENSION)}, got {image_format!r}")
    if shard_size_mb <= 0 or not 1 <= quality <= 100:
        raise ValueError(f"--shard-size-mb must be > 0 and --quality in 1..100, got {shard_size_mb}, {quality}")
    if len(background) != 3 or not all(isinstance(x, int) and 0 <= x <= 255 for x in background):
        raise ValueError(f"--background must be three integers in 0..255 (R,G,B), got {background!r}")


def _entry_rejects(entries: list[Entry]) -> list[dict]:
    return [reject_record(entry.name, entry.fault) for entry in entries if entry.fault is not None]


def _fail(source: str, dest: str, total: int, rejects: list[dict], headline: str) -> NoReturn:
    """Write rejects.json, then raise the ValueError that explains why nothing is published."""
    url = storage.join(dest, REJECTS)
    _write_if_changed(url, _json_bytes(rejects))
    raise ValueError(f"{source}: {headline}\n{describe_rejects(rejects, total)}\nEvery reject is listed in {url}.")


def describe_rejects(rejects: list[dict], total: int) -> str:
    """How many of `total` samples were rejected and, per kind (most frequent first), how many and the
    first EXAMPLES_PER_KIND files with their reasons."""
    by_kind = {}
    for reject in rejects:
        by_kind.setdefault(reject["kind"], []).append(reject)
    lines = [f"{len(rejects)} of {total} samples rejected" + (", by kind:" if rejects else ".")]
    for kind, items in sorted(by_kind.items(), key=lambda item: -len(item[1])):
        lines.append(f"  {kind}: {len(items)}")
        lines += [f"    {item['file']}: {item['fault']}" for item in items[:EXAMPLES_PER_KIND]]
        if len(items) > EXAMPLES_PER_KIND:
            lines.append(f"    ... and {len(items) - EXAMPLES_PER_KIND} more")
    return "\n".join(lines)


class DestinationMismatch(ValueError):
    """DEST holds shards of another source, or built with other settings."""


def _complete_marker(dest: str, index: int, plan: dict, present: dict[str, int], verify: bool) -> dict | None:
    """The marker of shard `index` if that shard is complete in DEST, else None (it gets rebuilt)."""
    stem = shard_stem(index)
    if f"{stem}.done.json" not in present:
        return None
    marker = json.loads(storage.read_bytes(storage.join(dest, f"{stem}.done.json")))
    if marker.get("plan") != plan:
        built = marker.get("plan") or {}
        differences = ", ".join(f"{key} {built.get(key)!r} there, {value!r} here" for key, value in plan.items()
                                if built.get(key) != value)
        raise DestinationMismatch(f"{dest}: holds shards built from another source or with other settings ({stem}: "
                         f"{differences}); build into an empty destination, or rerun with its settings")
    if not marker["keys"]:
        return marker
    tar_url = storage.join(dest, f"{stem}.tar")
    if present.get(f"{stem}.tar") != marker["size"] or f"{stem}.idx" not in present:
        return None
    if verify and file_sha256(tar_url) != marker["sha256"]:
        return None
    return marker


def file_sha256(url: str) -> str:
    digest = hashlib.sha256()
    with storage.open_read(url) as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _run(jobs: list[ShardJob], workers: int, progress: bool) -> dict[int, dict]:
    """Markers of the written shards; in parallel over processes when there is more than one job."""
    markers = {}
    with tqdm(total=sum(len(job.entries) for job in jobs), unit="img", desc="shards", disable=not progress) as bar:
        if workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                markers[job.index] = write_shard(job)
                bar.update(len(job.entries))
            return markers
        # spawn: a forked child would inherit the parent's storage event loop and any torch threads
        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(write_shard, job): job for job in jobs}
            try:
                for future in as_completed(futures):
                    job = futures[future]
                    markers[job.index] = future.result()
                    bar.update(len(job.entries))
            except BaseException:
                pool.shutdown(cancel_futures=True)
                raise
    return markers


def _publish_manifest(dest: str, entries: list[Entry], plan: dict, markers: list[dict], cameras: dict,
                      class_names: list[str] | None) -> dict:
    """labels.npy, then manifest.json last; a file already holding the same bytes is left untouched, so
    a re-run writes nothing."""
    labels = {entry.key: entry.label for entry in entries}
    has_depth = {entry.key: entry.depth is not None for entry in entries}
    shards = [{"name": f"{m['shard']}.tar", "index": f"{m['shard']}.idx", "size": m["size"],
               "sample_count": len(m["keys"]), "sha256": m["sha256"]} for m in markers if m["keys"]]
    kinds = [reject["kind"] for m in markers for reject in m["rejects"]]
    label_array = np.array([labels[key] for m in markers for key in m["keys"]], dtype=np.float32)
    buffer = io.BytesIO()
    np.save(buffer, label_array, allow_pickle=False)
    _write_if_changed(storage.join(dest, LABELS), buffer.getvalue())
    manifest = {"format": MANIFEST_FORMAT, "sample_count": len(label_array), "resolution": plan["resolution"],
                "label_dim": LABEL_SIZE, "image_extension": _EXTENSION[plan["image_format"]],
                "samples_per_shard": plan["samples_per_shard"], "rejected": len(kinds),
                "rejected_by_kind": {kind: kinds.count(kind) for kind in sorted(set(kinds))},
                "labels": LABELS, "rejects": REJECTS, "cameras": cameras,
                "ground_truth": {"depth": all(has_depth[key] for m in markers for key in m["keys"]),
                                 "class_names": class_names},
                "settings": plan, "shards": shards}
    _write_if_changed(storage.join(dest, MANIFEST), _json_bytes(manifest))
    return manifest


def summary(dest: str) -> str:
    """What the build in DEST holds, as printed at its end: counts, rejects per kind, camera statistics."""
    dest = str(dest).rstrip("/")
    manifest = json.loads(storage.read_bytes(storage.join(dest, MANIFEST)))
    lines = [f"{manifest['sample_count']} samples in {len(manifest['shards'])} shards -> "
             f"{storage.join(dest, MANIFEST)}"]
    if manifest["rejected"]:
        rejects = json.loads(storage.read_bytes(storage.join(dest, REJECTS)))
        lines.append(describe_rejects(rejects, manifest["sample_count"] + len(rejects)))
        lines.append(f"Every reject is listed in {storage.join(dest, REJECTS)}.")
    lines.append(describe_statistics(manifest["cameras"]))
    lines += [f"warning: {line}" for line in describe_record(manifest["cameras"].get("conventions"))]
    return "\n".join(lines)


def _write_if_changed(url: str, data: bytes) -> None:
    if storage.exists(url) and storage.read_bytes(url) == data:
        return
    storage.write_bytes_atomic(url, data)


def _json_bytes(value) -> bytes:
    return (json.dumps(value, indent=1) + "\n").encode()


def parse_colour(text: str) -> tuple[int, int, int]:
    """--background: "white", "black" or R,G,B in 0..255."""
    named = {"white": (255, 255, 255), "black": (0, 0, 0)}
    try:
        return named.get(text) or tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected white, black or R,G,B (0..255 each), got {text!r}") from None


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dataloading.build", description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="reference-format folder or zip (local path or fsspec URL)")
    parser.add_argument("dest", help="local folder or s3://bucket/prefix")
    parser.add_argument("--shard-size-mb", type=float, default=64, help="target shard size")
    parser.add_argument("--format", dest="image_format", choices=sorted(_EXTENSION), default="png")
    parser.add_argument("--reencode", action="store_true", help="re-encode images of the target format too")
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality when encoding JPEG")
    parser.add_argument("--resolution", type=int, default=None, help="required size (default: the first image's)")
    parser.add_argument("--background", type=parse_colour, default=WHITE,
                        help="colour transparent pixels are composited over: white (default), black or R,G,B")
    parser.add_argument("--ray-start", type=float, default=None, help="check the cameras with the samples from "
                        "this depth (a preset's rendering.ray_start: 2.25 ffhq512/afhq512/tiny, 0.1 shapenet128); "
                        "default: any depth")
    parser.add_argument("--ray-end", type=float, default=None, help="... to this depth (3.3, or 2.6 for shapenet128)")
    parser.add_argument("--box-warp", type=float, default=1.0, help="tri-plane box side the cameras must see "
                        "(a preset's rendering.box_warp: 1, or 1.6 for shapenet128)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes")
    parser.add_argument("--strict", action="store_true", help="fail on any invalid sample and on unusual camera "
                        "conventions (no manifest is published)")
    parser.add_argument(ACCEPT_FLAG, action="store_true", help="build even when the camera labels look like a "
                        "wrong convention for the data set as a whole (inverted or transposed matrices, other axes, "
                        "another world up): accept them knowingly")
    parser.add_argument("--verify", action="store_true", help="re-hash existing shards before skipping them")
    args = parser.parse_args(argv)
    try:
        check = CameraCheck(box_warp=args.box_warp, ray_start=args.ray_start, ray_end=args.ray_end)
        build(args.src, args.dest, shard_size_mb=args.shard_size_mb, image_format=args.image_format,
              reencode=args.reencode, quality=args.quality, resolution=args.resolution, background=args.background,
              camera_check=check, workers=args.workers, strict=args.strict, verify=args.verify,
              accept_camera_conventions=args.accept_camera_conventions)
    except (ValueError, FileNotFoundError, PermissionError) as error:
        raise SystemExit(f"error: {error}") from None
    print(summary(args.dest))
    print(f"next: python -m eg3d.train --data {args.dest} --name NAME [--preset PRESET]")


if __name__ == "__main__":
    main()
