"""EMA snapshots: G_ema weights (safetensors) + the config (JSON), loadable without any training state.

    G = load_generator("runs/x/snapshots/snapshot-000020000")
    out = render(G, z, c, truncation_psi=0.7)   # {'image', 'image_raw', 'image_depth'}

load_generator reads local folders; the commands pass `read_bytes=dataloading.storage.read_bytes` for any
fsspec URL (model code imports no storage layer).
"""

import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load, save

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
    (directory / (WEIGHTS_FILE + ".tmp")).write_bytes(save(tensors))  # plain write: the umask's permissions
    (directory / (WEIGHTS_FILE + ".tmp")).replace(directory / WEIGHTS_FILE)
    document = {"config": config.to_dict(), "metadata": metadata or {}}
    (directory / (CONFIG_FILE + ".tmp")).write_text(json.dumps(document, indent=2))
    (directory / (CONFIG_FILE + ".tmp")).replace(directory / CONFIG_FILE)
    return directory


def _read_local(path: str) -> bytes:
    return Path(path).read_bytes()


def load_generator(directory: str | Path, device: str | torch.device = "cpu", *,
                   read_bytes: Callable[[str], bytes] = _read_local) -> TriPlaneGenerator:
    """The generator of a snapshot, in eval mode, on `device`. `read_bytes(url)` reads one of its files."""
    directory = str(directory).rstrip("/")

    def read(name: str) -> bytes:
        try:
            return read_bytes(f"{directory}/{name}")
        except FileNotFoundError:
            raise FileNotFoundError(f"snapshot {directory}: missing {name}") from None

    weights = load(read(WEIGHTS_FILE))
    config = TrainConfig.from_dict(json.loads(read(CONFIG_FILE))["config"])
    G = TriPlaneGenerator(config.model, config.rendering)
    G.load_state_dict(weights)
    return G.to(device).eval().requires_grad_(False)


def default_neural_rendering_resolution(G: TriPlaneGenerator) -> int:
    """The neural rendering resolution a trained generator ends at."""
    r = G.rendering_config
    return r.neural_rendering_resolution_final or r.neural_rendering_resolution_initial


@torch.no_grad()
def render(G: TriPlaneGenerator, z: torch.Tensor, c: torch.Tensor, *, truncation_psi: float = 1.0,
           truncation_cutoff: int | None = None, c_condition: torch.Tensor | None = None,
           neural_rendering_resolution: int | None = None, noise_mode: str = "const") -> dict:
    """Images and depth for latent codes z rendered from cameras c. image_raw is in [-1, 1]; image, the
    super-resolution output, is not bounded: clamp it to [-1, 1] for display (as sample_grid.to_uint8 does)."""
    if neural_rendering_resolution is None:
        neural_rendering_resolution = default_neural_rendering_resolution(G)
    return G(z, c, c_condition=c_condition, neural_rendering_resolution=neural_rendering_resolution,
             truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff, noise_mode=noise_mode)
