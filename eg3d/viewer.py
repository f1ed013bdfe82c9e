"""Interactive web viewer of a snapshot: a page on 127.0.0.1 with seed, truncation and camera controls.

    python -m eg3d.viewer SNAPSHOT [--port 7860] [--device cuda]
    python -m eg3d.viewer s3://bucket/runs/ffhq512/snapshots/snapshot-000200000

The page (Gradio) shows the image and its depth map side by side for a seed, truncation psi, yaw and pitch
(degrees from frontal), field of view and camera distance; a box to load any other snapshot URL; an orbit
preview (an H.264 MP4, eg3d.video's path); a mesh of the seed (eg3d.shapes' marching cubes, shown in 3D and
offered as .glb/.ply/.obj); and downloads of what is shown (PNG, 16-bit depth PNG, float depth .npy) with the
eg3d.generate command that writes the same image. A render is eg3d.generate's for the same settings, exactly:
the same latent per seed, conditioned on the frontal camera, truncation on the first 14 ws, constant noise.

On a remote machine (a Ray head pod, say), start it there and forward the port:
    kubectl port-forward pod/HEAD_POD 7860:7860        # then open http://127.0.0.1:7860
The server binds to 127.0.0.1 unless --host says otherwise; a port-forward reaches it either way.
"""

import argparse
import functools
import hashlib
import math
import os
import shlex
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

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
CSS = "#image img, #depth img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }"
YAW = Interval(unit="degrees")
PITCH = Interval(-90, 90, low_open=True, high_open=True, unit="degrees")  # +-90: straight down or up, no look-at
MESH_RESOLUTION = Interval(8, MAX_GRID_RESOLUTION)
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


def read_view(seed, psi, yaw, pitch, fov, radius) -> View:
    """The page's control values as a checked View; ValueError naming the first control out of range."""
    values = dict(zip(LABELS, (seed, psi, yaw, pitch, fov, radius)))
    view = View(**{name: page_number(value, LABELS[name]) for name, value in values.items()})
    view.check()
    return replace(view, seed=int(view.seed))


class Viewer:
    """The generator being shown and every render the page asks for; files go to `workdir`."""

    def __init__(self, G, url: str, device: str, workdir: Path):
        self.G, self.url, self.device, self.workdir = G, url, device, workdir

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
        cameras = orbit.orbit_path(frames, radius=view.radius, focal=focal).to(self.device)
        path = self._path(view, "-orbit.mp4", frames=frames, fps=fps)
        write_video(path, self.G, ws.expand(frames, -1, -1), cameras, rows=1, cols=1, fps=fps, depth=True,
                    progress=False)
        return str(path)

    @torch.no_grad()
    def mesh(self, view: View, *, resolution: int = 128, level: float = REFERENCE_LEVEL) -> tuple[list[str], str]:
        """The seed's surface as .glb (for the page's 3D view), .ply and .obj with vertex colours, and a status
        line. Where sigma never reaches `level`, it meshes at half the maximum instead and says so."""
        view.check()
        ws, _ = self._ws(view)
        box_size = self.G.rendering_config.box_warp
        sigma = sample_density_grid(generator_density(self.G, ws), resolution=resolution, box_size=box_size,
                                    device=self.device).numpy()
        try:
            mesh, level, note = mesh_or_half_max(self.G, ws, sigma, level=level, border=reference_border(resolution))
        except ValueError as error:
            raise ValueError(f"seed {view.seed}: {error}") from None
        paths = [self._path(view, suffix, resolution=resolution, level=level) for suffix in (".glb", ".ply", ".obj")]
        for path in paths:
            mesh.export(path)
        note = f" ({note})" if note else ""
        status = (f"seed {view.seed}: {len(mesh.vertices)} vertices, {len(mesh.faces)} faces at level {level:.3g}"
                  f"{note}; grid {resolution}^3 over the box of side {box_size:g} world units, y up, frontal camera on +z")
        return [str(p) for p in paths], status


def build_app(viewer: Viewer, title: str = "eg3d viewer"):
    """The Gradio page. Every control re-renders on change (only the latest change when renders lag)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home
    import gradio as gr

    def in_page(action):
        """`action` with its ValueError (SnapshotError included) shown as a message in the page."""
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

        controls = [seed, psi, yaw, pitch, fov, radius]
        shown = [image, depth, files, command]
        gr.on([c.change for c in controls], show, controls, shown, trigger_mode="always_last")
        app.load(show, controls, shown)
        gr.on([load_button.click, url.submit], load, [url, *controls], [status, *shown])
        orbit_button.click(make_orbit, controls, video)
        mesh_button.click(make_mesh, [mesh_resolution, *controls], [model, mesh_files, mesh_status])
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
    print(f"serving {args.snapshot} on http://{args.host}:{args.port} (Ctrl-C stops it)")
    serve(build_app(Viewer(G, args.snapshot, args.device, workdir)), host=args.host, port=args.port, workdir=workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
