"""Volume rendering: compositing, tri-plane sampling, the decoder, depth sampling and an end-to-end render.

Expected values are derived by hand or recomputed independently in float64 numpy.
"""

import math

import numpy as np
import pytest
import torch

from eg3d.config import RenderingConfig
from eg3d.networks.camera import orbit_camera, pixel_rays
from eg3d.networks.renderer import (TriPlaneDecoder, VolumeRenderer, composite, importance_depths, ray_box_bounds,
                                    sample_triplanes, stratified_depths)


def softplus64(x):
    return np.logaddexp(0.0, x)


def reference_weights(sigma_raw, depths):
    """Independent float64 compositing weights for one ray: sigma_raw [S], depths [S] -> [S-1]."""
    sigma_raw, depths = np.asarray(sigma_raw, np.float64), np.asarray(depths, np.float64)
    deltas = np.diff(depths)
    sigma = softplus64((sigma_raw[1:] + sigma_raw[:-1]) / 2 - 1)
    alpha = 1 - np.exp(-sigma * deltas)
    transmittance = np.ones_like(alpha)
    for i in range(1, len(alpha)):
        transmittance[i] = transmittance[i - 1] * (1 - alpha[i - 1] + 1e-10)
    return alpha * transmittance


# --------------------------------------------------------------------------------------------- composite

@pytest.mark.parametrize("white_background", [False, True])
def test_composite_uniform_density(white_background):
    a, b, S = 2.25, 3.3, 48
    s = torch.tensor([-3.0, 0.0, 1.5, 4.0])  # one raw density per ray
    f = torch.tensor([0.2, 0.7, 1.0, 0.35])  # one constant feature per ray
    R = len(s)
    depths = torch.linspace(a, b, S).expand(1, R, S)
    sigma = s.reshape(1, R, 1, 1).expand(1, R, S, 1)
    features = f.reshape(1, R, 1, 1).expand(1, R, S, 3)
    feature, depth, weights = composite(features, sigma, depths, white_background=white_background)
    assert feature.shape == (1, R, 3) and depth.shape == (1, R, 1) and weights.shape == (1, R, S - 1, 1)
    w = 1 - np.exp(-softplus64(s.numpy().astype(np.float64) - 1) * (b - a))
    np.testing.assert_allclose(weights.sum(dim=2)[0, :, 0].numpy(), w, atol=1e-5)
    fw = f.numpy().astype(np.float64) * w
    expected = 2 * (fw + 1 - w) - 1 if white_background else 2 * fw - 1
    np.testing.assert_allclose(feature[0].numpy(), np.repeat(expected[:, None], 3, axis=1), atol=2e-5)


@pytest.mark.parametrize("d0", [2.4, 2.6234, 2.9, 3.05])
def test_composite_opaque_slab_depth(d0):
    a, b, S = 2.25, 3.3, 48
    spacing = (b - a) / (S - 1)
    depths = torch.linspace(a, b, S)
    sigma = torch.where(depths >= d0, 1e4, -1e4).reshape(1, 1, S, 1)
    features = torch.full((1, 1, S, 2), 0.6)
    feature, depth, weights = composite(features, sigma, depths.reshape(1, 1, S))
    assert weights.sum().item() == pytest.approx(1.0, abs=1e-5)
    # The first interval fully inside the slab is opaque; its midpoint is half a spacing past the first
    # sample at or beyond d0, which itself lies less than one spacing past d0.
    first_inside = depths[depths >= d0][0].item()
    assert first_inside - d0 < spacing + 1e-6
    assert depth.item() == pytest.approx(first_inside + spacing / 2, abs=0.02 * spacing)
    assert d0 <= depth.item() <= d0 + 1.5 * spacing
    np.testing.assert_allclose(feature[0, 0].numpy(), 2 * 0.6 - 1, atol=1e-5)


