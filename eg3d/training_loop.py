"""The training loop of one worker, read top to bottom: data -> trainer steps -> log, checkpoints, snapshots.

Every worker runs this function; the launcher (cluster.launch, on Ray Train) only decides how many
and hands in the gradient sync. Progress is counted in images seen: every interval (log, checkpoint,
snapshot) fires when the count crosses a multiple of it, so a resume, on any number of workers,
continues on the same schedule.
"""

import json
import tempfile
import time
from pathlib import Path

import torch

from cluster.checkpoints import Checkpoint, CheckpointStore, torch_bytes
from dataloading import storage
from dataloading.shard_reader import BACKENDS, ShardReader, camera_labels

from .config import TrainConfig, accumulation
from .sample_grid import grid_cameras, sample_grid
from .snapshot import CONFIG_FILE, save_snapshot
from .training import SingleProcess, Trainer

LOG_FILE = "log.jsonl"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def crossed(before: int, after: int, interval_kimg: float) -> bool:
    step = max(int(interval_kimg * 1000), 1)
    return before // step != after // step


def open_reader(config: TrainConfig, manifest_url: str, device: torch.device, sync: SingleProcess) -> ShardReader:
    backend = config.data.backend
    if backend == "auto":
        backend = "dali" if "dali" in BACKENDS else "pytorch"
    reader = ShardReader(manifest_url, rank=sync.rank, world_size=sync.world_size, seed=config.run.seed,
                         batch_size=config.run.batch_size // sync.world_size, xflip=config.data.xflip,
                         device=device, backend=backend)
    if reader.resolution != config.model.image_resolution:
        raise ValueError(f"data {manifest_url}: images are {reader.resolution}x{reader.resolution}, but "
                         f"model.image_resolution is {config.model.image_resolution}")
    return reader


# --- checkpoints ---------------------------------------------------------------------------------------

def save_checkpoint(store: CheckpointStore, trainer: Trainer, reader: ShardReader, keep: int) -> Checkpoint | None:
    """Every rank writes its files, then rank 0 publishes the manifest (see cluster.checkpoints)."""
    sync = trainer.sync
    folder = sync.broadcast_object(store.new_folder_name(trainer.nimg) if sync.rank == 0 else None)
    files = {f"data-rank{sync.rank:04d}.json": json.dumps(reader.state_dict()).encode()}
    if sync.optimizer_sharded:
        files[f"optimizer-rank{sync.rank:04d}.pt"] = torch_bytes(trainer.optimizer_state_dicts())
    if sync.rank == 0:
        files["trainer.pt"] = torch_bytes(trainer.state_dict())
    entries = store.write_files(folder, files)
    every_rank = sync.all_gather_object(entries)  # also the barrier: all files are written
    if sync.rank != 0:
        return None
    return store.publish(folder, nimg=trainer.nimg, world_size=sync.world_size, keep=keep,
                         files={name: entry for rank_entries in every_rank for name, entry in rank_entries.items()})


def resume(checkpoint: Checkpoint, trainer: Trainer, reader: ShardReader) -> None:
    sync = trainer.sync
    shards = None
    if sync.optimizer_sharded:
        shards = [checkpoint.load_torch(f"optimizer-rank{r:04d}.pt") for r in range(checkpoint.world_size)]
    trainer.load_state_dict(checkpoint.load_torch("trainer.pt"), optimizer_shards=shards)
    same_layout = checkpoint.world_size == sync.world_size
    # Another world size splits the shards differently: the reader starts the next epoch (see ShardReader).
    reader.load_state_dict(checkpoint.load_json(f"data-rank{sync.rank if same_layout else 0:04d}.json"))


# --- snapshots and the log -----------------------------------------------------------------------------

def export_snapshot(trainer: Trainer, run_url: str, grid_z: torch.Tensor, cameras: torch.Tensor) -> str:
    """G_ema, its config and a sample grid under snapshots/; an existing snapshot is kept as it is."""
    url = storage.join(run_url, "snapshots", f"snapshot-{trainer.nimg:09d}")
    if storage.exists(storage.join(url, CONFIG_FILE)):  # written last: the snapshot is complete
        return url
    run = trainer.config.run
    with tempfile.TemporaryDirectory() as scratch:
        local = save_snapshot(trainer.G_ema, trainer.config, scratch, metadata={"nimg": trainer.nimg})
        grid = sample_grid(trainer.G_ema, grid_z, cameras, truncation_psi=run.sample_truncation_psi,
                           truncation_cutoff=run.sample_truncation_cutoff)
        grid.save(local / "grid.png")
        storage.makedirs(url)
        for path in sorted(local.iterdir(), key=lambda p: p.name == CONFIG_FILE):
            storage.write_bytes_atomic(storage.join(url, path.name), path.read_bytes())
    return url


