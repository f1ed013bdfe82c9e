"""Face photos -> the reference dataset format, cropped and labelled the way EG3D's FFHQ data are.

    python -m dataloading.faces PHOTOS OUT [--resolution 512] [--workers N] [--min-face-size 64]
                                [--landmarker PATH_OR_URL [--landmarker-sha256 HEX]]

PHOTOS is a folder (searched recursively) or a zip file, local or at any fsspec URL, of JPEG, PNG or WebP
photos; EXIF orientation is applied. For each photo, the largest face is found (MediaPipe; see
`dataloading.face_alignment` for the facts and their sources), cropped and turned upright as the reference's
FFHQ preprocessing crops, and given the camera of its head pose: radius 2.7, looking at the pivot (0, 0, 0.2),
FFHQ intrinsics. Photos without a usable face are skipped and listed with the reason.

OUT (a new or empty folder) receives `00000/img00000000.png`, ... and `dataset.json` = {"labels": [[name,
[25 floats]], ...], "sources": [[name, photo], ...]} (reference loaders read only "labels"), ready for
`python -m dataloading.build OUT SHARDS`; `report.json` (faces found, photos skipped by reason, photos with
several faces, each face's pose, the yaw and pitch histograms, images per second) and, with matplotlib,
`pose-histogram.svg` (SVG, because dataloading.build would take a PNG there for an unlabelled image).
`faces.jsonl` records each photo as it is done: a rerun into the same OUT skips the photos already done and
keeps what was written (the settings must be the same). A photo inside a zip is named `zip://MEMBER::ZIP`, an
fsspec URL that opens it.
"""

import argparse
import json
import os
import time
import zipfile
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import storage
from .build import local_copy
from .face_alignment import (MIN_FACE_SIZE, REFERENCE_RESOLUTION, SKIP_KINDS, FaceError, FaceLandmarker, align_face,
                             load_photo)

PHOTO_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
IMAGES_PER_FOLDER = 1000
PROGRESS, REPORT, METADATA, HISTOGRAM = "faces.jsonl", "report.json", "dataset.json", "pose-histogram.svg"
BIN_DEGREES = 10
BIN_EDGES = list(range(-90, 91, BIN_DEGREES))
EXAMPLES_PER_KIND = 3


@dataclass(frozen=True)
class Photo:
    """Where one photo's bytes are: a file URL, or a member of a (local copy of a) zip."""
    source: str  # what the report and dataset.json name: the path or URL, or zip://MEMBER::ZIP
    url: str | None = None
    archive: str | None = None
    member: str | None = None

    def read(self) -> bytes:
        if self.archive is None:
            return storage.read_bytes(self.url)
        with zipfile.ZipFile(self.archive) as archive:
            return archive.read(self.member)


@dataclass(frozen=True)
class Settings:
    """What decides the output; a rerun into the same OUT must use the same."""
    resolution: int = REFERENCE_RESOLUTION
    min_face_size: float = MIN_FACE_SIZE
    landmarker: str | None = None


# --- listing ---------------------------------------------------------------------------------------------------

def is_photo(name: str) -> bool:
    return name.lower().endswith(PHOTO_EXTENSIONS)


def list_photos(photos: str, archive_copy: str | None = None) -> list[Photo]:
    """The photos of a folder (recursively) or zip, sorted by name. `archive_copy`: a local copy of the zip."""
    if str(photos).lower().endswith(".zip"):
        try:
            with zipfile.ZipFile(archive_copy or photos) as archive:
                members = sorted(i.filename for i in archive.infolist() if not i.is_dir() and is_photo(i.filename))
        except zipfile.BadZipFile as error:
            raise ValueError(f"{photos}: not a readable zip file ({error}); expected a folder or a zip of "
                             f"photos") from None
        archive = archive_copy or str(photos)
        return [Photo(f"zip://{member}::{photos}", archive=archive, member=member) for member in members]
    fs, path = storage.open_filesystem(photos)
    files = sorted(name for name in storage.with_retries(lambda: fs.find(path), str(photos)) if is_photo(name))
    urls = files if storage.is_local(photos) else [fs.unstrip_protocol(name) for name in files]
    return [Photo(url, url=url) for url in urls]


def check_photos(photos: str) -> None:
    if not storage.exists(photos):
        raise FileNotFoundError(f"{photos}: no such folder or zip file")
    if str(photos).lower().endswith(".zip"):
        return
    fs, path = storage.open_filesystem(photos)
    if not storage.with_retries(lambda: fs.isdir(path), str(photos)):
        raise ValueError(f"{photos}: expected a folder or a .zip file of JPEG, PNG or WebP photos")


