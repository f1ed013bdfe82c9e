"""Camera conventions shared by the data, the renderer and the applications.

A camera label `c` is 25 floats: a row-major 4x4 cam2world matrix in OpenCV axes (x right, y down,
z forward) followed by the row-major 3x3 intrinsics normalized by the image size. The world is y-up.
"""

import math

import torch

FFHQ_FOCAL = 4.2647  # normalized focal length of the FFHQ/AFHQ cameras (diagonal FOV 18.837 deg)
SHAPENET_FOCAL = 1.7074
FFHQ_RADIUS = 2.7


def focal_from_fov(fov_degrees: float) -> float:
    """Normalized focal length for a diagonal field of view, as the reference computes it."""
    return 1.0 / (math.tan(math.radians(fov_degrees) / 2) * 1.414)


def intrinsics(focal: float, principal: float = 0.5) -> torch.Tensor:
    """3x3 intrinsics normalized by image size."""
    return torch.tensor([[focal, 0.0, principal], [0.0, focal, principal], [0.0, 0.0, 1.0]])


def look_at(origin: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """cam2world matrices [N,4,4] for cameras at `origin` [N,3] looking at `target` [N,3] without roll."""
    up = torch.tensor([0.0, 1.0, 0.0], dtype=origin.dtype, device=origin.device).expand_as(origin)
    forward = torch.nn.functional.normalize(target - origin, dim=-1)
    right = -torch.nn.functional.normalize(torch.linalg.cross(up, forward, dim=-1), dim=-1)
    down = torch.nn.functional.normalize(torch.linalg.cross(forward, right, dim=-1), dim=-1)
    cam2world = torch.eye(4, dtype=origin.dtype, device=origin.device).repeat(len(origin), 1, 1)
    cam2world[:, :3, :3] = torch.stack([right, down, forward], dim=-1)
    cam2world[:, :3, 3] = origin
    return cam2world


def orbit_origin(yaw: torch.Tensor, pitch: torch.Tensor, radius: float) -> torch.Tensor:
    """Camera centres on a sphere; yaw = pitch = pi/2 is the frontal camera on +z."""
    phi = torch.arccos((1 - 2 * pitch / math.pi).clamp(-1 + 1e-5, 1 - 1e-5))
    theta = math.pi - yaw
    return radius * torch.stack(
        [torch.sin(phi) * torch.cos(theta), torch.cos(phi), torch.sin(phi) * torch.sin(theta)], dim=-1
    )


def orbit_camera(yaw, pitch, *, radius: float = FFHQ_RADIUS, focal: float = FFHQ_FOCAL,
                 pivot=(0.0, 0.0, 0.0)) -> torch.Tensor:
    """Camera labels [N,25] orbiting the world origin and looking at `pivot` (the reference's convention)."""
    yaw = torch.as_tensor(yaw, dtype=torch.float32).reshape(-1)
    pitch = torch.as_tensor(pitch, dtype=torch.float32).reshape(-1).expand_as(yaw)
    origin = orbit_origin(yaw, pitch, radius)
    target = torch.tensor(pivot, dtype=torch.float32).expand_as(origin)
    return make_label(look_at(origin, target), intrinsics(focal).expand(len(yaw), 3, 3))


def make_label(cam2world: torch.Tensor, intrinsics_3x3: torch.Tensor) -> torch.Tensor:
    return torch.cat([cam2world.reshape(-1, 16), intrinsics_3x3.reshape(-1, 9)], dim=1)


def split_label(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Camera labels [N,25] -> (cam2world [N,4,4], intrinsics [N,3,3])."""
    return c[:, :16].reshape(-1, 4, 4), c[:, 16:25].reshape(-1, 3, 3)


# Entries of a label whose sign flips when the image is mirrored in x: cam2world [0,1], [0,2], [1,0], [2,0]
# and the translation [0,3] (row-major flat indices), and the intrinsics' skew [0,1] (flat 17).
MIRROR_FLAT_INDICES = (1, 2, 4, 8, 3, 17)
PRINCIPAL_X_INDEX = 18  # intrinsics [0,2], the normalized principal point's x


def mirror_label(c: torch.Tensor) -> torch.Tensor:
    """The camera label [..., 25] of a horizontally flipped image: the camera of the world mirrored in x.

    With S = diag(-1, 1, 1), cam2world becomes S R S (translation x negated), and pixel x maps to 1 - x,
    so the principal point cx becomes 1 - cx and the skew changes sign; fx, fy and cy are unchanged.
    The pixel ray of the mirrored camera at (1 - u, v) is then the mirror image of the original camera's
    ray at (u, v) for any intrinsics (the reference mirrors only cam2world, which is exact only for
    cx = 0.5 and no skew).
    """
    mirrored = c.clone()
    mirrored[..., list(MIRROR_FLAT_INDICES)] *= -1
    mirrored[..., PRINCIPAL_X_INDEX] = 1 - c[..., PRINCIPAL_X_INDEX]
    return mirrored


def pixel_rays(c: torch.Tensor, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """World-space ray origins and unit directions [N, R*R, 3] through the pixel centres.

    Pixels are enumerated row-major (row = image y, column = image x), matching an NCHW image.
    """
    cam2world, K = split_label(c)
    n = len(c)
    centres = (torch.arange(resolution, dtype=c.dtype, device=c.device) + 0.5) / resolution
    v, u = torch.meshgrid(centres, centres, indexing="ij")  # v: row (y), u: column (x)
    u, v = u.reshape(1, -1), v.reshape(1, -1)
    fx, fy, cx, cy, skew = (K[:, 0, 0, None], K[:, 1, 1, None], K[:, 0, 2, None], K[:, 1, 2, None],
                            K[:, 0, 1, None])
    y_cam = (v - cy) / fy
    x_cam = (u - cx - skew * y_cam) / fx
    directions_cam = torch.stack([x_cam, y_cam, torch.ones_like(x_cam)], dim=-1)  # [N, R*R, 3]
    directions = directions_cam @ cam2world[:, :3, :3].transpose(1, 2)
    directions = torch.nn.functional.normalize(directions, dim=-1)
    origins = cam2world[:, None, :3, 3].expand(n, resolution * resolution, 3)
    return origins, directions