def test_composite_matches_float64_reference():
    rng = np.random.default_rng(0)
    N, R, S, C = 2, 5, 24, 4
    depths = np.sort(rng.uniform(0.5, 3.0, size=(N, R, S)), axis=-1)
    sigma_raw = rng.normal(0, 3, size=(N, R, S))
    feats = rng.uniform(0, 1, size=(N, R, S, C))
    feature, depth, weights = composite(torch.tensor(feats, dtype=torch.float32),
                                        torch.tensor(sigma_raw[..., None], dtype=torch.float32),
                                        torch.tensor(depths, dtype=torch.float32))
    for n in range(N):
        for r in range(R):
            w = reference_weights(sigma_raw[n, r], depths[n, r])
            np.testing.assert_allclose(weights[n, r, :, 0].numpy(), w, atol=2e-6, rtol=1e-4)
            f_mid = (feats[n, r, 1:] + feats[n, r, :-1]) / 2
            np.testing.assert_allclose(feature[n, r].numpy(), 2 * (w[:, None] * f_mid).sum(0) - 1, atol=2e-5)
            d_mid = (depths[n, r, 1:] + depths[n, r, :-1]) / 2
            expected_depth = np.clip((w * d_mid).sum() / w.sum(), depths.min(), depths.max())
            np.testing.assert_allclose(depth[n, r, 0].item(), expected_depth, atol=1e-4)


def test_composite_empty_ray_depth_is_far_bound():
    S = 16
    depths = torch.linspace(2.25, 3.3, S).reshape(1, 1, S)
    feature, depth, weights = composite(torch.ones(1, 1, S, 3), torch.full((1, 1, S, 1), -1e4), depths)
    assert weights.abs().max().item() == 0
    assert torch.isfinite(depth).all()
    assert depth.item() == pytest.approx(3.3, abs=1e-6)
    np.testing.assert_allclose(feature.numpy(), -1.0, atol=1e-6)


# -------------------------------------------------------------------------------------- sample_triplanes

H, W = 12, 16  # H != W catches swapped grid axes


def analytic_planes(batch_sign=(1.0,)):
    """Planes [N,3,3,H,W]: channel 0 = u (column coordinate), 1 = v (row coordinate), 2 = plane id k+1.

    u_j = (2j+1)/W - 1 and v_i = (2i+1)/H - 1 are the pixel-centre coordinates grid_sample uses with
    align_corners=False, so bilinear reads of channels 0/1 return the grid coordinate itself.
    """
    u = (2 * torch.arange(W, dtype=torch.float32) + 1) / W - 1
    v = (2 * torch.arange(H, dtype=torch.float32) + 1) / H - 1
    planes = torch.zeros(len(batch_sign), 3, 3, H, W)
    for n, sign in enumerate(batch_sign):
        for k in range(3):
            planes[n, k, 0] = sign * u[None, :].expand(H, W)
            planes[n, k, 1] = sign * v[:, None].expand(H, W)
            planes[n, k, 2] = sign * (k + 1)
    return planes


@pytest.mark.parametrize("box_warp", [1.0, 1.6])
@pytest.mark.parametrize("legacy", [False, True])
def test_sample_triplanes_reads_the_right_axes(box_warp, legacy):
    torch.manual_seed(0)
    # Scaled coordinates within 0.85 stay between the outermost pixel centres (0.9167 for H = 12).
    points = (torch.rand(2, 50, 3) * 2 - 1) * 0.85 * box_warp / 2
    planes = analytic_planes(batch_sign=(1.0, -1.0))
    out = sample_triplanes(planes, points, box_warp=box_warp, legacy_plane_order=legacy)
    assert out.shape == (2, 3, 50, 3)
    p = points.double().numpy() * 2 / box_warp
    axes = [(0, 1), (0, 2), (2, 0) if legacy else (1, 2)]
    for n, sign in enumerate((1.0, -1.0)):
        for k, (i, j) in enumerate(axes):
            np.testing.assert_allclose(out[n, k, :, 0].numpy(), sign * p[n, :, i], atol=1e-5,
                                       err_msg=f"plane {k} u")
            np.testing.assert_allclose(out[n, k, :, 1].numpy(), sign * p[n, :, j], atol=1e-5,
                                       err_msg=f"plane {k} v")
            np.testing.assert_allclose(out[n, k, :, 2].numpy(), sign * (k + 1), atol=1e-5)


@pytest.mark.parametrize("box_warp", [1.0, 1.6])
def test_sample_triplanes_zero_outside_box(box_warp):
    planes = analytic_planes() + 5.0  # nonzero everywhere inside
    far = 3.0 * box_warp
    points = torch.tensor([[[far, far, far], [-far, 0.1, -far],
                            [far, 0.1 * box_warp, 0.05 * box_warp],  # only x outside: the YZ plane still reads
                            [0.1 * box_warp, 0.05 * box_warp, 0.0]]])  # inside: all planes read
    out = sample_triplanes(planes, points, box_warp=box_warp)
    assert out[0, :, 0].abs().max().item() == 0
    assert out[0, :, 1].abs().max().item() == 0
    assert out[0, 0, 2].abs().max().item() == 0 and out[0, 1, 2].abs().max().item() == 0
    assert (out[0, 2, 2] > 1).all()
    assert (out[0, :, 3] > 1).all()


