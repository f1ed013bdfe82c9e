"""What many tests build on: the `micro` configuration (the tiny preset shrunk further) and random cameras.
Imported by the test modules as `from model_helpers import ...`; conftest.py holds only fixtures."""

import torch

from eg3d.config import apply_overrides
from eg3d.config.presets import tiny
from eg3d.networks import camera

# The tiny preset shrunk further so that a full training step takes a fraction of a second. Its batch of 4
# in minibatch-std pairs feeds up to 2 workers (the batch is split in whole groups).
MICRO_OVERRIDES = [
    "model.disc_mbstd_group=2",
    "model.z_dim=16", "model.w_dim=16", "model.backbone_resolution=16", "model.backbone_channel_base=256",
    "model.backbone_channel_max=16", "model.plane_channels=8", "model.decoder_hidden=16",
    "model.image_resolution=32", "model.sr_input_resolution=16", "model.sr_channels=[16,8]",
    "model.disc_channel_base=128", "model.disc_channel_max=16", "model.disc_mapping_layers=1",
    "rendering.depth_resolution=6", "rendering.depth_resolution_importance=6",
    "rendering.neural_rendering_resolution_initial=16", "run.batch_size=4", "loss.density_reg_points=50",
    "metrics.extractor=random", "metrics.num_generated=8", "metrics.num_real=12", "metrics.batch_size=4",
    "metrics.kid_subset_size=4",
    "evaluator.resolution=32", "evaluator.kimg=0.032", "evaluator.batch_size=8", "evaluator.consistency_objects=2",
    "telemetry.metrics_port=0",
]


def micro_config(*extra: str):
    """The micro TrainConfig, with `extra` overrides ("section.field=value") applied after MICRO_OVERRIDES."""
    return apply_overrides(tiny(), MICRO_OVERRIDES + list(extra))


def random_cameras(n: int, seed: int = 0) -> torch.Tensor:
    """[n, 25] FFHQ-style labels at radius 2.7: yaw within +-0.6 rad and pitch within +-0.3 rad of frontal."""
    g = torch.Generator().manual_seed(seed)
    yaw = torch.pi / 2 + (torch.rand(n, generator=g) - 0.5) * 1.2
    pitch = torch.pi / 2 + (torch.rand(n, generator=g) - 0.5) * 0.6
    return camera.orbit_camera(yaw, pitch)


def face_photos(folder):
    """skimage's astronaut (a face) and chelsea (a cat) written as JPEGs into `folder`; skips the test without
    scikit-image or MediaPipe (the `faces` extra). Returns the folder."""
    import pytest
    from PIL import Image

    data = pytest.importorskip("skimage.data")
    pytest.importorskip("mediapipe")
    Image.fromarray(data.astronaut()).save(folder / "astronaut.jpg", quality=95)
    Image.fromarray(data.chelsea()).save(folder / "chelsea.jpg", quality=95)
    return folder
