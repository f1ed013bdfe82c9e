"""The training loop of one worker, read top to bottom: data -> trainer steps -> log, checkpoints, snapshots.

Every worker runs this function; the launcher (cluster.launch, on Ray Train) only decides how many
and hands in the gradient sync. Progress is counted in images seen: every interval (log, checkpoint,
snapshot) fires when the count crosses a multiple of it, so a resume, on any number of workers,
continues on the same schedule.
"""

import datetime
import errno
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from dataloading import storage
from dataloading.shard_reader import BACKENDS, ShardReader, camera_labels
from eg3d.config import BatchSplit, TrainConfig, batch_split
from eg3d.config.words import plural
from eg3d.metrics.quality import EVALUATOR_KEYS, QualityMeter, record_values
from eg3d.networks.sample_grid import grid_cameras, sample_grid
from eg3d.networks.snapshot import CONFIG_FILE, save_snapshot

from .checkpoints import Checkpoint, CheckpointStore, ChecksumMismatch, DiskFull, torch_bytes, write_bytes
from .init_from import find_init_source
from .schedules import Schedule
from .stats import memory_usage
from .trainer import GradientSync, NonfiniteSteps, SingleProcess, Trainer

LOG_FILE = "log.jsonl"
STARTS_FILE = "starts.json"  # one entry per start of the worker group
PROGRESS_SECONDS = 30.0  # rank 0 prints its progress at least this often, between log intervals too


class RunStopped(RuntimeError):
    """A stop that running the same command again would meet again (a worker-group restart cannot cure it):
    the launcher reports its message, which says what happened and what to do, instead of retrying."""


class TrainingDiverged(RunStopped):
    """run.max_nonfinite_steps consecutive steps had non-finite gradients; the message says what to do."""


class NoIntactCheckpoint(RunStopped):
    """The run has checkpoints, but every one is damaged (each is kept, set aside); the message lists them."""


class StorageFull(RunStopped):
    """The disk filled up while writing a checkpoint or snapshot; the message names the file, the bytes it
    needed, and the newest checkpoint, which is intact."""


class ResumeRefused(RunStopped, ValueError):
    """The config given for a resume would change the run discontinuously (see `resolution_jump`)."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def crossed(before: int, after: int, interval_kimg: float) -> bool:
    step = max(int(interval_kimg * 1000), 1)
    return before // step != after // step


def open_reader(config: TrainConfig, manifest_url: str, device: torch.device, sync: GradientSync,
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
                    quality: dict, snapshot_due: bool, record: dict | None = None) -> Checkpoint | None:
    """Every rank writes its files, then rank 0 publishes the manifest (see eg3d.training.checkpoints). A full
    disk on any rank raises StorageFull on every rank, with nothing published."""
    sync = trainer.sync
    folder = sync.broadcast_object(store.new_folder_name(trainer.nimg) if sync.rank == 0 else None)
    trainer.gather_augment_signs()  # into rank 0's trainer.pt
    files = {f"data-rank{sync.rank:04d}.json": json.dumps(reader.state_dict()).encode()}
    if sync.optimizer_sharded:
        files[f"optimizer-rank{sync.rank:04d}.pt"] = torch_bytes(trainer.optimizer_state_dicts())
    if sync.rank == 0:
        files["trainer.pt"] = torch_bytes(trainer.state_dict())
        files[QUALITY_FILE] = json.dumps(quality).encode()
    start = time.perf_counter()
    entries, full = None, None
    try:
        entries = store.write_files(folder, files)
    except DiskFull as error:
        full = error
    trainer.stats.add("checkpoint/seconds", time.perf_counter() - start)
    trainer.stats.add("checkpoint/bytes", sum(len(data) for data in files.values()))
    trainer.stats.add("checkpoint/count", 1)
    every_rank = sync.all_gather_object((entries, full))  # also the barrier: all files are written
    full = next((error for _, error in every_rank if error is not None), None)
    checkpoint = None
    if sync.rank == 0 and full is None:
        try:
            checkpoint = store.publish(folder, nimg=trainer.nimg, world_size=sync.world_size, keep=keep,
                                       snapshot_due=snapshot_due, record=record,
                                       files={name: entry for rank_entries, _ in every_rank
                                                                         for name, entry in rank_entries.items()})
        except DiskFull as error:
            full = error
    if sync.rank == 0 and full is not None:
        storage.delete(storage.join(store.url, folder), recursive=True)  # unpublished: frees what it took
    stop_if_disk_full(sync, store, full, f"checkpoint at {trainer.nimg / 1000:.3f} kimg")
    return checkpoint


def stop_if_disk_full(sync: GradientSync, store: CheckpointStore, full: DiskFull | None, what: str) -> None:
    """Raise StorageFull on every rank when rank 0's `full` is set (a collective: every rank calls it)."""
    message = None
    if sync.rank == 0 and full is not None:
        newest = store.latest()
        message = (f"disk full: {full.strerror}, for the {what}. "
                   + (f"The newest checkpoint, {newest.manifest_url} ({newest.nimg / 1000:.3f} kimg), is intact and "
                      "nothing half-written is taken for one" if newest is not None else
                      "The run has no checkpoint yet; nothing half-written is taken for one")
                   + f". Free at least {full.needed} bytes there (or pass a --storage with room) and run the same "
                     "command again: it resumes from the newest checkpoint.")
    message = sync.broadcast_object(message)
    if message is not None:
        raise StorageFull(message)


