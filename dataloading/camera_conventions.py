"""Labels in a wrong convention, caught for the data set as a whole.

Each camera alone can look possible (a rotation, normalized intrinsics, rays that hit the box) while the
set says otherwise. EG3D's data sets are object-centric (eg3d-reference: FFHQ and AFHQ on a sphere of
radius 2.7 looking at a pivot 0.2 from the origin, ShapeNet cars at 1.3 looking at the origin, y-up), so
their labels share three traits that the common mistakes break:

- where they look: the world origin, where the object sits, is in the picture of (almost) every camera
  (`aimed`). world2cam matrices given as cam2world, transposed rotations and OpenGL camera axes all
  turn the optical axes away from it (the first two leave near-frontal cameras almost right, so a set
  with a pose spread shows it);
- where they sit relative to each other: the camera positions, seen from the origin, spread as much as
  their viewing directions do (`position_spread_deg` and `axis_spread_deg`, each the median angle from
  its mean direction). Inverted matrices put every camera at one spot, (0, 0, r) for look-at cameras,
  whatever way it looks;
- how their up vectors agree: a camera's up is its -y axis; for upright objects the mean up is +y
  (`up_from_y_deg`) and the ups agree (`up_agreement`, the length of the mean of the unit ups: 1 for
  level cameras, pi/4 for look-at cameras over a whole sphere). A z-up world (Blender, NeRF scenes, or
  y and z swapped) or an upside-down one (COLMAP, OpenCV world frames) shows a dominant up that is not +y.

Findings are errors (implausible for any object-centric set) or warnings (unusual; `--strict` fails on
them). On an error the likely causes are found by trying the fixes: each correction the convert command
can make (inverting the matrices, transposing the rotations, flipping the camera axes, then turning the
world so its dominant up is +y) is applied and the one that makes the set plausible is named, with the
command. `--accept-camera-conventions` (dataloading.build, eg3d.train) accepts the findings knowingly.
"""

from dataclasses import asdict, dataclass
from itertools import product

import numpy as np

from .camera_checks import _numbers, _rounded, flip_yz, split

ACCEPT_FLAG = "--accept-camera-conventions"
AIMED_ERROR, AIMED_WARNING = 0.5, 0.9  # fraction of cameras with the origin in the picture
COLLAPSE_MIN_AXIS_SPREAD, COLLAPSE_RATIO = 5.0, 3.0  # degrees; axes spread over this many times the positions
UP_ERROR_DEG, UP_WARNING_DEG = 60.0, 30.0  # dominant up this far from +y
UP_AGREEMENT = 0.5  # below this the cameras' ups disagree
DISTANCE_RATIO = 4.0  # farthest over nearest camera distance to the origin
MATRIX_KINDS = ("cam2world", "world2cam", "transposed")  # what a label's 4x4 may hold: convert --matrices
AXIS_NAMES = {"+x": (1, 0, 0), "-x": (-1, 0, 0), "+y": (0, 1, 0), "-y": (0, -1, 0), "+z": (0, 0, 1), "-z": (0, 0, -1)}
NAMED_AXIS_DEG = 30.0  # a dominant up within this of a world axis is named as that axis (else: --up auto)


@dataclass(frozen=True)
class Figures:
    """Summary figures of a label set (see the module docstring)."""
    count: int
    aimed: float
    position_spread_deg: float
    axis_spread_deg: float
    distance_min: float
    distance_median: float
    distance_max: float
    up: tuple[float, float, float]
    up_agreement: float
    up_from_y_deg: float


@dataclass(frozen=True)
class Finding:
    severity: str  # "error" or "warning"
    text: str


