"""The dataset-trained evaluator: a small CNN that reads a run's own images, and the errors it measures.

No download and no pretrained weights: `eg3d.metrics.evaluator_training` trains it on the run's real images
and camera labels (once per data set, then cached). Its heads:

- view direction: the camera's optical axis (the third column of the label's cam2world rotation, a unit
  vector in world coordinates) seen in the image. Every EG3D data set has camera labels, so this works on
  faces, cats and cars alike. `pose_error_deg` compares it with the camera G was asked to render, as the
  paper's pose accuracy compares an estimated head pose with the conditioning pose (EG3D, Table 1).
- depth and foreground, where the data set carries per-pixel depth (the synthetic data set): a U-Net decoder
  predicts depth along the optical axis (`z_depth`) up to scale and shift, and which pixels show the object. `depth_error` compares it with G's
  rendered depth, as the paper's depth accuracy compares G's depth with an estimator's (EG3D, Table 1).
- object class, where the data set names classes, and the image's colour histogram (4 x 4 x 4 RGB bins, a
  target every image carries): these make the pooled features see appearance as well as shape, so that their
  Frechet distance (`fd_data`) moves when colours or shapes are wrong.

The pooled features (the last stage's channels, averaged over the image) are what `fd_data` compares.
Images enter as uint8 or as floats in [-1, 1], at any resolution: `prepare_images` resizes them to the evaluator's
resolution (antialiased bilinear), the same way for real and generated images.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from eg3d.networks.camera import pixel_rays
from eg3d.networks.layers import resize_bilinear

COLOUR_BINS = 4  # per channel: a 4 x 4 x 4 colour histogram
MIN_DEPTH_PIXELS = 4  # an image whose foreground has fewer pixels gets UNCORRELATED_DEPTH_ERROR
UNCORRELATED_DEPTH_ERROR = 2.0  # the normalized squared error of two independent depth maps


@dataclass(frozen=True)
class EvaluatorShape:
    """What decides the network's layout (stored with its weights)."""
    resolution: int  # input size, a power of two >= 16
    num_classes: int  # 0: no class head
    depth: bool  # depth and foreground heads
    channel_base: int = 16
    channel_max: int = 256

    def widths(self) -> list[int]:
        """Channels per stage; each stage halves the size, down to 4 x 4."""
        stages = int(math.log2(self.resolution)) - 2
        return [min(self.channel_base * 2**k, self.channel_max) for k in range(stages)]


@dataclass
class EvaluatorOutput:
    """features [N, F]; view_direction [N, 3] unit vectors; class_logits [N, K] or None; colour_logits
    [N, 64]; depth and foreground_logits [N, R/2, R/2] (R the evaluator's resolution) or None. Depth is
    defined up to scale and shift (it is trained and compared after normalization)."""
    features: torch.Tensor
    view_direction: torch.Tensor
    class_logits: torch.Tensor | None
    colour_logits: torch.Tensor
    depth: torch.Tensor | None
    foreground_logits: torch.Tensor | None


def _conv_block(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False), nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False), nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True))


class DepthDecoder(nn.Module):
    """U-Net decoder: the stages' maps, coarsest first upsampled and merged with the next finer one, down to
    half the input size -> (depth, foreground logit), each [N, R/2, R/2]."""

    def __init__(self, widths: list[int]):
        super().__init__()
        self.merges = nn.ModuleList(nn.Sequential(nn.Conv2d(widths[k] + widths[k - 1], widths[k - 1], 3, 1, 1),
                                                  nn.ReLU(inplace=True))
                                    for k in range(len(widths) - 1, 0, -1))
        self.out = nn.Conv2d(widths[0], 2, 3, 1, 1)

    def forward(self, maps: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        y = maps[-1]
        for merge, skip in zip(self.merges, reversed(maps[:-1])):
            y = merge(torch.cat([F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False),
                                 skip], dim=1))
        depth, foreground = self.out(y).unbind(1)
        return depth, foreground


