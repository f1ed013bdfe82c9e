"""View consistency: how well one object rendered from view B, warped into view A through A's depth, matches A.

A 3D-consistent generator renders one surface from every view: each pixel of view A, lifted to 3D by A's
rendered depth and projected into view B, lands on the same surface point, of the same colour (lighting
is baked into the tri-planes, so it does not change with the view). A generator whose images do not come
from its geometry, or whose super-resolution invents view-dependent detail, does not. The error is taken
over pixels visible in both views: inside B's frame and not hidden in B behind a nearer surface (B's own
rendered depth there is not shorter than the point's distance, within OCCLUSION_TOLERANCE), and, where masks
of the object are known (the evaluator's foreground, on data with depth), on the object in A and wholly
inside it in B. The error is divided by the error of a flat picture warped the same way
(`normalized_consistency`): a generator whose geometry explains nothing scores 1, a blank one included.

The view pairs are fixed by the data set's cameras (`view_pairs`): turns in yaw of half and all of its
central yaw range and a turn in pitch of its central pitch range, about its median view, at its median
distance and focal length, looking at the point its cameras look at.
"""

import torch
import torch.nn.functional as F

from eg3d.networks.camera import orbit_camera, pixel_rays, split_label

OCCLUSION_TOLERANCE = 0.03  # of the camera's distance: a point this much beyond B's depth is hidden in B
WHOLLY_INSIDE = 0.999  # a bilinear sample of B's mask above this has all four neighbours on the object
CENTRAL_RANGE = (0.05, 0.95)  # quantiles of the data set's yaw and pitch that bound its view pairs


