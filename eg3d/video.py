"""Orbit videos of seeds from a snapshot: H.264 MP4 through imageio's ffmpeg plugin.

    python -m eg3d.video SNAPSHOT --seeds 0-3 --out orbit.mp4                      # 4 seeds side by side
    python -m eg3d.video SNAPSHOT --seeds 0-3 --grid 2x2 --depth --out orbit.mp4   # RGB | depth per cell
    python -m eg3d.video SNAPSHOT --seeds 0-7 --grid 1x2 --interpolate --out walk.mp4

The camera path is the reference gen_videos' one, one period over the video: for t = frame / frames,
yaw = pi/2 + yaw_range * sin(2 pi t), pitch = pi/2 + pitch_range * cos(2 pi t) (radians; pi/2, pi/2 is
frontal). Every view is conditioned on the frontal camera. With --interpolate, the seeds are keyframes of
R*C seeds each (keyframe k, cell i: seed number k*R*C + i) spaced evenly over the looping video, and each
cell moves linearly in w space from one keyframe to the next. Depth is shown grey, near = bright, on the
scale of the first frame's depths for the whole video.
"""

import argparse
import math
import sys

import imageio.v2 as imageio
import numpy as np
import torch
from tqdm import tqdm

from .cli.arguments import ANGLE, MAX_FPS, MAX_FRAMES, PITCH, HelpFormatter, Interval, real_number, whole_number
from .cli.snapshots import open_generator
from .generate import add_common_arguments
from .networks import camera, orbit
from .networks.sample_grid import depth_to_images, to_uint8


def grid_shape(text: str) -> tuple[int, int]:
    rows, x, cols = text.lower().partition("x")
    if not (x and rows.isdigit() and cols.isdigit() and int(rows) > 0 and int(cols) > 0):
        raise argparse.ArgumentTypeError(f"{text!r}: expected ROWSxCOLUMNS, e.g. 2x2")
    return int(rows), int(cols)


def compose_frame(images: torch.Tensor, depths: torch.Tensor | None, rows: int, cols: int,
                  depth_range: tuple[float, float] | None) -> np.ndarray:
    """One frame's cells (images [R*C,3,H,W], depths [R*C,1,h,w] or None) -> uint8 [H', W', 3], row-major
    cells, each RGB then its depth; padded to even sides by repeating the last row/column (yuv420p)."""
    if depths is not None:
        images = torch.cat([images.clamp(-1, 1), depth_to_images(depths, images.shape[-1], lo=depth_range[0],
                                                                 hi=depth_range[1])], dim=-1)
    tiles = to_uint8(images)
    n, height, width, _ = tiles.shape
    frame = tiles.reshape(rows, cols, height, width, 3).transpose(0, 2, 1, 3, 4).reshape(rows * height, cols * width, 3)
    return np.pad(frame, ((0, frame.shape[0] % 2), (0, frame.shape[1] % 2), (0, 0)), mode="edge")


def write_video(path, G, ws: torch.Tensor, cameras: torch.Tensor, *, rows: int, cols: int, fps: int,
                quality: float = 8, depth: bool = False, batch: int = 8, progress: bool = True) -> None:
    """Render ws [frames*R*C, num_ws, w_dim] from cameras [frames*R*C, 25] (frame-major, then cells row-major)
    into an H.264 MP4 at `path`; with `depth`, each cell's depth beside it, on the first frame's depth scale."""
    cells = rows * cols
    writer = imageio.get_writer(path, format="FFMPEG", mode="I", fps=fps, codec="libx264",
                                pixelformat="yuv420p", quality=quality, macro_block_size=1)
    images, depths, depth_range = [], [], None
    with writer:
        bar = tqdm(total=len(ws) // cells, unit="frame", desc="video", disable=not progress)
        for rendered in orbit.render_batches(G, ws, cameras, batch):
            images.extend(rendered["image"])
            depths.extend(rendered["image_depth"])
            while len(images) >= cells:
                frame_images, frame_depths = torch.stack(images[:cells]), torch.stack(depths[:cells])
                del images[:cells], depths[:cells]
                if depth_range is None:
                    depth_range = (frame_depths.min().item(), frame_depths.max().item())
                writer.append_data(compose_frame(frame_images, frame_depths if depth else None, rows, cols,
                                                 depth_range))
                bar.update()
        bar.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m eg3d.video", description=__doc__.splitlines()[0],
                                     formatter_class=HelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--out", required=True, help="MP4 file to write")
    parser.add_argument("--frames", type=whole_number(1, MAX_FRAMES), default=120,
                        help="frames of the orbit (all held in memory)")
    parser.add_argument("--fps", type=whole_number(1, MAX_FPS), default=30, help="frames per second")
    parser.add_argument("--grid", type=grid_shape, help="ROWSxCOLUMNS of seeds (default 1xN: all seeds in a row)")
    parser.add_argument("--yaw-range", type=real_number(ANGLE), default=0.35, help="radians either side of frontal")
    parser.add_argument("--pitch-range", type=real_number(Interval(0, PITCH.high, high_open=True, unit="radians")),
                        default=0.25, help="radians either side of frontal, in [0, pi/2)")
    parser.add_argument("--depth", action="store_true", help="each cell's depth map beside its image")
    parser.add_argument("--interpolate", action="store_true", help="walk in w space through keyframes of seeds")
    parser.add_argument("--quality", type=real_number(Interval(0, 10)), default=8,
                        help="imageio's 0..10 (libx264 CRF 51*(1-q/10))")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    rows, cols = args.grid or (1, 1 if args.interpolate else len(args.seeds))
    cells = rows * cols
    if len(args.seeds) % cells or (len(args.seeds) > cells and not args.interpolate):
        parser.error(f"--seeds: {len(args.seeds)} seeds for a {rows}x{cols} grid; expected {cells} seeds "
                     f"(or a multiple of {cells} with --interpolate)")
    G = open_generator(parser, args.snapshot, args.device)
    focal = camera.focal_from_fov(args.fov)
    condition = orbit.frontal_camera(radius=args.radius, focal=focal).to(args.device)
    z = orbit.seed_latents(args.seeds, G.model_config.z_dim).to(args.device)
    ws = orbit.styles(G, z, condition, truncation_psi=args.trunc, truncation_cutoff=args.trunc_cutoff)
    ws = orbit.interpolate_keyframes(ws.reshape(-1, cells, *ws.shape[1:]), args.frames).flatten(0, 1)
    path = orbit.orbit_path(args.frames, yaw_range=args.yaw_range, pitch_range=args.pitch_range,
                            radius=args.radius, focal=focal)
    cameras = path.to(args.device).repeat_interleave(cells, dim=0)

    write_video(args.out, G, ws, cameras, rows=rows, cols=cols, fps=args.fps, quality=args.quality,
                depth=args.depth, batch=args.batch)
    print(f"wrote {args.out} ({args.frames} frames, {rows}x{cols} seeds, {args.fps} fps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
