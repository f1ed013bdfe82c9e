"""Single-view reconstruction by pivotal tuning inversion (PTI, Roich et al. 2021).

    python -m eg3d.invert SNAPSHOT IMAGE --camera data/ffhq/dataset.json:12 --out DIR
    python -m eg3d.invert SNAPSHOT IMAGE --camera frontal --out DIR --wplus --steps 500 --tune-steps 350
    python -m eg3d.invert SNAPSHOT photo.jpg --camera auto --out DIR

--camera auto: IMAGE is an ordinary face photo. Its largest face is cropped as EG3D's FFHQ data are (512x512,
dataloading.face_alignment, MediaPipe: pip install -e '.[faces]'), the crop resized to the generator's resolution
is the target, and the camera of the head's estimated pose renders the fit; DIR also gets crop.png and camera.json.

1. The pivot: a latent w (one w for every style layer, or one per layer with --wplus), from the mean w, fitted
   to the image with Adam on LPIPS + MSE; the camera (a 25-number label) renders every view of the fit.
2. Pivotal tuning: the generator's weights fitted around the fixed pivot (Adam, --tune-lr), same losses.
Writes DIR/w.pt ({'w': [1, num_ws, w_dim], 'camera': [1, 25], 'wplus'}), DIR/snapshot/ (the tuned generator,
a snapshot for eg3d.generate, video and shapes), DIR/reconstruction.png (target | inverted | tuned), and, from
the tuned generator at the pivot, DIR/novel-views.mp4 (image | depth along eg3d.video's orbit path) and
DIR/mesh.ply (eg3d.shapes' marching cubes at level 10, or at half the density's maximum where it never gets there).
"""

import argparse
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from dataloading import storage
from dataloading.face_alignment import (MIN_FACE_SIZE, REFERENCE_RESOLUTION, AlignedFace, FaceError, FaceLandmarker,
                                        align_face, load_photo)
from eg3d.config import TrainConfig
from eg3d.metrics.lpips import load_lpips, random_lpips

from .cli.arguments import LEARNING_RATE, MAX_FRAMES, MAX_GRID_RESOLUTION, HelpFormatter, real_number, whole_number
from .cli.snapshots import open_generator
from .generate import dataset_camera
from .networks import orbit
from .networks.density_grid import generator_density, sample_density_grid
from .networks.sample_grid import to_uint8
from .networks.snapshot import CONFIG_FILE, default_neural_rendering_resolution, save_snapshot
from .shapes import REFERENCE_LEVEL, mesh_or_half_max, reference_border
from .video import write_video

LPIPS_RESOLUTION = 256  # larger images are downsampled for the LPIPS term, as PTI does
MEAN_W_SAMPLES = 1000
AUTO = "auto"  # --camera auto: crop the photo's face and estimate its camera
CROP_FILE, CAMERA_FILE, PIVOT_FILE = "crop.png", "camera.json", "w.pt"
FACE_ADVICE = {  # what to do, by FaceError.kind
    "unreadable": "use a JPEG, PNG or WebP photo",
    "too small": f"use a larger photo, or one where the face fills more of it (its crop must span at least "
                 f"{MIN_FACE_SIZE} photo pixels)",
    "no face": "use a photo where a human face is clearly visible",
}
FACE_ADVICE["no landmarks"] = FACE_ADVICE["no face"]


def render(G, w: torch.Tensor, camera: torch.Tensor) -> torch.Tensor:
    """The image [1, 3, H, W] of ws [1, num_ws, w_dim] from camera [1, 25], with gradients."""
    return G.synthesis(w, camera, neural_rendering_resolution=default_neural_rendering_resolution(G),
                       noise_mode="const")["image"]


def mean_w(G, condition: torch.Tensor) -> torch.Tensor:
    """[1, 1, w_dim]: the mapping's tracked w_avg, or (a generator that never tracked it) the mean over seeded
    z of the mapping conditioned on the camera."""
    w_avg = G.mapping.w_avg
    if w_avg.abs().sum() > 0:
        return w_avg.reshape(1, 1, -1).clone()
    z = torch.from_numpy(np.random.RandomState(0).randn(MEAN_W_SAMPLES, G.model_config.z_dim)).float()
    with torch.no_grad():
        ws = G.map(z.to(condition.device), condition.expand(MEAN_W_SAMPLES, -1))
    return ws[:, :1].mean(dim=0, keepdim=True)


