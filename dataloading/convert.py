"""Camera-labelled images from a NeRF transforms.json or a COLMAP text model -> the reference dataset format.

    python -m dataloading.convert SRC OUT [--images DIR] [--up auto|+x|-x|+y|-y|+z|-z] [--recenter]
                                  [--radius R] [--resolution N] [--background white|black]
                                  [--max-distortion F] [--overwrite]
                                  [--axes opencv|opengl] [--matrices cam2world|world2cam|transposed]

SRC is one of
- a NeRF-style `transforms.json` (the Blender synthetic scenes' and instant-ngp's format): each frame has a
  `file_path` relative to the json's folder (the extension may be left out) and a `transform_matrix`, the
  4x4 cam2world in OpenGL camera axes (x right, y up, z backward, as Blender's cameras). Intrinsics come
  from `camera_angle_x` (horizontal field of view in radians; `camera_angle_y` optional, else square
  pixels) or from `fl_x`, `fl_y`, `cx`, `cy` in pixels of a `w` x `h` image; each key may sit at the top
  level or in a frame (the frame's own value wins). instant-ngp's `k1`, `k2`, `p1`, `p2` are checked like
  COLMAP's distortion below.
- a COLMAP text model: a folder with `cameras.txt` and `images.txt` (COLMAP's "Output format" page;
  `colmap model_converter --output_type TXT` turns a binary model into one). Each image line
  `IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME` is a world2cam rotation (Hamilton quaternion, w first)
  and translation in OpenCV axes (x right, y down, z forward); the line after it (2D points, possibly
  empty) is skipped. Camera models PINHOLE and SIMPLE_PINHOLE map exactly; SIMPLE_RADIAL, RADIAL and
  OPENCV are accepted with a warning when their distortion is small and refused above --max-distortion
  (undistort first: `colmap image_undistorter` writes PINHOLE cameras). Images are read from --images,
  by default the first `images/` folder found in, beside or above the model (`sparse/0` -> `../../images`).

OUT (a new or empty folder; --overwrite replaces it) receives what `python -m dataloading.build` shards:
`00000/img00000000.png`, ... in source order, and `dataset.json` = {"labels": [[name, [25 floats]], ...],
"sources": [[name, source image], ...]}. A label is the row-major 4x4 cam2world in OpenCV axes and the
row-major 3x3 intrinsics normalized by the image size (fx/W, skew/W, cx/W; fy/H, cy/H), see eg3d.networks.camera.
Pixel coordinates follow COLMAP and instant-ngp: the image spans [0, W] x [0, H] with pixel centres at
i + 0.5, so a normalized principal point of 0.5 is the image centre (the original NeRF code puts pixel
centres at integers, half a pixel off; that difference is not corrected).

The world is kept as given unless asked. EG3D's world is y-up with the cameras around the origin (FFHQ:
radius 2.7); NeRF/Blender scenes are z-up and COLMAP's world has whatever up the reconstruction chose, so
the usual command is

    python -m dataloading.convert scene/transforms.json data/scene --up auto --recenter --radius 2.7 --resolution 512

A dataset already in the reference format (dataset.json) can be converted too, to undo common slips in
its labels (`dataloading.build` names them when it finds them): --matrices world2cam inverts each 4x4
(world2cam given as cam2world), --matrices transposed transposes each 3x3 rotation back, and --axes
opengl turns OpenGL camera axes (y up, z backward) into OpenCV's; they apply first, in that order.

In this order: --up rotates the world (the smallest rotation) so that the given world axis, or with `auto`
the mean of the cameras' up vectors (their -y axes), becomes +y; --recenter moves the cameras' look-at
point (the point nearest all optical axes, in the least-squares sense) to the origin; --radius scales the
world so the mean camera distance from the origin is R.

Every image is centre-cropped to a square of its shorter side (EG3D's images are square; an odd excess
leaves the extra column or row on the right or bottom), then with --resolution resized to N x N
(Lanczos). The crop moves the principal point by the crop offset in pixels and the normalized intrinsics
are taken over the square; the resize keeps them (it scales the pixels and the square alike). Without
--resolution all squares must have one size. Alpha is composited onto --background.
"""

import argparse
import json
import math
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from .camera_checks import look_at_point
from .camera_conventions import MATRIX_KINDS, to_cam2world
from .pixels import to_rgb8
from .reference_format import METADATA, load_label_list, parse_label_entry