# -------------------------------------------------------------------------------------- TriPlaneDecoder

def make_decoder(C=8, hidden=16, out=6, lr_multiplier=1.0):
    torch.manual_seed(1)
    decoder = TriPlaneDecoder(C, hidden, out, lr_multiplier=lr_multiplier)
    with torch.no_grad():  # nonzero biases so their gain is exercised
        decoder.hidden.bias.normal_()
        decoder.out.bias.normal_()
    return decoder


def test_decoder_shapes_range_and_float64_reference():
    C, hidden, out, lr = 8, 16, 6, 0.5
    decoder = make_decoder(C, hidden, out, lr)
    x = torch.randn(2, 3, 10, C) * 3
    sigma, features = decoder(x)
    assert sigma.shape == (2, 10, 1) and features.shape == (2, 10, out)
    # Independent float64 MLP with the equalized-lr gains: weight * lr/sqrt(fan_in), bias * lr.
    W1, b1 = decoder.hidden.weight.double().detach().numpy(), decoder.hidden.bias.double().detach().numpy()
    W2, b2 = decoder.out.weight.double().detach().numpy(), decoder.out.bias.double().detach().numpy()
    m = x.double().numpy().mean(axis=1)
    h = softplus64(m @ (W1 * lr / math.sqrt(C)).T + b1 * lr)
    y = h @ (W2 * lr / math.sqrt(hidden)).T + b2 * lr
    np.testing.assert_allclose(sigma.detach().numpy()[..., 0], y[..., 0], atol=1e-4, rtol=1e-4)
    expected_features = 1 / (1 + np.exp(-y[..., 1:])) * 1.002 - 0.001
    np.testing.assert_allclose(features.detach().numpy(), expected_features, atol=1e-5)


def test_decoder_feature_range_saturated():
    decoder = make_decoder()
    x = torch.randn(1, 3, 500, 8) * 1e3
    _, features = decoder(x)
    assert features.min().item() >= -0.001 - 1e-6 and features.max().item() <= 1.001 + 1e-6
    assert features.min().item() < -0.0009 and features.max().item() > 1.0009  # reaches slightly beyond [0, 1]