def reconstruction_loss(lpips, image: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """LPIPS (at most LPIPS_RESOLUTION pixels a side) + MSE, images in [-1, 1]."""
    if image.shape[-1] > LPIPS_RESOLUTION:
        image, target = (F.interpolate(x, size=LPIPS_RESOLUTION, mode="area") for x in (image, target))
    return lpips(image, target).mean() + F.mse_loss(image, target)


def latent_steps(G, lpips, target: torch.Tensor, camera: torch.Tensor, *, steps: int, lr: float = 0.01,
                 wplus: bool = False) -> Iterator[torch.Tensor]:
    """Fits the pivot (generator frozen), yielding ws [1, num_ws, w_dim] after each step: a view of the
    parameter being fitted, so clone what you keep."""
    start = mean_w(G, camera)
    w = (start.repeat(1, G.num_ws, 1) if wplus else start).detach().requires_grad_(True)
    optimizer = torch.optim.Adam([w], lr=lr, betas=(0.9, 0.999))
    for _ in range(steps):
        loss = reconstruction_loss(lpips, render(G, w.expand(1, G.num_ws, -1), camera), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        yield w.detach().expand(1, G.num_ws, -1)


def invert_latent(G, lpips, target: torch.Tensor, camera: torch.Tensor, *, steps: int, lr: float = 0.01,
                  wplus: bool = False, progress: bool = False) -> torch.Tensor:
    """The pivot ws [1, num_ws, w_dim] after `steps` (at least 1) steps of `latent_steps`."""
    if steps < 1:
        raise ValueError(f"steps {steps}: expected at least 1")
    for w in tqdm(latent_steps(G, lpips, target, camera, steps=steps, lr=lr, wplus=wplus), total=steps,
                  desc="invert", unit="step", disable=not progress):
        pass
    return w.clone()


def tuning_steps(G, lpips, target: torch.Tensor, camera: torch.Tensor, w: torch.Tensor, *, steps: int,
                 lr: float = 3e-4) -> Iterator[int]:
    """Fits G's weights (in place) so that the fixed pivot w renders the target, yielding the number of steps
    done after each; G is left frozen in eval mode."""
    G.requires_grad_(True)
    parameters = [p for p in G.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(parameters, lr=lr)
    try:
        for step in range(1, steps + 1):
            loss = reconstruction_loss(lpips, render(G, w, camera), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            yield step
    finally:
        G.requires_grad_(False).eval()


def tune_generator(G, lpips, target: torch.Tensor, camera: torch.Tensor, w: torch.Tensor, *, steps: int,
                   lr: float = 3e-4, progress: bool = False):
    """G after `steps` of `tuning_steps` (tuned in place), frozen, in eval mode."""
    for _ in tqdm(tuning_steps(G, lpips, target, camera, w, steps=steps, lr=lr), total=steps, desc="tune",
                  unit="step", disable=not progress):
        pass
    return G


def image_tensor(image: Image.Image, resolution: int) -> torch.Tensor:
    """An RGB image as [1, 3, R, R] in [-1, 1] at the generator's resolution (squared by resizing, Lanczos)."""
    image = image.resize((resolution, resolution), Image.LANCZOS)
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 127.5 - 1


def read_image(parser: argparse.ArgumentParser | None, url: str) -> Image.Image:
    try:
        return Image.open(io.BytesIO(storage.read_bytes(url))).convert("RGB")
    except (FileNotFoundError, OSError) as error:
        parser.error(f"IMAGE {url}: expected a readable image file ({type(error).__name__}: {error})")


def read_target(parser: argparse.ArgumentParser | None, url: str, resolution: int) -> torch.Tensor:
    """The image at `url` as `image_tensor` makes it."""
    return image_tensor(read_image(parser, url), resolution)


# --- a face photo's crop and camera (--camera auto, and the viewer's upload) ------------------------------------

def align_photo(photo, model: FaceLandmarker, *, name: str) -> AlignedFace:
    """The largest face of a photo (a path, fsspec URL or bytes; EXIF orientation applied) cropped as EG3D's FFHQ
    data are, 512x512 whatever the generator's resolution (lower-resolution FFHQ data are these crops resized),
    with the camera of its head pose. FaceError naming `name` and the reason; FileNotFoundError."""
    return align_face(load_photo(photo, name=name), model, resolution=REFERENCE_RESOLUTION, name=name)


def camera_angles(face: AlignedFace) -> str:
    """'yaw -1.3, pitch -3.7 degrees (roll -3.1 removed by the crop)': the estimated head pose, whose yaw and
    pitch the camera label has (face_alignment's convention: yaw > 0 turned to the photo's right, pitch > 0
    chin up), and what else a user should know about the crop."""
    pose = face.pose
    notes = [f"roll {pose.roll:+.1f} removed by the crop"]
    if face.faces > 1:
        notes.append(f"the largest of {face.faces} faces")
    if face.outside > 0.1:
        notes.append(f"{face.outside:.0%} of the crop lies outside the photo (black)")
    return f"yaw {pose.yaw:+.1f}, pitch {pose.pitch:+.1f} degrees ({'; '.join(notes)})"


def write_face(folder: Path, face: AlignedFace, photo: str) -> list[Path]:
    """CROP_FILE (the 512x512 crop) and CAMERA_FILE (the estimated camera: its 25-number label and the head
    pose in degrees) in `folder`."""
    pose = face.pose
    record = {"photo": photo, "label": face.label.astype(float).tolist(), "yaw_degrees": pose.yaw,
              "pitch_degrees": pose.pitch, "roll_degrees": pose.roll, "faces": face.faces, "outside": face.outside}
    face.image.save(folder / CROP_FILE)
    (folder / CAMERA_FILE).write_text(json.dumps(record, indent=1) + "\n")
    return [folder / CROP_FILE, folder / CAMERA_FILE]


def image_and_camera(parser: argparse.ArgumentParser, args) -> tuple[Image.Image, torch.Tensor, AlignedFace | None]:
    """The image to fit (with --camera auto, the photo's face crop), its camera [1, 25], and the face found
    (None without --camera auto)."""
    if args.camera != AUTO:
        if args.landmarker:
            parser.error("--landmarker: only with --camera auto")
        camera = orbit.frontal_camera() if args.camera == "frontal" else dataset_camera(parser, args.camera, "--camera")
        return read_image(parser, args.image), camera, None
    face = photo_face(parser, args)
    print(f"camera (estimated from the photo): {camera_angles(face)}")
    return face.image, torch.from_numpy(face.label)[None], face


def photo_face(parser: argparse.ArgumentParser, args) -> AlignedFace:
    """--camera auto: the photo's face crop and camera; exits 2 naming the photo, the reason and what to do."""
    try:
        model = FaceLandmarker(landmarker=args.landmarker, landmarker_sha256=args.landmarker_sha256)
    except (ImportError, FileNotFoundError, ValueError) as error:
        parser.error(f"--camera auto: {error}")
    with model:
        try:
            return align_photo(args.image, model, name=args.image)
        except FileNotFoundError as error:
            parser.error(f"IMAGE {args.image}: expected a readable image file ({type(error).__name__}: {error})")
        except FaceError as error:
            own_camera = ", or crop it yourself and give its camera (--camera FILE:INDEX or frontal)"
            parser.error(f"IMAGE {error}; {FACE_ADVICE[error.kind]}"
                         f"{own_camera if error.kind in ('no face', 'no landmarks') else ''}")


def save_pivot(path: Path, w: torch.Tensor, camera: torch.Tensor, *, wplus: bool) -> None:
    torch.save({"w": w.cpu(), "camera": camera.cpu(), "wplus": wplus}, path)


def read_config(snapshot: str) -> TrainConfig:
    return TrainConfig.from_dict(json.loads(storage.read_bytes(f"{snapshot.rstrip('/')}/{CONFIG_FILE}"))["config"])


def add_lpips_arguments(parser: argparse.ArgumentParser) -> None:
    """The LPIPS weight files (read by lpips_network); without them, the random-feature stand-in."""
    parser.add_argument("--lpips-vgg", metavar="PATH|URL", help="torchvision's vgg16 ImageNet state dict")
    parser.add_argument("--lpips-vgg-sha256", metavar="HEX", help="its SHA-256 (or a prefix of 8+ hex digits)")
    parser.add_argument("--lpips-weights", metavar="PATH|URL", help="the lpips package's weights/v0.1/vgg.pth")
    parser.add_argument("--lpips-sha256", metavar="HEX", help="its SHA-256 (or a prefix of 8+ hex digits)")


def lpips_network(parser: argparse.ArgumentParser, args):
    given = [args.lpips_vgg, args.lpips_weights]
    if not any(given):
        return random_lpips()
    if not all(given):
        parser.error("--lpips-vgg and --lpips-weights come together (torchvision's vgg16 state dict and "
                     "lpips' v0.1 vgg.pth); give neither for the random-feature stand-in")
    try:
        return load_lpips(args.lpips_vgg, args.lpips_vgg_sha256, args.lpips_weights, args.lpips_sha256)
    except (FileNotFoundError, KeyError, ValueError) as error:
        parser.error(f"--lpips-vgg/--lpips-weights: {error}")


@torch.no_grad()
def write_mesh(G, w: torch.Tensor, path: Path, *, resolution: int, device) -> str:
    """The pivot's surface in the tuned generator as a coloured .ply (see eg3d.shapes); what was written."""
    sigma = sample_density_grid(generator_density(G, w), resolution=resolution, box_size=G.rendering_config.box_warp,
                                device=device, progress=True).numpy()
    try:
        mesh, _, note = mesh_or_half_max(G, w, sigma, level=REFERENCE_LEVEL, border=reference_border(resolution))
    except ValueError as error:
        print(f"no mesh: {error}", file=sys.stderr)
        return "no mesh"
    mesh.export(path)
    return f"{path.name} ({len(mesh.faces)} faces{'; ' + note if note else ''})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m eg3d.invert", description=__doc__.splitlines()[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("snapshot", help="snapshot folder (G_ema.safetensors + config.json): a path or any fsspec URL")
    parser.add_argument("image", help="the target image (any size; resized to the generator's, squared), or with "
                        "--camera auto a face photo")
    parser.add_argument("--camera", required=True, metavar="FILE:INDEX|frontal|auto",
                        help="the image's camera: a dataset.json entry (as eg3d.generate's --label), 'frontal', or "
                        "'auto': crop the photo's face and estimate its camera (pip install -e '.[faces]')")
    parser.add_argument("--landmarker", metavar="PATH|URL", help="with --camera auto: MediaPipe's "
                        "face_landmarker.task, needed by MediaPipe releases without the legacy face solutions")
    parser.add_argument("--landmarker-sha256", metavar="HEX", help="its SHA-256 (or a prefix of 8+ hex digits)")
    parser.add_argument("--out", required=True, help="folder to write into")
    parser.add_argument("--steps", type=whole_number(1), default=500, help="latent optimization steps")
    parser.add_argument("--lr", type=real_number(LEARNING_RATE), default=0.01, help="latent learning rate (Adam)")
    parser.add_argument("--wplus", action="store_true", help="one w per style layer (w+) instead of one w")
    parser.add_argument("--tune-steps", type=whole_number(0), default=350, help="generator fine-tuning steps (0: none)")
    parser.add_argument("--tune-lr", type=real_number(LEARNING_RATE), default=3e-4,
                        help="generator fine-tuning learning rate")
    add_lpips_arguments(parser)
    parser.add_argument("--frames", type=whole_number(0, MAX_FRAMES), default=120,
                        help="novel-view video frames (0: no video)")
    parser.add_argument("--mesh-resolution", type=whole_number(0, MAX_GRID_RESOLUTION), default=256,
                        help="mesh grid points per axis (0: no mesh, else at least 8; as eg3d.shapes --resolution)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.mesh_resolution != 0 and args.mesh_resolution < 8:
        parser.error(f"--mesh-resolution {args.mesh_resolution}: expected 0 (no mesh) or at least 8")

    image, camera, face = image_and_camera(parser, args)
    G = open_generator(parser, args.snapshot, args.device)
    target = image_tensor(image, G.model_config.image_resolution).to(args.device)
    lpips = lpips_network(parser, args).to(args.device)
    print(f"loss: {lpips.label} + MSE")
    camera = camera.to(args.device)

    w = invert_latent(G, lpips, target, camera, steps=args.steps, lr=args.lr, wplus=args.wplus, progress=True)
    with torch.no_grad():
        inverted = render(G, w, camera)
    G = tune_generator(G, lpips, target, camera, w, steps=args.tune_steps, lr=args.tune_lr, progress=True)
    with torch.no_grad():
        tuned = render(G, w, camera)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_pivot(out / PIVOT_FILE, w, camera, wplus=args.wplus)
    metadata = {"image": args.image, "camera": args.camera, "steps": args.steps, "tune_steps": args.tune_steps,
                "loss": f"{lpips.label} + MSE"}
    if face is not None:
        metadata["estimated_camera"] = camera[0].tolist()
    save_snapshot(G, read_config(args.snapshot), out / "snapshot", metadata={"pti": metadata})
    Image.fromarray(np.concatenate(list(to_uint8(torch.cat([target, inverted, tuned]))), axis=1)).save(
        out / "reconstruction.png")
    for name, image in (("inverted", inverted), ("tuned", tuned)):
        print(f"{name}: MSE {F.mse_loss(image, target).item():.5f}")
    written = [PIVOT_FILE, "snapshot/", "reconstruction.png (target | inverted | tuned)"]
    if face is not None:
        written += [path.name for path in write_face(out, face, args.image)]
    if args.frames:
        cameras = orbit.orbit_path(args.frames).to(args.device)
        write_video(out / "novel-views.mp4", G, w.detach().expand(args.frames, -1, -1), cameras, rows=1, cols=1,
                    fps=30, depth=True)
        written.append("novel-views.mp4")
    if args.mesh_resolution:
        written.append(write_mesh(G, w.detach(), out / "mesh.ply", resolution=args.mesh_resolution,
                                  device=args.device))
    print(f"wrote {', '.join(written)} to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
