"""Tri-plane features -> density and features along rays -> a composited feature image.

Stratified depth samples, importance samples drawn from the coarse weights, and the midpoint
compositing rule of the paper. Everything works on [N, R, S, ...] tensors: batch, rays, samples.
"""

import torch
import torch.nn.functional as F
from torch import nn

from .layers import FullyConnected

# (u, v) world axes read by each plane. Ours: XY, XZ, YZ. The reference's projection matrices give
# XY, XZ and ZX instead (no YZ plane, reference issue #67); `legacy_plane_order` reproduces that.
PLANE_AXES = ((0, 1), (0, 2), (1, 2))
LEGACY_PLANE_AXES = ((0, 1), (0, 2), (2, 0))


def project_to_planes(points: torch.Tensor, box_warp: float, legacy_plane_order: bool = False) -> torch.Tensor:
    """World points [N, M, 3] -> plane coordinates in [-1, 1] for grid_sample, [N, 3, M, 2]."""
    axes = LEGACY_PLANE_AXES if legacy_plane_order else PLANE_AXES
    scaled = points * (2 / box_warp)
    return torch.stack([scaled[..., list(uv)] for uv in axes], dim=1)


def sample_triplanes(planes: torch.Tensor, points: torch.Tensor, *, box_warp: float,
                     legacy_plane_order: bool = False) -> torch.Tensor:
    """Bilinear features of each plane at each point: planes [N, 3, C, H, W], points [N, M, 3] -> [N, 3, M, C]."""
    n, n_planes, channels, h, w = planes.shape
    grid = project_to_planes(points, box_warp, legacy_plane_order).reshape(n * n_planes, 1, -1, 2)
    features = F.grid_sample(planes.reshape(n * n_planes, channels, h, w), grid.to(planes.dtype),
                             mode="bilinear", padding_mode="zeros", align_corners=False)
    return features.reshape(n, n_planes, channels, -1).transpose(2, 3)


class _PlaneMean(torch.autograd.Function):
    """Mean over the planes, one row per point: features [N, P, C, M] -> [N * M, C], contiguous.

    The gradient comes back contiguous in the [N, P, C, M] layout grid_sample's output has, so grid_sample's
    backward reads it without a transposing copy: grad [N * M, C] -> grad / P, transposed once at [N, C, M]
    and then broadcast over the planes.
    """

    @staticmethod
    def forward(ctx, features):
        n, p, c, m = ctx.shape = features.shape
        features = features.contiguous()
        total = features[:, 0]
        for k in range(1, p):  # in order, as the sum over a dim does
            total = total + features[:, k]
        # One transposing copy, then an in-place division: the result is contiguous under torch.compile too
        # (which does not keep the strides of an out= argument).
        return total.transpose(1, 2).contiguous().div_(p).view(n * m, c)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        n, p, c, m = ctx.shape
        grad_mean = grad.reshape(n, m, c).transpose(1, 2).contiguous().div_(p)  # [N, C, M]
        return grad_mean.unsqueeze(1).expand(n, p, c, m).contiguous()