class Evaluator(nn.Module):
    """The CNN: a stem, strided stages down to 4 x 4, average pooling, and the heads (module docstring)."""

    def __init__(self, shape: EvaluatorShape):
        super().__init__()
        if shape.resolution < 16 or shape.resolution & (shape.resolution - 1):
            raise ValueError(f"evaluator resolution must be a power of two >= 16, got {shape.resolution}")
        self.shape = shape
        widths = shape.widths()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU(inplace=True))
        self.stages = nn.ModuleList(_conv_block(widths[max(k - 1, 0)], widths[k], 2) for k in range(len(widths)))
        # The embedding reads the whole 4 x 4 map, not its average: where the light falls on an object
        # relative to its outline is what tells the view, and an average forgets where.
        self.feature_dim = 2 * widths[-1]
        self.embedding = nn.Sequential(nn.Flatten(), nn.Linear(widths[-1] * 16, self.feature_dim), nn.ReLU())
        self.view_head = nn.Linear(self.feature_dim, 3)
        self.class_head = nn.Linear(self.feature_dim, shape.num_classes) if shape.num_classes else None
        self.colour_head = nn.Linear(self.feature_dim, COLOUR_BINS**3)
        self.depth_decoder = DepthDecoder(widths) if shape.depth else None

    def forward(self, images: torch.Tensor) -> EvaluatorOutput:
        """images: as `prepare_images` takes them (any size, uint8 or [-1, 1] floats)."""
        x = self.stem(prepare_images(images, self.shape.resolution))
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        features = self.embedding(x)
        depth = foreground = None
        if self.depth_decoder is not None:
            depth, foreground = self.depth_decoder(maps)
        return EvaluatorOutput(
            features=features, view_direction=F.normalize(self.view_head(features), dim=1),
            class_logits=self.class_head(features) if self.class_head is not None else None,
            colour_logits=self.colour_head(features), depth=depth, foreground_logits=foreground)


