"""The starting weights of a new run (run.init_from, `--init-from URL`), from any fsspec URL:

    {runs}/ffhq-stage1                                  a run: its newest complete checkpoint  G, D, G_ema
    {runs}/ffhq-stage1/checkpoints/000004000-1a2b.json  one checkpoint (its manifest)          G, D, G_ema
    {runs}/ffhq-stage1/snapshots/snapshot-000004000     an EMA snapshot                        G = G_ema; D new
    ffhq512-64.pkl                                      a reference network pickle             G, D (if any), G_ema

Optimizer state is not copied (nor is it by the reference). The driver checks the URL and the architecture
(`check_init_source`) before any worker starts; the worker loop loads the weights (`InitSource.load_networks`,
on every rank, as a resume does) when the run has no checkpoint of its own.
"""

import json
from dataclasses import dataclass

from dataloading import storage
from eg3d.config import TrainConfig
from eg3d.networks.snapshot import CONFIG_FILE as SNAPSHOT_CONFIG_FILE
from eg3d.networks.snapshot import WEIGHTS_FILE as SNAPSHOT_WEIGHTS_FILE
from eg3d.networks.snapshot import WEIGHTS_HASH_KEY, read_document, read_weights

from .checkpoints import FORMAT as CHECKPOINT_FORMAT
from .checkpoints import Checkpoint, CheckpointStore

RUN_CONFIG_FILE = "config.json"  # what the worker loop writes at the top of a run

# The fields that decide the networks' tensor shapes, and how stored weights are read (equalized-lr
# multipliers, the tri-plane order): weights fit a run only when all of them are the same.
ARCHITECTURE_FIELDS = (
    "model.z_dim", "model.w_dim", "model.c_dim", "model.mapping_layers", "model.mapping_lr_multiplier",
    "model.backbone_resolution", "model.backbone_channel_base", "model.backbone_channel_max", "model.plane_channels",
    "model.decoder_hidden", "model.decoder_lr_multiplier", "model.image_resolution", "model.sr_input_resolution",
    "model.sr_channels", "model.disc_channel_base", "model.disc_channel_max", "model.disc_mapping_layers",
    "rendering.legacy_plane_order",
)

EXPECTED = ("a run folder (with checkpoints/), a checkpoint manifest (.../checkpoints/NNNNNNNNN-xxxxxxxx.json), an "
            "EMA snapshot folder (config.json and G_ema.safetensors) or a reference network pickle (.pkl)")


@dataclass
class InitSource:
    """Where a run's starting weights come from. kind: "checkpoint", "snapshot" or "pickle"."""

    url: str  # as given
    kind: str
    checkpoint: Checkpoint | None = None  # kind "checkpoint": the one to load (a run's newest, when given a run)

    def describe(self) -> str:
        if self.kind == "checkpoint":
            return (f"checkpoint {self.checkpoint.manifest_url} ({self.checkpoint.nimg / 1000:.3f} kimg): "
                    f"G, D and G_ema")
        if self.kind == "snapshot":
            return (f"EMA snapshot {self.url}: G and G_ema from its G_ema; D is freshly initialized "
                    f"(a snapshot has none)")
        return f"network pickle {self.url}: G, D and G_ema (D freshly initialized when the pickle has none)"

    def architecture(self) -> dict:
        """The config (a dict) of a checkpoint's run or of a snapshot; a pickle's is in its networks (read_pickle)."""
        if self.kind == "checkpoint":
            run_url = storage.parent(storage.parent(self.checkpoint.manifest_url))
            return _read_json(storage.join(run_url, RUN_CONFIG_FILE), self.url, "the run's config")
        return _read_json(storage.join(self.url, SNAPSHOT_CONFIG_FILE), self.url, "the snapshot's config")["config"]

    def read_pickle(self):
        """The networks of a reference pickle (eg3d.networks.reference_pickle.ReferenceNetworks). A file that
        is not one (a global outside the allow-list, missing or misfit tensors) is a ValueError naming the URL."""
        import pickle

        from eg3d.networks.reference_pickle import read_reference_pickle

        try:
            return read_reference_pickle(storage.read_bytes(self.url))
        except (pickle.UnpicklingError, ValueError) as error:
            raise ValueError(f"--init-from {self.url}: {error}") from None

    def load_networks(self) -> dict:
        """{"G", "D", "G_ema"}: state dicts on the CPU; "D" is None when the source has no discriminator."""
        if self.kind == "checkpoint":
            state = self.checkpoint.load_torch("trainer.pt")
            return {name: state[name] for name in ("G", "D", "G_ema")}
        if self.kind == "snapshot":  # damaged weights are a SnapshotError (a ValueError) naming the file
            document = read_document(self.url, storage.read_bytes)
            G_ema = read_weights(self.url, storage.read_bytes, sha256=document.get(WEIGHTS_HASH_KEY))
            return {"G": G_ema, "D": None, "G_ema": G_ema}
        return dict(self.read_pickle().state)


