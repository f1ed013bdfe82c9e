"""Face photos -> the crop and camera label of EG3D's FFHQ data: detection, landmarks, alignment, head pose.

The one call for an application (`python -m dataloading.faces`, an inversion's `--camera auto`, an upload):

    with FaceLandmarker() as model:                       # MediaPipe, loaded once
        face = align_face(load_photo("me.jpg"), model)    # or a PIL image / uint8 array
    face.image, face.label, face.pose                     # 512x512 crop, float32[25] camera, HeadPose

MediaPipe is imported only when a FaceLandmarker is made (`pip install -e '.[faces]'`); everything else here
is numpy and PIL. Two MediaPipe back ends give the same 478 face-mesh landmarks:
- "solutions": the legacy `mediapipe.solutions.face_detection` and `face_mesh` (releases 0.10.14 to 0.10.21,
  Python 3.9-3.12), whose models ship inside the wheel: works offline.
- "tasks": `mediapipe.tasks.python.vision.FaceLandmarker` with a `face_landmarker.task` model bundle given as a
  path or URL (downloaded once into $EG3D_CACHE or ~/.cache/eg3d, checked by SHA-256 when a digest is given).
  Newer releases (0.10.30 and later, Python 3.13 too) have only this one.
Faces are found on the whole photo first (the full-range detector, then the short-range one), so that small
faces are seen, then the landmarks are found on a square crop around the largest face.

The crop follows the reference's in-the-wild FFHQ preprocessing (NVlabs/eg3d
`dataset_preprocessing/ffhq/crop_images_in_the_wild.py` and `batch_mtcnn.py`, which call Deep3DFaceRecon's
`align_img` in `util/preprocess.py`, with the template of `util/load_mats.py` `load_lm3d`):
- Five landmarks: the two eye centres, the nose tip and the two mouth corners (MTCNN's, in the reference).
- The template: five 3D points of the Basel Face Model (Deep3DFaceRecon `BFM/similarity_Lm3D_all.mat`, 68 points
  in iBUG order; eye centre = mean of the two eye corners 36/39 and 42/45, nose tip 30, mouth corners 48 and 54).
  Its frame: x towards the subject's left, y up, z out of the face (EG3D's world axes for FFHQ).
- `align_img` fits an affine camera (2x4, least squares, 8 unknowns) from the template to the five image points
  ("POS"); its scale s is the mean norm of the two 3-vector rows (image pixels per template unit) and its
  translation t the image of the template's origin. The image is resized by rescale_factor / s and cropped to
  target_size around t; the reference's in-the-wild values are target_size 1024 and rescale_factor 300, then
  the central 700x700 is cropped and resized (Lanczos) to 512. So in the 512 output a template unit is
  300 * 512 / 700 = 219.4 pixels and the template's origin is the centre: a frontal face's eye centres land near
  (188, 192) and (324, 192) and its mouth corners near (201, 340) and (311, 340).
- The reference's cameras use focal 2985.29 pixels on the 1024 image (`3dface2idr_mat.py`), 2985.29 / 700 =
  4.2647 normalized on the 700 crop (`preprocess_face_cameras.py`): the FFHQ focal.
What we do differently, on purpose: the reference fits only scale and translation, so its in-the-wild crops keep
the head's in-plane tilt; FFHQ's own images were first rotated upright by the FFHQ alignment
(`align_multiprocess.py`). We rotate too: the crop is turned by the head's roll, so it is upright and the camera
has no roll. Landmark coordinates are continuous with pixel centres at i + 0.5 and the template's origin lands
exactly on the crop's centre (the reference's integer rounding moves it by up to half a source pixel). Outside
the photo the crop is black, as the reference's in-the-wild crop is.

The head pose: a least-squares similarity fit (Umeyama) of 17 face-mesh landmarks that move little with the
expression (eye corners and lids, the nose ridge, tip and base), in 3D (MediaPipe's x, y and depth z), to their
counterparts among the same Basel Face Model points (the iBUG-68 <-> face-mesh correspondence is in
TEMPLATE_POINTS). The pose is therefore in the template's frame, the one Deep3DFaceRecon's head rotations and so
the reference's FFHQ cameras are in: a head whose landmarks match the template without rotation is frontal and
gets the reference's frontal camera. HeadPose angles, in degrees:
yaw > 0 when the face turns towards the photo's right, pitch > 0 when it tilts up (chin up), roll > 0 when the
head leans counterclockwise in the photo; rotation = Rz(roll) Rx(-pitch) Ry(yaw) in axes x right, y up, z
towards the viewer. The camera (`camera_label`) then sits at radius 2.7 from the origin in the direction the
pose gives (azimuth -yaw, elevation -pitch: the camera moves the opposite way to the face), looking at the FFHQ
pivot (0, 0, 0.2) without roll, with the FFHQ intrinsics (focal 4.2647, principal point 0.5).
"""

