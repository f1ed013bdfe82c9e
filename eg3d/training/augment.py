"""Adaptive discriminator augmentation (ADA; Karras et al., "Training Generative Adversarial Networks with
Limited Data", 2020): the 'bgc' pipeline, applied to everything the discriminator sees.

Each transform fires per image with probability p (one overall strength for all of them):
- geometric ('bg'): x-flip, 90-degree rotations, integer translation (uniform, up to 1/8 of the image),
  isotropic scale (log2-normal, std 0.2), rotation (uniform; drawn twice, before and after the
  anisotropic scale, each with probability 1 - sqrt(1 - p), so that one of them fires with probability
  p), anisotropic scale (log2-normal, std 0.2), fractional translation (normal, std 1/8 of the image).
  They are composed into one matrix and applied at once: the image is padded by reflection as far as
  the transform reaches, upsampled 2x with a symlet-6 wavelet filter, resampled bilinearly, and
  filtered and downsampled back with the same wavelet. Up- then downsampling with an orthogonal
  wavelet reconstructs the image perfectly, so an integer translation comes out exact; a flip or a
  quarter turn between the two is not undone exactly, as symlet-6 is not symmetric (the published
  pipeline behaves the same).
- colour ('c'): brightness (additive, normal std 0.2), contrast (log2-normal, std 0.5), luma flip (a
  reflection through the plane orthogonal to the grey axis), hue rotation (uniform angle about the
  grey axis), saturation (log2-normal, std 1); composed into one 4x4 matrix over homogeneous RGB and
  applied to every group of 3 channels alike (EG3D's 6-channel final + raw image).

Everything is differentiable with respect to the images (the generator learns through it); the
transform parameters are drawn from torch's global (CPU) generator, which the trainer seeds per micro-batch.
They are drawn and composed into matrices on the host, a few numbers per image, so that the padding the
geometric transforms need (which sets the shapes of the images on the device) is known there without waiting
for a GPU; only the matrices go to the images' device.
kornia has comparable transforms but not this pipeline (other padding, resampling filters and
probability semantics), so it is written here.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F

from eg3d.networks.layers import resize_bilinear, upfirdn2d

GEOMETRIC = ("xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac")
COLOR = ("brightness", "contrast", "lumaflip", "hue", "saturation")
BGC = GEOMETRIC + COLOR

INTEGER_TRANSLATION_MAX = 0.125  # fraction of the image size
SCALE_LOG2_STD = 0.2
ANISO_LOG2_STD = 0.2
FRACTIONAL_TRANSLATION_STD = 0.125  # fraction of the image size
BRIGHTNESS_STD = 0.2
CONTRAST_LOG2_STD = 0.5
SATURATION_LOG2_STD = 1.0

# Lowpass decomposition taps of the Daubechies symlet with 6 vanishing moments (orthogonal: its even
# shifts are orthonormal, which makes 2x up- then downsampling with it the identity).
SYM6 = (0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
        0.4910559419267466, 0.787641141030194, 0.3379294217276218, -0.07263752278646252,
        -0.021060292512300564, 0.04472490177066578, 0.0017677118642428036, -0.007800708325034148)

GREY_AXIS = torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=torch.float64) / math.sqrt(3)  # homogeneous RGB


def host_to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`tensor` (on the host) on `device`, without waiting for it: a plain copy to a GPU waits until the GPU's
    queue is done before the host memory may be reused, so the copy goes from pinned memory, asynchronously."""
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def _matrix(rows, like: torch.Tensor) -> torch.Tensor:
    """[N, R, C] from rows of per-image values [N] or constants."""
    elements = [x if isinstance(x, torch.Tensor) else torch.full_like(like, x) for row in rows for x in row]
    return torch.stack(elements, dim=-1).reshape(len(like), len(rows), len(rows[0]))


def translate2d(tx, ty):
    return _matrix([[1, 0, tx], [0, 1, ty], [0, 0, 1]], tx)


