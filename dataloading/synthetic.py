"""Procedural 3D scenes rendered to the reference dataset format, for tests and smoke runs.

Each image shows one object near the world origin (a sphere, rounded box, torus, cylinder, capsule, or a pair:
two smaller primitives of one kind side by side) in nearly its canonical pose (OBJECT_YAW_JITTER), seen by an
orbit camera like FFHQ's. The object is sphere traced as a signed distance function (SDF) in numpy, through
the same pixel rays the trainer's renderer uses (`eg3d.networks.camera.pixel_rays`), so each image agrees
exactly with its camera label. Texture lives in object space and the light is fixed in world space, so every
view of a scene is consistent.

`generate_dataset` writes a data set; the command is `python -m eg3d.synthetic` (eg3d/synthetic.py). Besides
the reference format's images and `dataset.json` "labels", it writes ground truth for evaluators that learn
depth and object class from real images: beside each image `00000/img00000000.png` the side file
`00000/img00000000.depth.npy` (float16 [R,R], see `render_example_with_truth`), and in `dataset.json` the keys
"class_names" (`KINDS`) and "classes" ([[image name, class index], ...]). Reference loaders (eg3d's
ImageFolderDataset) list only files with an image extension and read only "labels", so they ignore both;
`python -m dataloading.build` carries them into the shards.
"""

import colorsys
import io
import json
import math
import multiprocessing
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from eg3d.networks.camera import FFHQ_FOCAL, FFHQ_RADIUS, orbit_camera, pixel_rays

from .build import depth_file, npy_bytes

OBJECT_RADIUS = 0.28  # every object lies inside this sphere: in view and inside the [-0.5, 0.5]^3 box
BACKGROUND = (1.0, 1.0, 1.0)
LIGHT_DIRECTION = np.array([-0.45, 0.75, 0.5]) / np.linalg.norm([-0.45, 0.75, 0.5])  # towards the light
AMBIENT = 0.3
YAW_RANGE = 0.6  # cameras: yaw = pi/2 + U(-0.6, 0.6), pitch = pi/2 + U(-0.3, 0.3)
# Objects are aligned, as faces in FFHQ and cars in ShapeNet are: turned about the vertical axis by at most this
# (radians) from their canonical pose. What a camera sees then depends on where it is, so the camera-conditioned
# discriminator can ask for true 3D (with objects turned at random, a flat card facing the camera passed for
# any object, and the tiny preset learned flat geometry), and an evaluator can read the camera off an image.
OBJECT_YAW_JITTER = 0.1
PITCH_RANGE = 0.3
IMAGES_PER_FOLDER = 1000

_HIT_FOOTPRINT_FRACTION = 0.01  # sphere tracing stops this close to the surface, in ray footprints
_MAX_STEPS = 64


@dataclass(frozen=True)
class Primitive:
    """One SDF primitive in object units; `size` depends on `kind`:

    sphere (radius,), box (half_x, half_y, half_z, rounding), torus (ring_radius, tube_radius),
    cylinder (half_height, radius), capsule (half_length, radius). Cylinders and capsules stand along
    the y axis and tori lie in the xz plane before `tilt`, a rotation about the x axis.
    """
    kind: str
    size: tuple[float, ...]
    centre: tuple[float, float, float] = (0.0, 0.0, 0.0)
    tilt: float = 0.0

    def bounding_radius(self) -> float:
        """Distance from the object origin to the farthest point of the primitive."""
        s = self.size
        extent = {"sphere": lambda: s[0], "box": lambda: math.hypot(*s[:3]), "torus": lambda: s[0] + s[1],
                  "cylinder": lambda: math.hypot(s[0], s[1]), "capsule": lambda: s[0] + s[1]}[self.kind]()
        return math.hypot(*self.centre) + extent