def prepare_images(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """uint8 [N, 3, H, W] (0..255) or float [N, 3, H, W] in [-1, 1] -> float [N, 3, R, R] in [-1, 1], resized
    (antialiased bilinear) when H, W differ from R = `resolution`."""
    if images.dtype == torch.uint8:
        images = images.float() / 127.5 - 1
    images = images.float()
    if images.shape[-2:] != (resolution, resolution):
        images = resize_bilinear(images, resolution)
    return images


# --- targets and errors (shared by training and the metrics) --------------------------------------------

def view_direction(cameras: torch.Tensor) -> torch.Tensor:
    """Camera labels [N, 25] -> their optical axes [N, 3]: the unit third column of cam2world's rotation
    (OpenCV convention: the camera looks along its +z)."""
    return F.normalize(cameras[:, :16].reshape(-1, 4, 4)[:, :3, 2].float(), dim=1)


def angle_degrees(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Angles [N] in degrees (0..180) between unit vectors a, b [N, 3]; atan2 of the cross and dot
    products, accurate for small angles (unlike acos of the dot product)."""
    cross = torch.linalg.cross(a.double(), b.double(), dim=1).norm(dim=1)
    return torch.rad2deg(torch.atan2(cross, (a.double() * b.double()).sum(dim=1)))


def colour_histogram(images: torch.Tensor) -> torch.Tensor:
    """uint8 images [N, 3, H, W] -> the fraction of their pixels in each of 4 x 4 x 4 RGB bins [N, 64]."""
    bins = (images.long() * COLOUR_BINS) // 256  # 0..3 per channel
    index = (bins[:, 0] * COLOUR_BINS + bins[:, 1]) * COLOUR_BINS + bins[:, 2]
    counts = torch.zeros(len(images), COLOUR_BINS**3, device=images.device)
    counts.scatter_add_(1, index.flatten(1), torch.ones_like(index.flatten(1), dtype=counts.dtype))
    return counts / index[0].numel()


def _normalized(depth: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """depth [N, H, W] minus its mean, divided by its standard deviation, both over `mask`, per image."""
    weight = mask.to(depth.dtype)
    count = weight.sum(dim=(1, 2)).clamp(min=1)
    centred = depth - ((depth * weight).sum(dim=(1, 2)) / count)[:, None, None]
    std = ((centred * weight).square().sum(dim=(1, 2)) / count).sqrt()
    return centred / std.clamp(min=1e-6)[:, None, None]


def depth_errors(predicted: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The scale- and shift-invariant depth error [N] of predicted against reference depth [N, H, W] over
    the pixels in `mask` [N, H, W] (bool), in predicted's dtype: the mean squared difference of the two maps, each normalized to
    zero mean and unit variance over the mask. 0 is a perfect match up to an affine map, 2 the expected value
    for independent maps, 4 the worst (one map is the other reversed). The paper's depth accuracy is the
    MSE between G's depth and an estimator's depth of G's image (EG3D, Sec. 5.1, Table 1); normalizing both
    makes it independent of the estimator's unknown scale and offset. Images with fewer than MIN_DEPTH_PIXELS
    mask pixels get UNCORRELATED_DEPTH_ERROR: an estimator that finds no object cannot vouch for its depth.

    Non-finite reference pixels (a silhouette or background in the ground truth) are left out of the mask."""
    mask = mask & torch.isfinite(reference)
    reference = torch.nan_to_num(reference, nan=0.0, posinf=0.0, neginf=0.0).to(predicted.dtype)
    squared = (_normalized(predicted, mask) - _normalized(reference, mask)).square()
    count = mask.sum(dim=(1, 2))
    errors = (squared * mask).sum(dim=(1, 2)) / count.clamp(min=1)
    return torch.where(count >= MIN_DEPTH_PIXELS, errors, torch.full_like(errors, UNCORRELATED_DEPTH_ERROR))


def z_depth(depth: torch.Tensor, cameras: torch.Tensor) -> torch.Tensor:
    """Distances along each pixel's unit ray [N, R, R] (the renderer's depth) -> distances along the optical
    axis (z in the camera's frame), for cameras [N, 25]. A plane facing the camera has one z everywhere, while
    its distance along the rays grows away from the centre like a bowl, which normalized depth would mistake
    for a convex object."""
    resolution = depth.shape[-1]
    _, directions = pixel_rays(cameras.to(depth.device, torch.float32), resolution)
    cosine = (directions * view_direction(cameras).to(depth.device)[:, None]).sum(-1)  # [N, R*R]
    return depth * cosine.reshape(-1, resolution, resolution).to(depth.dtype)


def resample_map(values: torch.Tensor, size: int) -> torch.Tensor:
    """Maps [N, H, W] -> [N, size, size]: area averages when shrinking (a NaN makes its cell NaN), bilinear
    when enlarging."""
    x = values.unsqueeze(1).float()
    if size < values.shape[-1]:
        return F.adaptive_avg_pool2d(x, size).squeeze(1)
    if size > values.shape[-1]:
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).squeeze(1)
    return values.float()


def depth_errors_against(output: EvaluatorOutput, reference: torch.Tensor) -> torch.Tensor:
    """The evaluator's depth (the interior of its own foreground as the mask) against reference depth
    [N, H, W], compared at the reference's resolution: the depth error [N] of each image (`depth_errors`)."""
    size = reference.shape[-1]
    predicted = resample_map(output.depth, size)
    foreground = resample_map(torch.sigmoid(output.foreground_logits), size) > 0.5
    return depth_errors(predicted.double(), reference.to(predicted.device).double(), interior(foreground))


def interior(mask: torch.Tensor) -> torch.Tensor:
    """Pixels of mask [N, H, W] (bool) whose 3 x 3 neighbourhood is all in it: an outline pixel's rendered
    depth blends the object with what lies behind it, an outlier that normalized depth would weigh heavily."""
    return -F.max_pool2d(-mask[:, None].float(), 3, stride=1, padding=1)[:, 0] > 0.5