def origin_in_view(labels: np.ndarray) -> np.ndarray:
    """[N] whether the world origin lies in front of each camera and projects inside its image [0, 1]^2."""
    origins, rotations, intrinsics = split(labels)
    point = -np.einsum("nji,nj->ni", rotations, origins)  # the origin in camera coordinates: R^T (0 - c)
    depth = point[:, 2]
    pixel = np.einsum("nij,nj->ni", intrinsics, point / np.where(depth > 0, depth, 1.0)[:, None])
    return (depth > 0) & ((pixel[:, :2] >= 0) & (pixel[:, :2] <= 1)).all(axis=1)


def spread_deg(vectors: np.ndarray) -> float:
    """Median angle in degrees between the unit `vectors` [N,3] and their mean direction (90 when they cancel)."""
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    mean = unit.mean(axis=0)
    if np.linalg.norm(mean) < 1e-9:
        return 90.0
    cosines = np.clip(unit @ (mean / np.linalg.norm(mean)), -1.0, 1.0)
    return float(np.degrees(np.median(np.arccos(cosines))))


def measure(labels: np.ndarray) -> Figures:
    """The figures of labels [N,25], N >= 1."""
    origins, rotations, _ = split(labels)
    distances = np.linalg.norm(origins, axis=1)
    ups = -rotations[:, :, 1] / np.maximum(np.linalg.norm(rotations[:, :, 1], axis=1, keepdims=True), 1e-12)
    mean_up = ups.mean(axis=0)
    agreement = float(np.linalg.norm(mean_up))
    up = mean_up / agreement if agreement > 1e-9 else np.zeros(3)
    return Figures(count=len(origins), aimed=float(origin_in_view(labels).mean()),
                   position_spread_deg=spread_deg(origins), axis_spread_deg=spread_deg(-rotations[:, :, 2]),
                   distance_min=float(distances.min()), distance_median=float(np.median(distances)),
                   distance_max=float(distances.max()), up=tuple(float(x) for x in up), up_agreement=agreement,
                   up_from_y_deg=float(np.degrees(np.arccos(np.clip(up[1], -1.0, 1.0)))) if agreement > 1e-9 else 90.0)


def collapsed(figures: Figures) -> bool:
    """The cameras sit together while they look different ways: inverted matrices' signature."""
    return (figures.axis_spread_deg >= COLLAPSE_MIN_AXIS_SPREAD
            and figures.position_spread_deg * COLLAPSE_RATIO < figures.axis_spread_deg)


def placed_well(figures: Figures) -> bool:
    """Nearly every camera has the origin in view, and the cameras do not collapse to one spot."""
    return figures.aimed >= AIMED_WARNING and not collapsed(figures)


def up_turned(figures: Figures, limit: float = UP_WARNING_DEG) -> bool:
    """The cameras agree on an up more than `limit` degrees from +y."""
    return figures.up_agreement >= UP_AGREEMENT and figures.up_from_y_deg > limit


def findings(figures: Figures) -> list[Finding]:
    """What is implausible ("error") or unusual ("warning") for an object-centric data set."""
    found = []
    if figures.aimed < AIMED_WARNING:
        found.append(Finding("error" if figures.aimed < AIMED_ERROR else "warning",
                             f"the world origin, where the object must sit, is in the picture of only "
                             f"{figures.aimed:.0%} of the {figures.count} cameras (expected nearly all)"))
    if collapsed(figures):
        found.append(Finding("error", f"the cameras sit within {figures.position_spread_deg:.1f} deg of each other "
                                      f"(seen from the origin) while their optical axes spread "
                                      f"{figures.axis_spread_deg:.1f} deg (median angles from the mean; expected "
                                      f"about equal for cameras around an object)"))
    if up_turned(figures):
        found.append(Finding("error" if up_turned(figures, UP_ERROR_DEG) else "warning",
                             f"the cameras' up vectors (their -y axes) agree on ({_numbers(figures.up)}), "
                             f"{figures.up_from_y_deg:.0f} deg from EG3D's up, +y (agreement "
                             f"{figures.up_agreement:.2f})"))
    if figures.up_agreement < UP_AGREEMENT:
        found.append(Finding("warning", f"the cameras' up vectors disagree (agreement {figures.up_agreement:.2f}, "
                                        f"expected at least {UP_AGREEMENT} for upright objects): rolled cameras, or "
                                        f"rotations that are not cam2world"))
    if figures.distance_max > DISTANCE_RATIO * max(figures.distance_min, 1e-12):
        found.append(Finding("warning", f"the cameras are {figures.distance_min:.3g} to {figures.distance_max:.3g} "
                                        f"from the origin (median {figures.distance_median:.3g}), expected similar "
                                        f"distances around an object"))
    return found