IMAGES_PER_FOLDER = 1000
SOURCE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".PNG", ".JPG", ".JPEG", ".webp", ".bmp")
AXES = {"+x": (1, 0, 0), "-x": (-1, 0, 0), "+y": (0, 1, 0), "-y": (0, -1, 0), "+z": (0, 0, 1), "-z": (0, 0, -1)}
BACKGROUNDS = {"white": (255, 255, 255), "black": (0, 0, 0)}
MAX_DISTORTION = 0.002  # corner shift as a fraction of the shorter side: 1 pixel at 512
ROTATION_TOLERANCE = 1e-3  # the same tolerance dataloading.build applies to the labels
# COLMAP camera models we read -> their parameter names (COLMAP's src/colmap/sensor/models.h).
COLMAP_MODELS = {
    "SIMPLE_PINHOLE": ("f", "cx", "cy"),
    "PINHOLE": ("fx", "fy", "cx", "cy"),
    "SIMPLE_RADIAL": ("f", "cx", "cy", "k1"),
    "RADIAL": ("f", "cx", "cy", "k1", "k2"),
    "OPENCV": ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2"),
}


# --- camera math (float64 numpy) ------------------------------------------------------------------------

OPENGL_TO_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])


def opengl_to_opencv(cam2world: np.ndarray) -> np.ndarray:
    """cam2world [..., 4, 4] with OpenGL camera axes (x right, y up, z backward: NeRF, Blender) -> the same
    camera with OpenCV axes (x right, y down, z forward). Flipping the camera's y and z columns is its own
    inverse, so this also converts back."""
    return cam2world @ OPENGL_TO_OPENCV