# --- output folder and resuming --------------------------------------------------------------------------------

def image_name(index: int) -> str:
    return f"{index // IMAGES_PER_FOLDER:05d}/img{index:08d}.png"


def open_output(out: Path, settings: Settings) -> dict[str, dict]:
    """The records of a previous run into `out` ({source: record}), after checking it was made with the same
    settings; {} for a new or empty folder. ValueError for a folder holding anything else."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: exists and is not a folder")
    progress = out / PROGRESS
    if not progress.is_file():
        if out.is_dir() and any(out.iterdir()):
            raise ValueError(f"{out}: folder is not empty and holds no {PROGRESS} of an earlier run; choose a new one")
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(progress, json.dumps({"settings": asdict(settings)}) + "\n")
        return {}
    lines = progress.read_text().splitlines()
    try:
        header, records = json.loads(lines[0]), [json.loads(line) for line in lines[1:] if line.strip()]
    except (json.JSONDecodeError, IndexError) as error:  # a line cut short by a crash is the last one
        header, records = _recover(lines, progress, error)
    earlier = header.get("settings")
    if earlier != asdict(settings):
        raise ValueError(f"{out}: made by an earlier run with other settings ({earlier}, now {asdict(settings)}); "
                         f"rerun with those, or choose a new OUT")
    done = {}
    for record in records:
        if record["status"] != "ok" or (out / record["name"]).is_file():
            done[record["source"]] = record
    return done


def _recover(lines: list[str], progress: Path, error: Exception) -> tuple[dict, list[dict]]:
    try:
        header = json.loads(lines[0])
        records = [json.loads(line) for line in lines[1:-1] if line.strip()]
    except (json.JSONDecodeError, IndexError):
        raise ValueError(f"{progress}: unreadable ({error}); choose a new OUT") from None
    return header, records


def write_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(text)
    os.replace(temporary, path)


# --- one photo (in a worker process) ---------------------------------------------------------------------------

_worker = {}  # this worker process's FaceLandmarker and settings


def start_worker(settings: Settings) -> None:
    _worker["model"] = FaceLandmarker(landmarker=settings.landmarker)
    _worker["settings"] = settings


def process(photo: Photo, name: str, out: str) -> dict:
    """Align one photo, write its crop to out/name; its record (status "ok" or a skip kind from SKIP_KINDS)."""
    settings = _worker["settings"]
    record = {"source": photo.source, "name": name}
    try:
        image = load_photo(photo.read(), name=photo.source)
        face = align_face(image, _worker["model"], resolution=settings.resolution,
                          min_face_size=settings.min_face_size, name=photo.source)
    except FaceError as error:
        return {**record, "status": error.kind, "reason": str(error)}
    target = Path(out) / name
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    face.image.save(temporary, format="PNG")
    os.replace(temporary, target)
    pose = face.pose
    return {**record, "status": "ok", "label": face.label.astype(float).tolist(), "faces": face.faces,
            "pose": [round(pose.yaw, 3), round(pose.pitch, 3), round(pose.roll, 3)],
            "face_size": round(face.face_size, 1), "outside": round(face.outside, 4)}


def run_all(jobs: list[tuple[Photo, str]], out: Path, settings: Settings, workers: int, progress: bool):
    """Yields each job's record as it completes (in one process, or over `workers` spawned processes)."""
    bar = tqdm(total=len(jobs), unit="photo", desc="faces", disable=not progress)
    if workers <= 1 or len(jobs) <= 1:
        start_worker(settings)
        try:
            for photo, name in jobs:
                yield process(photo, name, str(out))
                bar.update()
        finally:
            _worker.pop("model").close()
            bar.close()
        return
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=get_context("spawn"), initializer=start_worker,
                             initargs=(settings,)) as pool:
        try:
            for record in pool.map(process, *zip(*jobs), [str(out)] * len(jobs), chunksize=1):
                yield record
                bar.update()
        finally:
            pool.shutdown(cancel_futures=True)
            bar.close()


# --- the command ---------------------------------------------------------------------------------------------