import io
import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from . import storage
from .pixels import to_rgb8

# --- facts from the reference --------------------------------------------------------------------------------

RESCALE_FACTOR, CENTER_CROP, REFERENCE_RESOLUTION = 300.0, 700, 512  # on the 1024 aligned image
FFHQ_FOCAL, FFHQ_RADIUS, FFHQ_PIVOT = 4.2647, 2.7, (0.0, 0.0, 0.2)
LANDMARK_COUNT = 478

# (iBUG-68 index, MediaPipe face-mesh index, Basel Face Model point x, y, z) of the landmarks used here; the 3D
# points are rows of Deep3DFaceRecon's BFM/similarity_Lm3D_all.mat, rounded to 4 digits.
TEMPLATE_POINTS = np.array([
    # nose ridge down to the tip, and the point below it
    (27, 168, 0.0018, 0.2962, 0.3458), (28, 197, 0.0022, 0.1757, 0.4359), (29, 5, 0.0033, 0.0564, 0.5292),
    (30, 4, 0.0033, -0.0462, 0.5524), (33, 2, 0.0015, -0.1604, 0.3956),
    # eyes, image left then right: outer or inner corner, upper lid, other corner, lower lid
    (36, 33, -0.4310, 0.2920, 0.1040), (37, 160, -0.3673, 0.3317, 0.1870), (38, 158, -0.2765, 0.3327, 0.1892),
    (39, 133, -0.1920, 0.2888, 0.1635), (40, 153, -0.2685, 0.2671, 0.1853), (41, 144, -0.3632, 0.2623, 0.1621),
    (42, 362, 0.1879, 0.2887, 0.1602), (43, 385, 0.2728, 0.3337, 0.1850), (44, 387, 0.3659, 0.3317, 0.1845),
    (45, 263, 0.4317, 0.2907, 0.1034), (46, 373, 0.3625, 0.2636, 0.1613), (47, 380, 0.2664, 0.2673, 0.1833),
    # mouth corners
    (48, 61, -0.2522, -0.3813, 0.2241), (54, 291, 0.2485, -0.3813, 0.2224),
])
# The pose is fitted to the eyes and the nose only: eyebrows and mouth move with the expression (a smile alone
# moved the astronaut photo's pitch by 7 degrees when they were included).
_POSE_ROWS = TEMPLATE_POINTS[:, 0] < 48
POSE_MESH_INDICES = TEMPLATE_POINTS[_POSE_ROWS, 1].astype(int)
POSE_TEMPLATE = TEMPLATE_POINTS[_POSE_ROWS, 2:]
_BY_IBUG = {int(row[0]): row[2:] for row in TEMPLATE_POINTS}
# The five points of the alignment, in the reference's order: eye centres (image left, right), nose tip, mouth
# corners (image left, right); as face-mesh index groups (a point is the mean of its group) and as template.
FIVE_POINT_MESH_INDICES = ((33, 133), (362, 263), (4,), (61,), (291,))
FIVE_POINT_TEMPLATE = np.stack([(_BY_IBUG[36] + _BY_IBUG[39]) / 2, (_BY_IBUG[42] + _BY_IBUG[45]) / 2,
                                _BY_IBUG[30], _BY_IBUG[48], _BY_IBUG[54]])