def quaternion_to_rotation(q) -> np.ndarray:
    """3x3 rotation of a Hamilton quaternion (w, x, y, z), w first as COLMAP writes it; normalized first.
    ValueError for a zero quaternion."""
    norm = float(np.linalg.norm(q))
    if not norm > 1e-12:
        raise ValueError(f"quaternion {list(q)} has no rotation (zero norm)")
    w, x, y, z = np.asarray(q, dtype=np.float64) / norm
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def world2cam_to_cam2world(rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """4x4 cam2world of the world2cam x_cam = R x_world + t: rotation R^T, camera centre -R^T t."""
    cam2world = np.eye(4)
    cam2world[:3, :3] = rotation.T
    cam2world[:3, 3] = -rotation.T @ translation
    return cam2world


def distances_to_axes(cam2world: np.ndarray, point: np.ndarray) -> np.ndarray:
    """Distance [N] from `point` [3] to each camera's optical axis (a full line)."""
    directions = cam2world[:, :3, 2] / np.linalg.norm(cam2world[:, :3, 2], axis=1, keepdims=True)
    offsets = point - cam2world[:, :3, 3]
    return np.linalg.norm(np.cross(offsets, directions), axis=1)


def mean_camera_up(cam2world: np.ndarray) -> np.ndarray:
    """Unit mean of the cameras' up vectors, their -y axes in OpenCV axes. ValueError when they cancel."""
    up = -cam2world[:, :3, 1].mean(0)
    norm = float(np.linalg.norm(up))
    if norm < 1e-6:
        raise ValueError("the cameras' up vectors cancel out; give the world's up axis with --up +y/-y/+z/...")
    return up / norm


def rotation_to_y(up: np.ndarray) -> np.ndarray:
    """The smallest 3x3 rotation taking unit vector `up` to +y (Rodrigues); a half-turn about x for -y."""
    y = np.array([0.0, 1.0, 0.0])
    axis, cosine = np.cross(up, y), float(up @ y)
    if cosine < -1 + 1e-12:
        return np.diag([1.0, -1.0, -1.0])
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + cross + cross @ cross / (1 + cosine)


def transform_world(cam2world: np.ndarray, *, rotation=None, translation=None, scale: float = 1.0) -> np.ndarray:
    """Cameras [N,4,4] after the world moves by x -> scale * (rotation x + translation) (defaults: identity,
    zero). Each camera's axes turn with the world (the scale leaves them unit vectors); its centre moves
    like any point."""
    rotation = np.eye(3) if rotation is None else rotation
    translation = np.zeros(3) if translation is None else translation
    moved = cam2world.copy()
    moved[:, :3, :3] = rotation @ cam2world[:, :3, :3]
    moved[:, :3, 3] = scale * (cam2world[:, :3, 3] @ rotation.T + translation)
    return moved


def place_world(cam2world: np.ndarray, *, up: str | None = None, recenter: bool = False,
                radius: float | None = None) -> np.ndarray:
    """Cameras [N,4,4] in EG3D's world: rotated so `up` ("auto" or an AXES key) is +y, then the look-at
    point moved to the origin (`recenter`), then scaled to mean camera distance `radius`; None keeps."""
    if up is not None:
        vector = mean_camera_up(cam2world) if up == "auto" else np.array(AXES[up], dtype=np.float64)
        cam2world = transform_world(cam2world, rotation=rotation_to_y(vector))
    if recenter:
        try:
            centre = look_at_point(cam2world, parallel_ok=False)
        except ValueError as error:  # a forward-facing capture
            raise ValueError(f"--recenter: {error}; leave the world as it is for such a capture") from None
        cam2world = transform_world(cam2world, translation=-centre)
    if radius is not None:
        mean_distance = float(np.linalg.norm(cam2world[:, :3, 3], axis=1).mean())
        if mean_distance < 1e-12:
            raise ValueError("--radius: the cameras sit at the origin, so no scale gives them a radius")
        cam2world = transform_world(cam2world, scale=radius / mean_distance)
    return cam2world


def pixel_intrinsics(fx: float, fy: float, cx: float, cy: float, skew: float = 0.0) -> np.ndarray:
    """3x3 intrinsics in pixels: [[fx, skew, cx], [0, fy, cy], [0, 0, 1]]."""
    return np.array([[fx, skew, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def square_crop(width: int, height: int) -> tuple[int, int, int]:
    """(left, top, size) of the centred square of the shorter side, in whole pixels (odd excess: the
    extra column or row stays on the right or bottom)."""
    size = min(width, height)
    return (width - size) // 2, (height - size) // 2, size


def crop_intrinsics(intrinsics: np.ndarray, left: float, top: float) -> np.ndarray:
    """Pixel intrinsics of the crop whose top-left corner is at (left, top): the principal point moves."""
    cropped = intrinsics.copy()
    cropped[0, 2] -= left
    cropped[1, 2] -= top
    return cropped


def normalize_intrinsics(intrinsics: np.ndarray, width: float, height: float) -> np.ndarray:
    """Pixel intrinsics -> normalized by the image size (EG3D): the x row (fx, skew, cx) / W, the y row
    (fy, cy) / H. A resize of the image leaves the result unchanged."""
    return intrinsics / np.array([[width], [height], [1.0]])


def resize_intrinsics(intrinsics: np.ndarray, from_size: tuple[int, int], to_size: tuple[int, int]) -> np.ndarray:
    """Pixel intrinsics of a `from_size` (W, H) image, for the same view resized to `to_size`."""
    return normalize_intrinsics(intrinsics, *from_size) * np.array([[to_size[0]], [to_size[1]], [1.0]])


def distortion_shift(intrinsics: np.ndarray, width: int, height: int, k1=0.0, k2=0.0, p1=0.0, p2=0.0) -> float:
    """Largest shift, in pixels, that OpenCV's radial-tangential distortion (COLMAP's OPENCV model; k2 = p1
    = p2 = 0 is SIMPLE_RADIAL) applies at the four image corners: how far off the pinhole camera is there."""
    corners = np.array([[0, 0], [width, 0], [0, height], [width, height]], dtype=np.float64)
    fx, fy, cx, cy = intrinsics[0, 0], intrinsics[1, 1], intrinsics[0, 2], intrinsics[1, 2]
    x, y = (corners[:, 0] - cx) / fx, (corners[:, 1] - cy) / fy
    r2 = x * x + y * y
    radial = k1 * r2 + k2 * r2 * r2
    dx = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    dy = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    return float(np.hypot(dx * fx, dy * fy).max())


# --- sources --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Frame:
    """One source image: where it is listed (for messages), its cam2world [4,4] in OpenCV axes and its
    pixel intrinsics [3,3] for its actual size (width x height)."""
    source: Path
    where: str
    cam2world: np.ndarray
    intrinsics: np.ndarray
    width: int
    height: int


@dataclass(frozen=True)
class Distortion:
    """A camera's lens distortion (ignored by the label): its pixel shift at the corners of a width x height
    image; `where` names the camera's line or frame."""
    where: str
    shift: float
    width: int
    height: int

    @property
    def fraction(self) -> float:
        return self.shift / min(self.width, self.height)


def check_distortion(distortions: list[Distortion], limit: float) -> None:
    """ValueError when the worst distortion exceeds `limit` (fraction of the shorter side), else one
    warning with its size when there is any."""
    worst = max(distortions, key=lambda d: d.fraction, default=None)
    if worst is None or worst.shift == 0:
        return
    size = f"{worst.shift:.2f} px at the image corners ({100 * worst.fraction:.3f}% of the shorter side)"
    if worst.fraction > limit:
        raise ValueError(f"{worst.where}: lens distortion shifts points by up to {size}, above --max-distortion "
                         f"{limit:g}; undistort the images first (COLMAP: colmap image_undistorter, which "
                         f"writes PINHOLE cameras) or raise --max-distortion")
    others = sum(d.shift > 0 for d in distortions) - 1
    warnings.warn(f"{worst.where}: lens distortion ignored (a label holds a pinhole camera); it shifts points "
                  f"by up to {size}" + (f" ({others} more cameras or frames have some)" if others else ""), stacklevel=2)


def image_size(path: Path, where: str) -> tuple[int, int]:
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, SyntaxError) as error:  # PIL raises these for truncated or unknown files
        raise ValueError(f"{where}: cannot read image {path} ({error})") from error


def fit_intrinsics(intrinsics: np.ndarray, stated: tuple[int, int], actual: tuple[int, int], where: str) -> np.ndarray:
    """Intrinsics given for a `stated` (W, H) image, for the image file's `actual` size (a downscaled copy
    of the calibrated images is fine; another aspect ratio is a ValueError)."""
    if stated == actual:
        return intrinsics
    if abs(stated[0] * actual[1] - stated[1] * actual[0]) > max(stated[0], actual[0]):  # beyond rounding
        raise ValueError(f"{where}: the camera is calibrated for {stated[0]}x{stated[1]} images but the file is "
                         f"{actual[0]}x{actual[1]}, another aspect ratio")
    return resize_intrinsics(intrinsics, stated, actual)


def pose_fault(cam2world: np.ndarray) -> str | None:
    """What makes a 4x4 matrix not a rigid camera pose, or None."""
    if not np.allclose(cam2world[3], [0, 0, 0, 1], atol=ROTATION_TOLERANCE):
        return f"bottom row {cam2world[3].tolist()}, expected [0, 0, 0, 1]"
    rotation = cam2world[:3, :3]
    if np.abs(rotation @ rotation.T - np.eye(3)).max() > ROTATION_TOLERANCE or np.linalg.det(rotation) < 0:
        return "its 3x3 rotation is not a rotation (not orthonormal, or a reflection; scaled poses are not supported)"
    return None


# NeRF transforms.json

NERF_CAMERA_KEYS = ("camera_angle_x", "camera_angle_y", "fl_x", "fl_y", "cx", "cy", "w", "h", "k1", "k2", "p1", "p2")


def read_nerf(path, *, max_distortion: float = MAX_DISTORTION) -> list[Frame]:
    """Frames of a NeRF/instant-ngp transforms.json (see the module docstring); ValueError naming the file,
    the frame and the key for anything missing or malformed."""
    path = Path(path)
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
    frames = meta.get("frames") if isinstance(meta, dict) else None
    if not isinstance(frames, list) or not frames:
        raise ValueError(f'{path}: expected a non-empty "frames" list of {{"file_path", "transform_matrix"}}')
    shared = {key: meta[key] for key in NERF_CAMERA_KEYS if key in meta}
    read = [_nerf_frame(path, shared, frame, index) for index, frame in enumerate(frames)]
    check_distortion([distortion for _, distortion in read], max_distortion)
    return [frame for frame, _ in read]


def _nerf_frame(path: Path, shared: dict, frame, index: int) -> tuple[Frame, Distortion]:
    where = f"{path}: frame {index}"
    if not isinstance(frame, dict):
        raise ValueError(f"{where}: expected an object with file_path and transform_matrix, got {str(frame)[:80]}")
    source = _find_image(path.parent, frame.get("file_path"), where)
    width, height = image_size(source, where)
    matrix = _matrix(frame.get("transform_matrix"), f"{where}: transform_matrix")
    settings = {**shared, **{key: frame[key] for key in NERF_CAMERA_KEYS if key in frame}}
    intrinsics = _nerf_intrinsics(settings, (width, height), where)
    k = [_number(settings, key, where, default=0.0) for key in ("k1", "k2", "p1", "p2")]
    distortion = Distortion(where, distortion_shift(intrinsics, width, height, *k), width, height)
    return Frame(source, where, opengl_to_opencv(matrix), intrinsics, width, height), distortion


def _nerf_intrinsics(settings: dict, actual: tuple[int, int], where: str) -> np.ndarray:
    """Pixel intrinsics from fl_x/fl_y/cx/cy (pixels of a w x h image) or camera_angle_x/_y (radians)."""
    width = _number(settings, "w", where, default=actual[0], positive=True)
    height = _number(settings, "h", where, default=actual[1], positive=True)
    if "fl_x" in settings:
        fx = _number(settings, "fl_x", where, positive=True)
        fy = _number(settings, "fl_y", where, default=fx, positive=True)
    elif "camera_angle_x" in settings:
        fx = 0.5 * width / math.tan(0.5 * _angle(settings, "camera_angle_x", where))
        fy = 0.5 * height / math.tan(0.5 * _angle(settings, "camera_angle_y", where)) \
            if "camera_angle_y" in settings else fx
    else:
        raise ValueError(f"{where}: no intrinsics; expected camera_angle_x (radians), or fl_x and fl_y (pixels), "
                         f"at the top level or in the frame")
    cx = _number(settings, "cx", where, default=width / 2)
    cy = _number(settings, "cy", where, default=height / 2)
    intrinsics = pixel_intrinsics(fx, fy, cx, cy)
    return fit_intrinsics(intrinsics, (round(width), round(height)), actual, where)


def _number(settings: dict, key: str, where: str, *, default=None, positive=False) -> float:
    value = settings.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or (positive and value <= 0):
        raise ValueError(f"{where}: {key} is {value!r}, expected a finite{' positive' if positive else ''} number")
    return float(value)


def _angle(settings: dict, key: str, where: str) -> float:
    angle = _number(settings, key, where)
    if not 0 < angle < math.pi:
        raise ValueError(f"{where}: {key} is {angle}, expected a field of view in radians in (0, pi)")
    return angle


def _find_image(folder: Path, file_path, where: str) -> Path:
    """The image a frame's file_path names, relative to the json's folder; the extension may be left out."""
    if not isinstance(file_path, str) or not file_path:
        raise ValueError(f"{where}: file_path is {file_path!r}, expected an image path relative to {folder}")
    path = folder / file_path
    candidates = [path] + [path.with_name(path.name + extension) for extension in SOURCE_EXTENSIONS]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ValueError(f"{where}: file_path {file_path!r}: no image {path} (also tried the extensions "
                     f"{', '.join(SOURCE_EXTENSIONS)})")


def _matrix(value, where: str) -> np.ndarray:
    """A 4x4 (or 3x4) list of finite numbers that is a rigid pose -> float64 [4,4]."""
    try:
        matrix = np.array(value, dtype=np.float64)
    except (TypeError, ValueError):
        matrix = np.zeros(0)
    if matrix.shape == (3, 4):
        matrix = np.vstack([matrix, [0.0, 0.0, 0.0, 1.0]])
    if matrix.shape != (4, 4) or not np.isfinite(matrix).all():
        raise ValueError(f"{where}: expected a 4x4 list of finite numbers (cam2world), got {str(value)[:80]}")
    fault = pose_fault(matrix)
    if fault:
        raise ValueError(f"{where}: {fault}")
    return matrix


# COLMAP text model

@dataclass(frozen=True)
class ColmapCamera:
    intrinsics: np.ndarray  # pixels, for width x height images
    width: int
    height: int
    distortion: Distortion


def read_colmap(model, images=None, *, max_distortion: float = MAX_DISTORTION) -> list[Frame]:
    """Frames of a COLMAP text model folder (cameras.txt, images.txt), images from `images` (default: see
    the module docstring), in images.txt order; ValueError naming the file and line of any fault."""
    model = Path(model)
    for name in ("cameras.txt", "images.txt"):
        if not (model / name).is_file():
            binary = " (a binary model: convert it with colmap model_converter --input_path M --output_path M " \
                     "--output_type TXT)" if (model / name.replace(".txt", ".bin")).is_file() else ""
            raise ValueError(f"{model}: no {name}; expected a COLMAP text model{binary}")
    cameras = read_colmap_cameras(model / "cameras.txt")
    images = Path(images) if images is not None else default_images_folder(model)
    frames, used = [], set()
    for number, fields in _image_lines(model / "images.txt"):
        frame, camera_id = _colmap_frame(model / "images.txt", number, fields, cameras, images)
        frames.append(frame)
        used.add(camera_id)
    if not frames:
        raise ValueError(f"{model / 'images.txt'}: lists no images")
    check_distortion([cameras[i].distortion for i in sorted(used)], max_distortion)
    return frames


def read_colmap_cameras(path: Path) -> dict[int, ColmapCamera]:
    """cameras.txt: `CAMERA_ID MODEL WIDTH HEIGHT PARAMS[]` per line -> {camera id: camera}."""
    cameras = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where, fields = f"{path}: line {number}", line.split()
        model = fields[1] if len(fields) > 1 else None
        if model not in COLMAP_MODELS:
            raise ValueError(f"{where}: camera model {model!r} is not supported; expected one of "
                             f"{', '.join(COLMAP_MODELS)} (undistort the images with colmap image_undistorter "
                             f"to get PINHOLE cameras)")
        names = COLMAP_MODELS[model]
        try:
            camera_id, width, height = int(fields[0]), int(fields[2]), int(fields[3])
            values = [float(x) for x in fields[4:]]
        except (ValueError, IndexError):
            values = None
        p = dict(zip(names, values or []))
        focal = [p[k] for k in ("f", "fx", "fy") if k in p]
        if len(p) != len(names) or not all(map(math.isfinite, values)) or min(width, height, *focal) <= 0:
            raise ValueError(f"{where}: expected CAMERA_ID {model} WIDTH HEIGHT {' '.join(n.upper() for n in names)} "
                             f"(sizes and focal lengths > 0), got {line.strip()[:100]!r}")
        intrinsics = pixel_intrinsics(p.get("fx", p.get("f")), p.get("fy", p.get("f")), p["cx"], p["cy"])
        shift = distortion_shift(intrinsics, width, height, *(p.get(k, 0.0) for k in ("k1", "k2", "p1", "p2")))
        cameras[camera_id] = ColmapCamera(intrinsics, width, height, Distortion(where, shift, width, height))
    return cameras


def _image_lines(path: Path):
    """(line number, fields) of each image line of images.txt. The line after an image line holds its 2D
    points and is skipped even when empty (an image without points), as COLMAP's own reader does."""
    points_next = False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if points_next:
            points_next = False
        elif line.strip() and not line.lstrip().startswith("#"):
            points_next = True
            yield number, line.split(maxsplit=9)  # a NAME may contain spaces


def _colmap_frame(path: Path, number: int, fields: list[str], cameras: dict, images: Path) -> tuple[Frame, int]:
    where = f"{path}: line {number}"
    try:
        if len(fields) != 10:
            raise ValueError
        qw, qx, qy, qz, tx, ty, tz = (float(x) for x in fields[1:8])
        camera_id, name = int(fields[8]), fields[9].strip()
        rotation = quaternion_to_rotation([qw, qx, qy, qz])
    except ValueError:
        raise ValueError(f"{where}: expected IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME (a non-zero quaternion), "
                         f"got {' '.join(fields)[:100]!r}") from None
    if camera_id not in cameras:
        raise ValueError(f"{where}: CAMERA_ID {camera_id} is not in cameras.txt")
    source = images / name
    if not source.is_file():
        raise ValueError(f"{where}: image {name!r} not found in {images} (give the folder with --images)")
    camera, size = cameras[camera_id], image_size(source, where)
    intrinsics = fit_intrinsics(camera.intrinsics, (camera.width, camera.height), size, where)
    cam2world = world2cam_to_cam2world(rotation, np.array([tx, ty, tz]))
    return Frame(source, where, cam2world, intrinsics, *size), camera_id


def default_images_folder(model: Path) -> Path:
    """`images/` in the model folder, beside it, or beside its parent (COLMAP's project/sparse/0 layout)."""
    candidates = [model / "images", model.parent / "images", model.parent.parent / "images"]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise ValueError(f"{model}: no images folder at {', '.join(map(str, candidates))}; give it with --images")


def read_reference(path, *, axes: str = "opencv", matrices: str = "cam2world") -> list[Frame]:
    """Frames of a dataset already in the reference format (a folder with dataset.json; see eg3d.networks.camera),
    to crop, resize, re-place or re-axis it. Common slips, undone in this order: `matrices="world2cam"`, its
    4x4 matrices are world2cam (each is inverted), `"transposed"`, their 3x3 rotations are transposed (each
    is transposed back); `axes="opengl"`, the cam2world columns are OpenGL camera axes (y up, z backward),
    turned into OpenCV's. ValueError naming the file and entry."""
    path = Path(path)
    root = path.parent if path.is_file() else path
    listed = load_label_list((root / METADATA).read_bytes(), f"{root / METADATA}")
    frames = []
    for index, entry in enumerate(listed):
        name, label, fault = parse_label_entry(entry)
        where = f"{root / METADATA}: labels[{index}]"
        if fault is not None:
            raise ValueError(f"{where}: {fault}")
        source = root / name
        if not source.is_file():
            raise ValueError(f"{where}: {name} is listed but missing")
        width, height = image_size(source, where)
        cam2world = to_cam2world(label[:16].reshape(1, 4, 4), matrices)[0]
        intrinsics = label[16:].reshape(3, 3) * [[width], [height], [1]]  # normalized -> pixels
        frames.append(Frame(source, where, opengl_to_opencv(cam2world) if axes == "opengl" else cam2world,
                            intrinsics, width, height))
    return frames


def read_frames(source, *, images=None, max_distortion: float = MAX_DISTORTION, axes: str | None = None,
                matrices: str | None = None) -> list[Frame]:
    """A transforms.json (or a folder holding one), a COLMAP text model folder, or a reference-format
    dataset (dataset.json, or its folder) -> its frames."""
    source = Path(source)
    for name in ("transforms.json", METADATA):
        if source.is_dir() and (source / name).is_file():
            source = source / name
    for option, value in (("--axes", axes), ("--matrices", matrices)):
        if value is not None and source.name != METADATA:
            raise ValueError(f"{option} is for datasets in the reference format (dataset.json); {source} fixes its "
                             f"own axes and matrices")
    if source.is_file() and source.suffix == ".json":
        if images is not None:
            raise ValueError(f"--images is for COLMAP models; {source.name} names its images itself")
        if source.name == METADATA:
            return read_reference(source, axes=axes or "opencv", matrices=matrices or "cam2world")
        return read_nerf(source, max_distortion=max_distortion)
    if source.is_dir():
        return read_colmap(source, images, max_distortion=max_distortion)
    raise ValueError(f"{source}: expected a transforms.json file, a COLMAP text model folder (cameras.txt, "
                     f"images.txt) or a dataset in the reference format (dataset.json)")


# --- output ---------------------------------------------------------------------------------------------

def image_name(index: int) -> str:
    return f"{index // IMAGES_PER_FOLDER:05d}/img{index:08d}.png"


def label(frame: Frame, cam2world: np.ndarray) -> list[float]:
    """EG3D label [25] of a frame after the square crop: cam2world, then intrinsics normalized by the square."""
    left, top, size = square_crop(frame.width, frame.height)
    intrinsics = normalize_intrinsics(crop_intrinsics(frame.intrinsics, left, top), size, size)
    return np.concatenate([cam2world.reshape(16), intrinsics.reshape(9)]).tolist()


def square_image(frame: Frame, resolution: int | None, background: tuple[int, int, int]) -> Image.Image:
    """The frame's image as RGB (alpha composited onto `background`), centre-cropped, resized if asked."""
    left, top, size = square_crop(frame.width, frame.height)
    try:
        with Image.open(frame.source) as image:
            # The cameras were solved on the stored pixels (COLMAP and NeRF tools ignore EXIF orientation),
            # so the image is not turned; the output PNG carries no orientation tag.
            image, _ = to_rgb8(image, background, apply_orientation=False)
            image = image.crop((left, top, left + size, top + size))
    except (OSError, SyntaxError) as error:
        raise ValueError(f"{frame.where}: cannot read image {frame.source} ({error})") from error
    if resolution is not None and resolution != size:
        image = image.resize((resolution, resolution), Image.Resampling.LANCZOS)
    return image


def check_destination(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"{out}: folder is not empty; choose a new one or pass --overwrite to replace it")


def publish(staging: Path, out: Path) -> None:
    """Put the finished `staging` folder at `out`, replacing what was there only once all is written."""
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        staging.rename(out)
        shutil.rmtree(old)
    else:
        staging.rename(out)


def convert(source, out, *, images=None, up: str | None = None, recenter: bool = False, radius: float | None = None,
            resolution: int | None = None, background: str = "white", max_distortion: float = MAX_DISTORTION,
            overwrite: bool = False, progress: bool = True, axes: str | None = None,
            matrices: str | None = None) -> dict:
    """Convert a transforms.json, a COLMAP text model or a reference-format dataset to the reference dataset
    format in `out`; returns a summary (see `summarize`). Nothing is written to `out` unless the whole
    conversion succeeds."""
    if up is not None and up != "auto" and up not in AXES:
        raise ValueError(f"--up must be auto or one of {', '.join(AXES)}, got {up!r}")
    if (radius is not None and not radius > 0) or (resolution is not None and resolution < 1):
        raise ValueError(f"--radius and --resolution must be positive, got {radius} and {resolution}")
    if background not in BACKGROUNDS:
        raise ValueError(f"--background must be one of {', '.join(BACKGROUNDS)}, got {background!r}")
    out = Path(out)
    check_destination(out, overwrite)
    if axes not in (None, "opencv", "opengl"):
        raise ValueError(f"--axes must be opencv or opengl, got {axes!r}")
    if matrices not in (None, *MATRIX_KINDS):
        raise ValueError(f"--matrices must be one of {', '.join(MATRIX_KINDS)}, got {matrices!r}")
    frames = read_frames(source, images=images, max_distortion=max_distortion, axes=axes, matrices=matrices)
    if resolution is None:
        _check_one_size(frames)
    cam2world = place_world(np.stack([f.cam2world for f in frames]), up=up, recenter=recenter, radius=radius)
    labels = [[image_name(i), label(f, c)] for i, (f, c) in enumerate(zip(frames, cam2world))]
    sources = [[name, str(f.source)] for (name, _), f in zip(labels, frames)]
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        for frame, (name, _) in zip(tqdm(frames, unit="img", desc="images", disable=not progress), labels):
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            square_image(frame, resolution, BACKGROUNDS[background]).save(staging / name, format="PNG")
        (staging / "dataset.json").write_text(json.dumps({"labels": labels, "sources": sources}))
        check_destination(out, overwrite)  # nothing appeared there meanwhile
        publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return summarize(frames, cam2world, out, resolution)


def _check_one_size(frames: list[Frame]) -> None:
    sizes = {}
    for frame in frames:
        sizes.setdefault(square_crop(frame.width, frame.height)[2], frame)
    if len(sizes) > 1:
        (a, first), (b, second) = list(sizes.items())[:2]
        raise ValueError(f"images of different sizes ({first.source}: {a}x{a} square, {second.source}: {b}x{b}); "
                         f"pass --resolution N to resize them all to N x N")


def summarize(frames: list[Frame], cam2world: np.ndarray, out: Path, resolution: int | None = None) -> dict:
    """Image count, camera distances from the origin, the look-at point (None for parallel axes) and how
    far the optical axes pass from it, in the output world; how many images were upscaled to `resolution`."""
    distances = np.linalg.norm(cam2world[:, :3, 3], axis=1)
    try:
        point = look_at_point(cam2world, parallel_ok=False)
        miss = float(distances_to_axes(cam2world, point).max())
    except ValueError:
        point, miss = None, None
    return {"out": str(out), "images": len(frames),
            "cropped": sum(f.width != f.height for f in frames),
            "upscaled": sum(resolution is not None and min(f.width, f.height) < resolution for f in frames),
            "resolution": resolution,
            "radius": (float(distances.min()), float(distances.mean()), float(distances.max())),
            "look_at": None if point is None else point.tolist(), "axis_miss": miss}


def format_summary(summary: dict) -> str:
    low, mean, high = summary["radius"]
    if summary["look_at"] is None:
        look_at = "none (the optical axes are parallel)"
    else:
        noise = 1e-9 * mean  # the rounding left by --recenter prints as 0
        point = ", ".join(f"{x if abs(x) > noise else 0.0:.4g}" for x in summary["look_at"])
        look_at = f"({point}); the optical axes pass within {summary['axis_miss']:.3g} of it"
    return "\n".join([
        f"{summary['images']} images -> {summary['out']} ({summary['cropped']} centre-cropped to a square)",
        f"camera distance from the origin: min {low:.4g}, mean {mean:.4g}, max {high:.4g}",
        f"look-at point: {look_at}",
        *placement_notes(summary),
        f"next: python -m dataloading.build {summary['out']} SHARDS   # SHARDS: a folder or s3://bucket/prefix",
    ])


def placement_notes(summary: dict) -> list[str]:
    """Warnings for a world EG3D's presets cannot render (they sample depths 2.25..3.3 around a unit box at
    the origin, shapenet128 0.1..2.6 in a box of side 1.6) and for images upscaled by --resolution."""
    notes = []
    mean, look_at = summary["radius"][1], summary["look_at"]
    if look_at is not None and float(np.linalg.norm(look_at)) > 0.25 * mean:
        notes.append("note: the cameras look at a point far from the origin, where EG3D's tri-plane box is: "
                     "add --recenter (and --radius 2.7 for the FFHQ-like presets)")
    if not 2.0 <= mean <= 3.5:
        notes.append(f"note: the cameras are {mean:.3g} from the origin on average; ffhq512, afhq512 and tiny render "
                     f"depths 2.25..3.3 (cameras at 2.7): add --radius 2.7")
    if summary["upscaled"]:
        notes.append(f"note: {summary['upscaled']} images were smaller than --resolution {summary['resolution']} and "
                     f"were upscaled; a preset of the source's size trains on sharper images")
    return notes


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dataloading.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="a transforms.json (or its folder), a COLMAP text model folder, or a "
                        "reference-format dataset (dataset.json or its folder)")
    parser.add_argument("out", help="output folder (new or empty)")
    parser.add_argument("--images", default=None, help="COLMAP: the images folder (default: images/ near the model)")
    parser.add_argument("--up", choices=["auto", *AXES], default=None, help="world axis that becomes +y, or auto: "
                        "the cameras' mean up (NeRF/Blender: +z); default: keep the world")
    parser.add_argument("--recenter", action="store_true", help="move the cameras' look-at point to the origin")
    parser.add_argument("--radius", type=float, default=None, help="scale to this mean camera distance (FFHQ: 2.7)")
    parser.add_argument("--resolution", type=int, default=None, help="resize the square crops to N x N")
    parser.add_argument("--background", choices=sorted(BACKGROUNDS), default="white", help="behind transparent pixels")
    parser.add_argument("--max-distortion", type=float, default=MAX_DISTORTION,
                        help="largest lens distortion accepted, as a fraction of the shorter image side")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")
    parser.add_argument("--axes", choices=("opencv", "opengl"), default=None, help="dataset.json sources: the camera "
                        "axes its cam2world uses (opengl: y up, z backward, turned into OpenCV's; default opencv)")
    parser.add_argument("--matrices", choices=MATRIX_KINDS, default=None, help="dataset.json sources: what its 4x4 "
                        "matrices hold (world2cam: each is inverted; transposed: cam2world with transposed 3x3 "
                        "rotations, transposed back; applied before --axes; default cam2world)")
    args = parser.parse_args(argv)
    try:
        summary = convert(args.source, args.out, images=args.images, up=args.up, recenter=args.recenter,
                          radius=args.radius, resolution=args.resolution, background=args.background,
                          max_distortion=args.max_distortion, overwrite=args.overwrite, axes=args.axes,
                          matrices=args.matrices)
    except (ValueError, FileNotFoundError, PermissionError) as error:
        raise SystemExit(f"error: {error}") from None
    print(format_summary(summary))


if __name__ == "__main__":
    main()