class RunLog:
    """log.jsonl of a run: one JSON record per log interval, as of the checkpoint resumed from.

    A local run's file grows live; on object storage the whole log is uploaded at each checkpoint
    (objects cannot be appended to). Records past the resumed checkpoint are dropped, since those
    images are trained again."""

    def __init__(self, run_url: str, resumed_nimg: int):
        self.url = storage.join(run_url, LOG_FILE)
        self.records = []
        if storage.exists(self.url):
            lines = storage.read_bytes(self.url).decode().splitlines()
            self.records = [line for line in lines if line and json.loads(line)["kimg"] * 1000 <= resumed_nimg]
        self.flush()

    def append(self, record: dict) -> None:
        self.records.append(json.dumps(record))
        if storage.is_local(self.url):
            with open(storage.open_filesystem(self.url)[1], "a") as file:
                file.write(self.records[-1] + "\n")

    def flush(self) -> None:
        storage.write_bytes_atomic(self.url, "".join(line + "\n" for line in self.records).encode())


# --- the loop ------------------------------------------------------------------------------------------

def train(config: TrainConfig, *, manifest_url: str, run_url: str | Path, sync: SingleProcess | None = None,
          device: torch.device | None = None, report=None, log=print) -> Trainer:
    """Train from the shards of `manifest_url` into `run_url` (a folder or s3:// prefix), resuming from
    its newest complete checkpoint. `report(record)`, when given, is called on every rank at each log
    interval (the Ray launcher forwards it to Ray Train)."""
    run_url, run, sync = str(run_url), config.run, sync or SingleProcess()
    micro_batch, steps = accumulation(config, sync.world_size)
    device = device or resolve_device(run.device)
    storage.makedirs(run_url)
    reader = open_reader(config, manifest_url, device, sync)
    trainer = Trainer(config, camera_pool=torch.from_numpy(camera_labels(manifest_url)), device=device, sync=sync)
    store = CheckpointStore(run_url)
    checkpoint = sync.broadcast_object(store.latest() if sync.rank == 0 else None)
    if checkpoint is not None:
        resume(checkpoint, trainer, reader)
        log(f"resumed from {checkpoint.manifest_url} at {trainer.nimg / 1000:.3f} kimg "
            f"(saved by {checkpoint.world_size} workers, now {sync.world_size})")
    run_log = None
    if sync.rank == 0:
        storage.write_bytes_atomic(storage.join(run_url, "config.json"), json.dumps(config.to_dict(), indent=2).encode())
        run_log = RunLog(run_url, trainer.nimg)
    log(f"rank {sync.rank}/{sync.world_size}: {run.batch_size} images per step = {micro_batch} per micro-batch "
        f"x {steps} accumulation steps x {sync.world_size} workers")
    grid_z = torch.randn(4, config.model.z_dim, generator=torch.Generator().manual_seed(run.seed)).to(device)
    cameras = grid_cameras(5).to(device)
    total_nimg = int(run.total_kimg * 1000)
    tick_start, tick_nimg = time.perf_counter(), trainer.nimg
    while trainer.nimg < total_nimg:
        before = trainer.nimg
        batch = next(reader)
        trainer.train_step(batch["image"], batch["c"])
        done = trainer.nimg >= total_nimg
        if crossed(before, trainer.nimg, run.log_kimg) or done:
            seconds = time.perf_counter() - tick_start
            record = {"kimg": trainer.nimg / 1000, "images_per_second": (trainer.nimg - tick_nimg) / seconds,
                      "world_size": sync.world_size, "micro_batch": micro_batch, "accumulation_steps": steps,
                      **vars(trainer.schedule), **trainer.stats.collect(sync),
                      "skipped_steps": sum(trainer.skipped_steps.values())}
            if run_log is not None:
                run_log.append(record)
                log(f"kimg {record['kimg']:.3f}  img/s {record['images_per_second']:.1f}  workers "
                    f"{sync.world_size}  G {record.get('loss/G', float('nan')):.3f}  "
                    f"D {record.get('loss/D', float('nan')):.3f}")
            if report is not None:
                report(record)
            tick_start, tick_nimg = time.perf_counter(), trainer.nimg
        if (crossed(before, trainer.nimg, run.snapshot_kimg) or done) and sync.rank == 0:
            export_snapshot(trainer, run_url, grid_z, cameras)  # before the checkpoint that passes it
        if crossed(before, trainer.nimg, run.checkpoint_kimg) or done:
            save_checkpoint(store, trainer, reader, run.keep_checkpoints)
            if run_log is not None:
                run_log.flush()
    reader.close()
    return trainer