VIEWER_AXES = np.diag([1.0, -1.0, -1.0])  # camera axes (x right, y down, z forward) <-> x right, y up, z to viewer

MIN_PHOTO_SIDE = 32  # pixels; a photo smaller than this holds no usable face
MIN_FACE_SIZE = 64  # default smallest crop side, in photo pixels, worth keeping (8x upsampling at 512)
DETECTION_CONFIDENCE = 0.5
# Tiles magnify small faces, which then score high, and give a false face more chances: a cat's face scored
# 0.52 in one tile of skimage's chelsea. Faces found only in tiles must score this much.
TILE_CONFIDENCE = 0.65
TILE_LEVELS = 2  # tile sizes searched beside the whole photo
MIN_TILE = 192  # smaller tiles gain nothing: the detectors' input is 192 pixels


class FaceError(ValueError):
    """Why a photo gives no aligned face; `kind` is one of SKIP_KINDS."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


SKIP_KINDS = ("unreadable", "too small", "no face", "no landmarks")


# --- data ------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Face:
    """One face in a photo: its detection box (left, top, width, height in pixels) and score, and its 478
    face-mesh landmarks [478, 3] in photo pixels: x right, y down (pixel centres at i + 0.5) and depth z in
    the same units, larger farther from the camera (MediaPipe's convention)."""
    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray

    @property
    def area(self) -> float:
        return self.box[2] * self.box[3]


@dataclass(frozen=True)
class HeadPose:
    """Head rotation relative to the frontal pose, in degrees (conventions in the module docstring), with the
    rotation [3, 3] from the template's frame (x to the subject's left, y up, z out of the face) into the
    camera's (x right, y down, z forward) and the rms residual of the fit as a fraction of the face's size."""
    yaw: float
    pitch: float
    roll: float
    rotation: np.ndarray
    residual: float


@dataclass(frozen=True)
class AlignedFace:
    """The result of `align_face`. `image`: the square RGB crop; `label`: float32 [25] camera (row-major
    cam2world, then normalized intrinsics); `transform`: float64 [2, 3] affine map from photo pixels to crop
    pixels; `outside`: fraction of the crop that lies outside the photo (filled black); `faces`: how many faces
    the photo holds (the largest was taken); `face_size`: the crop's side in photo pixels."""
    image: Image.Image
    label: np.ndarray
    pose: HeadPose
    face: Face
    transform: np.ndarray
    outside: float
    faces: int
    face_size: float


# --- reading photos --------------------------------------------------------------------------------------------

def load_photo(source, *, name: str | None = None) -> Image.Image:
    """An upright 8-bit RGB image from a path, fsspec URL, bytes or file object (JPEG, PNG, WebP, ...), through
    `dataloading.pixels.to_rgb8`: EXIF orientation applied (phones store it as a tag), 16-bit and alpha handled.
    FaceError("unreadable") naming the file."""
    name = name or (str(source) if isinstance(source, (str, Path)) else "photo")
    try:
        if isinstance(source, (str, Path)):
            source = storage.read_bytes(str(source))
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            return to_rgb8(image)[0]
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        if isinstance(error, FileNotFoundError):
            raise
        raise FaceError("unreadable", f"{name}: cannot read it as an image ({error}); expected a JPEG, PNG or "
                                      f"WebP photo") from error


# --- MediaPipe ---------------------------------------------------------------------------------------------------

def import_mediapipe():
    """The mediapipe module, or a clear ImportError saying how to install it."""
    os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's C++ logs every graph start otherwise
    try:
        import mediapipe
    except ImportError as error:
        raise ImportError("finding faces needs MediaPipe: pip install -e '.[faces]' (see docs/data.md, "
                          "'Your own face photos', for the versions per Python release)") from error
    return mediapipe


def has_solutions() -> bool:
    try:
        from mediapipe.python.solutions import face_detection, face_mesh  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_landmarker(landmarker: str, sha256: str | None = None, cache_dir: str | None = None) -> str:
    """A local path to a face_landmarker.task: `landmarker` itself, or its download (once, into the cache).
    The file's SHA-256 is checked against `sha256` (a prefix of 8+ hex digits) when given; ValueError when it
    differs or the file is no MediaPipe task bundle."""
    from .downloads import cached_download, check_digest, default_cache_dir, normalized_digest

    expected = normalized_digest(sha256)
    if "://" in str(landmarker):
        path = cached_download(str(landmarker), expected, cache_dir or default_cache_dir())
    else:
        path = os.path.expanduser(str(landmarker))
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--landmarker {landmarker}: no such file; expected MediaPipe's "
                                    f"face_landmarker.task model bundle")
        check_digest(path, expected, name=str(landmarker))
    if not zipfile.is_zipfile(path) or not any("landmark" in n for n in zipfile.ZipFile(path).namelist()):
        raise ValueError(f"--landmarker {landmarker}: not a MediaPipe face landmarker bundle (a .task zip holding "
                         f"face_detector.tflite and face_landmarks_detector.tflite)")
    return path