def scale2d(sx, sy):
    return _matrix([[sx, 0, 0], [0, sy, 0], [0, 0, 1]], sx)


def rotate2d(theta):
    c, s = torch.cos(theta), torch.sin(theta)
    return _matrix([[c, -s, 0], [s, c, 0], [0, 0, 1]], theta)


def brightness_matrix(b):
    return _matrix([[1, 0, 0, b], [0, 1, 0, b], [0, 0, 1, b], [0, 0, 0, 1]], b)


def contrast_matrix(c):
    return _matrix([[c, 0, 0, 0], [0, c, 0, 0], [0, 0, c, 0], [0, 0, 0, 1]], c)


def luma_flip_matrix(flip):
    """Householder reflection through the plane orthogonal to the grey axis where flip is 1."""
    v = GREY_AXIS.to(flip)
    return torch.eye(4).to(flip) - 2 * torch.outer(v, v) * flip[:, None, None]


def hue_rotation_matrix(theta):
    """Rotation by theta about the grey axis (Rodrigues' formula)."""
    v = GREY_AXIS.to(theta)[:3]
    cross = torch.tensor([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]]).to(theta) / math.sqrt(3)  # v x .
    c, s = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    rotation = c * torch.eye(3).to(theta) + s * cross + (1 - c) * torch.outer(v, v)
    return F.pad(rotation, [0, 1, 0, 1]) + F.pad(torch.ones(1, 1, 1).to(theta), [3, 0, 3, 0])


def saturation_matrix(s):
    """Keeps the grey component, scales the chroma (the part orthogonal to the grey axis) by s."""
    grey = torch.outer(GREY_AXIS, GREY_AXIS).to(s)
    rgb, homogeneous = torch.diag(torch.tensor([1.0, 1, 1, 0])).to(s), torch.diag(torch.tensor([0.0, 0, 0, 1])).to(s)
    return grey + (rgb - grey) * s[:, None, None] + homogeneous


def sample_parameters(batch_size: int, p: float, *, height: int, width: int, transforms=BGC,
                      device=None) -> dict[str, torch.Tensor]:
    """Per-image parameters of each enabled transform, at their identity value where it does not fire.

    xflip {0, 1}; rotate90: quarter turns {0..3}; xint, xfrac: [N, 2] translation in pixels (x, y);
    scale, aniso, contrast, saturation: factors; rotate: [N, 2] angles before and after the anisotropic
    scale; brightness: offset; lumaflip {0, 1}; hue: angle."""
    n = batch_size

    def rand(*shape):
        return torch.rand(n, *shape, device=device)

    def randn(*shape):
        return torch.randn(n, *shape, device=device)

    def gated(value, identity, probability=p):
        fires = rand() < probability
        return torch.where(fires.reshape(-1, *[1] * (value.ndim - 1)), value, torch.full_like(value, identity))

    size = torch.tensor([width, height], device=device)
    draw = {
        "xflip": lambda: gated(torch.floor(rand() * 2), 0),
        "rotate90": lambda: gated(torch.floor(rand() * 4), 0),
        "xint": lambda: gated(torch.round((rand(2) * 2 - 1) * INTEGER_TRANSLATION_MAX * size), 0),
        "scale": lambda: gated(torch.exp2(randn() * SCALE_LOG2_STD), 1),
        "rotate": lambda: torch.stack([gated((rand() * 2 - 1) * math.pi, 0, 1 - math.sqrt(1 - min(p, 1)))
                                       for _ in range(2)], dim=1),
        "aniso": lambda: gated(torch.exp2(randn() * ANISO_LOG2_STD), 1),
        "xfrac": lambda: gated(randn(2) * FRACTIONAL_TRANSLATION_STD * size, 0),
        "brightness": lambda: gated(randn() * BRIGHTNESS_STD, 0),
        "contrast": lambda: gated(torch.exp2(randn() * CONTRAST_LOG2_STD), 1),
        "lumaflip": lambda: gated(torch.floor(rand() * 2), 0),
        "hue": lambda: gated((rand() * 2 - 1) * math.pi, 0),
        "saturation": lambda: gated(torch.exp2(randn() * SATURATION_LOG2_STD), 1),
    }
    return {name: draw[name]() for name in BGC if name in transforms}