def test_decoder_averages_the_planes():
    decoder = make_decoder()
    torch.manual_seed(2)
    x = torch.randn(2, 3, 7, 8)
    sigma, features = decoder(x)
    mean = x.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
    for other in (mean, x[:, [2, 0, 1]], x[:, [1, 0, 2]]):
        s2, f2 = decoder(other)
        torch.testing.assert_close(s2, sigma, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(f2, features, atol=1e-5, rtol=1e-5)
    one = x[:, :1]
    s_rep, f_rep = decoder(one.expand(-1, 3, -1, -1))
    s_one, f_one = decoder(one)
    torch.testing.assert_close(s_rep, s_one)
    torch.testing.assert_close(f_rep, f_one)
    # Not just invariant to everything: changing one plane changes the output.
    changed = x.clone()
    changed[:, 1] += 1
    assert not torch.allclose(decoder(changed)[0], sigma)


# ------------------------------------------------------------------------------------ stratified_depths

def test_stratified_depths_without_jitter_is_linspace():
    d = stratified_depths(2.25, 3.3, 48, (2, 5), jitter=False)
    assert d.shape == (2, 5, 48)
    expected = np.linspace(2.25, 3.3, 48)
    np.testing.assert_allclose(d.numpy(), np.broadcast_to(expected, (2, 5, 48)), atol=1e-6)


def test_stratified_depths_jitter_within_one_bin():
    torch.manual_seed(0)
    S, start, end = 10, 0.5, 2.0
    d = stratified_depths(start, end, S, (4, 200), jitter=True)
    base = np.linspace(start, end, S)
    offset = d.numpy() - base
    bin_width = (end - start) / (S - 1)
    assert offset.min() >= -1e-6 and offset.max() <= bin_width + 1e-6
    # Jitter actually happens and covers the bin.
    assert offset.std() > 0.2 * bin_width
    assert offset.max() > 0.9 * bin_width and offset.min() < 0.1 * bin_width


def test_stratified_depths_per_ray_bounds():
    torch.manual_seed(0)
    start = torch.tensor([[[0.0], [1.0], [2.5]]])
    end = torch.tensor([[[1.0], [3.0], [2.5]]])
    d = stratified_depths(start, end, 5, (1, 3), jitter=False)
    assert d.shape == (1, 3, 5)
    np.testing.assert_allclose(d[0].numpy(), [np.linspace(0, 1, 5), np.linspace(1, 3, 5), np.full(5, 2.5)],
                               atol=1e-6)
    dj = stratified_depths(start, end, 5, (1, 3), jitter=True)
    offset = (dj - d)[0].numpy()
    bins = np.array([0.25, 0.5, 0.0])[:, None]
    assert (offset >= -1e-6).all() and (offset <= bins + 1e-6).all()


# -------------------------------------------------------------------------------------- ray_box_bounds

def test_ray_box_bounds_hand_computed():
    s3 = math.sqrt(3)
    origins = torch.tensor([[[0.0, 0.0, 5.0],      # along -z through the centre
                             [-3.0, 0.1, 0.2],     # along +x, off-centre
                             [2.0, 2.0, 2.0],      # diagonal towards the origin
                             [0.0, 0.0, 0.0],      # starts inside
                             [0.0, 2.0, 5.0],      # parallel to the box, above it: miss
                             [0.0, 0.0, 5.0],      # pointing away: miss
                             [2.0, 2.0, 2.0],      # diagonal, offset direction: miss
                             [2.0, 0.0, 0.0]]])    # skew past the corner (slab intervals disjoint): miss
    directions = torch.tensor([[[0.0, 0.0, -1.0],
                                [1.0, 0.0, 0.0],
                                [-1 / s3, -1 / s3, -1 / s3],
                                [1.0, 0.0, 0.0],
                                [0.0, 0.0, -1.0],
                                [0.0, 0.0, 1.0],
                                [-1.0, 0.0, 0.0],
                                [-1 / math.sqrt(2), 0.0, 1 / math.sqrt(2)]]])
    near, far = ray_box_bounds(origins, directions, 0.5)
    assert near.shape == far.shape == (1, 8, 1)
    np.testing.assert_allclose(near[0, :, 0].numpy(), [4.5, 2.5, 1.5 * s3, 0.0, 0, 0, 0, 0], atol=1e-5)
    np.testing.assert_allclose(far[0, :, 0].numpy(), [5.5, 3.5, 2.5 * s3, 0.5, 0, 0, 0, 0], atol=1e-5)


def test_ray_box_bounds_half_size():
    near, far = ray_box_bounds(torch.tensor([[[0.3, -4.0, 0.1]]]), torch.tensor([[[0.0, 1.0, 0.0]]]), 0.8)
    assert near.item() == pytest.approx(3.2, abs=1e-5) and far.item() == pytest.approx(4.8, abs=1e-5)


# ------------------------------------------------------------------------------------ importance_depths

def peaked_weights(S, R, peaks):
    w = torch.zeros(1, R, S - 1)
    w[0, torch.arange(R), torch.as_tensor(peaks)] = 1.0
    return w


@pytest.mark.parametrize("deterministic", [True, False])
def test_importance_depths_concentrate_at_peak(deterministic):
    torch.manual_seed(0)
    S, R, F = 48, 32, 48
    coarse = torch.linspace(2.25, 3.3, S).expand(1, R, S).contiguous()
    peaks = torch.randint(3, S - 4, (R,))
    fine = importance_depths(coarse, peaked_weights(S, R, peaks), F, deterministic=deterministic)
    assert fine.shape == (1, R, F)
    assert fine.min().item() >= 2.25 - 1e-6 and fine.max().item() <= 3.3 + 1e-6
    lo = (coarse[0, 0, peaks - 1] - 1e-6)[:, None]
    hi = (coarse[0, 0, peaks + 2] + 1e-6)[:, None]
    inside = ((fine[0] >= lo) & (fine[0] <= hi)).float()
    # Smoothing by max-pool then avg-pool spreads a unit peak to 0.5, 1, 0.5 on the peak interval and its
    # neighbours; +0.01 on all 47 intervals: expected fraction = (2 + 0.03) / (2 + 0.47) = 0.822.
    assert inside.mean().item() > 0.8
    assert inside.mean().item() == pytest.approx(2.03 / 2.47, abs=0.03)
    assert inside.mean(dim=1).min().item() > 0.6  # each ray follows its own peak


def test_importance_depths_deterministic_sorted_and_reproducible():
    torch.manual_seed(0)
    S = 24
    coarse = torch.sort(torch.rand(2, 3, S) * 2 + 1, dim=-1)[0]
    weights = torch.rand(2, 3, S - 1)
    a = importance_depths(coarse, weights, 20, deterministic=True)
    b = importance_depths(coarse, weights, 20, deterministic=True)
    assert torch.equal(a, b)
    assert (a[..., 1:] >= a[..., :-1]).all()
    assert (a >= coarse[..., :1] - 1e-6).all() and (a <= coarse[..., -1:] + 1e-6).all()
    assert not a.requires_grad


def test_importance_depths_uniform_weights_follow_the_cdf():
    S, F = 48, 47
    start, end = 2.25, 3.3
    coarse = torch.linspace(start, end, S).expand(1, 2, S).contiguous()
    weights = torch.full((1, 2, S - 1), 0.3)
    # Deterministic: u_i = i/(F+1) for i = 1..F through a uniform CDF gives start + u_i (end - start).
    fine = importance_depths(coarse, weights, F, deterministic=True)
    expected = start + (end - start) * np.arange(1, F + 1) / (F + 1)
    np.testing.assert_allclose(fine[0].numpy(), np.broadcast_to(expected, (2, F)), atol=1e-5)
    # Random: the empirical CDF is close to the uniform CDF (Kolmogorov-Smirnov distance).
    torch.manual_seed(0)
    many = importance_depths(torch.linspace(start, end, S).expand(1, 64, S).contiguous(),
                             torch.full((1, 64, S - 1), 0.3), 64, deterministic=False)
    x = np.sort(((many.numpy().ravel() - start) / (end - start)))
    ks = np.abs(np.arange(1, len(x) + 1) / len(x) - x).max()
    assert ks < 0.03


# ---------------------------------------------------------------------------------------- end to end

SPHERE_RADIUS = 0.3
COLOUR = 0.25


def render_sphere(importance, jitter=False, resolution=16):
    cfg = RenderingConfig(depth_resolution=48, depth_resolution_importance=importance,
                          ray_start=2.25, ray_end=3.3)
    renderer = VolumeRenderer(cfg)

    def decode(planes, decoder, points):
        inside = points.norm(dim=-1, keepdim=True) < SPHERE_RADIUS
        sigma = torch.where(inside, 1e4, -1e4)
        # Channel 0: a constant colour; channel 1: 0.5 + z, so its composite reads the surface point's z.
        features = torch.stack([torch.full_like(points[..., 0], COLOUR), 0.5 + points[..., 2],
                                torch.full_like(points[..., 0], COLOUR)], dim=-1)
        return sigma, features

    renderer.decode = decode
    origins, directions = pixel_rays(orbit_camera(math.pi / 2, math.pi / 2), resolution)
    return renderer(None, None, origins, directions, jitter=jitter), origins, directions


def sphere_hit_depth(origin, direction):
    o, d = np.asarray(origin, np.float64), np.asarray(direction, np.float64)
    b = d @ o
    disc = b * b - (o @ o - SPHERE_RADIUS ** 2)
    return -b - math.sqrt(disc) if disc >= 0 else None


def test_render_sphere_depth_and_misses():
    res = 16
    (feature, depth, weights), origins, directions = render_sphere(importance=48, resolution=res)
    assert feature.shape == (1, res * res, 3) and depth.shape == (1, res * res, 1)
    assert weights.shape == (1, res * res, 48 + 48 - 1, 1)
    centre = (res // 2) * res + res // 2
    assert depth[0, centre, 0].item() == pytest.approx(2.7 - SPHERE_RADIUS, abs=0.02)
    exact = sphere_hit_depth(origins[0, centre], directions[0, centre])
    assert depth[0, centre, 0].item() == pytest.approx(exact, abs=0.01)
    total = weights.sum(dim=2)[0, :, 0]
    assert total[centre].item() == pytest.approx(1.0, abs=1e-4)
    np.testing.assert_allclose(feature[0, centre, [0, 2]].numpy(), 2 * COLOUR - 1, atol=1e-4)
    surface_z = (origins[0, centre, 2] + exact * directions[0, centre, 2]).item()
    assert feature[0, centre, 1].item() == pytest.approx(2 * (0.5 + surface_z) - 1, abs=0.01)
    for corner in (0, res - 1, res * (res - 1), res * res - 1):
        assert sphere_hit_depth(origins[0, corner], directions[0, corner]) is None
        assert total[corner].item() < 1e-6
        np.testing.assert_allclose(feature[0, corner].numpy(), -1.0, atol=1e-5)
    # Hit/miss mask agrees with the analytic ray-sphere test for every pixel.
    hits = np.array([sphere_hit_depth(o, d) is not None for o, d in zip(origins[0], directions[0])])
    hit_margin = np.array([abs(np.linalg.norm(np.cross(o.numpy(), d.numpy())) - SPHERE_RADIUS) > 0.01
                           for o, d in zip(origins[0], directions[0])])
    np.testing.assert_array_equal((total.numpy() > 0.5)[hit_margin], hits[hit_margin])


def test_render_importance_sampling_reduces_depth_error():
    res = 16
    errors = {}
    for importance in (0, 48):
        (_, depth, _), origins, directions = render_sphere(importance=importance, resolution=res)
        pixels = [(res // 2) * res + res // 2, (res // 2 - 1) * res + res // 2 - 1, (res // 2) * res + res // 2 - 3]
        errors[importance] = max(abs(depth[0, p, 0].item() - sphere_hit_depth(origins[0, p], directions[0, p]))
                                 for p in pixels)
    assert errors[48] < errors[0]
    assert errors[48] < 0.005


def test_render_with_jitter_is_close():
    torch.manual_seed(0)
    res = 8
    (_, depth, weights), origins, directions = render_sphere(importance=48, jitter=True, resolution=res)
    centre = (res // 2) * res + res // 2
    assert depth[0, centre, 0].item() == pytest.approx(sphere_hit_depth(origins[0, centre], directions[0, centre]),
                                                       abs=0.02)


# ------------------------------------------------- rewritten for speed: against the previous formulation
# Each function below is the renderer's earlier (slower) implementation, copied here as an independent
# reference; the library's rewrite must agree with it in float64, values and gradients.

def previous_decoder(decoder, plane_features):
    """plane_features [N, 3, M, C] -> sigma [N, M, 1], features [N, M, out]: mean, then two F.linear."""
    x = plane_features.transpose(2, 3).mean(dim=1).transpose(1, 2)
    w1, b1 = decoder.hidden.weight * decoder.hidden.weight_gain, decoder.hidden.bias * decoder.hidden.bias_gain
    w2, b2 = decoder.out.weight * decoder.out.weight_gain, decoder.out.bias * decoder.out.bias_gain
    x = torch.nn.functional.linear(torch.nn.functional.softplus(torch.nn.functional.linear(x, w1, b1)), w2, b2)
    return x[..., :1], torch.sigmoid(x[..., 1:]) * (1 + 2 * 0.001) - 0.001


def previous_composite(features, sigma_raw, depths, *, white_background):
    depths = depths.unsqueeze(-1)
    deltas = depths[:, :, 1:] - depths[:, :, :-1]
    sigma_mid = torch.nn.functional.softplus((sigma_raw[:, :, 1:] + sigma_raw[:, :, :-1]) / 2 - 1)
    alpha = 1 - torch.exp(-sigma_mid * deltas)
    transmittance = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :, :1]), 1 - alpha + 1e-10], dim=2), dim=2)
    weights = alpha * transmittance[:, :, :-1]
    features_mid = (features[:, :, 1:] + features[:, :, :-1]) / 2
    depths_mid = (depths[:, :, 1:] + depths[:, :, :-1]) / 2
    feature = (weights * features_mid).sum(dim=2)
    weight_total = weights.sum(dim=2)
    depth = torch.nan_to_num((weights * depths_mid).sum(dim=2) / weight_total, float("inf"))
    depth = torch.minimum(torch.maximum(depth, depths[:, :, 0]), depths[:, :, -1])
    if white_background:
        feature = feature + 1 - weight_total
    return feature * 2 - 1, depth, weights