def read_newest_intact(store: CheckpointStore, sync: GradientSync, log) -> tuple[Checkpoint | None, dict | None]:
    """The newest published checkpoint whose files are all there with their sizes (checked by rank 0) and match
    their SHA-256 (each rank checks those it reads), and its state (`read_state`); (None, None) for a new run.
    A damaged one (or a manifest that does not parse) is set aside (kept: see CheckpointStore.set_aside) and the
    next older one tried; the log names both. NoIntactCheckpoint when the run has checkpoints but none is intact."""
    # (manifest URL, why, where it was set aside); a manifest that is none (cut short, not JSON) is set aside first
    damaged: list[tuple[str, str, str]] = store.set_aside_unreadable() if sync.rank == 0 else []
    candidates = store.published() if sync.rank == 0 else []
    while True:
        checkpoint, problem = sync.broadcast_object(_next_candidate(candidates) if sync.rank == 0 else None)
        if checkpoint is None:
            break
        state = None
        if problem is None:
            try:
                state = read_state(checkpoint, sync)
            except ChecksumMismatch as mismatch:
                problem = str(mismatch)
            problem = next((p for p in sync.all_gather_object(problem) if p is not None), None)
        if problem is None:
            for url, why, aside in damaged:
                log(f"checkpoint {url} is damaged ({why}); it is kept, set aside as {aside}, and the run resumes "
                    f"from the newest intact checkpoint, {checkpoint.manifest_url}, instead")
            return checkpoint, state
        if sync.rank == 0:
            damaged.append((checkpoint.manifest_url, problem, store.set_aside(checkpoint, problem)))
    message = None
    if sync.rank == 0:
        every = {aside: why for _, why, aside in damaged} | store.set_aside_checkpoints()
        if every:
            message = (f"no intact checkpoint in {store.url}: "
                       + "; ".join(f"{url} ({why})" for url, why in every.items())
                       + ". Each is kept (its manifest renamed to NAME.json.damaged), none deleted. Restore the "
                         "damaged files from a copy and rename the manifest back to NAME.json to resume one, or "
                         "start the run over under another --name")
    message = sync.broadcast_object(message)
    if message is not None:
        raise NoIntactCheckpoint(message)
    return None, None