def geometric_inverse(params: dict) -> torch.Tensor | None:
    """[N, 3, 3] map from output to input pixel coordinates (origin at the image centre), or None when
    no geometric transform is enabled: the product of each step's inverse, in the pipeline's order."""
    steps = (
        ("xflip", lambda i: scale2d(1 - 2 * i, torch.ones_like(i))),
        ("rotate90", lambda k: rotate2d(math.pi / 2 * k)),
        ("xint", lambda t: translate2d(-t[:, 0], -t[:, 1])),
        ("scale", lambda s: scale2d(1 / s, 1 / s)),
        ("rotate", lambda angles: rotate2d(angles[:, 0])),  # before the anisotropic scale
        ("aniso", lambda s: scale2d(1 / s, s)),
        ("rotate", lambda angles: rotate2d(angles[:, 1])),  # and after it
        ("xfrac", lambda t: translate2d(-t[:, 0], -t[:, 1])),
    )
    inverse = None
    for name, step in steps:
        if name in params:
            inverse = step(params[name]) if inverse is None else inverse @ step(params[name])
    return inverse


def color_matrix(params: dict) -> torch.Tensor | None:
    """[N, 4, 4] over homogeneous RGB, or None when no colour transform is enabled. Applied in the order
    of COLOR."""
    builders = {"brightness": brightness_matrix, "contrast": contrast_matrix, "lumaflip": luma_flip_matrix,
                "hue": hue_rotation_matrix, "saturation": saturation_matrix}
    matrix = None
    for name in COLOR:
        if name in params:
            step = builders[name](params[name])
            matrix = step if matrix is None else step @ matrix
    return matrix


