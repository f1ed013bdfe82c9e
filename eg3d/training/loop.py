"""The training loop of one worker, read top to bottom: data -> trainer steps -> log, checkpoints, snapshots.

Every worker runs this function; the launcher (cluster.launch, on Ray Train) only decides how many
and hands in the gradient sync. Progress is counted in images seen: every interval (log, checkpoint,
snapshot) fires when the count crosses a multiple of it, so a resume, on any number of workers,
continues on the same schedule.
"""

import datetime
import json
import tempfile
import time
from pathlib import Path

import torch

from dataloading import storage
from dataloading.shard_reader import BACKENDS, ShardReader, camera_labels
from eg3d.config import BatchSplit, TrainConfig, batch_split
from eg3d.metrics.quality import EVALUATOR_KEYS, QualityMeter, record_values
from eg3d.networks.sample_grid import grid_cameras, sample_grid
from eg3d.networks.snapshot import CONFIG_FILE, save_snapshot

from .checkpoints import Checkpoint, CheckpointStore, torch_bytes
from .init_from import find_init_source
from .stats import memory_usage
from .trainer import SingleProcess, Trainer

LOG_FILE = "log.jsonl"
STARTS_FILE = "starts.json"  # one entry per start of the worker group
PROGRESS_SECONDS = 30.0  # rank 0 prints its progress at least this often, between log intervals too


class TrainingDiverged(RuntimeError):
    """run.max_nonfinite_steps consecutive steps had non-finite gradients; the message says what to do."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def crossed(before: int, after: int, interval_kimg: float) -> bool:
    step = max(int(interval_kimg * 1000), 1)
    return before // step != after // step


def open_reader(config: TrainConfig, manifest_url: str, device: torch.device, sync: SingleProcess,
                split: BatchSplit) -> ShardReader:
    """This rank's reader, yielding its share of every global batch."""
    backend = config.data.backend
    if backend == "auto":
        backend = "dali" if "dali" in BACKENDS else "pytorch"
    reader = ShardReader(manifest_url, rank=sync.rank, world_size=sync.world_size, seed=config.run.seed,
                         batch_size=split.shares[sync.rank], xflip=config.data.xflip,
                         device=device, backend=backend)
    if reader.resolution != config.model.image_resolution:
        raise ValueError(f"data {manifest_url}: images are {reader.resolution}x{reader.resolution}, but "
                         f"model.image_resolution is {config.model.image_resolution}")
    return reader


# --- checkpoints ---------------------------------------------------------------------------------------

GRID_VIEWS = 5  # cameras per latent code in a snapshot's sample grid (then as many depth maps)
QUALITY_KEYS = ("frechet_distance/", "kernel_distance/", "quality_nimg/", "quality_seconds/", "fid", "kid",
                *EVALUATOR_KEYS, "evaluator_floor/")
QUALITY_FILE = "quality.json"  # the last measurement, so that a resumed run reports it until the next one


def save_checkpoint(store: CheckpointStore, trainer: Trainer, reader: ShardReader, keep: int, *,
                    quality: dict) -> Checkpoint | None:
    """Every rank writes its files, then rank 0 publishes the manifest (see eg3d.training.checkpoints)."""
    sync = trainer.sync
    folder = sync.broadcast_object(store.new_folder_name(trainer.nimg) if sync.rank == 0 else None)
    files = {f"data-rank{sync.rank:04d}.json": json.dumps(reader.state_dict()).encode()}
    if sync.optimizer_sharded:
        files[f"optimizer-rank{sync.rank:04d}.pt"] = torch_bytes(trainer.optimizer_state_dicts())
    if sync.rank == 0:
        files["trainer.pt"] = torch_bytes(trainer.state_dict())
        files[QUALITY_FILE] = json.dumps(quality).encode()
    start = time.perf_counter()
    entries = store.write_files(folder, files)
    trainer.stats.add("checkpoint/seconds", time.perf_counter() - start)
    trainer.stats.add("checkpoint/bytes", sum(len(data) for data in files.values()))
    trainer.stats.add("checkpoint/count", 1)
    every_rank = sync.all_gather_object(entries)  # also the barrier: all files are written
    if sync.rank != 0:
        return None
    return store.publish(folder, nimg=trainer.nimg, world_size=sync.world_size, keep=keep,
                         files={name: entry for rank_entries in every_rank for name, entry in rank_entries.items()})


