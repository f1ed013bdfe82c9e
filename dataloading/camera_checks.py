"""Do the cameras see the scene? Per-label measures, dataset statistics and likely fixes, in numpy.

EG3D renders only what lies in the tri-plane box [-box_warp/2, box_warp/2]^3 around the world origin.
A label whose camera looks away from it passes every check on its numbers (the commonest case:
cam2world in OpenGL/Blender axes, y up and z backward, where EG3D expects OpenCV axes, y down and z
forward), yet training then renders rays that never enter the box. So for labels [N,25] (row-major 4x4
cam2world, then the 3x3 intrinsics normalized by the image size) we measure per camera:

- axis distance: the distance from the world origin to the optical axis, the forward half-ray
  through the principal point (0 for a camera looking at the origin);
- fraction inside: with a ray range [ray_start, ray_end] (a preset's rendering settings), the fraction
  of frustum samples, GRID x GRID pixel centres times DEPTHS depths along unit rays as the renderer
  takes them, that lie inside the box; without one (the renderer's automatic bounds, ray_start None,
  or a build that does not know the preset), the fraction of the pixel rays that enter the box at any
  positive depth, so the check does not depend on a preset.

The presets' values: ffhq512, afhq512 and tiny sample 2.25..3.3 in a box_warp 1 box; shapenet128
samples 0.1..2.6 in a box_warp 1.6 box. A camera whose fraction is at most SEES_NOTHING sees nothing.
"""

from dataclasses import asdict, dataclass

import numpy as np
import torch

from eg3d.networks.camera import pixel_rays

GRID = 8  # pixel rays per image side
DEPTHS = 16  # samples per ray in the ray-range mode
SEES_NOTHING = 0.01  # at or below this fraction inside the box, a camera sees (essentially) nothing
CHUNK = 1024  # cameras per vectorized step (GRID^2 * DEPTHS points each)
PIXEL_FOCAL = 10.0  # a normalized focal length above this (a field of view under 6 degrees) is in pixels


@dataclass(frozen=True)
class CameraCheck:
    """What a camera must see: the box of half-size box_warp/2, by the samples between ray_start and
    ray_end (world units along unit rays), or by any positive depth when both are None."""
    box_warp: float = 1.0
    ray_start: float | None = None
    ray_end: float | None = None

    def __post_init__(self):
        if not self.box_warp > 0:
            raise ValueError(f"box_warp must be > 0, got {self.box_warp}")
        if (self.ray_start is None) != (self.ray_end is None):
            raise ValueError("ray_start and ray_end must both be given or both be left out")
        if self.ray_start is not None and not 0 <= self.ray_start < self.ray_end:
            raise ValueError(f"need 0 <= ray_start < ray_end, got {self.ray_start}, {self.ray_end}")

    def describe(self) -> str:
        half = self.box_warp / 2
        box = f"the tri-plane box [{-half:g}, {half:g}]^3"
        if self.ray_start is None:
            return f"{box}, by rays at any depth"
        return f"{box}, by samples at depths {self.ray_start:g}..{self.ray_end:g}"


def split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels [N,25] -> camera centres [N,3], rotations [N,3,3] (columns: right, down, forward), intrinsics [N,3,3]."""
    labels = np.asarray(labels, dtype=np.float64).reshape(-1, 25)
    cam2world = labels[:, :16].reshape(-1, 4, 4)
    return cam2world[:, :3, 3], cam2world[:, :3, :3], labels[:, 16:].reshape(-1, 3, 3)


def axis_distance(labels: np.ndarray) -> np.ndarray:
    """[N] distance from the world origin to each camera's forward optical half-axis."""
    origins, rotations, _ = split(labels)
    forward = rotations[:, :, 2] / np.linalg.norm(rotations[:, :, 2], axis=1, keepdims=True)
    along = np.maximum(-np.einsum("ni,ni->n", origins, forward), 0.0)  # behind the camera counts as its centre
    return np.linalg.norm(origins + along[:, None] * forward, axis=1)


def pixel_directions(labels: np.ndarray, grid: int = GRID) -> np.ndarray:
    """[N, grid*grid, 3] unit world directions through a grid x grid of pixel centres (row-major): the
    renderer's own rays (`eg3d.networks.camera.pixel_rays`), in float64."""
    c = torch.from_numpy(np.asarray(labels, dtype=np.float64).reshape(-1, 25))
    return pixel_rays(c, grid)[1].numpy()


def fraction_inside(labels: np.ndarray, check: CameraCheck) -> np.ndarray:
    """[N] fraction of each camera's frustum inside the box (see the module docstring), in [0, 1]."""
    labels = np.asarray(labels, dtype=np.float64).reshape(-1, 25)
    return np.concatenate([_fraction_inside(labels[i:i + CHUNK], check) for i in range(0, len(labels), CHUNK)]
                          or [np.zeros(0)])


