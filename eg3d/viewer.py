"""Interactive web viewer of a snapshot: a page on 127.0.0.1 with seed, truncation and camera controls.

    python -m eg3d.viewer SNAPSHOT [--port 7860] [--device cuda]
    python -m eg3d.viewer s3://bucket/runs/ffhq512/snapshots/snapshot-000200000

The page (Gradio) shows the image and its depth map side by side for a seed, truncation psi, yaw and pitch
(degrees from frontal), field of view and camera distance; a box to load any other snapshot URL; an orbit
preview (an H.264 MP4, eg3d.video's path); a mesh of the seed (eg3d.shapes' marching cubes, shown in 3D and
offered as .glb/.ply/.obj); and downloads of what is shown (PNG, 16-bit depth PNG, float depth .npy) with the
eg3d.generate command that writes the same image. A render is eg3d.generate's for the same settings, exactly:
the same latent per seed, conditioned on the frontal camera, truncation on the first 14 ws, constant noise.

"Invert a face photo": an uploaded photo's face is cropped and its camera estimated as `eg3d.invert --camera
auto` does (MediaPipe, the `faces` extra), then inverted (PTI, on a copy of the generator) with a preview every
few steps; the result fills the orbit and mesh views. Without MediaPipe the section says how to install it.

On a remote machine (a Ray head pod, say), start it there and forward the port:
    kubectl port-forward pod/HEAD_POD 7860:7860        # then open http://127.0.0.1:7860
The server binds to 127.0.0.1 unless --host says otherwise; a port-forward reaches it either way.
"""

import argparse
import copy
import functools
import hashlib
import inspect
import math
import os
import shlex
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from dataloading.face_alignment import AlignedFace, FaceError, FaceLandmarker
from eg3d.metrics.lpips import random_lpips

from . import invert
from .cli.arguments import (CAMERA_DISTANCE, FIELD_OF_VIEW, MAX_GRID_RESOLUTION, MAX_SEED, TRUNCATION, HelpFormatter,
                            Interval, whole_number)
from .cli.snapshots import open_generator, open_snapshot
from .generate import FFHQ_FOV_DEGREES, TRUNCATION_CUTOFF, depth_png
from .networks import camera, orbit
from .networks.density_grid import generator_density, sample_density_grid
from .networks.sample_grid import depth_to_images, to_uint8
from .networks.snapshot import default_neural_rendering_resolution
from .shapes import REFERENCE_LEVEL, mesh_or_half_max, reference_border
from .video import write_video

# Small renders (64 px at tiny) fill their boxes, pixels kept square and sharp.
CSS = ("#image img, #depth img, #invert-preview img { width: 100%; height: 100%; object-fit: contain; "
       "image-rendering: pixelated; }")
YAW = Interval(unit="degrees")
PITCH = Interval(-90, 90, low_open=True, high_open=True, unit="degrees")  # +-90: straight down or up, no look-at
MESH_RESOLUTION = Interval(8, MAX_GRID_RESOLUTION)
INVERSION_STEPS, TUNING_STEPS = Interval(1, 10_000), Interval(0, 10_000)
PREVIEWS = 20  # intermediate renders shown per inversion phase
MESH_SUFFIXES = (".glb", ".ply", ".obj")
LABELS = {"seed": "seed", "truncation_psi": "truncation psi", "yaw": "yaw", "pitch": "pitch", "fov": "field of view",
          "radius": "camera distance"}  # the page's names of View's fields


@dataclass(frozen=True)
class View:
    """What the controls set. Angles in degrees from frontal (yaw: positive turns the camera to the
    subject's left; pitch: positive looks from below), fov the diagonal field of view in degrees."""
    seed: int = 0
    truncation_psi: float = 0.7
    yaw: float = 0.0
    pitch: float = 0.0
    fov: float = FFHQ_FOV_DEGREES
    radius: float = camera.FFHQ_RADIUS

    def check(self) -> None:
        """ValueError naming the control that is out of range (the ranges of eg3d.generate's options)."""
        if not (0 <= self.seed <= MAX_SEED and float(self.seed).is_integer()):
            raise ValueError(f"seed {self.seed!r}: expected a whole number in 0..{MAX_SEED}")
        for name, interval in (("truncation_psi", TRUNCATION), ("yaw", YAW), ("pitch", PITCH), ("fov", FIELD_OF_VIEW),
                               ("radius", CAMERA_DISTANCE)):
            interval.check(getattr(self, name), LABELS[name])