class FaceLandmarker:
    """MediaPipe's face detector and 478-point face mesh. `landmarker`: a face_landmarker.task path or URL,
    which selects the "tasks" back end; without it the legacy "solutions" back end (models in the wheel) is
    used, and newer MediaPipe releases that lack it need one. Use as a context manager, or call close()."""

    def __init__(self, *, landmarker: str | None = None, landmarker_sha256: str | None = None,
                 min_confidence: float = DETECTION_CONFIDENCE):
        mediapipe = import_mediapipe()
        self.version = getattr(mediapipe, "__version__", "unknown")
        self.min_confidence = min_confidence
        self._tasks, self._solutions = {}, {}  # the MediaPipe graphs, made on first use
        if landmarker is not None:
            self.landmarker_path, self.backend = resolve_landmarker(landmarker, landmarker_sha256), "tasks"
        elif has_solutions():
            self.landmarker_path, self.backend = None, "solutions"
        else:
            raise ImportError(
                f"mediapipe {self.version} has no legacy face solutions (releases 0.10.14 to 0.10.21 have them, on "
                f"Python 3.9-3.12): give MediaPipe's Face Landmarker model with --landmarker PATH_OR_URL "
                f"(face_landmarker.task, linked from the Face Landmarker page of MediaPipe's documentation), or "
                f"install an older release with pip install -e '.[faces]' on Python 3.12 or earlier")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        for graph in [*self._tasks.values(), *self._solutions.values()]:
            graph.close()
        self._tasks, self._solutions = {}, {}

    def describe(self) -> str:
        model = f", model {self.landmarker_path}" if self.landmarker_path else ""
        return f"mediapipe {self.version} ({self.backend}{model})"

    def find_faces(self, image) -> list[Face]:
        """Every face in an RGB photo (PIL image or uint8 [H, W, 3]), largest first, each with its landmarks
        found on a crop around it; faces whose landmarks are not found are left out."""
        pixels = np.ascontiguousarray(np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image))
        faces = []
        for box, score in self.detect(pixels):
            landmarks = self.landmarks_near(pixels, box)
            if landmarks is not None:
                faces.append(Face(box, score, landmarks))
        return sorted(faces, key=lambda face: -face.area)

    def detect(self, pixels: np.ndarray) -> list[tuple[tuple[float, float, float, float], float]]:
        """[(box (left, top, width, height) in pixels, score)] of the faces in a uint8 [H, W, 3] image. The
        detectors see a downscaled image (192 pixels), so a large photo is also searched in overlapping square
        tiles (`tiles`) to find its small faces, there with TILE_CONFIDENCE; a face found twice counts once."""
        found = []
        for index, (left, top, tile) in enumerate(tiles(pixels.shape[1], pixels.shape[0])):
            boxes = self._detect_whole(np.ascontiguousarray(pixels[top:top + tile[1], left:left + tile[0]]))
            least = self.min_confidence if index == 0 else max(self.min_confidence, TILE_CONFIDENCE)
            found += [((x + left, y + top, w, h), score) for (x, y, w, h), score in boxes if score >= least]
        return merge_detections(found)

    def _detect_whole(self, pixels: np.ndarray) -> list[tuple[tuple[float, float, float, float], float]]:
        if self.backend == "tasks":
            return [(landmark_box(points), 1.0) for points in self._task_landmarks(pixels, num_faces=8)]
        height, width = pixels.shape[:2]
        for model_selection in (1, 0):  # full range (faces up to ~5 m away), then short range (close-ups)
            result = self._solution("detection", model_selection).process(pixels)
            found = []
            for detection in result.detections or []:
                box = detection.location_data.relative_bounding_box
                found.append(((box.xmin * width, box.ymin * height, box.width * width, box.height * height),
                              float(detection.score[0])))
            if found:
                return found
        return []

    def landmarks_near(self, pixels: np.ndarray, box) -> np.ndarray | None:
        """[478, 3] landmarks in photo pixels of the face in `box`, found on a square crop twice the box's size
        (resized to 256..512 pixels), or None."""
        left, top, width, height = box
        side = math.ceil(2.0 * max(width, height, 1.0))
        x0, y0 = math.floor(left + width / 2 - side / 2), math.floor(top + height / 2 - side / 2)
        crop = Image.fromarray(pixels).crop((x0, y0, x0 + side, y0 + side))  # black outside the photo
        size = min(max(side, 256), 512)
        crop = crop.resize((size, size), Image.Resampling.BILINEAR)  # antialiased when it shrinks
        candidates = self._mesh(np.ascontiguousarray(np.asarray(crop)))
        if not candidates:
            return None
        nearest = min(candidates, key=lambda points: float(np.sum((points[:, :2].mean(0) - 0.5) ** 2)))
        return np.column_stack([x0 + nearest[:, 0] * side, y0 + nearest[:, 1] * side, nearest[:, 2] * side])

    def _mesh(self, pixels: np.ndarray) -> list[np.ndarray]:
        """Normalized landmarks [478, 3] (x, y in [0, 1] of the image, z in units of its width) per face."""
        if self.backend == "tasks":
            return self._task_landmarks(pixels, num_faces=3, normalized=True)
        result = self._solution("mesh", 0).process(pixels)
        return [np.array([(p.x, p.y, p.z) for p in face.landmark]) for face in result.multi_face_landmarks or []]

    def _solution(self, kind: str, model_selection: int):
        key = (kind, model_selection)
        if key not in self._solutions:
            from mediapipe.python.solutions import face_detection, face_mesh

            if kind == "detection":
                self._solutions[key] = face_detection.FaceDetection(
                    model_selection=model_selection, min_detection_confidence=self.min_confidence)
            else:
                self._solutions[key] = face_mesh.FaceMesh(
                    static_image_mode=True, max_num_faces=3, refine_landmarks=True,
                    min_detection_confidence=self.min_confidence)
        return self._solutions[key]

    def _task_landmarks(self, pixels: np.ndarray, *, num_faces: int, normalized: bool = False) -> list[np.ndarray]:
        import mediapipe

        if num_faces not in self._tasks:
            from mediapipe.tasks.python import BaseOptions, vision

            options = vision.FaceLandmarkerOptions(
                base_options=BaseOptions(model_asset_path=self.landmarker_path), num_faces=num_faces,
                min_face_detection_confidence=self.min_confidence, min_face_presence_confidence=self.min_confidence)
            self._tasks[num_faces] = vision.FaceLandmarker.create_from_options(options)
        image = mediapipe.Image(image_format=mediapipe.ImageFormat.SRGB, data=pixels)
        result = self._tasks[num_faces].detect(image)
        faces = [np.array([(p.x, p.y, p.z) for p in face]) for face in result.face_landmarks]
        if normalized:
            return faces
        height, width = pixels.shape[:2]
        return [points * [width, height, width] for points in faces]