def _fraction_inside(labels: np.ndarray, check: CameraCheck) -> np.ndarray:
    origins = split(labels)[0][:, None, :]
    directions = pixel_directions(labels)
    half = check.box_warp / 2
    if check.ray_start is None:
        safe = np.where(directions == 0, 1e-12, directions)  # a ray parallel to a slab: t = +-inf
        t1, t2 = (-half - origins) / safe, (half - origins) / safe
        near, far = np.minimum(t1, t2).max(axis=-1), np.maximum(t1, t2).min(axis=-1)
        return (far > np.maximum(near, 0.0)).mean(axis=1)
    depths = check.ray_start + (np.arange(DEPTHS) + 0.5) / DEPTHS * (check.ray_end - check.ray_start)
    points = origins[:, :, None, :] + directions[:, :, None, :] * depths[None, None, :, None]
    return (np.abs(points) <= half).all(axis=-1).mean(axis=(1, 2))


def cam2world_matrices(labels: np.ndarray) -> np.ndarray:
    """Labels [N,25] -> their cam2world matrices [N,4,4]."""
    return np.asarray(labels, dtype=np.float64).reshape(-1, 25)[:, :16].reshape(-1, 4, 4)


def look_at_point(cam2world: np.ndarray, *, parallel_ok: bool = True) -> np.ndarray:
    """[3] the point nearest, in least squares, to the optical axes (whole lines along +z, OpenCV) of
    cam2world [N,4,4]: it solves sum_i (I - d_i d_i^T) p = sum_i (I - d_i d_i^T) o_i. When the axes are
    (nearly) parallel no such point exists: the one nearest the origin is returned, or, with
    `parallel_ok=False`, ValueError."""
    origins, forward = cam2world[:, :3, 3], cam2world[:, :3, 2]
    forward = forward / np.linalg.norm(forward, axis=1, keepdims=True)
    projectors = np.eye(3) - forward[:, :, None] * forward[:, None, :]  # onto each axis's normal plane
    a, b = projectors.sum(0), np.einsum("nij,nj->i", projectors, origins)
    if not parallel_ok and np.linalg.eigvalsh(a)[0] < 1e-6 * len(cam2world):
        raise ValueError("the cameras' optical axes are (nearly) parallel, so they have no common look-at point")
    point, *_ = np.linalg.lstsq(a, b, rcond=1e-9)
    return point


def flip_yz(labels: np.ndarray) -> np.ndarray:
    """Labels with cam2world columns 1 and 2 negated: OpenGL/Blender camera axes <-> OpenCV ones."""
    flipped = np.array(labels, dtype=np.float64).reshape(-1, 25)
    flipped[:, [1, 2, 5, 6, 9, 10]] *= -1
    return flipped


@dataclass
class CameraReport:
    """The measures of a set of labels against one check; `blind` marks cameras that see nothing."""
    check: CameraCheck
    labels: np.ndarray
    fraction: np.ndarray
    axis_distance: np.ndarray

    @property
    def blind(self) -> np.ndarray:
        return self.fraction <= SEES_NOTHING

    def statistics(self) -> dict:
        """JSON-ready: camera radius, look-at point, axis distance and fraction inside (min/mean/max)."""
        origins = split(self.labels)[0]
        look_at = look_at_point(cam2world_matrices(self.labels)) if len(self.labels) else np.zeros(3)
        return {"count": len(self.labels), "check": asdict(self.check),
                "radius": _spread(np.linalg.norm(origins, axis=1)), "look_at": _rounded(look_at),
                "look_at_distance": _rounded(np.linalg.norm(look_at)), "axis_distance": _spread(self.axis_distance),
                "fraction_inside": _spread(self.fraction), "seeing_nothing": int(self.blind.sum())}

    def subset(self, rows) -> "CameraReport":
        return CameraReport(self.check, self.labels[rows], self.fraction[rows], self.axis_distance[rows])

    def blind_faults(self) -> dict[int, str]:
        """{row: why that camera is rejected} for the cameras that see nothing, naming the axis flip where
        flipping would make the camera see the box."""
        rows = np.flatnonzero(self.blind)
        flipped = fraction_inside(flip_yz(self.labels[rows]), self.check)
        faults = {}
        for row, rescued in zip(rows.tolist(), flipped):
            text = (f"camera sees none of {self.check.describe()} ({self.fraction[row]:.0%} inside); it sits at "
                    f"({_numbers(split(self.labels[row])[0])}) and its optical axis passes "
                    f"{self.axis_distance[row]:.2f} from the origin")
            if rescued > SEES_NOTHING:
                text += (f"; with the y and z camera axes flipped (OpenGL/Blender -> OpenCV) it would see {rescued:.0%}"
                         f": python -m dataloading.convert DATASET OUT --axes opengl fixes the labels")
            faults[row] = text
        return faults

    def problem(self, *, strict: bool = False) -> str | None:
        """A message refusing the data when more than half of the cameras see nothing (with `strict`,
        when any does), naming the likely fixes; None when the data is acceptable."""
        blind = int(self.blind.sum())
        if blind == 0 or not (strict or 2 * blind > len(self.labels)):
            return None
        fixes = likely_fixes(self.labels[self.blind], self.check)
        return (f"{blind} of {len(self.labels)} cameras see none of {self.check.describe()}. Likely fix: "
                + " Also: ".join(fixes))