def faces(photos: str, out, *, resolution: int = REFERENCE_RESOLUTION, min_face_size: float = MIN_FACE_SIZE,
          landmarker: str | None = None, landmarker_sha256: str | None = None, workers: int = 1,
          progress: bool = True) -> dict:
    """Align the faces of PHOTOS into OUT (see the module docstring); returns the report."""
    if resolution < 64 or min_face_size <= 0 or workers < 1:
        raise ValueError(f"--resolution must be at least 64, --min-face-size and --workers positive; got "
                         f"{resolution}, {min_face_size}, {workers}")
    out = Path(out)
    check_photos(photos)
    model = FaceLandmarker(landmarker=landmarker, landmarker_sha256=landmarker_sha256)  # fails early, downloads once
    backend = model.describe()
    settings = Settings(resolution, float(min_face_size), model.landmarker_path)
    model.close()
    is_zip = str(photos).lower().endswith(".zip")
    with local_copy(photos) if is_zip else nullcontext() as archive_copy:
        listed = list_photos(photos, archive_copy)
        if not listed:
            raise ValueError(f"{photos}: no photos in it; expected files ending in {', '.join(PHOTO_EXTENSIONS)}")
        done = open_output(out, settings)
        jobs = plan_jobs(listed, done)
        started = time.perf_counter()
        with open(out / PROGRESS, "a") as log:
            for record in run_all(jobs, out, settings, workers, progress):
                log.write(json.dumps(record) + "\n")
                log.flush()
                done[record["source"]] = record
    seconds = time.perf_counter() - started
    sources = {photo.source for photo in listed}
    records = sorted((r for r in done.values() if r["source"] in sources), key=lambda r: r["name"])
    report = make_report(records, photos=str(photos), out=out, backend=backend, processed=len(jobs), seconds=seconds)
    write_outputs(out, records, report)
    remove_orphans(out, {r["name"] for r in records if r["status"] == "ok"})
    return report


def plan_jobs(listed: list[Photo], done: dict[str, dict]) -> list[tuple[Photo, str]]:
    """(photo, image name) for the photos not done yet. A photo's name comes from its place in the sorted list,
    so a run cut short and resumed names it as the first run would have; a name an earlier run gave another
    photo (PHOTOS changed in between) moves past the last one used."""
    taken = {r["name"] for r in done.values()}
    spare = max([len(listed) - 1, *(int(Path(name).stem.removeprefix("img")) for name in taken)]) + 1
    jobs = []
    for index, photo in enumerate(listed):
        if photo.source in done:
            continue
        name = image_name(index)
        if name in taken:
            name, spare = image_name(spare), spare + 1
        jobs.append((photo, name))
    return jobs


def remove_orphans(out: Path, kept: set[str]) -> None:
    """Delete crops this command wrote that dataset.json does not list (their record was lost when a run was
    killed between writing and logging them, or their photo left PHOTOS): dataloading.build would take them for
    unlabelled images."""
    for path in out.glob("[0-9][0-9][0-9][0-9][0-9]/img*.png"):
        if path.relative_to(out).as_posix() not in kept:
            path.unlink()


def make_report(records: list[dict], *, photos: str, out: Path, backend: str, processed: int, seconds: float) -> dict:
    kept = [r for r in records if r["status"] == "ok"]
    skipped = {kind: [[r["source"], r["reason"]] for r in records if r["status"] == kind] for kind in SKIP_KINDS}
    poses = np.array([r["pose"] for r in kept]).reshape(-1, 3)
    return {
        "photos": photos, "out": str(out), "model": backend, "photos_found": len(records), "faces": len(kept),
        "skipped": {kind: items for kind, items in skipped.items() if items},
        "several_faces": [[r["source"], r["faces"], r["name"]] for r in kept if r["faces"] > 1],
        "padded": [[r["source"], r["outside"], r["name"]] for r in kept if r["outside"] > 0.1],
        "poses": [[r["name"], *r["pose"]] for r in kept],
        "histogram": {"bin_edges_degrees": BIN_EDGES, **{axis: histogram(poses[:, i]) for i, axis in
                                                         enumerate(("yaw", "pitch"))}},
        "median_pose": dict(zip(("yaw", "pitch", "roll"), np.median(poses, 0).round(2).tolist())) if kept else None,
        "processed_this_run": processed, "seconds": round(seconds, 3),
        "images_per_second": round(processed / seconds, 3) if processed and seconds > 0 else None,
    }


def histogram(angles: np.ndarray) -> list[int]:
    """Counts per BIN_EDGES bin; angles beyond +-90 degrees count in the end bins."""
    return np.histogram(np.clip(angles, BIN_EDGES[0], BIN_EDGES[-1]), bins=BIN_EDGES)[0].tolist()


def write_outputs(out: Path, records: list[dict], report: dict) -> None:
    kept = [r for r in records if r["status"] == "ok"]
    if kept:
        write_atomic(out / METADATA, json.dumps({"labels": [[r["name"], r["label"]] for r in kept],
                                                 "sources": [[r["name"], r["source"]] for r in kept]}))
    write_atomic(out / REPORT, json.dumps(report, indent=1) + "\n")
    draw_histogram(report, out / HISTOGRAM)