def tiles(width: int, height: int) -> list[tuple[int, int, tuple[int, int]]]:
    """(left, top, (width, height)) of the whole image, then of square tiles of the shorter side and of half of
    it (those of at least MIN_TILE pixels), at most half a tile apart, covering the image."""
    found = [(0, 0, (width, height))]
    for level in range(TILE_LEVELS):
        side = min(width, height) // 2 ** level
        if side < MIN_TILE or (side, side) == (width, height):
            continue
        for top in tile_starts(height, side):
            found += [(left, top, (side, side)) for left in tile_starts(width, side)]
    return found


def tile_starts(length: int, side: int) -> list[int]:
    """Evenly spread starts of tiles of `side` over `length`, at most half a tile apart."""
    count = math.ceil(2 * (length - side) / side) + 1
    return [round(x) for x in np.linspace(0, length - side, count)]


def merge_detections(found: list) -> list:
    """Detections with duplicates removed, best score first: a box mostly (over half of the smaller one) inside
    a better one is the same face seen in another tile."""
    kept = []
    for box, score in sorted(found, key=lambda item: -item[1]):
        if all(overlap(box, other) <= 0.5 for other, _ in kept):
            kept.append((box, score))
    return kept


def overlap(a, b) -> float:
    """Intersection of two (left, top, width, height) boxes over the smaller one's area."""
    width = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    height = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    smaller = min(a[2] * a[3], b[2] * b[3])
    return max(width, 0) * max(height, 0) / smaller if smaller > 0 else 0.0


