"""The training loop, read top to bottom: data -> trainer steps -> logs, checkpoints, snapshots.

Progress is counted in images seen; every interval (log, checkpoint, snapshot) fires when the count
crosses a multiple of it, so a resume continues on the same schedule.
"""

import json
import time
from pathlib import Path

import torch

from dataloading.shard_reader import BACKENDS, ShardReader, camera_labels

from .config import TrainConfig
from .sample_grid import grid_cameras, sample_grid
from .snapshot import save_snapshot
from .training import Trainer

CHECKPOINT_MANIFEST = "latest.json"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def crossed(before: int, after: int, interval_kimg: float) -> bool:
    step = max(int(interval_kimg * 1000), 1)
    return before // step != after // step


def save_checkpoint(state: dict, run_dir: Path, keep: int) -> Path:
    """Write the checkpoint, then publish it by atomically replacing the manifest; prune old ones."""
    directory = run_dir / "checkpoints"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"checkpoint-{state['trainer']['nimg']:09d}.pt"
    torch.save(state, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)
    manifest = directory / CHECKPOINT_MANIFEST
    manifest.with_suffix(".tmp").write_text(json.dumps({"checkpoint": path.name, "nimg": state["trainer"]["nimg"]}))
    manifest.with_suffix(".tmp").replace(manifest)
    for old in sorted(directory.glob("checkpoint-*.pt"))[:-keep]:
        old.unlink()
    return path


def load_latest_checkpoint(run_dir: Path) -> dict | None:
    manifest = run_dir / "checkpoints" / CHECKPOINT_MANIFEST
    if not manifest.is_file():
        return None
    name = json.loads(manifest.read_text())["checkpoint"]
    return torch.load(manifest.parent / name, map_location="cpu", weights_only=False)


def export_snapshot(trainer: Trainer, run_dir: Path, grid_z: torch.Tensor, cameras: torch.Tensor) -> Path:
    run = trainer.config.run
    directory = save_snapshot(trainer.G_ema, trainer.config, run_dir / "snapshots" / f"snapshot-{trainer.nimg:09d}",
                              metadata={"nimg": trainer.nimg})
    grid = sample_grid(trainer.G_ema, grid_z, cameras, truncation_psi=run.sample_truncation_psi,
                       truncation_cutoff=run.sample_truncation_cutoff)
    grid.save(directory / "grid.png")
    return directory


def open_reader(config: TrainConfig, manifest_url: str, device: torch.device) -> ShardReader:
    backend = config.data.backend
    if backend == "auto":
        backend = "dali" if "dali" in BACKENDS else "pytorch"
    reader = ShardReader(manifest_url, seed=config.run.seed, batch_size=config.run.batch_size,
                         xflip=config.data.xflip, device=device, backend=backend)
    if reader.resolution != config.model.image_resolution:
        raise ValueError(f"data {manifest_url}: images are {reader.resolution}x{reader.resolution}, but "
                         f"model.image_resolution is {config.model.image_resolution}")
    return reader


def train(config: TrainConfig, *, manifest_url: str, run_dir: str | Path, log=print) -> Trainer:
    """Train from the shards of `manifest_url` (see `python -m dataloading.build`) into `run_dir`."""
    run_dir, run = Path(run_dir), config.run
    run_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(run.device)
    batches = open_reader(config, manifest_url, device)
    trainer = Trainer(config, camera_pool=torch.from_numpy(camera_labels(manifest_url)), device=device)
    state = load_latest_checkpoint(run_dir)
    if state is not None:
        trainer.load_state_dict(state["trainer"])
        batches.load_state_dict(state["data"])
        log(f"resumed from {trainer.nimg / 1000:.1f} kimg")
    (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
    grid_z = torch.randn(4, config.model.z_dim, generator=torch.Generator().manual_seed(run.seed)).to(device)
    cameras = grid_cameras(5).to(device)
    total_nimg = int(run.total_kimg * 1000)
    tick_start, tick_nimg = time.perf_counter(), trainer.nimg
    with open(run_dir / "log.jsonl", "a") as log_file:
        while trainer.nimg < total_nimg:
            before = trainer.nimg
            batch = next(batches)
            trainer.train_step(batch["image"], batch["c"])
            done = trainer.nimg >= total_nimg
            if crossed(before, trainer.nimg, run.log_kimg) or done:
                seconds = time.perf_counter() - tick_start
                record = {"kimg": trainer.nimg / 1000, "images_per_second": (trainer.nimg - tick_nimg) / seconds,
                          **vars(trainer.schedule), **trainer.stats.collect(),
                          "skipped_steps": sum(trainer.skipped_steps.values())}
                log_file.write(json.dumps(record) + "\n")
                log_file.flush()
                log(f"kimg {record['kimg']:.3f}  img/s {record['images_per_second']:.1f}  "
                    f"G {record.get('loss/G', float('nan')):.3f}  D {record.get('loss/D', float('nan')):.3f}")
                tick_start, tick_nimg = time.perf_counter(), trainer.nimg
            if crossed(before, trainer.nimg, run.checkpoint_kimg) or done:
                save_checkpoint({"trainer": trainer.state_dict(), "data": batches.state_dict()}, run_dir,
                                run.keep_checkpoints)
            if crossed(before, trainer.nimg, run.snapshot_kimg) or done:
                export_snapshot(trainer, run_dir, grid_z, cameras)
    batches.close()
    return trainer
