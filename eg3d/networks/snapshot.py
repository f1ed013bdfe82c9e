"""EMA snapshots: G_ema weights (safetensors) + the config (JSON), loadable without any training state.

    G = load_generator("runs/x/snapshots/snapshot-000020000")
    out = render(G, z, c, truncation_psi=0.7)   # {'image', 'image_raw', 'image_depth'}
"""

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from eg3d.config import TrainConfig

from .generator import TriPlaneGenerator

WEIGHTS_FILE = "G_ema.safetensors"
CONFIG_FILE = "config.json"


def save_snapshot(G_ema: TriPlaneGenerator, config: TrainConfig, directory: str | Path, *,
                  metadata: dict | None = None) -> Path:
    """Write a snapshot directory; files are written under temporary names and renamed into place."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in G_ema.state_dict().items()}
    save_file(tensors, directory / (WEIGHTS_FILE + ".tmp"))
    (directory / (WEIGHTS_FILE + ".tmp")).replace(directory / WEIGHTS_FILE)
    document = {"config": config.to_dict(), "metadata": metadata or {}}
    (directory / (CONFIG_FILE + ".tmp")).write_text(json.dumps(document, indent=2))
    (directory / (CONFIG_FILE + ".tmp")).replace(directory / CONFIG_FILE)
    return directory


def load_generator(directory: str | Path, device: str | torch.device = "cpu") -> TriPlaneGenerator:
    """The generator of a snapshot, in eval mode, on `device`."""
    directory = Path(directory)
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"snapshot {directory}: missing {name}")
    config = TrainConfig.from_dict(json.loads((directory / CONFIG_FILE).read_text())["config"])
    G = TriPlaneGenerator(config.model, config.rendering)
    G.load_state_dict(load_file(directory / WEIGHTS_FILE))
    return G.to(device).eval().requires_grad_(False)


@torch.no_grad()
def render(G: TriPlaneGenerator, z: torch.Tensor, c: torch.Tensor, *, truncation_psi: float = 1.0,
           truncation_cutoff: int | None = None, c_condition: torch.Tensor | None = None,
           neural_rendering_resolution: int | None = None, noise_mode: str = "const") -> dict:
    """Images and depth for latent codes z rendered from cameras c. image_raw is in [-1, 1]; image, the
    super-resolution output, is not bounded: clamp it to [-1, 1] for display (as sample_grid.to_uint8 does)."""
    if neural_rendering_resolution is None:
        r = G.rendering_config
        neural_rendering_resolution = r.neural_rendering_resolution_final or r.neural_rendering_resolution_initial
    return G(z, c, c_condition=c_condition, neural_rendering_resolution=neural_rendering_resolution,
             truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff, noise_mode=noise_mode)