def draw_histogram(report: dict, path: Path) -> bool:
    """The yaw and pitch histograms as an SVG picture; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, axes = plt.subplots(1, 2, figsize=(8, 3), sharey=True)
    edges = np.array(BIN_EDGES)
    for axis, name in zip(axes, ("yaw", "pitch")):
        axis.bar(edges[:-1], report["histogram"][name], width=BIN_DEGREES, align="edge", color="#4878a8")
        axis.set_xlabel(f"{name} (degrees)")
        axis.set_xlim(-90, 90)
    axes[0].set_ylabel("faces")
    figure.suptitle(f"{report['faces']} faces from {report['photos']}")
    figure.tight_layout()
    figure.savefig(path, format="svg")
    plt.close(figure)
    return True


def format_report(report: dict) -> str:
    lines = [f"{report['faces']} faces from {report['photos_found']} photos -> {report['out']} ({report['model']})"]
    for kind, items in report["skipped"].items():
        lines.append(f"skipped, {kind}: {len(items)}")
        lines += [f"  {reason}" for _, reason in items[:EXAMPLES_PER_KIND]]
        if len(items) > EXAMPLES_PER_KIND:
            lines.append(f"  ... and {len(items) - EXAMPLES_PER_KIND} more")
    several = report["several_faces"]
    if several:
        lines.append(f"several faces (the largest was taken): {len(several)}: "
                     + ", ".join(f"{source} ({count})" for source, count, _ in several[:EXAMPLES_PER_KIND])
                     + (" ..." if len(several) > EXAMPLES_PER_KIND else ""))
    if report["padded"]:
        lines.append(f"crops more than 10% outside the photo (filled black): {len(report['padded'])}")
    if report["faces"]:
        lines += [text_histogram(report, axis) for axis in ("yaw", "pitch")]
        median = report["median_pose"]
        lines.append(f"median pose: yaw {median['yaw']:.1f}, pitch {median['pitch']:.1f}, roll {median['roll']:.1f} "
                     f"degrees (roll is removed by the crop)")
    if report["images_per_second"]:
        lines.append(f"{report['processed_this_run']} photos in {report['seconds']:.1f} s "
                     f"({report['images_per_second']:.2f} per second)")
    lines.append(f"report: {Path(report['out']) / REPORT}")
    if report["faces"]:
        lines.append(f"next: python -m dataloading.build {report['out']} SHARDS   # a folder or s3://bucket/prefix")
    return "\n".join(lines)


def text_histogram(report: dict, axis: str) -> str:
    """One line: the non-empty bins as 'from..to: count'."""
    counts = report["histogram"][axis]
    bins = [f"{low:+d}..{low + BIN_DEGREES:+d}: {n}" for low, n in zip(BIN_EDGES, counts) if n]
    return f"{axis} (degrees): " + ", ".join(bins)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dataloading.faces", description=__doc__.split("\n\n")[0])
    parser.add_argument("photos", help="folder or zip of JPEG, PNG or WebP photos (local path or fsspec URL)")
    parser.add_argument("out", help="output folder (new or empty, or an earlier run's to resume it)")
    parser.add_argument("--resolution", type=int, default=REFERENCE_RESOLUTION, help="crop size (the reference: 512)")
    parser.add_argument("--workers", type=int, default=1, help="processes, each with its own MediaPipe model")
    parser.add_argument("--min-face-size", type=float, default=MIN_FACE_SIZE, help="skip faces whose crop is "
                        "narrower than this, in photo pixels (default: 64, an 8x upscale at 512)")
    parser.add_argument("--landmarker", default=None, help="MediaPipe's face_landmarker.task (path or URL; "
                        "downloaded once into $EG3D_CACHE or ~/.cache/eg3d): needed by MediaPipe releases without "
                        "the legacy face solutions (0.10.30 and later)")
    parser.add_argument("--landmarker-sha256", default=None, help="its SHA-256 (or a prefix of 8+ hex digits)")
    args = parser.parse_args(argv)
    try:
        report = faces(args.photos, args.out, resolution=args.resolution, min_face_size=args.min_face_size,
                       landmarker=args.landmarker, landmarker_sha256=args.landmarker_sha256, workers=args.workers)
    except (ValueError, FileNotFoundError, PermissionError, ImportError) as error:
        raise SystemExit(f"error: {error}") from None
    print(format_report(report))
    if not report["faces"]:
        raise SystemExit(f"error: no usable face in any of the {report['photos_found']} photos; "
                         f"see {Path(args.out) / REPORT}")


if __name__ == "__main__":
    main()