def resume(checkpoint: Checkpoint, trainer: Trainer, reader: ShardReader) -> dict:
    """Load the training state and this rank's reader position; the last quality measurement."""
    sync = trainer.sync
    shards = None
    if sync.optimizer_sharded:
        shards = [checkpoint.load_torch(f"optimizer-rank{r:04d}.pt") for r in range(checkpoint.world_size)]
    trainer.load_state_dict(checkpoint.load_torch("trainer.pt"), optimizer_shards=shards)
    same_layout = checkpoint.world_size == sync.world_size
    # Another world size splits the shards differently: the reader starts the next epoch (see ShardReader).
    reader.load_state_dict(checkpoint.load_json(f"data-rank{sync.rank if same_layout else 0:04d}.json"))
    return checkpoint.load_json(QUALITY_FILE) if QUALITY_FILE in checkpoint.manifest["files"] else {}


# --- snapshots and the log -----------------------------------------------------------------------------

def snapshot_url(run_url: str, nimg: int) -> str:
    return storage.join(run_url, "snapshots", f"snapshot-{nimg:09d}")


def take_snapshot(trainer: Trainer, run_url: str, quality: QualityMeter | None, grid_z: torch.Tensor,
                  cameras: torch.Tensor) -> dict:
    """Measure quality (every rank) and export the snapshot (rank 0); the measurement's log-record values.

    A snapshot that exists already (a run resumed from before it) is kept as it is, and its recorded
    measurement is reported again."""
    sync, url = trainer.sync, snapshot_url(run_url, trainer.nimg)
    existing = sync.broadcast_object(_snapshot_metadata(url) if sync.rank == 0 else None)
    if existing is not None:
        result = existing.get("quality")
    else:
        result = None if quality is None else quality.measure(
            trainer.G_ema, neural_rendering_resolution=trainer.schedule.neural_rendering_resolution)
        if sync.rank == 0:
            export_snapshot(trainer, url, grid_z, cameras, quality=result)
    if result is None:
        return {}
    return record_values(result, trainer.nimg)


def _snapshot_metadata(url: str) -> dict | None:
    """The metadata of a complete snapshot (its config is written last), or None."""
    config_url = storage.join(url, CONFIG_FILE)
    if not storage.exists(config_url):
        return None
    return json.loads(storage.read_bytes(config_url)).get("metadata", {})


def export_snapshot(trainer: Trainer, url: str, grid_z: torch.Tensor, cameras: torch.Tensor, *,
                    quality: dict | None) -> None:
    """G_ema, its config (with the quality measurement) and a sample grid, written to `url`."""
    run = trainer.config.run
    with tempfile.TemporaryDirectory() as scratch:
        metadata = {"nimg": trainer.nimg, **({"quality": quality} if quality else {})}
        local = save_snapshot(trainer.G_ema, trainer.config, scratch, metadata=metadata)
        grid = sample_grid(trainer.G_ema, grid_z, cameras, truncation_psi=run.sample_truncation_psi,
                           truncation_cutoff=run.sample_truncation_cutoff)
        grid.save(local / "grid.png")
        start, written = time.perf_counter(), 0
        storage.makedirs(url)
        for path in sorted(local.iterdir(), key=lambda p: p.name == CONFIG_FILE):
            data = path.read_bytes()
            storage.write_bytes_atomic(storage.join(url, path.name), data)
            written += len(data)
    trainer.stats.add("snapshot/seconds", time.perf_counter() - start)
    trainer.stats.add("snapshot/bytes", written)
    trainer.stats.add("snapshot/count", 1)