def _next_candidate(candidates: list[Checkpoint]) -> tuple[Checkpoint | None, str | None]:
    """The next checkpoint to try and what is wrong with its files (None when all are there)."""
    if not candidates:
        return None, None
    checkpoint = candidates.pop(0)
    missing = checkpoint.missing_files()
    return checkpoint, f"missing or of another size: {', '.join(missing)}" if missing else None


def read_state(checkpoint: Checkpoint, sync: GradientSync) -> dict:
    """What this rank resumes from, every file checked against its SHA-256 (ChecksumMismatch) before any is used:
    the training state, the optimizer shards (ZeRO), this rank's reader position, the last quality measurement."""
    same_layout = checkpoint.world_size == sync.world_size
    # Another world size splits the shards differently: the reader starts the next epoch (see ShardReader).
    state = {"trainer": checkpoint.load_torch("trainer.pt"),
             "data": checkpoint.load_json(f"data-rank{sync.rank if same_layout else 0:04d}.json"),
             "quality": checkpoint.load_json(QUALITY_FILE) if QUALITY_FILE in checkpoint.manifest["files"] else {}}
    if "optimizer-rank0000.pt" in checkpoint.manifest["files"]:  # saved at ZeRO 1; any backend resumes it
        state["shards"] = [checkpoint.load_torch(f"optimizer-rank{r:04d}.pt") for r in range(checkpoint.world_size)]
    return state


def resume(state: dict, trainer: Trainer, reader: ShardReader) -> dict:
    """Load `read_state`'s training state and reader position; the last quality measurement."""
    trainer.load_state_dict(state["trainer"], optimizer_shards=state.get("shards"))
    reader.load_state_dict(state["data"])
    return state["quality"]


def resolution_jump(saved_config: dict, config: TrainConfig, nimg: int, run_url: str = "RUN") -> str | None:
    """Why resuming the run at `run_url` at `nimg` with `config` would make the neural rendering resolution jump
    from what the run (`saved_config`, its checkpoint's) trained at; None when it continues smoothly."""
    saved = {k: v for k, v in saved_config.get("rendering", {}).items() if k.startswith("neural_rendering_resolution")}
    before = Schedule.at(replace(config, rendering=replace(config.rendering, **saved)), nimg).neural_rendering_resolution
    after = Schedule.at(config, nimg).neural_rendering_resolution
    if before == after:
        return None
    changed = ", ".join(f"rendering.{k}={json.dumps(getattr(config.rendering, k))} (the run's: {json.dumps(v)})"
                        for k, v in saved.items() if getattr(config.rendering, k) != v)
    return (f"{changed}: at {nimg / 1000:.3f} kimg, where this run resumes, the neural rendering resolution would "
            f"jump from {before} to {after}, as its fade counts from the run's image 0. A second stage is a new "
            f"run that fades from its own start: --init-from {run_url} --name NEW_NAME (see docs/training.md), or "
            f"leave rendering.* as the run had it to continue this run")


# --- snapshots and the log -----------------------------------------------------------------------------

def snapshot_url(run_url: str, nimg: int) -> str:
    return storage.join(run_url, "snapshots", f"snapshot-{nimg:09d}")