def to_cam2world(matrices: np.ndarray, kind: str) -> np.ndarray:
    """4x4 matrices [N,4,4] holding `kind` (one of MATRIX_KINDS) -> the cam2world matrices they mean."""
    if kind == "world2cam":
        return np.linalg.inv(matrices)
    if kind == "transposed":
        fixed = np.array(matrices, dtype=np.float64)
        fixed[:, :3, :3] = np.swapaxes(fixed[:, :3, :3], 1, 2)
        return fixed
    if kind != "cam2world":
        raise ValueError(f"matrices must be one of {', '.join(MATRIX_KINDS)}, got {kind!r}")
    return np.array(matrices, dtype=np.float64)


def corrected(labels: np.ndarray, kind: str, axes: str) -> np.ndarray:
    """Labels as convert --matrices KIND --axes AXES would write them: matrices first, then camera axes."""
    fixed = np.array(labels, dtype=np.float64).reshape(-1, 25)
    fixed[:, :16] = to_cam2world(fixed[:, :16].reshape(-1, 4, 4), kind).reshape(-1, 16)
    return flip_yz(fixed) if axes == "opengl" else fixed


def nearest_axis(up) -> str:
    """The name of the world axis within NAMED_AXIS_DEG of unit vector `up`, else "auto"."""
    name, vector = max(AXIS_NAMES.items(), key=lambda item: float(np.dot(item[1], up)))
    return name if float(np.dot(vector, up)) >= np.cos(np.radians(NAMED_AXIS_DEG)) else "auto"


UP_CAUSES = {"+z": "a z-up world (Blender and NeRF scenes), or y and z swapped",
             "-z": "a z-down world, or y and z swapped", "-y": "an upside-down world (y down, as in COLMAP's and "
             "OpenCV's world frames)", "+x": "an x-up world (axes swapped)", "-x": "an x-down world (axes swapped)",
             "auto": "a world turned away from y-up"}
MATRIX_CAUSES = {"world2cam": "the matrices are world2cam (each camera's inverse), not cam2world",
                 "transposed": "the 3x3 rotations are transposed (right camera centres, wrong axes)"}
OPENGL_CAUSE = "the camera axes are OpenGL/Blender's (x right, y up, z backward), not OpenCV's (y down, z forward)"


NOTHING_EXPLAINS = ("Likely causes: none of the usual mistakes (world2cam matrices given as cam2world, transposed "
                    "rotations, OpenGL camera axes) explains these cameras; check that the labels are cam2world in "
                    "OpenCV axes with the object at the world origin (python -m dataloading.convert DATASET OUT "
                    "--recenter --radius 2.7 moves the cameras' look-at point there).")


def likely_correction(labels: np.ndarray, figures: Figures) -> tuple[str, str, Figures] | None:
    """(matrix kind, camera axes, the corrected figures) of the correction that makes the set plausible, with
    nearly all cameras aimed at the origin; None when the set needs none or none does."""
    kind, axes, fixed = "cam2world", "opencv", figures
    if not placed_well(figures):
        tries = [(k, a, measure(corrected(labels, k, a))) for k, a in product(MATRIX_KINDS, ("opencv", "opengl"))
                 if (k, a) != ("cam2world", "opencv")]
        plausible = [t for t in tries if placed_well(t[2])]
        if not plausible:
            return None
        kind, axes, fixed = max(plausible, key=lambda t: (not up_turned(t[2], UP_ERROR_DEG), t[2].aimed))  # first best
    if (kind, axes) == ("cam2world", "opencv") and not up_turned(fixed):
        return None
    return kind, axes, fixed