class TriPlaneDecoder(nn.Module):
    """Small MLP: mean of the three plane features -> raw density and `out_features` features."""

    def __init__(self, in_features: int = 32, hidden: int = 64, out_features: int = 32, lr_multiplier: float = 1.0):
        super().__init__()
        self.hidden = FullyConnected(in_features, hidden, lr_multiplier=lr_multiplier)
        self.out = FullyConnected(hidden, 1 + out_features, lr_multiplier=lr_multiplier)

    def forward(self, plane_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """plane_features [N, P, M, C] (best a transposed view of a contiguous [N, P, C, M], as
        `sample_triplanes` returns) -> raw density sigma [N, M, 1], features [N, M, out_features]."""
        n, _, m, _ = plane_features.shape
        x = _PlaneMean.apply(plane_features.transpose(2, 3))  # [N * M, C]
        sigma, features = self.out(F.softplus(self.hidden(x))).split([1, self.out.weight.shape[0] - 1], dim=1)
        features = torch.sigmoid(features) * (1 + 2 * 0.001) - 0.001  # slightly beyond [0,1], as in the paper
        return sigma.reshape(n, m, 1), features.reshape(n, m, -1)


def stratified_depths(ray_start, ray_end, num_samples: int, shape: tuple[int, int], *, jitter: bool,
                      device=None) -> torch.Tensor:
    """Evenly spaced depths [N, R, S] from ray_start to ray_end, each shifted by up to one bin when jittering.

    ray_start / ray_end: floats, or tensors [N, R, 1] (per-ray bounds from a box intersection).
    """
    t = torch.linspace(0, 1, num_samples, device=device)
    start = torch.as_tensor(ray_start, device=device, dtype=t.dtype)
    end = torch.as_tensor(ray_end, device=device, dtype=t.dtype)
    depths = (start + (end - start) * t).expand(*shape, num_samples).contiguous()
    if jitter:
        depths = depths + torch.rand_like(depths) * (end - start) / (num_samples - 1)
    return depths


def ray_box_bounds(origins: torch.Tensor, directions: torch.Tensor, half_size: float):
    """Entry/exit distances [N, R, 1] of rays through the cube [-half_size, half_size]^3; misses get 0, 0."""
    inverse = 1 / torch.where(directions.abs() < 1e-9, torch.full_like(directions, 1e-9), directions)
    t0 = (-half_size - origins) * inverse
    t1 = (half_size - origins) * inverse
    near = torch.minimum(t0, t1).amax(dim=-1, keepdim=True).clamp(min=0)
    far = torch.maximum(t0, t1).amin(dim=-1, keepdim=True)
    hit = far > near
    return torch.where(hit, near, 0.0), torch.where(hit, far, 0.0)


def compositing_weights(sigma_raw: torch.Tensor, depths: torch.Tensor) -> torch.Tensor:
    """Weight of each interval between consecutive samples: sigma_raw, depths [N, R, S, 1] -> [N, R, S-1, 1]."""
    deltas = depths[:, :, 1:] - depths[:, :, :-1]
    sigma_mid = F.softplus((sigma_raw[:, :, 1:] + sigma_raw[:, :, :-1]) / 2 - 1)
    alpha = 1 - torch.exp(-sigma_mid * deltas)
    transmittance = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :, :1]), 1 - alpha + 1e-10], dim=2), dim=2)
    return alpha * transmittance[:, :, :-1]


def composite(features, sigma_raw: torch.Tensor, depths: torch.Tensor, *, order: torch.Tensor | None = None,
              white_background: bool = False):
    """Volume-render samples along rays.

    sigma_raw [N, R, S, 1] and depths [N, R, S] sorted by depth; features [N, R, S, C] in the same order, or,
    with `order` [N, R, S] (sorted sample j is unsorted sample order[..., j], as torch.sort returns it), a
    tuple of chunks [N, R, S_k, C] whose concatenation along the samples is the unsorted order.
    -> (feature [N, R, C] mapped to [-1, 1], depth [N, R, 1], weights [N, R, S-1, 1]). Quantities are averaged
    at interval midpoints; density is softplus(sigma_raw - 1).
    """
    depths = depths.unsqueeze(-1)
    weights = compositing_weights(sigma_raw, depths)
    # sum_i w_i (f_i + f_i+1) / 2 = sum_s f_s (w_s-1 + w_s) / 2 (w_-1 = w_S-1 = 0): one [1, S] x [S, C]
    # product per ray, without the midpoint features [N, R, S-1, C] or their gradient. The sum runs over the
    # samples in any order, so unsorted features need only their weights moved to them (one channel),
    # instead of being sorted themselves (C channels, and a scatter of C channels in the backward pass).
    padded = F.pad(weights, (0, 0, 1, 1))  # [N, R, S+1, 1]
    sample_weights = (padded[:, :, 1:] + padded[:, :, :-1]) / 2  # [N, R, S, 1]
    if order is None:
        chunks = (features,)
    else:
        chunks = tuple(features)
        sample_weights = torch.zeros_like(sample_weights).scatter(2, order.unsqueeze(-1), sample_weights)
    parts = sample_weights.transpose(2, 3).split([chunk.shape[2] for chunk in chunks], dim=3)
    feature = sum(torch.matmul(part, chunk) for part, chunk in zip(parts, chunks)).squeeze(2)  # [N, R, C]
    depths_mid = (depths[:, :, 1:] + depths[:, :, :-1]) / 2
    weight_total = weights.sum(dim=2)
    depth = torch.nan_to_num((weights * depths_mid).sum(dim=2) / weight_total, float("inf"))
    depth = torch.minimum(torch.maximum(depth, depths[:, :, 0]), depths[:, :, -1])  # per ray, unlike the reference
    if white_background:
        feature = feature + 1 - weight_total
    return feature * 2 - 1, depth, weights