def take_snapshot(trainer: Trainer, run_url: str, quality: QualityMeter | None, grid_z: torch.Tensor,
                  cameras: torch.Tensor) -> dict:
    """Measure quality (every rank) and export the snapshot (rank 0); the measurement's log-record values.
    A metric that cannot be computed is left out (QualityMeter.measure warns once); a full disk raises
    StorageFull on every rank.

    A snapshot that exists already (a run resumed from before it) is kept as it is, and its recorded
    measurement is reported again."""
    sync, url = trainer.sync, snapshot_url(run_url, trainer.nimg)
    existing = sync.broadcast_object(_snapshot_metadata(url) if sync.rank == 0 else None)
    if existing is not None:
        result = existing.get("quality")
    else:
        result = None if quality is None else quality.measure(
            trainer.G_ema, neural_rendering_resolution=trainer.schedule.neural_rendering_resolution)
        full = None
        if sync.rank == 0:
            try:
                export_snapshot(trainer, url, grid_z, cameras, quality=result)
            except DiskFull as error:
                full = error
        stop_if_disk_full(sync, CheckpointStore(run_url), full, f"snapshot at {trainer.nimg / 1000:.3f} kimg")
    if not result:
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
    """G_ema, its config (with the quality measurement) and a sample grid, written to `url` (its config last, so
    that an interrupted export is no snapshot). DiskFull names the file and the bytes still needed."""
    run = trainer.config.run
    with tempfile.TemporaryDirectory() as scratch:
        metadata = {"nimg": trainer.nimg, **({"quality": quality} if quality else {})}
        try:
            local = save_snapshot(trainer.G_ema, trainer.config, scratch, metadata=metadata)
            grid = sample_grid(trainer.G_ema, grid_z, cameras, truncation_psi=run.sample_truncation_psi,
                               truncation_cutoff=run.sample_truncation_cutoff)
            grid.save(local / "grid.png")
        except OSError as error:  # the local scratch copy (the temporary folder's disk)
            if error.errno != errno.ENOSPC:
                raise
            weights = sum(t.numel() * t.element_size() for t in trainer.G_ema.state_dict().values())
            raise DiskFull(error.filename or scratch, weights) from error
        files = sorted(local.iterdir(), key=lambda p: p.name == CONFIG_FILE)
        start, needed = time.perf_counter(), sum(path.stat().st_size for path in files)
        written = needed
        storage.makedirs(url)
        for path in files:
            data = path.read_bytes()
            write_bytes(storage.join(url, path.name), data, needed=needed)
            needed -= len(data)
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


def read_log(run_url: str, resumed_nimg: int) -> tuple[list[dict], dict | None]:
    """The records of the run's log.jsonl up to a checkpoint at `resumed_nimg`, and the last record past it (None
    when there is none): how far the attempt before a resume got (read by the driver and by rank 0)."""
    url = storage.join(run_url, LOG_FILE)
    records = ([json.loads(line) for line in storage.read_bytes(url).decode().splitlines() if line]
               if storage.exists(url) else [])
    kept = [r for r in records if r["kimg"] * 1000 <= resumed_nimg]
    return kept, next((r for r in reversed(records) if r["kimg"] * 1000 > resumed_nimg), None)


def redone_minutes(checkpoint: Checkpoint, past: dict) -> float:
    """The minutes of training from `checkpoint` to the log record `past` (`read_log`), which a resume redoes."""
    return max(past["timestamp"] - checkpoint.manifest["created_unix"], 0) / 60


class RunLog:
    """log.jsonl of a run: one JSON record per log interval, as of the checkpoint resumed from.

    A local run's file grows live; on object storage the whole log is uploaded at each checkpoint
    (objects cannot be appended to). Records past the resumed checkpoint are dropped, since those
    images are trained again; `past` is the last of them (None when there were none)."""

    def __init__(self, run_url: str, resumed_nimg: int):
        self.url = storage.join(run_url, LOG_FILE)
        kept, self.past = read_log(run_url, resumed_nimg)
        self.records = [json.dumps(r) for r in kept]
        self.flush()

    def append(self, record: dict) -> None:
        self.records.append(json.dumps(record))
        if storage.is_local(self.url):
            with open(storage.open_filesystem(self.url)[1], "a") as file:
                file.write(self.records[-1] + "\n")

    def flush(self) -> None:
        storage.write_bytes_atomic(self.url, "".join(line + "\n" for line in self.records).encode())

    def complete(self, checkpoint: Checkpoint, standing: dict) -> None:
        """Append the record of the checkpoint's own step, which the checkpoint carries, when a crash between
        the checkpoint and the record's write left the log without it (with the snapshot's measurement in
        `standing`)."""
        record = checkpoint.manifest.get("record")
        last_nimg = json.loads(self.records[-1])["nimg"] if self.records else -1
        if record is not None and last_nimg < checkpoint.nimg:
            self.append({**record, **{k: v for k, v in standing.items() if k.startswith(QUALITY_KEYS)}})
            self.flush()