def diagnosis(kind: str, axes: str, fixed: Figures) -> str:
    """The likely causes behind a correction (see likely_correction) and the convert command making it."""
    causes, options = [], []
    if kind != "cam2world":
        causes.append(MATRIX_CAUSES[kind])
        options.append(f"--matrices {kind}")
    if axes == "opengl":
        causes.append(OPENGL_CAUSE)
        options.append("--axes opengl")
    after = f"with that fixed, the origin is in the picture of {fixed.aimed:.0%} of the cameras"
    if up_turned(fixed):
        up = nearest_axis(fixed.up)
        causes.append(f"the world's up is {up if up != 'auto' else '(' + _numbers(fixed.up) + ')'}: {UP_CAUSES[up]}")
        options.append(f"--up {up}")
        after += " and their mean up becomes +y"
    return (f"Likely cause: {'; and '.join(causes)} ({after}). Fix the labels: python -m dataloading.convert DATASET "
            f"OUT {' '.join(options)} (DATASET: the folder with dataset.json), then use OUT as the data.")


@dataclass
class ConventionReport:
    """The figures of a label set, what is wrong with them and, for errors, the likely causes and fix."""
    figures: Figures | None  # None for an empty set
    findings: list[Finding]
    diagnosis: str | None

    def problem(self, *, strict: bool = False) -> str | None:
        """The refusal: errors, and with `strict` warnings too; None when nothing is refused."""
        refused = [f for f in self.findings if f.severity == "error" or strict]
        if not refused:
            return None
        lines = [f"the camera labels look wrong for the data set as a whole: {'; '.join(f.text for f in refused)}."]
        if self.diagnosis:
            lines.append(self.diagnosis)
        lines.append(f"If the labels are right as they are, pass {ACCEPT_FLAG} to accept them knowingly.")
        return " ".join(lines)

    def record(self, *, accepted: bool) -> dict:
        """JSON-ready, for the manifest: the figures, the findings and whether they were accepted."""
        figures = {} if self.figures is None else asdict(self.figures)
        return {"figures": {key: value if isinstance(value, int) else _rounded(value)
                            for key, value in figures.items()},
                "findings": [asdict(f) for f in self.findings], "diagnosis": self.diagnosis,
                "accepted": bool(accepted and self.findings)}


def check_conventions(labels: np.ndarray) -> ConventionReport:
    """The conventions report of labels [N,25]."""
    labels = np.asarray(labels, dtype=np.float64).reshape(-1, 25)
    if not len(labels):
        return ConventionReport(None, [], None)
    figures = measure(labels)
    found = findings(figures)
    correction = likely_correction(labels, figures) if found else None
    if correction is not None:
        return ConventionReport(figures, found, diagnosis(*correction))
    errors = any(f.severity == "error" for f in found)
    return ConventionReport(figures, found, NOTHING_EXPLAINS if errors else None)


def check_label_conventions(labels: np.ndarray, *, where: str, accept: bool = False, log=print) -> None:
    """Before training: a ValueError naming `where` for the errors unless `accept`; warnings are logged."""
    report = check_conventions(labels)
    problem = report.problem()
    if problem and not accept:
        raise ValueError(f"{where}: {problem}")
    for line in describe_record(report.record(accepted=accept)):
        log(f"warning: {where}: {line}")


def describe_record(record: dict | None) -> list[str]:
    """Lines for people from a report's record (none when it has no findings): each finding, then the diagnosis."""
    if not record or not record["findings"]:
        return []
    accepted = f", accepted with {ACCEPT_FLAG}" if record["accepted"] else ""
    lines = [f"camera conventions ({f['severity']}{accepted}): {f['text']}" for f in record["findings"]]
    return lines + ([record["diagnosis"]] if record["diagnosis"] else [])
