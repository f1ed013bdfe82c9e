"""Fixtures only; the helpers tests import live in tests/*helpers.py and tests/s3_fixtures.py."""

import os

import pytest
import torch

from model_helpers import micro_config


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