def host_padding(inverse: torch.Tensor, *, height: int, width: int, border: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom): the reflection padding that covers how far any output corner reaches into
    the input under `inverse` [N, 3, 3], plus the filters' `border`. Read on the host: `inverse` lives there
    (see AugmentPipe), so this waits for no GPU."""
    cx, cy = (width - 1) / 2, (height - 1) / 2
    corners = torch.tensor([[-cx, cx, cx, -cx], [-cy, -cy, cy, cy], [1, 1, 1, 1]], dtype=inverse.dtype,
                           device=inverse.device)
    reach = (inverse @ corners)[:, :2, :].permute(1, 0, 2).flatten(1)  # [xy, N * corners]
    margin = torch.cat([-reach, reach]).amax(dim=1) + torch.tensor([2 * border - cx, 2 * border - cy] * 2).to(reach)
    limit = torch.tensor([width - 1, height - 1] * 2).to(reach)
    x0, y0, x1, y1 = margin.clamp(min=0).minimum(limit).ceil().int().tolist()
    return x0, y0, x1, y1


def apply_geometric(images: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """Resample `images` [N, C, H, W] at `inverse` @ (output pixel): reflect padding, 2x wavelet
    upsampling, bilinear sampling, wavelet filtering and 2x downsampling. The matrix algebra runs where
    `inverse` [N, 3, 3] is (the host, from AugmentPipe), the resampling on the images' device."""
    n, c, h, w = images.shape
    taps = host_to_device(torch.tensor(SYM6, dtype=images.dtype), images.device)
    taps, length = taps / taps.sum(), len(SYM6)
    border = length // 4  # input pixels the filters reach
    inverse = inverse.to(images.dtype)

    x0, y0, x1, y1 = host_padding(inverse, height=h, width=w, border=border)
    images = F.pad(images, [x0, x1, y0, y1], mode="reflect")
    ones = torch.ones(n, dtype=inverse.dtype, device=inverse.device)
    inverse = translate2d((x0 - x1) / 2 * ones, (y0 - y1) / 2 * ones) @ inverse

    images = upfirdn2d(images, taps, up=2, pad=((length + 1) // 2, (length - 2) // 2), gain=4)
    # Coordinates in upsampled pixels; the half-pixel shifts put the upsampled pixel centres where the
    # filter's phase left them.
    inverse = scale2d(2 * ones, 2 * ones) @ inverse @ scale2d(ones / 2, ones / 2)
    inverse = translate2d(-ones / 2, -ones / 2) @ inverse @ translate2d(ones / 2, ones / 2)

    out_h, out_w = (h + 2 * border) * 2, (w + 2 * border) * 2
    in_h, in_w = images.shape[2:]
    inverse = scale2d(2 / in_w * ones, 2 / in_h * ones) @ inverse @ scale2d(out_w / 2 * ones, out_h / 2 * ones)
    grid = F.affine_grid(host_to_device(inverse[:, :2, :], images.device), [n, c, out_h, out_w], align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # Correlate with the taps (convolve with them reversed), cropping the border added above.
    crop = -2 * border
    return upfirdn2d(images, taps.flip(0), down=2, pad=(crop + (length - 1) // 2, crop + (length - 2) // 2))


def apply_color(images: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """The same 4x4 matrix on every group of 3 channels (RGB) of `images` [N, C, H, W]."""
    n, c, h, w = images.shape
    if c % 3:
        raise ValueError(f"colour augmentation needs groups of 3 (RGB) channels, got {c}")
    matrix = host_to_device(matrix.to(images.dtype), images.device)
    groups = images.reshape(n, c // 3, 3, h * w)
    groups = matrix[:, None, :3, :3] @ groups + matrix[:, None, :3, 3:]
    return groups.reshape(n, c, h, w)


def augment(images: torch.Tensor, params: dict) -> torch.Tensor:
    inverse, color = geometric_inverse(params), color_matrix(params)
    if inverse is not None:
        images = apply_geometric(images, inverse)
    if color is not None:
        images = apply_color(images, color)
    return images


class AugmentPipe:
    """The pipeline at strength `p` (the trainer moves it); exactly the identity at p = 0."""

    def __init__(self, p: float = 0.0, transforms=BGC):
        unknown = sorted(set(transforms) - set(BGC))
        if unknown:
            raise ValueError(f"unknown augmentation(s) {unknown}; expected some of {list(BGC)}")
        self.p, self.transforms = float(p), tuple(transforms)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.p <= 0 or not self.transforms:
            return images
        n, _, h, w = images.shape
        params = sample_parameters(n, self.p, height=h, width=w, transforms=self.transforms)  # on the host
        if images.dtype in (torch.float32, torch.float64):
            return augment(images, params)
        return augment(images.float(), params).to(images.dtype)  # bfloat16: resample in float32

    def pair(self, image: torch.Tensor, image_raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """EG3D's dual input: the raw image upsampled (bilinear, antialiased) to the final image's size,
        both augmented as one image with the same parameters, and the raw part resized back."""
        if self.p <= 0 or not self.transforms:
            return image, image_raw
        both = self(torch.cat([image, resize_bilinear(image_raw, image.shape[-2:])], dim=1))
        channels = image.shape[1]
        return both[:, :channels], resize_bilinear(both[:, channels:], image_raw.shape[-2:])


def adjust_p(p: float, real_sign_mean: float, *, target: float, images: int, ada_kimg: float) -> float:
    """One ADA step: p moves by images / (ada_kimg * 1000) towards more augmentation when D is too sure
    of the reals (mean sign of its real logits above `target`), less when below; kept in [0, 1]."""
    step = np.sign(real_sign_mean - target) * images / (ada_kimg * 1000)
    return float(min(max(p + step, 0.0), 1.0))