def check_cameras(labels: np.ndarray, check: CameraCheck) -> CameraReport:
    labels = np.asarray(labels, dtype=np.float64).reshape(-1, 25)
    return CameraReport(check, labels, fraction_inside(labels, check), axis_distance(labels))


def likely_fixes(labels: np.ndarray, check: CameraCheck) -> list[str]:
    """What most probably went wrong with cameras that see nothing, each with the way out."""
    fixes = []
    _, _, intrinsics = split(labels)
    fx, fy, cx, cy = intrinsics[:, 0, 0], intrinsics[:, 1, 1], intrinsics[:, 0, 2], intrinsics[:, 1, 2]
    if (np.maximum(fx, fy) > PIXEL_FOCAL).any() or ((cx < 0) | (cx > 1) | (cy < 0) | (cy > 1)).any():
        fixes.append("the intrinsics look unnormalized (in pixels): divide fx and cx by the image width and "
                     "fy and cy by the height.")
    rescued = np.median(fraction_inside(flip_yz(labels), check))
    if rescued > SEES_NOTHING:
        fixes.append(f"the cam2world matrices look like OpenGL/Blender camera axes (x right, y up, z backward); "
                     f"with columns 1 and 2 negated (OpenCV axes: y down, z forward) the median camera would see "
                     f"{rescued:.0%} of the box. Fix the labels with python -m dataloading.convert DATASET OUT --axes "
                     f"opengl (DATASET: the folder with dataset.json), or convert the original transforms.json with "
                     f"python -m dataloading.convert, which reads OpenGL axes.")
    look_at = look_at_point(cam2world_matrices(labels))
    if np.linalg.norm(look_at) > check.box_warp / 2:
        fixes.append(f"the cameras look at ({_numbers(look_at)}), {np.linalg.norm(look_at):.2f} from the origin, "
                     f"outside the box: recentre the world on the object, e.g. python -m dataloading.convert DATASET OUT "
                     f"--recenter --radius 2.7 (the FFHQ-like presets' camera distance).")
    elif check.ray_start is not None and np.median(axis_distance(labels)) <= check.box_warp / 2:
        radius = np.median(np.linalg.norm(split(labels)[0], axis=1))
        fixes.append(f"the cameras aim at the box but sit {radius:.2f} from the origin, where samples at depths "
                     f"{check.ray_start:g}..{check.ray_end:g} miss it: scale the camera positions (python -m "
                     f"dataloading.convert DATASET OUT --radius 2.7 for the FFHQ-like presets), or choose "
                     f"rendering.ray_start/ray_end around that distance.")
    return fixes or ["check that the matrices are cam2world (not world2cam: invert those) in OpenCV axes "
                     "(x right, y down, z forward) and that the object sits at the world origin."]


def describe_statistics(statistics: dict) -> str:
    """One line for people from CameraReport.statistics()."""
    if not statistics["count"]:
        return "cameras: none"
    radius, axis, seen = statistics["radius"], statistics["axis_distance"], statistics["fraction_inside"]
    check = CameraCheck(**statistics["check"])
    return (f"cameras ({statistics['count']}): {radius['mean']:.2f} from the origin "
            f"({radius['min']:.2f}..{radius['max']:.2f}); "
            f"look-at point ({_numbers(statistics['look_at'])}), {statistics['look_at_distance']:.2f} from the origin; "
            f"optical axes pass {axis['mean']:.2f} ({axis['min']:.2f}..{axis['max']:.2f}) from the origin; "
            f"{seen['mean']:.0%} ({seen['min']:.0%}..{seen['max']:.0%}) inside {check.describe()}; "
            f"{statistics['seeing_nothing']} see nothing")


def _spread(values: np.ndarray) -> dict:
    if not len(values):
        return {"min": None, "mean": None, "max": None}
    return {"min": _rounded(values.min()), "mean": _rounded(values.mean()), "max": _rounded(values.max())}


def _rounded(value):
    return (np.round(np.asarray(value, dtype=np.float64), 4) + 0.0).tolist()  # + 0.0: no -0.0


def _numbers(values) -> str:
    return ", ".join(f"{round(float(x), 2) + 0.0:.2f}" for x in np.asarray(values).reshape(-1))  # no -0.00
