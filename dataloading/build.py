"""Camera-labelled images -> webdataset shards on any storage URL.

    python -m dataloading.build SRC DEST [--shard-size-mb 64] [--format png|jpeg] [--reencode]
                                [--quality 95] [--resolution R] [--workers N] [--strict] [--verify]

SRC is a dataset in the reference format (a folder or zip of images plus `dataset.json`; our synthetic
data is one) at a local path or any fsspec URL; a remote SRC is copied to a temporary folder first.
DEST is a local folder or `s3://bucket/prefix`. DEST receives:

- `shard-000000.tar`, ...: webdataset tars. Sample key `%08d` is the image's position in SRC (sorted
  by name); members `KEY.png` or `KEY.jpg` (the source bytes unless re-encoding is asked for or needed),
  `KEY.cam.npy` (float32[25] camera) and `KEY.name.txt` (the source file name). Headers carry no
  time or owner, so the same input gives the same bytes.
- `shard-000000.idx`: the index DALI's `wds2idx` writes ("v1.2 <samples>", then per sample
  `<ext> <data offset> <size> <member name>` for each member), for `fn.readers.webdataset`.
- `shard-000000.done.json`: written after the shard and its index are published; it records the
  settings, size, sha256, sample keys and rejects, so a re-run skips the shard.
- `labels.npy` (float32 [N,25] in manifest order, for the generator's camera sampler), `rejects.json`
  ([{file, fault}]), and last `manifest.json`, which names only complete shards.

Shards hold fixed runs of source positions (a count measured from the first images to meet the target
size and recorded in the manifest), so the plan, and with it every shard, is the same on a re-run.
Every sample is validated: the image decodes, is square and of the expected resolution (the first
image's, or --resolution); the label is 25 finite floats with sane normalized intrinsics and a
cam2world whose rotation is a rotation. Rejects are skipped and listed; --strict stops at the first.
"""

import argparse
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

import numpy as np
from PIL import Image
from tqdm import tqdm

from . import storage
from .reference_format import IMAGE_EXTENSIONS, LABEL_SIZE, METADATA, load_label_list, parse_label_entry

MANIFEST, LABELS, REJECTS = "manifest.json", "labels.npy", "rejects.json"
MANIFEST_FORMAT = "eg3d-webdataset-1"
DALI_INDEX_VERSION = "v1.2"
TAR_BLOCK = 512
MEASURED_SAMPLES = 16  # images encoded up front to choose the samples per shard
TOLERANCE = 1e-3  # for the rotation and the fixed rows of the camera matrices
_CONVERTIBLE_MODES = {"RGB", "RGBA", "L", "LA", "P", "PA", "CMYK"}
_EXTENSION = {"png": "png", "jpeg": "jpg"}
_PIL_FORMAT = {"png": "PNG", "jpeg": "JPEG"}


def shard_stem(index: int) -> str:
    return f"shard-{index:06d}"


# --- the source ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Entry:
    """One listed or found image: its key (position in the sorted source), label, and any fault."""
    key: int
    name: str
    label: tuple[float, ...] | None
    fault: str | None


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


def read_entries(files: SourceFiles) -> list[Entry]:
    """Every image the metadata lists or the source holds, sorted by name, each with its fault if any.
    Only a missing or unreadable dataset.json is an error: it leaves nothing to build."""
    names = files.names()
    if METADATA not in names:
        raise ValueError(f"{files.path}: no {METADATA}; expected one at the root listing "
                         f'{{"labels": [[image path, [25 floats]], ...]}}')
    listed = load_label_list(files.read(METADATA), f"{files.path}: {METADATA}")
    found = {}  # name -> (label or None, fault or None)
    for position, item in enumerate(listed):
        name, label, fault = parse_label_entry(item)
        name = name or f"{METADATA}[labels][{position}]"
        fault = fault or label_fault(label)
        label = tuple(label.tolist()) if label is not None else None
        if name in found:
            fault = f"listed twice in {METADATA}"
        elif fault is None and name not in names:
            fault = f"listed in {METADATA} but the file is missing"
        found[name] = (label, fault)
    for name in names:
        if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS and name not in found:
            found[name] = (None, f"no label in {METADATA}")
    return [Entry(key, name, *found[name]) for key, name in enumerate(sorted(found))]


