"""EMA snapshots: G_ema weights (safetensors) + the config (JSON), loadable without any training state.

    G = load_generator("runs/x/snapshots/snapshot-000020000")
    out = render(G, z, c, truncation_psi=0.7)   # {'image', 'image_raw', 'image_depth'}

load_generator reads local folders; the commands pass `read_bytes=dataloading.storage.read_bytes` for any
fsspec URL (model code imports no storage layer). config.json records the SHA-256 of G_ema.safetensors, so a
damaged weight file (truncated, flipped bytes) is a SnapshotError naming the file, never a render from wrong
weights; so are weights that do not fit the config (another preset's or run's) and a config that is not one.
"""

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from eg3d.config import TrainConfig

from .generator import TriPlaneGenerator

WEIGHTS_FILE = "G_ema.safetensors"
CONFIG_FILE = "config.json"
WEIGHTS_HASH_KEY = "weights_sha256"  # in config.json; snapshots written before it have none (not checked)
LISTED = 3  # tensors named in a message about weights that do not fit


class SnapshotError(ValueError):
    """A snapshot file that is there but is not what it should be; the message names the file and the fault."""


def save_snapshot(G_ema: TriPlaneGenerator, config: TrainConfig, directory: str | Path, *,
                  metadata: dict | None = None) -> Path:
    """Write a snapshot directory; files are written under temporary names and renamed into place."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in G_ema.state_dict().items()}
    weights = save(tensors)
    (directory / (WEIGHTS_FILE + ".tmp")).write_bytes(weights)  # plain write: the umask's permissions
    (directory / (WEIGHTS_FILE + ".tmp")).replace(directory / WEIGHTS_FILE)
    document = {"config": config.to_dict(), "metadata": metadata or {},
                WEIGHTS_HASH_KEY: hashlib.sha256(weights).hexdigest()}
    (directory / (CONFIG_FILE + ".tmp")).write_text(json.dumps(document, indent=2))
    (directory / (CONFIG_FILE + ".tmp")).replace(directory / CONFIG_FILE)
    return directory


def _read_local(path: str) -> bytes:
    return Path(path).read_bytes()


def load_generator(directory: str | Path, device: str | torch.device = "cpu", *,
                   read_bytes: Callable[[str], bytes] = _read_local) -> TriPlaneGenerator:
    """The generator of a snapshot, in eval mode, on `device`. `read_bytes(url)` reads one of its files.
    FileNotFoundError for a missing file, SnapshotError for a damaged or misfit one."""
    directory = str(directory).rstrip("/")
    document = read_document(directory, read_bytes)
    config_url = f"{directory}/{CONFIG_FILE}"
    try:
        config = TrainConfig.from_dict(document["config"])
    except (KeyError, TypeError, ValueError) as error:
        raise SnapshotError(f"{config_url}: not a snapshot's config ({type(error).__name__}: {error})") from None
    G = TriPlaneGenerator(config.model, config.rendering)
    G.load_state_dict(read_weights(directory, read_bytes, sha256=document.get(WEIGHTS_HASH_KEY),
                                   expected=G.state_dict()))
    return G.to(device).eval().requires_grad_(False)


def _read(directory: str, name: str, read_bytes: Callable[[str], bytes]) -> bytes:
    try:
        return read_bytes(f"{directory}/{name}")
    except FileNotFoundError:
        raise FileNotFoundError(f"snapshot {directory}: missing {name}") from None


def read_document(directory: str, read_bytes: Callable[[str], bytes] = _read_local) -> dict:
    """config.json of a snapshot: {"config", "metadata", "weights_sha256"}; SnapshotError where it is not JSON."""
    try:
        document = json.loads(_read(directory, CONFIG_FILE, read_bytes))
    except ValueError as error:  # JSON's errors and undecodable bytes
        raise SnapshotError(f"{directory}/{CONFIG_FILE}: damaged, not JSON ({error})") from None
    if not isinstance(document, dict):
        raise SnapshotError(f"{directory}/{CONFIG_FILE}: not a snapshot's config (a JSON {type(document).__name__})")
    return document


def read_weights(directory: str, read_bytes: Callable[[str], bytes] = _read_local, *, sha256: str | None = None,
                 expected: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The tensors of G_ema.safetensors. SnapshotError where the file is not a whole safetensors file, its SHA-256
    differs from `sha256` (config.json's record: damaged, whether or not its tensors still fit), its tensors do
    not fit the state dict `expected` (the config's network), or a tensor holds NaN or infinity."""
    url = f"{directory}/{WEIGHTS_FILE}"
    data = _read(directory, WEIGHTS_FILE, read_bytes)
    try:
        weights = load(data)
    except SafetensorError as error:
        raise SnapshotError(f"{url}: damaged, not a whole safetensors file ({error}; {len(data)} bytes): copy "
                            f"the snapshot again, or choose another") from None
    misfit = fit_faults(expected, weights) if expected is not None else ""
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:  # a flipped name also misfits: damage first
        raise SnapshotError(f"{url}: damaged: its SHA-256 is not the one {CONFIG_FILE} records (the file changed "
                            f"after it was written{f'; its tensors {misfit}' if misfit else ''}): copy the snapshot "
                            f"again, or choose another")
    if misfit:
        raise SnapshotError(f"{url} does not fit {directory}/{CONFIG_FILE}: weights of another architecture "
                            f"(another preset's or run's snapshot?); tensors {misfit}. Keep a snapshot's two files "
                            f"together, or choose another snapshot")
    broken = [name for name, tensor in weights.items() if tensor.is_floating_point() and not tensor.isfinite().all()]
    if broken:
        raise SnapshotError(f"{url}: damaged: tensor {broken[0]} holds NaN or infinite values (renders would be "
                            f"black): choose an earlier snapshot")
    return weights


def fit_faults(expected: dict[str, torch.Tensor], weights: dict[str, torch.Tensor]) -> str:
    """The missing, unexpected and misshapen tensors of `weights` against the state dict `expected`, as
    "missing: a, b; unexpected: c"; empty where they fit."""
    missing, extra = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    misshapen = [f"{name} {list(weights[name].shape)} (the config's: {list(tensor.shape)})"
                 for name, tensor in expected.items() if name in weights and weights[name].shape != tensor.shape]
    more = lambda names: f" and {len(names) - LISTED} more" if len(names) > LISTED else ""
    return "; ".join(f"{label}: {', '.join(names[:LISTED])}{more(names)}" for label, names in
                     (("missing", missing), ("unexpected", extra), ("other shapes", misshapen)) if names)


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