def redo_message(checkpoint: Checkpoint, past: dict | None) -> str:
    """How much of the previous attempt a resume from `checkpoint` trains again, from the log's last record past
    it (`RunLog.past`) and the checkpoint's time."""
    if past is None:
        return (f"resuming at {checkpoint.nimg / 1000:.3f} kimg: the log has no record past it, so less than an "
                f"interval of run.log_kimg (or, on object storage, of the checkpoint intervals) is trained again")
    images = past["nimg"] - checkpoint.nimg
    return (f"resuming at {checkpoint.nimg / 1000:.3f} kimg: the previous attempt had reached at least "
            f"{past['kimg']:.3f} kimg (log.jsonl), so at least {plural(images, 'image')} ({images / 1000:.3f} kimg, "
            f"about {redone_minutes(checkpoint, past):.1f} minutes of its training) are trained again")


# --- the loop ------------------------------------------------------------------------------------------

def train(config: TrainConfig, *, manifest_url: str, run_url: str | Path, sync: GradientSync | None = None,
          device: torch.device | None = None, report=None, log=print) -> Trainer:
    """Train from the shards of `manifest_url` into `run_url` (a folder or s3:// prefix), resuming from
    its newest intact checkpoint (`read_newest_intact`), or, when it has none, starting from the weights of
    run.init_from (the schedule adjustments of eg3d.config.stages are the caller's: the driver applies them).
    `report(record)`, when given, is called on every rank at each log interval with the record that goes to
    log.jsonl; record["ranks"][r] holds rank r's own values (the Ray launcher exports them to Prometheus and
    forwards the record to Ray Train).

    Raises (on every rank) TrainingDiverged after run.max_nonfinite_steps consecutive steps with a phase
    skipped for non-finite gradients, found at the next log or checkpoint step (which then writes no checkpoint;
    none is written while such steps go on either), StorageFull when a
    checkpoint or snapshot meets a full disk, NoIntactCheckpoint, and ResumeRefused (`resolution_jump`)."""
    run_url, run, sync = str(run_url), config.run, sync or SingleProcess()
    split = batch_split(config, sync.world_size)
    device = device or resolve_device(run.device)
    storage.makedirs(run_url)
    reader = open_reader(config, manifest_url, device, sync, split)
    try:
        return _train(config, reader, manifest_url=manifest_url, run_url=run_url, sync=sync, split=split,
                      device=device, report=report, log=log)
    finally:
        reader.close()