@dataclass(frozen=True)
class Scene:
    """An object: primitives (united), turned by `yaw` about the world y axis and scaled by `scale`."""
    primitives: tuple[Primitive, ...]
    yaw: float = 0.0
    scale: float = 1.0
    colour: tuple[float, float, float] = (0.8, 0.3, 0.2)
    texture: str = "plain"  # "plain", "stripes" or "checker"
    texture_colour: tuple[float, float, float] = (0.2, 0.2, 0.2)
    texture_frequency: float = 4.0  # periods per object unit

    def bounding_radius(self) -> float:
        return self.scale * max(p.bounding_radius() for p in self.primitives)

    @property
    def kind(self) -> str:
        """Its object kind, one of KINDS: its primitive's kind, or "pair" for two primitives."""
        if len(self.primitives) > 2:
            raise ValueError(f"a scene of {len(self.primitives)} primitives has no kind in {KINDS}")
        return "pair" if len(self.primitives) == 2 else self.primitives[0].kind


@dataclass
class Render:
    """`image` [R,R,3] in [0,1]; `hit`, `depth` (distance along the ray, inf on a miss) and `points`
    (world-space hit positions) are per traced ray, at the supersampled resolution R*supersample."""
    image: np.ndarray
    hit: np.ndarray
    depth: np.ndarray
    points: np.ndarray

    def pixel_depth(self) -> np.ndarray:
        """float32 [R,R]: the mean depth of a pixel's traced rays where all of them hit, NaN where any
        misses (background and silhouette pixels, whose depth would blend surface and background)."""
        resolution = self.image.shape[0]
        supersample = self.depth.shape[0] // resolution
        mean = self.depth.reshape(resolution, supersample, resolution, supersample).mean(axis=(1, 3))
        return np.where(np.isfinite(mean), mean, np.nan).astype(np.float32)


# ---------------------------------------------------------------------------------------------------
# Signed distance functions (points [N,3] in the primitive's own frame)

def _length(*components: np.ndarray) -> np.ndarray:
    # Written out per component: numpy's small-axis reductions (norm/max over axis 1) are slow.
    return np.sqrt(sum(c * c for c in components))


def _sdf_primitive(p: np.ndarray, primitive: Primitive) -> np.ndarray:
    s = primitive.size
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    if primitive.kind == "sphere":
        return _length(x, y, z) - s[0]
    if primitive.kind == "box":
        qx, qy, qz = (np.abs(v) - (h - s[3]) for v, h in zip((x, y, z), s[:3]))
        outside = _length(np.maximum(qx, 0.0), np.maximum(qy, 0.0), np.maximum(qz, 0.0))
        return outside + np.minimum(np.maximum(np.maximum(qx, qy), qz), 0.0) - s[3]
    if primitive.kind == "torus":
        return _length(_length(x, z) - s[0], y) - s[1]
    if primitive.kind == "cylinder":
        radial, vertical = _length(x, z) - s[1], np.abs(y) - s[0]
        inside = np.minimum(np.maximum(radial, vertical), 0.0)
        return inside + _length(np.maximum(radial, 0.0), np.maximum(vertical, 0.0))
    if primitive.kind == "capsule":
        return _length(x, y - np.clip(y, -s[0], s[0]), z) - s[1]
    raise ValueError(f"unknown primitive kind {primitive.kind!r}")