def label_fault(label: np.ndarray) -> str | None:
    """What is wrong with a camera label (row-major 4x4 cam2world, then 3x3 normalized intrinsics)."""
    cam2world, intrinsics = label[:16].reshape(4, 4), label[16:].reshape(3, 3)
    if not np.allclose(cam2world[3], [0, 0, 0, 1], rtol=0, atol=TOLERANCE):
        return f"cam2world bottom row is {_numbers(cam2world[3])}, expected 0 0 0 1"
    rotation = cam2world[:3, :3]
    orthogonality = np.abs(rotation @ rotation.T - np.eye(3)).max()
    if orthogonality > TOLERANCE:
        return f"cam2world rotation is not orthonormal (max |R R^T - I| = {orthogonality:.3g} > {TOLERANCE})"
    determinant = np.linalg.det(rotation)
    if abs(determinant - 1) > TOLERANCE:
        return f"cam2world rotation has determinant {determinant:.4g}, expected +1 (not a reflection)"
    fx, fy, cx, cy = intrinsics[0, 0], intrinsics[1, 1], intrinsics[0, 2], intrinsics[1, 2]
    if not (fx > 0 and fy > 0):
        return f"intrinsics have focal lengths fx={fx:.4g}, fy={fy:.4g}, expected both > 0"
    if not (0 <= cx <= 1 and 0 <= cy <= 1):
        return f"intrinsics have principal point ({cx:.4g}, {cy:.4g}), expected within [0, 1] (normalized)"
    if not np.allclose(intrinsics[2], [0, 0, 1], rtol=0, atol=TOLERANCE):
        return f"intrinsics bottom row is {_numbers(intrinsics[2])}, expected 0 0 1"
    return None


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

    def encode_image(self, data: bytes) -> bytes:
        """The image bytes to store, or ValueError naming the fault."""
        try:
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                return self._checked(image, data)
        except (OSError, SyntaxError, Image.DecompressionBombError) as error:
            raise ValueError(f"cannot decode the image ({error})") from error

    def _checked(self, image: Image.Image, data: bytes) -> bytes:
        width, height = image.size
        if image.mode not in _CONVERTIBLE_MODES:
            raise ValueError(f"unsupported image mode {image.mode}; expected RGB, RGBA, grayscale or palette")
        if width != height:
            raise ValueError(f"image is {width}x{height}, expected a square image")
        if self.resolution is not None and width != self.resolution:
            raise ValueError(f"image is {width}x{height}, expected {self.resolution}x{self.resolution}")
        # Stored images are always 8-bit RGB, so every decoder (PIL, DALI) reads the same pixels.
        if not self.reencode and image.mode == "RGB" and image.format == _PIL_FORMAT[self.image_format]:
            return data
        buffer = io.BytesIO()
        options = {"quality": self.quality} if self.image_format == "jpeg" else {}
        image.convert("RGB").save(buffer, format=_PIL_FORMAT[self.image_format], **options)
        return buffer.getvalue()