def _read_json(url: str, source_url: str, what: str) -> dict:
    if not storage.exists(url):
        raise ValueError(f"--init-from {source_url}: {what} ({url}) is missing, so its architecture is unknown")
    return json.loads(storage.read_bytes(url))


def find_init_source(url: str) -> InitSource:
    """What kind of source `url` is. Raises FileNotFoundError when nothing is there, ValueError when it is
    none of the kinds (the message names the URL and the kinds expected) or a run without a complete checkpoint."""
    url = url.rstrip("/")
    if not storage.exists(url):
        raise FileNotFoundError(f"--init-from {url}: no such file or folder; expected {EXPECTED}")
    if url.endswith(".pkl"):
        return InitSource(url, "pickle")
    if url.endswith(".json"):
        return InitSource(url, "checkpoint", _manifest_checkpoint(url))
    if all(storage.exists(storage.join(url, name)) for name in (SNAPSHOT_WEIGHTS_FILE, SNAPSHOT_CONFIG_FILE)):
        return InitSource(url, "snapshot")
    try:
        has_checkpoints = bool(storage.list(storage.join(url, "checkpoints")))
    except NotADirectoryError:  # a local file of no known kind (its name is not .pkl or .json)
        has_checkpoints = False
    if has_checkpoints:
        latest = CheckpointStore(url).latest()
        if latest is None:
            raise ValueError(f"--init-from {url}: a run without a complete checkpoint yet; expected a run with one")
        return InitSource(url, "checkpoint", latest)
    raise ValueError(f"--init-from {url}: neither a run, a checkpoint, a snapshot nor a pickle; expected {EXPECTED}")


def _manifest_checkpoint(url: str) -> Checkpoint:
    try:
        manifest = json.loads(storage.read_bytes(url))
    except ValueError:
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"--init-from {url}: not a checkpoint manifest (format {CHECKPOINT_FORMAT}); "
                         f"expected {EXPECTED}")
    checkpoint = Checkpoint.of_manifest(url, manifest)
    if not checkpoint.is_complete():
        raise ValueError(f"--init-from {url}: the checkpoint's files are not all present in {checkpoint.folder_url}")
    return checkpoint


def check_architecture(architecture: dict, config: TrainConfig, url: str) -> None:
    """ValueError naming every ARCHITECTURE_FIELDS field in which the source's config (`architecture`, a
    config dict) differs from `config`, with both values and the URL."""
    mine = config.to_dict()
    differences = []
    for key in ARCHITECTURE_FIELDS:
        section, name = key.split(".")
        theirs = architecture.get(section, {}).get(name, "absent")
        ours = mine[section][name]
        if _comparable(theirs) != _comparable(ours):
            differences.append(f"{key} is {_comparable(theirs)!r} there and {_comparable(ours)!r} in this run")
    if differences:
        raise ValueError(f"--init-from {url}: its networks do not fit this run's: {'; '.join(differences)}. Choose "
                         f"the preset the source was trained with, or --set those fields to its values")


def _comparable(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def check_init_source(config: TrainConfig, log=print) -> TrainConfig:
    """The driver's check of run.init_from before any worker starts: the URL exists, is one of the kinds, and
    its networks fit the config. A pickle's architecture and settings are adopted (each changed field logged;
    eg3d.networks.reference_pickle.apply_to_config); the config, otherwise unchanged, is returned. Raises
    FileNotFoundError or ValueError (see find_init_source, check_architecture)."""
    url = config.run.init_from
    source = find_init_source(url)
    if source.kind == "pickle":  # the pickle's architecture is adopted: it fits by construction
        from eg3d.networks.reference_pickle import apply_to_config, changed_fields

        networks = source.read_pickle()
        adopted = apply_to_config(config, networks)
        for note in [*networks.notes, *changed_fields(config, adopted)]:
            log(f"--init-from {url}: {note}")
        config = adopted
    else:
        check_architecture(source.architecture(), config, url)
    log(f"--init-from {url}: {source.describe()}")
    return config