def _train(config: TrainConfig, reader: ShardReader, *, manifest_url: str, run_url: str, sync: GradientSync,
           split: BatchSplit, device: torch.device, report, log) -> Trainer:
    run = config.run
    camera_pool = torch.from_numpy(camera_labels(manifest_url))
    store = CheckpointStore(run_url)
    checkpoint, state = read_newest_intact(store, sync, log)
    if checkpoint is not None and (jump := resolution_jump(state["trainer"]["config"], config, checkpoint.nimg, run_url)):
        raise ResumeRefused(f"{checkpoint.manifest_url}: {jump}")
    init_source = None  # the starting weights of a new run (run.init_from); the run's own checkpoint wins
    if checkpoint is None and run.init_from is not None:
        init_source = sync.broadcast_object(find_init_source(run.init_from) if sync.rank == 0 else None)
    trainer = Trainer(config, camera_pool=camera_pool, device=device, sync=sync,
                      networks=init_source.load_networks() if init_source is not None else None)
    quality = None
    if config.metrics.num_generated:
        quality = QualityMeter(config, manifest_url=manifest_url, run_url=run_url, camera_pool=camera_pool,
                               device=device, sync=sync, log=log, skip_failed=True)
    last_quality = {}
    if checkpoint is not None:
        last_quality = resume(state, trainer, reader)
        log(f"resumed from {checkpoint.manifest_url} at {trainer.nimg / 1000:.3f} kimg "
            f"(saved by {plural(checkpoint.world_size, 'worker')}, now {sync.world_size})"
            + (f"; run.init_from ({run.init_from}) is not used" if run.init_from is not None else ""))
    elif init_source is not None:
        log(f"started from {init_source.describe()}; images are counted from 0, optimizer state is new")
    del state  # the checkpoint's bytes, loaded now
    run_log = None
    if sync.rank == 0:
        storage.write_bytes_atomic(storage.join(run_url, "config.json"), json.dumps(config.to_dict(), indent=2).encode())
        run_log = RunLog(run_url, trainer.nimg)
        if checkpoint is not None:
            log(redo_message(checkpoint, run_log.past))
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
    if checkpoint is not None and checkpoint.manifest.get("snapshot_due"):
        # Exported after its checkpoint: a crash between the two left it to this resume (or it is there already,
        # and its measurement is the one to report).
        standing.update(take_snapshot(trainer, run_url, quality, grid_z, cameras))
    if run_log is not None and checkpoint is not None:
        run_log.complete(checkpoint, standing)
    tick_start, tick_nimg, maintenance_seconds = time.perf_counter(), trainer.nimg, 0.0
    tick_compile_seconds = trainer.compile_seconds
    checkpoint_due, last_checkpoint_time = False, time.monotonic()
    last_line = None  # when rank 0 last printed its progress: after the first step, then every PROGRESS_SECONDS
    while trainer.nimg < total_nimg:
        before = trainer.nimg
        wait_start = time.perf_counter()
        batch = next(reader)
        trainer.stats.add("data_wait_seconds", time.perf_counter() - wait_start)
        trainer.train_step(batch["image"], batch["c"])
        done = trainer.nimg >= total_nimg
        log_due = crossed(before, trainer.nimg, run.log_kimg) or done
        snapshot_due = crossed(before, trainer.nimg, run.snapshot_kimg) or done
        checkpoint_due |= (crossed(before, trainer.nimg, run.checkpoint_kimg) or done
                           or (log_due and minutes_passed(sync, last_checkpoint_time, run.checkpoint_minutes)))
        # The device is read at log and checkpoint steps only (with the interval's statistics): steps between
        # them queue their work on a GPU without waiting for it.
        nonfinite = trainer.read_nonfinite() if log_due or checkpoint_due else None
        diverged = diverged_at(nonfinite, run.max_nonfinite_steps)
        checkpointed = checkpoint_due and not diverged and nonfinite.streak == 0
        if checkpointed:
            standing["checkpoint_nimg"] = trainer.nimg
        # The step's record is made before the checkpoint, which carries it (a resume writes it when a crash
        # lost it); the snapshot's measurement is added after. Snapshot and checkpoint time is left out of the
        # interval's images per second.
        record = None
        if log_due or diverged:
            record = interval_record(trainer, standing, images_per_second(
                trainer, tick_nimg, time.perf_counter() - tick_start - maintenance_seconds, tick_compile_seconds))
        maintenance_start = time.perf_counter()
        # No checkpoint while steps are being skipped: one taken on the way to a divergence would push
        # good ones out of run.keep_checkpoints and be what a rerun resumes from. A checkpoint that falls
        # due meanwhile is written after the first fully finite step. The checkpoint goes before the snapshot,
        # so that nothing the quality measurement or the export does can cost the training since the last one.
        if checkpointed:
            if run_log is not None:  # a remote log.jsonl holds every record up to a checkpoint before it exists
                run_log.flush()
            save_checkpoint(store, trainer, reader, run.keep_checkpoints, snapshot_due=snapshot_due,
                            quality={k: v for k, v in standing.items() if k.startswith(QUALITY_KEYS)},
                            record=record if sync.rank == 0 else None)
            checkpoint_due, last_checkpoint_time = False, time.monotonic()
        if snapshot_due:
            measured = take_snapshot(trainer, run_url, quality, grid_z, cameras)
            standing.update(measured)
            if record is not None:
                record.update(measured)
        maintenance_seconds += time.perf_counter() - maintenance_start
        if record is not None:
            if run_log is not None:
                run_log.append(record)
                log(status_line(record, tick_nimg))
            if report is not None:
                report(record)
            tick_start, tick_nimg, maintenance_seconds = time.perf_counter(), trainer.nimg, 0.0
            tick_compile_seconds = trainer.compile_seconds
            last_line = tick_start
        elif sync.rank == 0 and (last_line is None or time.perf_counter() - last_line >= PROGRESS_SECONDS):
            log(progress_text(trainer.nimg, total_nimg, images_per_second(
                trainer, tick_nimg, time.perf_counter() - tick_start - maintenance_seconds, tick_compile_seconds)))
            last_line = time.perf_counter()
        if run_log is not None and (checkpointed or diverged):
            run_log.flush()  # the record of a checkpoint's own step, too
        if diverged:
            raise TrainingDiverged(sync.broadcast_object(
                divergence_message(trainer, store.latest(), nonfinite) if sync.rank == 0 else None))
    if checkpoint_due and sync.rank == 0:
        log(f"the last {trainer.nonfinite_streak} steps had non-finite gradients, so the final checkpoint was "
            f"not written; a rerun resumes from the newest one and trains the rest again")
    return trainer