def assert_same_values_and_gradients(outputs, reference_outputs, inputs, atol=1e-12):
    """Compare outputs and the gradients of a random projection of them with respect to every input."""
    generator = torch.Generator().manual_seed(7)
    projections = [torch.randn(o.shape, generator=generator, dtype=o.dtype) for o in reference_outputs]
    for out, ref in zip(outputs, reference_outputs):
        torch.testing.assert_close(out, ref, atol=atol, rtol=0)
    grads = torch.autograd.grad(sum((o * p).sum() for o, p in zip(outputs, projections)), inputs, retain_graph=True)
    ref_grads = torch.autograd.grad(sum((o * p).sum() for o, p in zip(reference_outputs, projections)), inputs)
    for grad, ref in zip(grads, ref_grads):
        torch.testing.assert_close(grad, ref, atol=atol, rtol=0)


def test_decoder_matches_previous_formulation_float64():
    decoder = make_decoder(C=8, hidden=16, out=6).double()
    torch.manual_seed(3)
    planes = torch.randn(2, 3, 8, 9, 7, dtype=torch.float64, requires_grad=True)
    points = (torch.rand(2, 50, 3, dtype=torch.float64) - 0.5) * 1.2  # some outside the box
    plane_features = sample_triplanes(planes, points, box_warp=1.0)
    params = [planes, *decoder.parameters()]
    assert_same_values_and_gradients(decoder(plane_features), previous_decoder(decoder, plane_features), params)