def count_start(run_url: str, *, world_size: int, nimg: int) -> int:
    """Record that the run's worker group (re)started; the number of restarts so far."""
    url = storage.join(run_url, STARTS_FILE)
    starts = json.loads(storage.read_bytes(url)) if storage.exists(url) else []
    starts.append({"time": time.time(), "world_size": world_size, "nimg": nimg})
    storage.write_bytes_atomic(url, json.dumps(starts, indent=1).encode())
    return len(starts) - 1


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
    its newest complete checkpoint, or, when it has none, starting from the weights of run.init_from (the
    schedule adjustments of eg3d.config.stages are the caller's: the driver applies them). `report(record)`, when given, is called on every rank at each log
    interval with the record that goes to log.jsonl; record["ranks"][r] holds rank r's own values (the
    Ray launcher exports them to Prometheus and forwards the record to Ray Train).

    Raises TrainingDiverged (on every rank) after run.max_nonfinite_steps consecutive steps with a phase
    skipped for non-finite gradients; no checkpoint is written while such steps go on."""
    run_url, run, sync = str(run_url), config.run, sync or SingleProcess()
    split = batch_split(config, sync.world_size)
    device = device or resolve_device(run.device)
    storage.makedirs(run_url)
    reader = open_reader(config, manifest_url, device, sync, split)
    camera_pool = torch.from_numpy(camera_labels(manifest_url))
    store = CheckpointStore(run_url)
    checkpoint = sync.broadcast_object(store.latest() if sync.rank == 0 else None)
    init_source = None  # the starting weights of a new run (run.init_from); the run's own checkpoint wins
    if checkpoint is None and run.init_from is not None:
        init_source = sync.broadcast_object(find_init_source(run.init_from) if sync.rank == 0 else None)
    trainer = Trainer(config, camera_pool=camera_pool, device=device, sync=sync,
                      networks=init_source.load_networks() if init_source is not None else None)
    quality = None
    if config.metrics.num_generated:
        quality = QualityMeter(config, manifest_url=manifest_url, run_url=run_url, camera_pool=camera_pool,
                               device=device, sync=sync, log=log)
    last_quality = {}
    if checkpoint is not None:
        last_quality = resume(checkpoint, trainer, reader)
        log(f"resumed from {checkpoint.manifest_url} at {trainer.nimg / 1000:.3f} kimg "
            f"(saved by {checkpoint.world_size} workers, now {sync.world_size})"
            + (f"; run.init_from ({run.init_from}) is not used" if run.init_from is not None else ""))
    elif init_source is not None:
        log(f"started from {init_source.describe()}; images are counted from 0, optimizer state is new")
    run_log = None
    if sync.rank == 0:
        storage.write_bytes_atomic(storage.join(run_url, "config.json"), json.dumps(config.to_dict(), indent=2).encode())
        run_log = RunLog(run_url, trainer.nimg)
    restarts = sync.broadcast_object(count_start(run_url, world_size=sync.world_size, nimg=trainer.nimg)
                                     if sync.rank == 0 else None)
    log(f"rank {sync.rank}/{sync.world_size}: {split.describe()}; this rank: {split.shares[sync.rank]} images")
    grid_z = torch.randn(4, config.model.z_dim, generator=torch.Generator().manual_seed(run.seed)).to(device)
    cameras = grid_cameras(GRID_VIEWS).to(device)
    total_nimg = int(run.total_kimg * 1000)
    # Run-wide values that stay in the record until they change (as Prometheus gauges do).
    standing = {"target_nimg": total_nimg, "world_size": sync.world_size, "micro_batch": split.largest_micro_batch,
                "accumulation_steps": split.accumulation_steps, "restarts": restarts,
                "checkpoint_nimg": checkpoint.nimg if checkpoint is not None else None, **last_quality}
    tick_start, tick_nimg, maintenance_seconds = time.perf_counter(), trainer.nimg, 0.0
    tick_compile_seconds = trainer.compile_seconds
    checkpoint_due = False
    last_line = None  # when rank 0 last printed its progress: after the first step, then every PROGRESS_SECONDS
    while trainer.nimg < total_nimg:
        before = trainer.nimg
        wait_start = time.perf_counter()
        batch = next(reader)
        trainer.stats.add("data_wait_seconds", time.perf_counter() - wait_start)
        trainer.train_step(batch["image"], batch["c"])
        done = trainer.nimg >= total_nimg
        diverged = bool(run.max_nonfinite_steps) and trainer.nonfinite_streak >= run.max_nonfinite_steps
        # Snapshot and checkpoint time is left out of the interval's images per second.
        maintenance_start = time.perf_counter()
        if crossed(before, trainer.nimg, run.snapshot_kimg) or done:  # before the checkpoint that passes it
            standing.update(take_snapshot(trainer, run_url, quality, grid_z, cameras))
        maintenance_seconds += time.perf_counter() - maintenance_start
        # Compile time (run.compile) is left out too: it is reported on its own (compile/seconds).
        training_seconds = (time.perf_counter() - tick_start - maintenance_seconds
                            - (trainer.compile_seconds - tick_compile_seconds))
        images_per_second = (trainer.nimg - tick_nimg) / max(training_seconds, 1e-9)
        if crossed(before, trainer.nimg, run.log_kimg) or done or diverged:
            record = interval_record(trainer, standing, images_per_second)
            if run_log is not None:
                run_log.append(record)
                log(status_line(record, tick_nimg))
            if report is not None:
                report(record)
            tick_start, tick_nimg, maintenance_seconds = time.perf_counter(), trainer.nimg, 0.0
            tick_compile_seconds = trainer.compile_seconds
            last_line = tick_start
        elif sync.rank == 0 and (last_line is None or time.perf_counter() - last_line >= PROGRESS_SECONDS):
            log(progress_text(trainer.nimg, total_nimg, images_per_second))
            last_line = time.perf_counter()
        if diverged:
            if run_log is not None:
                run_log.flush()
            reader.close()
            raise TrainingDiverged(sync.broadcast_object(
                divergence_message(trainer, store.latest()) if sync.rank == 0 else None))
        checkpoint_due |= crossed(before, trainer.nimg, run.checkpoint_kimg) or done
        # No checkpoint while steps are being skipped: one taken on the way to a divergence would push
        # good ones out of run.keep_checkpoints and be what a rerun resumes from. A checkpoint that falls
        # due meanwhile is written after the first fully finite step.
        if checkpoint_due and trainer.nonfinite_streak == 0:
            maintenance_start = time.perf_counter()
            if run_log is not None:  # a remote log.jsonl holds every record up to a checkpoint before it exists
                run_log.flush()
            save_checkpoint(store, trainer, reader, run.keep_checkpoints,
                            quality={k: v for k, v in standing.items() if k.startswith(QUALITY_KEYS)})
            standing["checkpoint_nimg"] = trainer.nimg
            checkpoint_due = False
            maintenance_seconds += time.perf_counter() - maintenance_start
    if checkpoint_due and sync.rank == 0:
        log(f"the last {trainer.nonfinite_streak} steps had non-finite gradients, so the final checkpoint was "
            f"not written; a rerun resumes from the newest one and trains the rest again")
    reader.close()
    return trainer


def divergence_message(trainer: Trainer, checkpoint: Checkpoint | None) -> str:
    """What happened, where, and what to do, for a run stopped by run.max_nonfinite_steps."""
    streak, last_step, opt = trainer.nonfinite_streak, trainer.step_index - 1, trainer.config.optimizer
    message = (f"training diverged: {streak} consecutive optimizer steps had non-finite gradients (steps "
               f"{last_step - streak + 1}..{last_step}, the last at {trainer.nimg / 1000:.3f} kimg, "
               f"{trainer.nimg} images seen; run.max_nonfinite_steps is {trainer.config.run.max_nonfinite_steps}); ")
    if checkpoint is None:
        message += "no checkpoint was written before the divergence, so a rerun starts over. "
    else:
        message += (f"the newest checkpoint before the divergence is {checkpoint.manifest_url} "
                    f"({checkpoint.nimg / 1000:.3f} kimg). ")
    return message + (f"Lower the learning rates or the R1 weight, e.g. --set optimizer.g_lr={opt.g_lr / 2:g} "
                      f"--set optimizer.d_lr={opt.d_lr / 2:g} or --set loss.r1_gamma=..., and run the same command "
                      f"(same --storage and --name) again: it "
                      f"{'starts over' if checkpoint is None else 'resumes from that checkpoint'} with them.")


def interval_record(trainer: Trainer, standing: dict, images_per_second: float) -> dict:
    """The log record of an interval: progress, run-wide means and each rank's own values (every rank
    calls this, as the statistics are gathered from all of them)."""
    config = trainer.config
    for name, value in memory_usage(trainer.device).items():
        trainer.stats.report(name, value)
    run_wide, ranks = trainer.stats.collect_all(trainer.sync)
    return {"kimg": trainer.nimg / 1000, "nimg": trainer.nimg, "timestamp": time.time(),
            "images_per_second": images_per_second, **standing, **vars(trainer.schedule),
            "learning_rate/G": config.optimizer.g_lr, "learning_rate/D": config.optimizer.d_lr,
            "r1_gamma": config.loss.r1_gamma, **run_wide,
            "skipped_steps": sum(trainer.skipped_steps.values()), "nonfinite_streak": trainer.nonfinite_streak,
            "ranks": ranks}


def progress_text(nimg: int, target_nimg: int, images_per_second: float) -> str:
    """"kimg 0.400/2.000 (20.0%)  img/s 6.9  ETA 0:03:52": the time left at the current speed."""
    eta = str(datetime.timedelta(seconds=round(max(target_nimg - nimg, 0) / images_per_second))) \
        if images_per_second > 0 else "unknown"
    return (f"kimg {nimg / 1000:.3f}/{target_nimg / 1000:.3f} ({100 * nimg / max(target_nimg, 1):.1f}%)  "
            f"img/s {images_per_second:.1f}  ETA {eta}")


def status_line(record: dict, interval_start_nimg: int) -> str:
    line = (f"{progress_text(record['nimg'], record['target_nimg'], record['images_per_second'])}  "
            f"workers {record['world_size']}  "
            f"G {record.get('loss/G', float('nan')):.3f}  D {record.get('loss/D', float('nan')):.3f}")
    for extractor, name in (("inception_v3", "FID"), ("random", "random-feature FD")):
        if interval_start_nimg < record.get(f"quality_nimg/{extractor}", -1) <= record["nimg"]:  # measured now
            line += f"  {name} {record[f'frechet_distance/{extractor}']:.2f}"
    if interval_start_nimg < record.get("quality_nimg/evaluator", -1) <= record["nimg"]:
        line += f"  fd_data {record['fd_data']:.2f}  pose {record['pose_error_deg']:.1f} deg"
        for key, name in (("depth_error", "depth"), ("consistency_raw", "consistency raw"),
                          ("consistency_final", "final")):
            if key in record:
                line += f"  {name} {record[key]:.3f}"
    own = record.get("ranks", [{}])[0]
    if own.get("compile/graphs"):  # run.compile: graphs compiled (or recompiled) in this interval
        line += f"  compiled {own['compile/graphs']:.0f} graphs in {own['compile/seconds']:.1f} s"
    return line