def diverged_at(nonfinite: NonfiniteSteps | None, max_nonfinite_steps: int | None) -> bool:
    """Whether a streak of non-finite steps reached run.max_nonfinite_steps (0 or None: never) since the
    previous read (`nonfinite`, None when the device was not read at this step)."""
    return bool(nonfinite is not None and max_nonfinite_steps and nonfinite.longest_streak >= max_nonfinite_steps)


def images_per_second(trainer: Trainer, tick_nimg: int, seconds: float, tick_compile_seconds: float) -> float:
    """Images trained since `tick_nimg` per second of the interval's `seconds` (snapshot and checkpoint time
    already left out), less the compile time since (run.compile; reported on its own as compile/seconds)."""
    training_seconds = seconds - (trainer.compile_seconds - tick_compile_seconds)
    return (trainer.nimg - tick_nimg) / max(training_seconds, 1e-9)


def minutes_passed(sync: GradientSync, since: float, minutes: float | None) -> bool:
    """Whether run.checkpoint_minutes have passed on rank 0's clock since `since` (time.monotonic); every rank
    gets rank 0's verdict (one all-reduce), so that all of them checkpoint at the same step. Asked at log steps
    only: on GPUs the all-reduce goes through the device, and would wait for it at every step."""
    if minutes is None:
        return False
    due = sync.rank == 0 and time.monotonic() - since >= minutes * 60
    return bool(sync.all_reduce_sum(torch.tensor([float(due)])).item())


def divergence_message(trainer: Trainer, checkpoint: Checkpoint | None, nonfinite: NonfiniteSteps) -> str:
    """What happened, where, and what to do, for a run stopped by run.max_nonfinite_steps (`nonfinite`: the read
    that found the streak)."""
    streak, last_step, opt = nonfinite.longest_streak, nonfinite.longest_streak_end, trainer.config.optimizer
    nimg = trainer.nimg - (trainer.step_index - 1 - last_step) * trainer.split.global_batch
    message = (f"training diverged: {streak} consecutive optimizer steps had non-finite gradients (steps "
               f"{last_step - streak + 1}..{last_step}, the last at {nimg / 1000:.3f} kimg, "
               f"{nimg} images seen; run.max_nonfinite_steps is {trainer.config.run.max_nonfinite_steps}); ")
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
    calls this, as the statistics are gathered from all of them). Reads the device: a sync point."""
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
        if (interval_start_nimg < record.get(f"quality_nimg/{extractor}", -1) <= record["nimg"]  # measured now
                and f"frechet_distance/{extractor}" in record):
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