def _rotation_y(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rotation_x(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def to_object_space(scene: Scene, points: np.ndarray) -> np.ndarray:
    """World points [N,3] -> object coordinates (undo the yaw and the scale)."""
    return points @ _rotation_y(scene.yaw) / scene.scale  # row vectors: p @ R == (R^T p^T)^T


def scene_sdf(scene: Scene, points: np.ndarray) -> np.ndarray:
    """Signed distance [N] from world points [N,3] to the object."""
    q = to_object_space(scene, points)
    distance = np.full(len(points), np.inf)
    for primitive in scene.primitives:
        local = (q - np.array(primitive.centre)) @ _rotation_x(primitive.tilt)
        distance = np.minimum(distance, _sdf_primitive(local, primitive))
    return distance * scene.scale


# ---------------------------------------------------------------------------------------------------
# Rendering

def trace(scene: Scene, origins: np.ndarray, directions: np.ndarray, *,
          pixel_angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Sphere-trace unit rays [N,3]; returns (hit [N] bool, depth [N], inf where missed).

    `pixel_angle` is the angular size of one traced pixel. A ray stops once it is closer to the surface
    than a small fraction of its footprint; a ray still grazing a silhouette after _MAX_STEPS counts as
    a hit when within half its footprint of the surface.
    """
    bound = scene.bounding_radius() + 1e-3
    # Start each ray where it enters the bounding sphere and give up where it leaves it.
    b = np.einsum("ij,ij->i", origins, directions)
    c = np.einsum("ij,ij->i", origins, origins) - bound**2
    discriminant = b * b - c
    active = np.flatnonzero(discriminant > 0)
    root = np.sqrt(discriminant[active])
    t = np.maximum(-b[active] - root, 0.0)
    t_exit = -b[active] + root
    hit = np.zeros(len(origins), dtype=bool)
    depth = np.full(len(origins), np.inf)
    for step in range(_MAX_STEPS):
        distance = scene_sdf(scene, origins[active] + t[:, None] * directions[active])
        tolerance = (_HIT_FOOTPRINT_FRACTION if step < _MAX_STEPS - 1 else 0.5) * pixel_angle * t
        converged = distance < tolerance
        hit[active[converged]] = True
        depth[active[converged]] = t[converged]
        keep = ~converged & (t + distance < t_exit)
        active, t, t_exit = active[keep], (t + distance)[keep], t_exit[keep]
        if len(active) == 0:
            break
    return hit, depth


def _normals(scene: Scene, points: np.ndarray, step: float = 1e-5) -> np.ndarray:
    """Unit SDF gradients by central differences."""
    offsets = np.eye(3) * step
    gradient = np.stack([scene_sdf(scene, points + o) - scene_sdf(scene, points - o) for o in offsets], 1)
    return gradient / np.maximum(np.linalg.norm(gradient, axis=1, keepdims=True), 1e-12)


def _albedo(scene: Scene, points: np.ndarray) -> np.ndarray:
    """Base colour with an object-space pattern, so the texture turns with the object."""
    colour = np.broadcast_to(np.array(scene.colour), points.shape).copy()
    if scene.texture == "plain":
        return colour
    q = to_object_space(scene, points) * scene.texture_frequency
    if scene.texture == "stripes":
        marked = np.floor(q[:, 1] * 2.0) % 2 == 1
    elif scene.texture == "checker":
        marked = np.floor(q).sum(axis=1) % 2 == 1
    else:
        raise ValueError(f"unknown texture {scene.texture!r}")
    colour[marked] = scene.texture_colour
    return colour


def shade(scene: Scene, points: np.ndarray) -> np.ndarray:
    """Lambertian + ambient colour [N,3] of surface points [N,3], lit from a fixed world direction."""
    lambert = np.clip(_normals(scene, points) @ LIGHT_DIRECTION, 0.0, 1.0)
    return _albedo(scene, points) * (AMBIENT + (1.0 - AMBIENT) * lambert[:, None])


def render_scene(scene: Scene, label, resolution: int, *, supersample: int = 2) -> Render:
    """Render `scene` seen by camera `label` (25 floats) at `resolution`, averaging supersample^2 rays
    per pixel. The rays are `eg3d.networks.camera.pixel_rays` (in float64) of the label."""
    traced = resolution * supersample
    c = torch.as_tensor(np.asarray(label, dtype=np.float64)).reshape(1, 25)
    origins, directions = (x[0].numpy() for x in pixel_rays(c, traced))
    pixel_angle = 1.0 / (float(c[0, 16]) * traced)  # normalized focal fx: 1/fx spans the image width
    hit, depth = trace(scene, origins, directions, pixel_angle=pixel_angle)
    points = origins + np.where(hit, depth, 0.0)[:, None] * directions
    colour = np.broadcast_to(np.array(BACKGROUND), origins.shape).copy()
    colour[hit] = shade(scene, points[hit])
    image = colour.reshape(resolution, supersample, resolution, supersample, 3).mean(axis=(1, 3))
    return Render(image=np.clip(image, 0.0, 1.0), hit=hit.reshape(traced, traced),
                  depth=depth.reshape(traced, traced), points=points.reshape(traced, traced, 3))


# ---------------------------------------------------------------------------------------------------
# Random scenes and cameras

KINDS = ("sphere", "box", "torus", "cylinder", "capsule", "pair")
PAIR_ANGLE = 0.35  # rad: a pair's axis lies within this yaw of the x axis (across the canonical view)
PAIR_PART_SCALE = 0.45  # each part of a pair: a primitive of unit size scaled by this
PAIR_OFFSET = 0.58  # each part's centre from the pair's centre, in the same units: a gap between the parts
PAIR_RISE = 0.15  # the pair's axis rises at most this much (y, before normalising) per unit along x: nearly level


def _random_primitive(rng: np.random.Generator, kind: str) -> Primitive:
    """A primitive of roughly unit bounding radius, before the scene's scale."""
    if kind == "sphere":
        return Primitive("sphere", (1.0,))
    if kind == "box":
        half = rng.uniform(0.35, 0.75, size=3)
        return Primitive("box", (*half.tolist(), float(rng.uniform(0.03, 0.2) * half.min())))
    if kind == "torus":
        tube = float(rng.uniform(0.2, 0.4))
        return Primitive("torus", (1.0 - tube, tube), tilt=float(rng.uniform(0.6, 1.3)))
    if kind == "cylinder":
        return Primitive("cylinder", (float(rng.uniform(0.4, 0.8)), float(rng.uniform(0.35, 0.6))))
    if kind == "capsule":
        return Primitive("capsule", (float(rng.uniform(0.3, 0.6)), float(rng.uniform(0.25, 0.4))),
                         tilt=float(rng.uniform(-0.8, 0.8)))
    raise ValueError(f"unknown object kind {kind!r}")


def _random_pair(rng: np.random.Generator) -> tuple[Primitive, ...]:
    """Two primitives of one kind (sizes drawn apart), side by side with a gap, along a direction within
    PAIR_ANGLE of the x axis and nearly level: across the canonical view, so the data's cameras see two shapes
    (nearly always: YAW_RANGE, OBJECT_YAW_JITTER and PAIR_ANGLE turn a pair up to 60 degrees from face-on, where
    its parts may overlap).

    The earlier pair, two primitives of random kinds overlapping along any direction, was one blob from most
    cameras, and the embedded default learnt no pairs in its budget (docs/dev-log.md, 2026-12-07, night).
    """
    kind = str(rng.choice(KINDS[:-1]))
    angle = rng.uniform(-PAIR_ANGLE, PAIR_ANGLE)
    direction = np.array([math.cos(angle), rng.uniform(-PAIR_RISE, PAIR_RISE), math.sin(angle)])
    direction /= np.linalg.norm(direction)
    parts = []
    for sign in (1.0, -1.0):
        shape = _random_primitive(rng, kind)
        size = tuple(x * PAIR_PART_SCALE for x in shape.size)
        parts.append(Primitive(kind, size, tuple((sign * PAIR_OFFSET * direction).tolist()), shape.tilt))
    return tuple(parts)


def _random_colour(rng: np.random.Generator) -> tuple[float, float, float]:
    hue, saturation, value = rng.uniform(0, 1), rng.uniform(0.45, 0.9), rng.uniform(0.65, 0.95)
    return colorsys.hsv_to_rgb(hue, saturation, value)


def random_scene(rng: np.random.Generator) -> Scene:
    kind = str(rng.choice(KINDS))
    primitives = _random_pair(rng) if kind == "pair" else (_random_primitive(rng, kind),)
    unscaled = Scene(primitives).bounding_radius()
    scale = OBJECT_RADIUS * rng.uniform(0.85, 1.0) / unscaled
    colour = _random_colour(rng)
    texture = str(rng.choice(["plain", "stripes", "checker"], p=[0.4, 0.3, 0.3]))
    # Patterned objects get a second colour: a darker shade of the base or another hue.
    second = tuple(x * 0.35 for x in colour) if rng.uniform() < 0.5 else _random_colour(rng)
    return Scene(primitives, yaw=float(rng.uniform(-OBJECT_YAW_JITTER, OBJECT_YAW_JITTER)), scale=float(scale),
                 colour=colour,
                 texture=texture, texture_colour=second, texture_frequency=float(rng.uniform(2.5, 5.0)))


def random_camera(rng: np.random.Generator) -> np.ndarray:
    """A float32 camera label [25] on the FFHQ orbit, looking at the origin."""
    yaw = math.pi / 2 + rng.uniform(-YAW_RANGE, YAW_RANGE)
    pitch = math.pi / 2 + rng.uniform(-PITCH_RANGE, PITCH_RANGE)
    return orbit_camera(yaw, pitch, radius=FFHQ_RADIUS, focal=FFHQ_FOCAL, pivot=(0.0, 0.0, 0.0))[0].numpy()


def image_rng(seed: int, index: int) -> np.random.Generator:
    """The generator for image `index`: independent of how many images are made."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))


def render_example(seed: int, index: int, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """Image `index` of the data set with this seed: (uint8 image [R,R,3], float32 label [25])."""
    image, label, _, _ = render_example_with_truth(seed, index, resolution)
    return image, label


def render_example_with_truth(seed: int, index: int,
                              resolution: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """`render_example` plus its ground truth: (uint8 image [R,R,3], float32 label [25], float32 depth
    [R,R], class index into KINDS). The depth is the generator's `image_depth`: the distance from the
    camera centre along each pixel's unit ray to the surface, in world units (`Render.pixel_depth`)."""
    rng = image_rng(seed, index)
    scene, label = random_scene(rng), random_camera(rng)
    render = render_scene(scene, label, resolution)
    return np.round(render.image * 255).astype(np.uint8), label, render.pixel_depth(), KINDS.index(scene.kind)


# ---------------------------------------------------------------------------------------------------
# Writing the data set

def image_name(index: int) -> str:
    return f"{index // IMAGES_PER_FOLDER:05d}/img{index:08d}.png"


def _png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image, "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def _stored_zip_entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))  # fixed date: byte-identical zips
    info.compress_type = zipfile.ZIP_STORED
    return info


def _encoded_example(job: tuple[int, int, int]) -> tuple[bytes, bytes, np.ndarray, int]:
    seed, index, resolution = job
    image, label, depth, class_index = render_example_with_truth(seed, index, resolution)
    return _png_bytes(image), npy_bytes(depth.astype(np.float16)), label, class_index


def _encoded_examples(seed: int, count: int, resolution: int, workers: int):
    """(PNG bytes, float16 depth .npy bytes, label, class index) of images 0..count-1 in order; each image
    depends only on (seed, index)."""
    jobs = ((seed, index, resolution) for index in range(count))
    if workers <= 1:
        yield from map(_encoded_example, jobs)
        return
    with multiprocessing.Pool(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        yield from pool.imap(_encoded_example, jobs, chunksize=8)


def generate_dataset(out, *, count: int, resolution: int, seed: int, as_zip: bool = False,
                     workers: int = 1, progress_every: int = 500) -> None:
    """Write `count` images, their depth side files and dataset.json (labels and classes) to folder `out`,
    or to an uncompressed zip when `as_zip` or `out` ends with .zip. A folder `out` must be empty or
    absent. The output does not depend on `workers`, the number of rendering processes."""
    if count < 1 or resolution < 1:
        raise ValueError(f"count and resolution must be positive, got count={count}, resolution={resolution}")
    out = Path(out)
    as_zip = as_zip or out.suffix.lower() == ".zip"
    if not as_zip and out.exists() and any(out.iterdir()):
        raise ValueError(f"{out}: output folder is not empty; choose a new folder so no stale images remain")
    labels, classes = [], []
    start = time.perf_counter()
    writer = zipfile.ZipFile(out, "w") if as_zip else None

    def write(name: str, data: bytes) -> None:
        if writer is not None:
            writer.writestr(_stored_zip_entry(name), data)
        else:
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).write_bytes(data)

    try:
        examples = _encoded_examples(seed, count, resolution, workers)
        for index, (png, depth, label, class_index) in enumerate(examples):
            name = image_name(index)
            labels.append([name, [float(x) for x in label]])  # float32 values, exact as JSON doubles
            classes.append([name, class_index])
            write(name, png)
            write(depth_file(name), depth)
            if (index + 1) % progress_every == 0 or index + 1 == count:
                print(f"{index + 1}/{count} images, {time.perf_counter() - start:.1f} s", flush=True)
        write("dataset.json", json.dumps({"labels": labels, "class_names": list(KINDS), "classes": classes}).encode())
    finally:
        if writer is not None:
            writer.close()