def orbit_angles(cameras: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(yaw, pitch) [N] in radians of camera labels' centres about the world origin, in the convention of
    `eg3d.networks.camera.orbit_origin` (yaw = pitch = pi/2 is the frontal camera on +z)."""
    origins = cameras[:, :16].reshape(-1, 4, 4)[:, :3, 3].double()
    radius = origins.norm(dim=1).clamp(min=1e-9)
    pitch = torch.pi / 2 * (1 - origins[:, 1] / radius)
    yaw = torch.pi - torch.atan2(origins[:, 2], origins[:, 0])
    return torch.remainder(yaw, 2 * torch.pi), pitch


def look_at_point(cameras: torch.Tensor) -> torch.Tensor:
    """[3] the point nearest, in least squares, to the optical axes of camera labels [N, 25]."""
    cam2world = cameras[:, :16].reshape(-1, 4, 4).double()
    origins, forward = cam2world[:, :3, 3], F.normalize(cam2world[:, :3, 2], dim=1)
    projectors = torch.eye(3, dtype=torch.float64) - forward[:, :, None] * forward[:, None, :]
    a, b = projectors.sum(0), torch.einsum("nij,nj->i", projectors, origins)
    return torch.linalg.lstsq(a, b[:, None], rcond=1e-9).solution[:, 0]


def view_pairs(cameras: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """From a data set's camera labels [N, 25]: (views A [3, 25], views B [3, 25], the median view [1, 25]).
    The pairs turn the median view by half and all of the central yaw range (CENTRAL_RANGE quantiles) and by
    the central pitch range, A and B symmetric about it."""
    yaw, pitch = orbit_angles(cameras)
    low, high = CENTRAL_RANGE
    yaw_low, yaw_mid, yaw_high = (torch.quantile(yaw, q).item() for q in (low, 0.5, high))
    pitch_low, pitch_mid, pitch_high = (torch.quantile(pitch, q).item() for q in (low, 0.5, high))
    yaw_span, pitch_span = yaw_high - yaw_low, pitch_high - pitch_low
    settings = dict(radius=cameras[:, :16].reshape(-1, 4, 4)[:, :3, 3].double().norm(dim=1).median().item(),
                    focal=cameras[:, 16].median().item(), pivot=tuple(look_at_point(cameras).tolist()))
    a = [(yaw_mid - yaw_span / 4, pitch_mid), (yaw_mid - yaw_span / 2, pitch_mid), (yaw_mid, pitch_mid - pitch_span / 2)]
    b = [(yaw_mid + yaw_span / 4, pitch_mid), (yaw_mid + yaw_span / 2, pitch_mid), (yaw_mid, pitch_mid + pitch_span / 2)]

    def labels(views):
        return orbit_camera([v[0] for v in views], [v[1] for v in views], **settings)

    return labels(a), labels(b), orbit_camera([yaw_mid], [pitch_mid], **settings)


def project(points: torch.Tensor, cameras: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """World points [N, M, 3] seen by cameras [N, 25] -> (image coordinates [N, M, 2] as (u, v) in [0, 1]
    across the image (x, then y down), distance [N, M] from the camera centre, in front [N, M] bool). The
    inverse of `eg3d.networks.camera.pixel_rays`."""
    cam2world, K = split_label(cameras)
    relative = points - cam2world[:, None, :3, 3]
    in_camera = relative @ cam2world[:, :3, :3]  # R^T (p - t), as rows
    z = in_camera[..., 2]
    safe_z = torch.where(z.abs() < 1e-9, torch.full_like(z, 1e-9), z)
    x, y = in_camera[..., 0] / safe_z, in_camera[..., 1] / safe_z
    u = K[:, None, 0, 0] * x + K[:, None, 0, 1] * y + K[:, None, 0, 2]
    v = K[:, None, 1, 1] * y + K[:, None, 1, 2]
    return torch.stack([u, v], dim=-1), relative.norm(dim=-1), z > 0


def warp(image_b: torch.Tensor, depth_b: torch.Tensor, camera_b: torch.Tensor, depth_a: torch.Tensor,
         camera_a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """View B's image [N, C, R, R] warped into view A through A's depth: (warped [N, C, R, R], visible
    [N, R, R] bool, the sampling grid [N, R, R, 2] in grid_sample's [-1, 1] units). Depths [N, 1, r, r] are
    distances along each pixel's unit ray at any resolution r (they are resized to R bilinearly); cameras are
    labels [N, 25]. A pixel of A is visible when its surface point projects inside B's frame, in front of B,
    and not behind B's own depth there (OCCLUSION_TOLERANCE)."""
    n, _, resolution, _ = image_b.shape
    origins, directions = pixel_rays(camera_a, resolution)
    distance_a = _resized(depth_a, resolution).reshape(n, -1, 1)
    points = origins + directions * distance_a
    uv, distance_b, in_front = project(points, camera_b)
    grid = (uv * 2 - 1).reshape(n, resolution, resolution, 2).to(image_b.dtype)
    warped = F.grid_sample(image_b, grid, mode="bilinear", padding_mode="border", align_corners=False)
    depth_b_there = F.grid_sample(_resized(depth_b, resolution).to(grid.dtype), grid, mode="bilinear",
                                  padding_mode="border", align_corners=False).reshape(n, -1)
    radius = camera_b[:, :16].reshape(-1, 4, 4)[:, :3, 3].norm(dim=1)[:, None]
    inside = ((uv >= 0) & (uv <= 1)).all(dim=-1)
    unoccluded = distance_b <= depth_b_there + OCCLUSION_TOLERANCE * radius
    return warped, (inside & in_front & unoccluded).reshape(n, resolution, resolution), grid


def _resized(depth: torch.Tensor, resolution: int) -> torch.Tensor:
    if depth.shape[-1] == resolution:
        return depth
    return F.interpolate(depth, size=(resolution, resolution), mode="bilinear", align_corners=False)


def plane_depth(cameras: torch.Tensor, resolution: int) -> torch.Tensor:
    """Depth [N, 1, R, R] (along each pixel's unit ray) of the plane through the world origin that faces each
    camera [N, 25]: what a flat picture of the object would have."""
    origins, directions = pixel_rays(cameras, resolution)
    axis = F.normalize(cameras[:, :16].reshape(-1, 4, 4)[:, :3, 2], dim=1)[:, None]
    distance = -(origins * axis).sum(-1) / (directions * axis).sum(-1)
    return distance.reshape(-1, 1, resolution, resolution)


def consistency_sums(image_a: torch.Tensor, depth_a: torch.Tensor, camera_a: torch.Tensor, image_b: torch.Tensor,
                     depth_b: torch.Tensor, camera_b: torch.Tensor, *, mask_a: torch.Tensor | None = None,
                     mask_b: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """View B warped into view A, images [N, 3, R, R] in [-1, 1]: (sum of colour errors [N], sum of the colour
    errors of a flat picture [N], pixels counted [N]). A pixel's colour error is the mean absolute difference
    over the channels between A and B warped through the given depths; the flat picture's, the same with B
    warped through `plane_depth` instead, over the same pixels. Pixels count where visible (`warp`) and, with
    the objects' masks [N, R, R] (bool), where A shows the object and the warped point lies wholly inside B's
    object: away from B's outline, where a grazing view blends the object with what lies behind it in one
    pixel, and lifting by a wrong depth lands on the background."""
    warped, visible, grid = warp(image_b, depth_b, camera_b, depth_a, camera_a)
    if mask_a is not None:
        visible = visible & mask_a
    if mask_b is not None:
        inside_b = F.grid_sample(mask_b[:, None].to(grid.dtype), grid, mode="bilinear", padding_mode="zeros",
                                 align_corners=False)[:, 0]
        visible = visible & (inside_b > WHOLLY_INSIDE)
    resolution = image_a.shape[-1]
    flat, _, _ = warp(image_b, plane_depth(camera_b, resolution), camera_b, plane_depth(camera_a, resolution),
                      camera_a)
    error = (image_a - warped).abs().mean(dim=1)
    flat_error = (image_a - flat).abs().mean(dim=1)
    return ((error * visible).sum(dim=(1, 2)).double(), (flat_error * visible).sum(dim=(1, 2)).double(),
            visible.sum(dim=(1, 2)).double())


def normalized_consistency(error_sum: float, flat_error_sum: float) -> float | None:
    """Colour errors through the generator's depth over those through a flat picture's (`consistency_sums`,
    summed over pixels, objects and views): 0 when G's geometry explains the other view perfectly, 1 when it
    explains it no better than a picture facing the camera (a 2D generator, or a 3D one whose depth says
    nothing, or a blank image), above 1 when its depth misleads. None when no pixel counted."""
    return error_sum / flat_error_sum if flat_error_sum > 0 else None
