import os

import pytest
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


@pytest.fixture(autouse=True, scope="session")
def private_cache(tmp_path_factory):
    """Evaluators (and any download) cached in the session's own folder, never the user's ~/.cache/eg3d; set in
    os.environ so that the processes tests start (Ray, commands) inherit it."""
    previous = os.environ.get("EG3D_CACHE")
    os.environ["EG3D_CACHE"] = str(tmp_path_factory.mktemp("eg3d-cache"))
    yield os.environ["EG3D_CACHE"]
    if previous is None:
        del os.environ["EG3D_CACHE"]
    else:
        os.environ["EG3D_CACHE"] = previous


def micro_config(*extra: str):
    return apply_overrides(tiny(), MICRO_OVERRIDES + list(extra))


@pytest.fixture
def micro():
    return micro_config()


@pytest.fixture(scope="module")
def micro_snapshot(tmp_path_factory) -> str:
    """An untrained micro generator (torch seed 0) saved as a snapshot folder; its path."""
    from eg3d.networks.generator import TriPlaneGenerator
    from eg3d.networks.snapshot import save_snapshot
    config = micro_config()
    torch.manual_seed(0)
    return str(save_snapshot(TriPlaneGenerator(config.model, config.rendering), config,
                             tmp_path_factory.mktemp("snapshot") / "snapshot-000000000"))


def random_cameras(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    yaw = torch.pi / 2 + (torch.rand(n, generator=g) - 0.5) * 1.2
    pitch = torch.pi / 2 + (torch.rand(n, generator=g) - 0.5) * 0.6
    return camera.orbit_camera(yaw, pitch)