def landmark_box(points: np.ndarray) -> tuple[float, float, float, float]:
    """(left, top, width, height) of landmarks [N, 2+] in pixels."""
    low, high = points[:, :2].min(0), points[:, :2].max(0)
    return float(low[0]), float(low[1]), float(high[0] - low[0]), float(high[1] - low[1])


# --- geometry ----------------------------------------------------------------------------------------------------

def five_points(landmarks: np.ndarray) -> np.ndarray:
    """[5, 2] eye centres, nose tip and mouth corners (the reference's order) of face-mesh landmarks [478, 2+]."""
    return np.stack([landmarks[list(group), :2].mean(0) for group in FIVE_POINT_MESH_INDICES])


def similarity_fit(source: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """(scale s, rotation R, translation t) minimizing sum |s R source_i + t - target_i|^2 over points [N, D]
    (Umeyama 1991: the SVD of the cross-covariance, with a reflection ruled out)."""
    source_mean, target_mean = source.mean(0), target.mean(0)
    a, b = source - source_mean, target - target_mean
    u, singular, vt = np.linalg.svd(b.T @ a / len(a))
    signs = np.ones(len(singular))
    signs[-1] = np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0
    rotation = u @ np.diag(signs) @ vt
    scale = float((singular * signs).sum() / (a ** 2).sum(1).mean())
    return scale, rotation, target_mean - scale * rotation @ source_mean


def head_pose(landmarks: np.ndarray) -> HeadPose:
    """The head's pose from face-mesh landmarks [478, 3] (pixels; see Face): a similarity fit of POSE_TEMPLATE
    to the rigid landmarks, its rotation split into yaw, pitch and roll (see the module docstring)."""
    observed = landmarks[POSE_MESH_INDICES]
    scale, rotation, translation = similarity_fit(POSE_TEMPLATE, observed)
    fitted = scale * POSE_TEMPLATE @ rotation.T + translation
    residual = float(np.sqrt(((fitted - observed) ** 2).sum(1).mean()) / scale)
    yaw, pitch, roll = rotation_angles(VIEWER_AXES @ rotation)
    return HeadPose(yaw, pitch, roll, rotation, residual)


def rotation_angles(relative: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees of relative = Rz(roll) Rx(-pitch) Ry(yaw)."""
    pitch = -math.asin(float(np.clip(relative[2, 1], -1.0, 1.0)))
    yaw = math.atan2(-relative[2, 0], relative[2, 2])
    roll = math.atan2(-relative[0, 1], relative[1, 1])
    return math.degrees(yaw), math.degrees(pitch), math.degrees(roll)


def pose_rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """The rotation [3, 3] from the template's frame into camera axes for angles in degrees: the inverse of
    `rotation_angles` (for tests and synthetic faces)."""
    a, b, c = (math.radians(x) for x in (yaw, -pitch, roll))
    ry = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return VIEWER_AXES @ rz @ rx @ ry


def camera_label(yaw: float, pitch: float) -> np.ndarray:
    """float32 [25] EG3D camera of a head at (yaw, pitch) degrees (HeadPose's convention; roll is removed by
    the crop): radius 2.7, looking at the FFHQ pivot (0, 0, 0.2), FFHQ intrinsics. Yaw = pitch = 0 is the
    reference's frontal camera at (0, 0, 2.7)."""
    from eg3d.networks.camera import orbit_camera

    azimuth, elevation = math.radians(-yaw), math.radians(-pitch)
    orbit_yaw = math.pi / 2 + azimuth  # the reference's orbit parameters (eg3d.networks.camera.orbit_origin)
    orbit_pitch = math.pi / 2 * (1 - math.sin(elevation))
    label = orbit_camera([orbit_yaw], [orbit_pitch], radius=FFHQ_RADIUS, focal=FFHQ_FOCAL, pivot=FFHQ_PIVOT)
    return label[0].numpy()


def label_angles(label: np.ndarray) -> tuple[float, float]:
    """(yaw, pitch) in degrees of a camera label's position, HeadPose's convention (inverse of camera_label)."""
    centre = np.asarray(label, dtype=np.float64).reshape(-1)[[3, 7, 11]]
    x, y, z = centre / np.linalg.norm(centre)
    return -math.degrees(math.atan2(x, z)), -math.degrees(math.asin(float(np.clip(y, -1.0, 1.0))))


def affine_camera_fit(template: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, float]:
    """(image point of the template's origin [2], pixels per template unit) of the least-squares affine camera
    points_i = P template_i + t (P 2x3): the fit Deep3DFaceRecon's align_img makes, its scale the mean norm
    of P's rows."""
    design = np.column_stack([template, np.ones(len(template))])
    solution, *_ = np.linalg.lstsq(design, points, rcond=None)  # [4, 2]: P^T over t
    projection = solution[:3].T
    return solution[3], float(np.linalg.norm(projection, axis=1).mean())


def alignment_transform(landmarks: np.ndarray, roll: float, resolution: int) -> tuple[np.ndarray, float]:
    """(affine [2, 3] from photo pixels to crop pixels, the crop's side in photo pixels) of the reference's crop
    (see the module docstring), turned by `roll` degrees so the head is upright."""
    angle = math.radians(roll)
    # unroll: the photo's points turned clockwise by the roll (y down), about the photo's origin
    turn = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    centre, scale = affine_camera_fit(FIVE_POINT_TEMPLATE * [1, -1, 1], five_points(landmarks) @ turn.T)
    pixels_per_unit = RESCALE_FACTOR * resolution / CENTER_CROP
    zoom = pixels_per_unit / scale  # crop pixels per photo pixel
    transform = np.zeros((2, 3))
    transform[:, :2] = zoom * turn
    transform[:, 2] = resolution / 2 - zoom * centre
    return transform, resolution / zoom


def warp(image: Image.Image, transform: np.ndarray, resolution: int) -> tuple[Image.Image, float]:
    """(the crop [resolution^2] of `image` under the affine map photo -> crop, fraction of it outside the
    photo). Shrinking is antialiased: the photo is first resized (Lanczos) near the crop's scale."""
    zoom = math.sqrt(abs(np.linalg.det(transform[:, :2])))
    inverse = np.linalg.inv(np.vstack([transform, [0, 0, 1]]))[:2]
    corners = np.array([[0, 0, 1], [resolution, 0, 1], [0, resolution, 1], [resolution, resolution, 1]]) @ inverse.T
    left, top = np.floor(corners.min(0) - 4).astype(int)
    right, bottom = np.ceil(corners.max(0) + 4).astype(int)
    region = image.crop((left, top, right, bottom))  # outside the photo: black
    shift = np.array([[1.0, 0, left], [0, 1.0, top], [0, 0, 1]])  # region pixels -> photo pixels
    if zoom < 1:
        size = (max(1, round(region.width * zoom)), max(1, round(region.height * zoom)))
        region = region.resize(size, Image.Resampling.LANCZOS)
        shift = shift @ np.diag([(right - left) / size[0], (bottom - top) / size[1], 1.0])
    crop_to_region = np.linalg.inv(shift) @ np.vstack([inverse, [0, 0, 1]])
    crop = region.transform((resolution, resolution), Image.Transform.AFFINE, tuple(crop_to_region[:2].reshape(-1)),
                            Image.Resampling.BICUBIC)
    return crop, outside_fraction(inverse, image.size, resolution)


def outside_fraction(crop_to_photo: np.ndarray, photo_size: tuple[int, int], resolution: int, grid: int = 64) -> float:
    """Fraction of a grid of crop points whose photo point lies outside the photo."""
    centres = (np.arange(grid) + 0.5) * resolution / grid
    u, v = np.meshgrid(centres, centres)
    points = np.stack([u.ravel(), v.ravel(), np.ones(u.size)], 1) @ crop_to_photo.T
    inside = ((points[:, :2] >= 0) & (points[:, :2] <= photo_size)).all(1)
    return float(1 - inside.mean())


# --- the one call ---------------------------------------------------------------------------------------------

def align_face(image, model: FaceLandmarker, *, resolution: int = REFERENCE_RESOLUTION,
               min_face_size: float = MIN_FACE_SIZE, name: str = "photo") -> AlignedFace:
    """The largest face of an RGB photo (PIL image or uint8 [H, W, 3]), aligned the way EG3D's FFHQ data are
    (`resolution` x `resolution`, 512 as the reference), with its camera label. FaceError with kind
    "too small" (photo under MIN_PHOTO_SIDE pixels, or a crop side under `min_face_size` photo pixels),
    "no face" or "no landmarks", its message naming `name`."""
    image = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
    image = image.convert("RGB")
    if min(image.size) < MIN_PHOTO_SIDE:
        raise FaceError("too small", f"{name}: {image.width}x{image.height} pixels; a face photo needs at least "
                                     f"{MIN_PHOTO_SIDE} pixels on its shorter side")
    pixels = np.ascontiguousarray(np.asarray(image))
    detections = sorted(model.detect(pixels), key=lambda found: -found[0][2] * found[0][3])
    if not detections:
        raise FaceError("no face", f"{name}: no face found")
    face = next((Face(box, score, landmarks) for box, score in detections
                 if (landmarks := model.landmarks_near(pixels, box)) is not None), None)
    if face is None:
        raise FaceError("no landmarks", f"{name}: {len(detections)} face(s) detected but no face-mesh landmarks found")
    pose = head_pose(face.landmarks)
    transform, face_size = alignment_transform(face.landmarks, pose.roll, resolution)
    if face_size < min_face_size:
        raise FaceError("too small", f"{name}: the face's crop is {face_size:.0f} photo pixels wide, under the "
                                     f"{min_face_size:g} needed for a sharp crop")
    crop, outside = warp(image, transform, resolution)
    return AlignedFace(crop, camera_label(pose.yaw, pose.pitch), pose, face, transform, outside, len(detections),
                       face_size)