def camera_bytes(label) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(label, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def _member_bytes(size: int) -> int:
    return TAR_BLOCK + -(-size // TAR_BLOCK) * TAR_BLOCK


def measure_image_size(files: SourceFiles, entries: list[Entry], settings: Settings) -> tuple[int, float]:
    """(resolution, mean stored image bytes) from the first valid images."""
    sizes = []
    for entry in entries:
        if entry.fault is not None:
            continue
        try:
            data = files.read(entry.name)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
            if settings.resolution is None and width == height:
                settings = replace(settings, resolution=width)
            sizes.append(len(settings.encode_image(data)))
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            continue
        if len(sizes) == MEASURED_SAMPLES:
            break
    if not sizes:
        raise ValueError(f"{files.path}: no valid image among {len(entries)} entries; nothing to build")
    return settings.resolution, float(np.mean(sizes))


# --- one shard -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ShardJob:
    index: int
    entries: tuple[Entry, ...]
    source: str  # SRC as given, for messages
    files: SourceFiles
    dest: str
    settings: Settings
    plan: dict  # what the marker must match: the settings plus samples per shard and the source
    strict: bool


def write_shard(job: ShardJob) -> dict:
    """Validate and write one shard, publish it with its index, then its marker; returns the marker."""
    stem, extension = shard_stem(job.index), _EXTENSION[job.settings.image_format]
    samples, rejects = [], []
    for entry in job.entries:
        try:
            if entry.fault is not None:
                raise ValueError(entry.fault)
            image = job.settings.encode_image(job.files.read(entry.name))
        except ValueError as fault:
            if job.strict:
                raise ValueError(f"{job.source}: {entry.name}: {fault}") from None
            rejects.append({"file": entry.name, "fault": str(fault)})
            continue
        key = f"{entry.key:08d}"
        samples.append((key, [(f"{key}.{extension}", image), (f"{key}.cam.npy", camera_bytes(entry.label)),
                              (f"{key}.name.txt", entry.name.encode())]))
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
          quality: int = 95, resolution: int | None = None, workers: int | None = None, strict: bool = False,
          verify: bool = False, progress: bool = True) -> dict:
    """Build (or finish, or confirm) the shards of SRC in DEST; returns the manifest."""
    if image_format not in _EXTENSION:
        raise ValueError(f"--format must be one of {sorted(_EXTENSION)}, got {image_format!r}")
    if shard_size_mb <= 0 or not 1 <= quality <= 100:
        raise ValueError(f"--shard-size-mb must be > 0 and --quality in 1..100, got {shard_size_mb}, {quality}")
    dest = str(dest).rstrip("/")
    with local_copy(str(src)) as local_source:
        files = SourceFiles(local_source)
        entries = read_entries(files)
        settings = Settings(image_format, reencode, int(quality), resolution)
        resolution, image_bytes = measure_image_size(files, entries, settings)
        settings = replace(settings, resolution=resolution)
        # the name member fits one block; the camera is a 228-byte .npy
        per_sample = _member_bytes(int(image_bytes)) + _member_bytes(len(camera_bytes(np.zeros(25)))) + 2 * TAR_BLOCK
        samples_per_shard = max(1, int(shard_size_mb * 2**20 // per_sample))
        plan = {**asdict(settings), "shard_size_mb": float(shard_size_mb), "samples_per_shard": samples_per_shard,
                "source_entries": len(entries), "source_sha256": files.fingerprint()}
        runs = [tuple(entries[start:start + samples_per_shard]) for start in range(0, len(entries), samples_per_shard)]
        storage.makedirs(dest)
        present = storage.list(dest)
        markers = {index: _complete_marker(dest, index, plan, present, verify) for index in range(len(runs))}
        jobs = [ShardJob(index, run, str(src), files, dest, settings, plan, strict)
                for index, run in enumerate(runs) if markers[index] is None]
        if strict:
            _raise_first_reject(str(src), [m for m in markers.values() if m is not None])
        markers.update(_run(jobs, workers or os.cpu_count() or 1, progress))
    return _publish_manifest(dest, entries, plan, [markers[index] for index in range(len(runs))])


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
        raise ValueError(f"{dest}: holds shards built from another source or with other settings ({stem}: "
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


def _raise_first_reject(source: str, markers: list[dict]) -> None:
    for marker in sorted(markers, key=lambda m: m["shard"]):
        for reject in marker["rejects"]:
            raise ValueError(f"{source}: {reject['file']}: {reject['fault']}")


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


def _publish_manifest(dest: str, entries: list[Entry], plan: dict, markers: list[dict]) -> dict:
    """labels.npy and rejects.json, then manifest.json last; a file already holding the same bytes is
    left untouched, so a re-run writes nothing."""
    labels = {entry.key: entry.label for entry in entries}
    shards = [{"name": f"{m['shard']}.tar", "index": f"{m['shard']}.idx", "size": m["size"],
               "sample_count": len(m["keys"]), "sha256": m["sha256"]} for m in markers if m["keys"]]
    rejects = [reject for m in markers for reject in m["rejects"]]
    _write_if_changed(storage.join(dest, REJECTS), _json_bytes(rejects))
    if not shards:
        raise ValueError(f"{dest}: every one of the {len(entries)} source images was rejected; see {REJECTS}")
    label_array = np.array([labels[key] for m in markers for key in m["keys"]], dtype=np.float32)
    buffer = io.BytesIO()
    np.save(buffer, label_array, allow_pickle=False)
    _write_if_changed(storage.join(dest, LABELS), buffer.getvalue())
    manifest = {"format": MANIFEST_FORMAT, "sample_count": len(label_array), "resolution": plan["resolution"],
                "label_dim": LABEL_SIZE, "image_extension": _EXTENSION[plan["image_format"]],
                "samples_per_shard": plan["samples_per_shard"], "rejected": len(rejects),
                "labels": LABELS, "rejects": REJECTS, "settings": plan, "shards": shards}
    _write_if_changed(storage.join(dest, MANIFEST), _json_bytes(manifest))
    return manifest


def _write_if_changed(url: str, data: bytes) -> None:
    if storage.exists(url) and storage.read_bytes(url) == data:
        return
    storage.write_bytes_atomic(url, data)


def _json_bytes(value) -> bytes:
    return (json.dumps(value, indent=1) + "\n").encode()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="reference-format folder or zip (local path or fsspec URL)")
    parser.add_argument("dest", help="local folder or s3://bucket/prefix")
    parser.add_argument("--shard-size-mb", type=float, default=64, help="target shard size")
    parser.add_argument("--format", dest="image_format", choices=sorted(_EXTENSION), default="png")
    parser.add_argument("--reencode", action="store_true", help="re-encode images of the target format too")
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality when encoding JPEG")
    parser.add_argument("--resolution", type=int, default=None, help="required size (default: the first image's)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes")
    parser.add_argument("--strict", action="store_true", help="stop at the first invalid sample")
    parser.add_argument("--verify", action="store_true", help="re-hash existing shards before skipping them")
    args = parser.parse_args(argv)
    try:
        manifest = build(args.src, args.dest, shard_size_mb=args.shard_size_mb, image_format=args.image_format,
                         reencode=args.reencode, quality=args.quality, resolution=args.resolution,
                         workers=args.workers, strict=args.strict, verify=args.verify)
    except (ValueError, FileNotFoundError, PermissionError) as error:
        raise SystemExit(f"error: {error}") from None
    print(f"{manifest['sample_count']} samples in {len(manifest['shards'])} shards, {manifest['rejected']} "
          f"rejected (see {REJECTS}) -> {storage.join(args.dest.rstrip('/'), MANIFEST)}")


if __name__ == "__main__":
    main()