def page_number(value, label: str) -> float:
    """A control's value as a float; ValueError naming the control for an emptied box or text."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{label} {value!r}: expected a number") from None


def page_whole_number(value, label: str, interval: Interval) -> int:
    """A control's value as a whole number in `interval`; ValueError naming the control otherwise."""
    number = interval.check(page_number(value, label), label)
    if not float(number).is_integer():
        raise ValueError(f"{label} {value!r}: expected a whole number")
    return int(number)


def read_view(seed, psi, yaw, pitch, fov, radius) -> View:
    """The page's control values as a checked View; ValueError naming the first control out of range."""
    values = dict(zip(LABELS, (seed, psi, yaw, pitch, fov, radius)))
    view = View(**{name: page_number(value, LABELS[name]) for name, value in values.items()})
    view.check()
    return replace(view, seed=int(view.seed))


@dataclass(frozen=True)
class InversionStep:
    """A report from a photo's inversion: a status line and a preview, target | current render (uint8). The
    last report's preview is target | inverted | tuned, and it holds the result: the tuned copy of the generator
    and the pivot ws [1, num_ws, w_dim]."""
    status: str
    preview: np.ndarray
    G: object = None
    ws: torch.Tensor | None = None


class Viewer:
    """The generator being shown and every render the page asks for; files go to `workdir`. `lpips` (default:
    the random-feature stand-in) and the face model's `landmarker` serve the photo inversion."""

    def __init__(self, G, url: str, device: str, workdir: Path, *, lpips=None, landmarker: str | None = None,
                 landmarker_sha256: str | None = None):
        self.G, self.url, self.device, self.workdir = G, url, device, workdir
        self.lpips, self.landmarker, self.landmarker_sha256 = lpips, landmarker, landmarker_sha256
        self._face_model = None

    def load(self, url: str) -> str:
        """Show another snapshot; SnapshotError (naming the URL and the fault) where `url` is not one."""
        self.G = open_snapshot(url.strip(), self.device)
        self.url = url.strip()
        return self.describe()

    def describe(self) -> str:
        resolution = self.G.model_config.image_resolution
        return (f"{self.url}: {resolution}x{resolution} images, neural rendering at "
                f"{default_neural_rendering_resolution(self.G)}, on {self.device}")

    def _ws(self, view: View) -> tuple[torch.Tensor, float]:
        focal = camera.focal_from_fov(view.fov)
        condition = orbit.frontal_camera(radius=view.radius, focal=focal).to(self.device)
        z = orbit.seed_latents([int(view.seed)], self.G.model_config.z_dim).to(self.device)
        ws = orbit.styles(self.G, z, condition, truncation_psi=view.truncation_psi,
                          truncation_cutoff=TRUNCATION_CUTOFF)
        return ws, focal

    @torch.no_grad()
    def render(self, view: View) -> tuple[np.ndarray, np.ndarray]:
        """(image uint8 [H, W, 3], depth float32 [h, w] along the ray at the neural rendering resolution)."""
        view.check()
        ws, focal = self._ws(view)
        yaw, pitch = math.radians(view.yaw), math.radians(view.pitch)
        c = camera.orbit_camera(math.pi / 2 + yaw, math.pi / 2 + pitch, radius=view.radius, focal=focal)
        rendered = next(orbit.render_batches(self.G, ws, c.to(self.device), 1))
        return to_uint8(rendered["image"])[0], rendered["image_depth"][0, 0].float().cpu().numpy()

    def generate_command(self, view: View) -> str:
        """The eg3d.generate command line that writes this view's image (angles in radians there)."""
        args = ["python", "-m", "eg3d.generate", self.url, "--seeds", str(int(view.seed)), "--trunc",
                repr(float(view.truncation_psi)), "--yaw", repr(math.radians(view.yaw)), "--pitch",
                repr(math.radians(view.pitch)), "--fov", repr(float(view.fov)), "--radius", repr(float(view.radius)),
                "--depth", "--out", "generated"]
        return shlex.join(args)

    def _path(self, view: View, suffix: str, **extra) -> Path:
        key = hashlib.sha1(repr((self.url, view, sorted(extra.items()))).encode()).hexdigest()[:10]
        return self.workdir / f"seed{int(view.seed):04d}-{key}{suffix}"

    def view_files(self, view: View, image: np.ndarray, depth: np.ndarray) -> list[str]:
        """The shown image as PNG, its depth as 16-bit PNG (near = bright) and float32 .npy."""
        paths = [self._path(view, ".png"), self._path(view, "-depth.png"), self._path(view, "-depth.npy")]
        Image.fromarray(image).save(paths[0])
        depth_png(depth).save(paths[1])
        np.save(paths[2], depth.astype(np.float32))
        return [str(p) for p in paths]

    def orbit(self, view: View, *, frames: int = 48, fps: int = 24) -> str:
        """An MP4 of the seed (image | depth) along eg3d.video's orbit path around frontal."""
        view.check()
        ws, focal = self._ws(view)
        path = self._path(view, "-orbit.mp4", frames=frames, fps=fps)
        return self._orbit_video(self.G, ws, path, radius=view.radius, focal=focal, frames=frames, fps=fps)

    def _orbit_video(self, G, ws: torch.Tensor, path: Path, *, radius: float, focal: float, frames: int,
                     fps: int) -> str:
        cameras = orbit.orbit_path(frames, radius=radius, focal=focal).to(self.device)
        write_video(path, G, ws.expand(frames, -1, -1), cameras, rows=1, cols=1, fps=fps, depth=True, progress=False)
        return str(path)

    @torch.no_grad()
    def mesh(self, view: View, *, resolution: int = 128, level: float = REFERENCE_LEVEL) -> tuple[list[str], str]:
        """The seed's surface as .glb (for the page's 3D view), .ply and .obj with vertex colours, and a status
        line. Where sigma never reaches `level`, it meshes at half the maximum instead and says so."""
        view.check()
        ws, _ = self._ws(view)
        return self._mesh(self.G, ws, f"seed {view.seed}", resolution=resolution, level=level,
                          path=lambda suffix, level: self._path(view, suffix, resolution=resolution, level=level))

    def _mesh(self, G, ws: torch.Tensor, what: str, *, resolution: int, level: float, path) -> tuple[list[str], str]:
        """`mesh` for ws in G; path(suffix, level) names each file, `what` the latent in the messages."""
        box_size = G.rendering_config.box_warp
        sigma = sample_density_grid(generator_density(G, ws), resolution=resolution, box_size=box_size,
                                    device=self.device).numpy()
        try:
            mesh, level, note = mesh_or_half_max(G, ws, sigma, level=level, border=reference_border(resolution))
        except ValueError as error:
            raise ValueError(f"{what}: {error}") from None
        paths = [path(suffix, level) for suffix in MESH_SUFFIXES]
        for file in paths:
            mesh.export(file)
        note = f" ({note})" if note else ""
        status = (f"{what}: {len(mesh.vertices)} vertices, {len(mesh.faces)} faces at level {level:.3g}{note}; "
                  f"grid {resolution}^3 over the box of side {box_size:g} world units, y up, frontal camera on +z")
        return [str(p) for p in paths], status

    # --- a face photo, inverted ------------------------------------------------------------------------------

    def face_model(self) -> FaceLandmarker:
        """MediaPipe's face model, made on first use; ImportError saying how to install it where it is missing."""
        if self._face_model is None:
            self._face_model = FaceLandmarker(landmarker=self.landmarker, landmarker_sha256=self.landmarker_sha256)
        return self._face_model

    def faces_missing(self) -> str | None:
        """Why this viewer cannot find faces (MediaPipe missing: how to install it), or None."""
        try:
            self.face_model()
        except ImportError as error:
            return str(error)
        return None

    def align(self, photo: str) -> AlignedFace:
        """An uploaded photo's face, cropped (512x512) and with its estimated camera, as eg3d.invert --camera auto
        makes them; ValueError naming the photo, the reason and what to do."""
        name = Path(photo).name
        try:
            return invert.align_photo(photo, self.face_model(), name=name)
        except FaceError as error:
            raise ValueError(f"{error}; {invert.FACE_ADVICE[error.kind]}") from None

    def invert_face(self, face: AlignedFace, *, steps: int, tune_steps: int,
                    previews: int = PREVIEWS) -> Iterator[InversionStep]:
        """eg3d.invert's PTI of a face crop from its estimated camera, on a copy of the generator (the one shown
        stays): about `previews` reports per phase, then the result (see InversionStep)."""
        G = copy.deepcopy(self.G)
        if self.lpips is None:
            self.lpips = random_lpips()
        lpips = self.lpips.to(self.device)
        target = invert.image_tensor(face.image, G.model_config.image_resolution).to(self.device)
        camera = torch.from_numpy(face.label)[None].to(self.device)

        @torch.no_grad()
        def shown(ws) -> torch.Tensor:
            return invert.render(G, ws, camera)

        def row(*images) -> np.ndarray:
            return np.concatenate(list(to_uint8(torch.cat([target, *images]))), axis=1)

        yield InversionStep(f"fitting the latent: step 0 of {steps}", row())
        for step, ws in enumerate(invert.latent_steps(G, lpips, target, camera, steps=steps), 1):
            if step % max(1, steps // previews) == 0:
                yield InversionStep(f"fitting the latent: step {step} of {steps}", row(shown(ws)))
        ws, inverted = ws.clone(), shown(ws)
        for step in invert.tuning_steps(G, lpips, target, camera, ws, steps=tune_steps):
            if step % max(1, tune_steps // previews) == 0:
                yield InversionStep(f"tuning the generator: step {step} of {tune_steps}", row(shown(ws)))
        tuned = shown(ws)
        errors = [F.mse_loss(image, target).item() for image in (inverted, tuned)]
        status = (f"done: MSE {errors[0]:.5f} inverted, {errors[1]:.5f} tuned ({steps} + {tune_steps} steps of "
                  f"{lpips.label} + MSE)")
        yield InversionStep(status, row(inverted, tuned), G, ws)

    def inversion_views(self, photo: str, face: AlignedFace, result: InversionStep, *, resolution: int = 128,
                        frames: int = 48, fps: int = 24) -> tuple[list[str], str, list[str], str]:
        """The inverted photo shown the way a seed is, in a folder of its own: (its files, crop.png, camera.json
        and w.pt as eg3d.invert writes them; the orbit MP4, image | depth; the mesh files, .glb, .ply and .obj;
        the mesh's status line)."""
        name = Path(photo).name
        folder = Path(tempfile.mkdtemp(prefix="photo-", dir=self.workdir))
        files = [*invert.write_face(folder, face, name), folder / invert.PIVOT_FILE]
        invert.save_pivot(files[-1], result.ws, torch.from_numpy(face.label)[None], wplus=False)
        video = self._orbit_video(result.G, result.ws, folder / "orbit.mp4", radius=camera.FFHQ_RADIUS,
                                  focal=camera.FFHQ_FOCAL, frames=frames, fps=fps)
        meshes, status = self._mesh(result.G, result.ws, f"{name} (inverted)", resolution=resolution,
                                    level=REFERENCE_LEVEL, path=lambda suffix, _: folder / f"mesh{suffix}")
        return [str(p) for p in files], video, meshes, status


def build_app(viewer: Viewer, title: str = "eg3d viewer"):
    """The Gradio page. Every control re-renders on change (only the latest change when renders lag)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home
    import gradio as gr

    def in_page(action):
        """`action` with its ValueError (SnapshotError included) shown as a message in the page; a generator
        function (a handler that reports progress) stays one."""
        if inspect.isgeneratorfunction(action):
            @functools.wraps(action)
            def run_steps(*args):
                try:
                    yield from action(*args)
                except ValueError as error:
                    raise gr.Error(str(error)) from None
            return run_steps

        @functools.wraps(action)
        def run(*args):
            try:
                return action(*args)
            except ValueError as error:
                raise gr.Error(str(error)) from None
        return run

    @in_page
    def show(*controls):
        view = read_view(*controls)
        image, depth = viewer.render(view)
        depth_view = to_uint8(depth_to_images(torch.from_numpy(depth)[None, None], image.shape[0]))[0]
        return image, depth_view, viewer.view_files(view, image, depth), viewer.generate_command(view)

    @in_page
    def load(url, *controls):
        return (viewer.load(url), *show(*controls))

    @in_page
    def make_orbit(*controls):
        return viewer.orbit(read_view(*controls))

    @in_page
    def make_mesh(resolution, *controls):
        resolution = MESH_RESOLUTION.check(page_number(resolution, "mesh grid resolution"), "mesh grid resolution")
        paths, status = viewer.mesh(read_view(*controls), resolution=int(resolution))
        return paths[0], paths, status

    @in_page
    def show_face(photo):
        """The upload's crop and estimated camera, at once."""
        if not photo:
            return None, ""
        face = viewer.align(photo)
        return face.image, invert.camera_angles(face)

    @in_page
    def invert_photo(photo, steps, tune_steps, mesh_resolution):
        """Crop, camera, then the inversion's previews; at the end the result in the orbit and mesh views.
        Outputs: crop, camera, preview, status, files, orbit video, 3D mesh, mesh files, mesh status."""
        steps = page_whole_number(steps, "inversion steps", INVERSION_STEPS)
        tune_steps = page_whole_number(tune_steps, "tuning steps", TUNING_STEPS)
        mesh_resolution = page_whole_number(mesh_resolution, "mesh grid resolution", MESH_RESOLUTION)
        if not photo:
            raise ValueError("no photo: upload a face photo first")
        face = viewer.align(photo)
        crop, angles = face.image, invert.camera_angles(face)
        for step in viewer.invert_face(face, steps=steps, tune_steps=tune_steps):
            if step.G is None:
                yield crop, angles, step.preview, step.status, *[gr.skip()] * 5
        files, video, meshes, mesh_status = viewer.inversion_views(photo, face, step, resolution=mesh_resolution)
        yield crop, angles, step.preview, step.status, files, video, meshes[0], meshes, mesh_status

    with gr.Blocks(title=title, delete_cache=(3600, 3600)) as app:
        gr.Markdown(f"### {title}")
        with gr.Row():
            url = gr.Textbox(viewer.url, label="snapshot (path or fsspec URL)", elem_id="snapshot", scale=4)
            load_button = gr.Button("Load", elem_id="load", scale=1)
        status = gr.Textbox(viewer.describe(), label="status", interactive=False, elem_id="status")
        with gr.Row():
            with gr.Column(scale=1):
                seed = gr.Number(0, label="seed", precision=0, minimum=0, elem_id="seed")
                psi = gr.Slider(0, 1, value=0.7, step=0.01, label="truncation psi", elem_id="psi")
                yaw = gr.Slider(-90, 90, value=0, step=1, label="yaw (degrees from frontal)", elem_id="yaw")
                pitch = gr.Slider(-60, 60, value=0, step=1, label="pitch (degrees from frontal)", elem_id="pitch")
                fov = gr.Slider(5, 60, value=round(FFHQ_FOV_DEGREES, 3), step=0.001, label="field of view (degrees)",
                                elem_id="fov")
                radius = gr.Slider(1, 6, value=camera.FFHQ_RADIUS, step=0.01, label="camera distance (world units)",
                                   elem_id="radius")
            with gr.Column(scale=2):
                with gr.Row():
                    image = gr.Image(label="image", format="png", elem_id="image", interactive=False, height=320)
                    depth = gr.Image(label="depth (near = bright)", format="png", elem_id="depth", interactive=False,
                                     height=320)
                files = gr.File(label="download what is shown", file_count="multiple", elem_id="files")
                command = gr.Textbox(label="the same image from the command line", elem_id="command",
                                     interactive=False)
        with gr.Row():
            with gr.Column():
                orbit_button = gr.Button("Render orbit preview", elem_id="orbit-button")
                video = gr.Video(label="orbit (image | depth)", elem_id="orbit", autoplay=True, loop=True)
            with gr.Column():
                with gr.Row():
                    mesh_resolution = gr.Slider(32, 256, value=128, step=16, label="mesh grid resolution",
                                                elem_id="mesh-resolution")
                    mesh_button = gr.Button("Extract mesh", elem_id="mesh-button")
                model = gr.Model3D(label="mesh", elem_id="mesh", clear_color=(1, 1, 1, 1))
                mesh_files = gr.File(label="mesh files (.glb, .ply, .obj)", file_count="multiple", elem_id="mesh-files")
                mesh_status = gr.Textbox(label="mesh details", interactive=False, elem_id="mesh-status")

        faces_missing = viewer.faces_missing()
        gr.Markdown("#### Invert a face photo")
        if faces_missing:
            gr.Markdown(f"Not available here: {faces_missing}", elem_id="faces-missing")
        else:
            with gr.Row():
                with gr.Column(scale=1):
                    photo = gr.Image(label="face photo", type="filepath", image_mode=None, sources=["upload"],
                                     elem_id="photo", height=260)
                    invert_steps = gr.Slider(1, 2000, value=500, step=1, label="inversion steps",
                                             elem_id="invert-steps")
                    tune_steps = gr.Slider(0, 2000, value=350, step=1, label="tuning steps", elem_id="tune-steps")
                    invert_button = gr.Button("Invert the photo", elem_id="invert-button")
                with gr.Column(scale=2):
                    with gr.Row():
                        crop = gr.Image(label="face crop", format="png", elem_id="crop", interactive=False,
                                        height=260)
                        preview = gr.Image(label="target | current fit (at the end: target | inverted | tuned)",
                                           format="png", elem_id="invert-preview", interactive=False, height=260)
                    face_camera = gr.Textbox(label="estimated camera (head pose)", interactive=False,
                                             elem_id="face-camera")
                    invert_status = gr.Textbox(label="inversion (result in the orbit and mesh views above)",
                                               interactive=False, elem_id="invert-status")
                    invert_files = gr.File(label="crop, camera and pivot (crop.png, camera.json, w.pt)",
                                           file_count="multiple", elem_id="invert-files")

        controls = [seed, psi, yaw, pitch, fov, radius]
        shown = [image, depth, files, command]
        gr.on([c.change for c in controls], show, controls, shown, trigger_mode="always_last")
        app.load(show, controls, shown)
        gr.on([load_button.click, url.submit], load, [url, *controls], [status, *shown])
        orbit_button.click(make_orbit, controls, video)
        mesh_button.click(make_mesh, [mesh_resolution, *controls], [model, mesh_files, mesh_status])
        if not faces_missing:
            photo.upload(show_face, photo, [crop, face_camera])
            invert_button.click(invert_photo, [photo, invert_steps, tune_steps, mesh_resolution],
                                [crop, face_camera, preview, invert_status, invert_files, video, model, mesh_files,
                                 mesh_status])
    return app


def serve(app, *, host: str, port: int, workdir: Path, block: bool = True) -> None:
    """Start the page's server; with block=False it runs in a thread until app.close()."""
    app.launch(server_name=host, server_port=port, allowed_paths=[str(workdir)], css=CSS, quiet=True,
               prevent_thread_lock=not block)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m eg3d.viewer", description=__doc__.splitlines()[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("snapshot", help="snapshot folder (G_ema.safetensors + config.json): a path or any fsspec URL")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on")
    parser.add_argument("--port", type=whole_number(0, 65535), default=7860, help="port to serve on")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    parser.add_argument("--landmarker", metavar="PATH|URL", help="for the photo inversion: MediaPipe's "
                        "face_landmarker.task, needed by MediaPipe releases without the legacy face solutions")
    parser.add_argument("--landmarker-sha256", metavar="HEX", help="its SHA-256 (or a prefix of 8+ hex digits)")
    invert.add_lpips_arguments(parser)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
        import gradio  # noqa: F401
    except ImportError:
        parser.error("the viewer needs Gradio: pip install 'eg3d-train[viewer]' (or pip install gradio)")
    G = open_generator(parser, args.snapshot, args.device)  # a clear error for a wrong URL, before serving
    workdir = Path(tempfile.mkdtemp(prefix="eg3d-viewer-"))
    viewer = Viewer(G, args.snapshot, args.device, workdir, lpips=invert.lpips_network(parser, args),
                    landmarker=args.landmarker, landmarker_sha256=args.landmarker_sha256)
    try:
        missing = viewer.faces_missing()  # also downloads a --landmarker URL, once
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    if missing:
        print(f"no photo inversion: {missing}")
    print(f"serving {args.snapshot} on http://{args.host}:{args.port} (Ctrl-C stops it)")
    serve(build_app(viewer), host=args.host, port=args.port, workdir=workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