def smooth_weights(weights: torch.Tensor) -> torch.Tensor:
    """Max-pool then average-pool (window 2) along the samples, keeping the length: [B, K] -> [B, K]."""
    padded = F.pad(weights.unsqueeze(1), (1, 1), mode="replicate")
    pooled = F.max_pool1d(padded, 2, 1)  # K + 1
    return F.avg_pool1d(pooled, 2, 1).squeeze(1)  # K


def importance_depths(coarse_depths: torch.Tensor, weights: torch.Tensor, num_samples: int, *,
                      deterministic: bool = False) -> torch.Tensor:
    """Inverse-CDF samples [N, R, num_samples] from a piecewise-constant pdf over the coarse intervals.

    coarse_depths [N, R, S] sorted; weights [N, R, S-1] (one per interval, from `composite`).
    """
    n, r, s = coarse_depths.shape
    edges = coarse_depths.reshape(n * r, s)
    pdf = smooth_weights(weights.reshape(n * r, s - 1)) + 0.01
    pdf = pdf / pdf.sum(dim=-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, dim=-1)], dim=-1)  # [B, S]
    if deterministic:
        u = torch.linspace(0, 1, num_samples + 2, device=cdf.device)[1:-1].expand(n * r, num_samples)
    else:
        u = torch.rand(n * r, num_samples, device=cdf.device)
    u = u.contiguous() * cdf[:, -1:]
    index = torch.searchsorted(cdf.detach(), u, right=True).clamp(1, s - 1)
    cdf_lo, cdf_hi = cdf.gather(1, index - 1), cdf.gather(1, index)
    edge_lo, edge_hi = edges.gather(1, index - 1), edges.gather(1, index)
    fraction = ((u - cdf_lo) / (cdf_hi - cdf_lo).clamp(min=1e-8)).clamp(0, 1)
    return (edge_lo + fraction * (edge_hi - edge_lo)).reshape(n, r, num_samples).detach()


class VolumeRenderer(nn.Module):
    """Renders rays through tri-planes with a coarse (stratified) and a fine (importance) pass."""

    def __init__(self, rendering):
        super().__init__()
        self.cfg = rendering

    def decode(self, planes, decoder, points):
        features = sample_triplanes(planes, points, box_warp=self.cfg.box_warp,
                                    legacy_plane_order=self.cfg.legacy_plane_order)
        return decoder(features)

    def _decode_samples(self, planes, decoder, origins, directions, depths):
        n, r, s = depths.shape
        points = (origins.unsqueeze(2) + directions.unsqueeze(2) * depths.unsqueeze(-1)).reshape(n, r * s, 3)
        sigma, features = self.decode(planes, decoder, points)
        return features.reshape(n, r, s, -1), sigma.reshape(n, r, s, 1)

    def forward(self, planes, decoder, origins, directions, *, jitter: bool):
        """origins, directions [N, R, 3] -> feature [N, R, C] in [-1, 1], depth [N, R, 1], weights."""
        cfg = self.cfg
        n, r, _ = origins.shape
        if cfg.ray_start is None:
            ray_start, ray_end = ray_box_bounds(origins, directions, cfg.box_warp / 2)
        else:
            ray_start, ray_end = cfg.ray_start, cfg.ray_end
        depths = stratified_depths(ray_start, ray_end, cfg.depth_resolution, (n, r), jitter=jitter,
                                   device=origins.device)
        features, sigma = self._decode_samples(planes, decoder, origins, directions, depths)
        if cfg.depth_resolution_importance > 0:
            weights = compositing_weights(sigma.detach(), depths.unsqueeze(-1))
            fine_depths = importance_depths(depths, weights.squeeze(-1), cfg.depth_resolution_importance,
                                            deterministic=not jitter)
            fine_features, fine_sigma = self._decode_samples(planes, decoder, origins, directions, fine_depths)
            depths, order = torch.sort(torch.cat([depths, fine_depths], dim=2), dim=2)
            sigma = torch.cat([sigma, fine_sigma], dim=2).gather(2, order.unsqueeze(-1))
            return composite((features, fine_features), sigma, depths, order=order,
                             white_background=cfg.white_background)
        return composite(features, sigma, depths, white_background=cfg.white_background)