@pytest.mark.parametrize("white_background", [False, True])
def test_composite_matches_previous_formulation_float64(white_background):
    torch.manual_seed(4)
    N, R, S, C = 2, 6, 10, 5
    features = torch.rand(N, R, S, C, dtype=torch.float64, requires_grad=True)
    sigma_raw = (torch.randn(N, R, S, 1, dtype=torch.float64) * 3).requires_grad_()
    depths = torch.sort(torch.rand(N, R, S, dtype=torch.float64) + 2.25, dim=2).values
    assert_same_values_and_gradients(composite(features, sigma_raw, depths, white_background=white_background),
                                     previous_composite(features, sigma_raw, depths,
                                                        white_background=white_background),
                                     [features, sigma_raw])


def previous_render(renderer, planes, decoder, origins, directions, *, jitter):
    """The renderer's earlier fine pass: coarse and fine features concatenated, then sorted by depth with
    a gather of every channel, then composited in sorted order."""
    cfg = renderer.cfg
    n, r, _ = origins.shape
    depths = stratified_depths(cfg.ray_start, cfg.ray_end, cfg.depth_resolution, (n, r), jitter=jitter)
    features, sigma = renderer._decode_samples(planes, decoder, origins, directions, depths)
    weights = previous_composite(features, sigma.detach(), depths, white_background=False)[2]
    fine_depths = importance_depths(depths, weights.squeeze(-1), cfg.depth_resolution_importance,
                                    deterministic=not jitter)
    fine_features, fine_sigma = renderer._decode_samples(planes, decoder, origins, directions, fine_depths)
    depths, order = torch.sort(torch.cat([depths, fine_depths], dim=2), dim=2)
    features = torch.cat([features, fine_features], dim=2)
    features = features.gather(2, order.unsqueeze(-1).expand(-1, -1, -1, features.shape[-1]))
    sigma = torch.cat([sigma, fine_sigma], dim=2).gather(2, order.unsqueeze(-1))
    return previous_composite(features, sigma, depths, white_background=cfg.white_background)


@pytest.mark.parametrize("jitter", [False, True])
@pytest.mark.parametrize("white_background", [False, True])
def test_render_matches_previous_formulation_float64(jitter, white_background):
    """Coarse and fine samples composited unsorted (their weights moved to them) equal sorting the
    features first: values and gradients with respect to the planes and the decoder, in float64."""
    renderer = VolumeRenderer(RenderingConfig(depth_resolution=7, depth_resolution_importance=5, ray_start=2.25,
                                              ray_end=3.3, white_background=white_background))
    decoder = make_decoder(C=8, hidden=16, out=6).double()
    torch.manual_seed(5)
    planes = (torch.randn(2, 3, 8, 9, 9, dtype=torch.float64) * 2).requires_grad_()
    origins, directions = pixel_rays(orbit_camera([1.4, 1.8], [1.5, 1.6]).double(), 6)
    torch.manual_seed(6)
    outputs = renderer(planes, decoder, origins, directions, jitter=jitter)
    torch.manual_seed(6)
    reference = previous_render(renderer, planes, decoder, origins, directions, jitter=jitter)
    assert_same_values_and_gradients(outputs, reference, [planes, *decoder.parameters()])
