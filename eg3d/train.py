"""`python -m eg3d.train`: train EG3D on a Ray cluster (or a local Ray this command starts).

    python -m eg3d.train                                    # embedded default: local Ray, synthetic data, tiny
    python -m eg3d.train --preset ffhq512 --data s3://bucket/ffhq/shards --storage s3://bucket/runs \\
        --name ffhq-a --workers 4:8 --backend ddp --set loss.r1_gamma=2
    ray job submit --address http://HEAD:8265 -- python -m eg3d.train --preset tiny --data s3://... --storage s3://...

The run is `{storage}/{name}`: its checkpoints, snapshots, config and log live there, and running the same
command again resumes it from its newest complete checkpoint. With no --data, a synthetic camera-labelled
dataset is rendered and sharded under the run on first use. `--workers MIN:MAX` makes the run elastic.
`--init-from URL` starts a new run from another run's, a snapshot's or a network pickle's weights.
"""

import _thread
import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

# Light imports only up to the config: argument and config errors, and --print-config, come before torch loads.
from .config import (TrainConfig, apply_batch_rule, apply_init_from_adjustments, apply_overrides, describe_adjustments,
                     describe_batch_rule, validate)
from .config.presets import PRESETS, get_preset
from .config.words import plural

CONFIG_ERROR_EXIT_CODE = 2  # a bad config, data path or dataset
DIVERGED_EXIT_CODE = 3  # the run stopped after run.max_nonfinite_steps consecutive non-finite steps
STOPPED_EXIT_CODE = 1  # the workers stopped the run: a full disk, no intact checkpoint
INTERRUPTED_EXIT_CODE = 130  # Ctrl-C (SIGINT), as a shell reports it: 128 + 2
TERMINATED_EXIT_CODE = 143  # SIGTERM (kill, timeout, a Kubernetes pod's deletion): 128 + 15
SETTINGS_HELP = """\
settings:
  A run's settings are the fields of its config (SECTION.FIELD, e.g. loss.r1_gamma): the preset's values,
  changed by the flags above and by --set. --print-config prints every one as this command resolves them,
  one SECTION.FIELD=VALUE line each (a line given back to --set sets that value), and exits. What each
  field does: docs/training.md ("Changing a setting"); its type and range: eg3d/config/schema.py."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m eg3d.train", description=__doc__, epilog=SETTINGS_HELP,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    parser.add_argument("--data", help="shard manifest URL (local or s3://, from python -m dataloading.build), or a "
                        "dataset folder/zip in the reference format to shard first (default: synthetic data)")
    parser.add_argument("--storage", default=None, help="where runs live: a local folder or s3://bucket/prefix "
                        "(default: run.out, i.e. ./runs)")
    parser.add_argument("--name", default=None, help="run name under --storage (default: the preset name)")
    parser.add_argument("--kimg", type=float, help="total training length in thousands of images")
    parser.add_argument("--batch", type=int, help="global batch size, in images; scales the EMA half-life and the "
                        "blur fade with it, as the reference does, and the checkpoint interval (docs/training.md: "
                        "Large batches)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--backend", choices=("ddp", "deepspeed"), help="distributed backend (default: ddp)")
    parser.add_argument("--workers", metavar="N or MIN:MAX", help="number of workers, or an elastic range")
    parser.add_argument("--init-from", metavar="URL", help="start a new run from other weights: a run folder or "
                        "checkpoint manifest, an EMA snapshot folder, or a reference network pickle (.pkl); no blur or "
                        "pose-conditioning fade and no EMA ramp-up unless set (see docs/training.md); the run's own checkpoint "
                        "wins once it has one")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override a config field, e.g. --set loss.r1_gamma=2 (repeatable)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved settings (the preset with "
                        "the flags and --set applied) and exit, starting nothing")
    parser.add_argument("--accept-camera-conventions", action="store_true", help="train even when the camera "
                        "labels look like a wrong convention for the data set as a whole (docs/data.md: Checks on your "
                        "data)")
    parser.add_argument("--take-over", action="store_true", help="train the run even though another eg3d.train "
                        "holds its lease (one that crashed or was killed; an expired lease is taken over anyway)")
    return parser.parse_args(argv)


def worker_overrides(text: str) -> list[str]:
    low, _, high = text.partition(":")
    try:
        low, high = int(low), int(high or low)
    except ValueError:
        raise ValueError(f"--workers {text!r}: expected N or MIN:MAX, e.g. 2 or 1:4") from None
    return [f"distributed.min_workers={low}", f"distributed.max_workers={high}"]


FLAG_FIELDS = {"kimg": ("run.total_kimg",), "batch": ("run.batch_size",), "seed": ("run.seed",),
               "backend": ("distributed.backend",), "workers": ("distributed.min_workers", "distributed.max_workers")}


def flag_named(error: ValueError, args: argparse.Namespace) -> ValueError:
    """The config error, with the flag that set the field it names: "... (from --workers 3:2)"."""
    flags = [f"--{flag} {getattr(args, flag)}" for flag, fields in FLAG_FIELDS.items()
             if getattr(args, flag) is not None and any(field in str(error) for field in fields)]
    return ValueError(f"{error} (from {', '.join(flags)})") if flags else error


def build_config(args: argparse.Namespace, log=print) -> TrainConfig:
    """The preset with the flags and --set overrides applied; for --batch, the --batch rule
    (eg3d.config.batch_rule), and for --init-from, the stage adjustments (eg3d.config.stages), each to the fields
    not set with --set and logged as one line. ValueError for a bad config."""
    overrides = list(args.overrides)
    for flag in ("kimg", "batch", "seed", "backend"):
        if getattr(args, flag) is not None:
            overrides.append(f"{FLAG_FIELDS[flag][0]}={getattr(args, flag)}")
    if args.workers is not None:
        overrides += worker_overrides(args.workers)
    preset = get_preset(args.preset)
    try:
        config = apply_overrides(preset, overrides)
    except ValueError as error:
        raise flag_named(error, args) from None
    explicit = {item.partition("=")[0].strip() for item in args.overrides}
    if args.batch is not None:
        config, applied = apply_batch_rule(config, preset, explicit)
        log(describe_batch_rule(config, preset, applied))
    if args.init_from is not None:
        config.run.init_from = args.init_from  # as given: a URL is text, never parsed as a --set value
    if config.run.init_from is not None:
        config, applied = apply_init_from_adjustments(config, explicit)
        log(describe_adjustments(applied))
    try:
        validate(config)
    except ValueError as error:
        raise flag_named(error, args) from None
    return config


def print_config(args: argparse.Namespace) -> int:
    """--print-config: the settings `build_config` resolves, as `setting_lines`, under comments naming the run,
    the --batch rule's changes and the --init-from adjustments; the exit code. Reads no storage and starts nothing."""
    notes = []
    try:
        config = build_config(args, log=notes.append)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return CONFIG_ERROR_EXIT_CODE
    if config.run.init_from is not None:
        notes.append("--init-from a network pickle (.pkl): its model.* and rendering.* settings replace these when "
                     "the run starts (the pickle is not read here)")
    storage_url, name = run_location(args, config)
    header = [f"the settings of the run {run_url_of(storage_url, name)}: preset {config.preset} with the flags and "
              f"--set applied", "each line given to --set sets its value; what they do: docs/training.md", *notes]
    print("\n".join([f"# {line}" for line in header] + setting_lines(config)))
    return 0


def setting_lines(config: TrainConfig) -> list[str]:
    """Every field as SECTION.FIELD=VALUE, a blank line before each section. Each line, given to --set, sets that
    value: JSON (lists for tuples, null for None), and text as it is unless --set would read it as something
    else (then in JSON quotes)."""
    def reads_back(item: str) -> bool:
        try:
            return apply_overrides(config, [item]) == config
        except ValueError:
            return False

    lines = []
    for section, fields in config.to_dict().items():
        if not isinstance(fields, dict):
            continue  # the preset's name
        lines.append("")
        for name, value in fields.items():
            as_text = f"{section}.{name}={value}"
            lines.append(as_text if isinstance(value, str) and reads_back(as_text) else
                         f"{section}.{name}={json.dumps(value, separators=(',', ':'))}")
    return lines


def run_location(args: argparse.Namespace, config: TrainConfig) -> tuple[str, str]:
    """(storage URL, run name): --storage (default run.out) made absolute, since the workers do not share the
    driver's working directory, and --name (default the preset's name)."""
    return absolute(args.storage or config.run.out), args.name or config.preset


def run_url_of(storage_url: str, name: str) -> str:
    """The run's folder: `name` under `storage_url` (a local folder or s3://bucket/prefix)."""
    return storage_url.rstrip("/") + "/" + name


def done_message(run_url: str) -> str:
    """The last line of a finished command: the run, its newest snapshot and what to try on it."""
    from .cli.snapshots import newest_snapshot

    snapshot = newest_snapshot(run_url)
    if snapshot is None:
        return f"done: {run_url}"
    return (f"done: {run_url}; its newest snapshot is {snapshot}: try python -m eg3d.generate {snapshot} --seeds 0-7 "
            f"--out out/images (more in docs/apps.md)")


def rerun_message(run_url: str) -> str:
    """What this start does to the run at `run_url`, read before the driver takes the run's lease: start a new
    run; start again from 0, when an earlier start left files (a lease, a log) but no checkpoint; or resume from
    the newest complete checkpoint, saying how much training since it is redone (from log.jsonl)."""
    from dataloading import storage

    from .training.checkpoints import CheckpointStore
    from .training.loop import read_log, redone_minutes

    store = CheckpointStore(run_url)
    latest = store.latest()
    if latest is None and (store.published() or store.unreadable() or store.set_aside_checkpoints()):
        return (f"{run_url} has checkpoints, but none is complete: the workers check each one, then stop and say "
                f"what is wrong with them")
    if latest is None:
        return (f"{run_url} has no checkpoint yet: starting again from 0" if storage.list(run_url) else
                f"starting a new run in {run_url}")
    past = read_log(run_url, latest.nimg)[1]
    redone = (f"at least {redone_minutes(latest, past):.1f} minutes of training since then will be redone: "
              f"log.jsonl reaches {past['kimg']:g} kimg" if past is not None else
              "how much training since then will be redone is not known: log.jsonl records nothing past it")
    return f"resuming {run_url} from its checkpoint at {latest.nimg / 1000:g} kimg ({redone})"


def is_manifest(url: str) -> bool:
    from dataloading import storage

    return url.endswith(".json") or storage.exists(storage.join(url, "manifest.json"))


def prepare_data(config, data: str | None, run_url: str, accept_camera_conventions: bool = False) -> str:
    """The manifest URL to train from: given, or shards built from a reference-format dataset (or synthetic)
    under the run; checked against the config (image size, enough samples, cameras that see the
    rendering's box) before any worker starts."""
    from dataloading import storage
    from dataloading.camera_conventions import check_label_conventions
    from dataloading.shard_reader import camera_labels, load_manifest

    if data is not None and is_manifest(data):
        manifest_url = data if data.endswith(".json") else data.rstrip("/") + "/manifest.json"
    elif data is not None and not storage.exists(data):
        raise FileNotFoundError(f"--data {data}: no such file or folder")
    else:
        manifest_url = build_shards(data or synthetic_dataset(config, run_url), storage.join(run_url, "shards"),
                                    accept_camera_conventions)
    print(f"checking {manifest_url} against the config")
    manifest = load_manifest(manifest_url)
    check_cameras_see_the_box(config, manifest_url)
    check_label_conventions(camera_labels(manifest_url), where=f"data {manifest_url}", accept=accept_camera_conventions)
    if manifest.resolution != config.model.image_resolution:
        size = manifest.resolution
        fitting = [name for name in sorted(PRESETS) if get_preset(name).model.image_resolution == size]
        choice = f"choose a preset of that size ({', '.join(fitting)}) or " if fitting else ""
        raise ValueError(f"data {data or manifest_url}: images are {size}x{size}, but preset {config.preset} trains "
                         f"at {config.model.image_resolution}x{config.model.image_resolution} (model.image_resolution): "
                         f"{choice}resize the data (python -m dataloading.convert DATASET OUT --resolution "
                         f"{config.model.image_resolution})")
    if manifest.sample_count < config.distributed.max_workers:
        raise ValueError(f"data {manifest_url}: {plural(manifest.sample_count, 'image')} cannot feed "
                         f"{plural(config.distributed.max_workers, 'worker')}")
    return manifest_url


def check_cameras_see_the_box(config, manifest_url: str) -> None:
    """Refuse data whose cameras mostly miss the tri-plane box with this config's rendering.ray_start,
    ray_end and box_warp (ray_start null: rays at any depth); warn when a few do."""
    from dataloading.camera_checks import CameraCheck, check_cameras
    from dataloading.shard_reader import camera_labels

    r = config.rendering
    report = check_cameras(camera_labels(manifest_url), CameraCheck(box_warp=r.box_warp, ray_start=r.ray_start,
                                                                   ray_end=r.ray_end))
    settings = (f"rendering.ray_start={r.ray_start}, rendering.ray_end={r.ray_end}, rendering.box_warp={r.box_warp} "
                f"(preset {config.preset} and --set overrides)")
    problem = report.problem()
    if problem:
        raise ValueError(f"data {manifest_url}: with {settings}: {problem}")
    blind = int(report.blind.sum())
    if blind:
        print(f"warning: data {manifest_url}: {blind} of {len(report.labels)} cameras see none of "
              f"{report.check.describe()} with {settings}; their images teach the generator nothing useful")


def build_shards(source: str, shards: str, accept_camera_conventions: bool = False) -> str:
    """Shard a reference-format dataset into the run's own folder; the manifest's URL. Shards already
    built there (a resume) are only confirmed to be the source's: data changed since is an error."""
    from dataloading import storage
    from dataloading.build import DestinationMismatch, build, summary

    manifest_url = storage.join(shards, "manifest.json")
    if not storage.exists(manifest_url):
        print(f"building shards of {source} into {shards}")
        build(source, shards, workers=1, accept_camera_conventions=accept_camera_conventions)
        print(summary(shards))
        return manifest_url
    try:
        build(source, shards, workers=1, progress=False, accept_camera_conventions=accept_camera_conventions)
    except DestinationMismatch as error:
        raise ValueError(f"--data {source} is not the data this run was sharded from ({error}). To train on the "
                         f"new data, use a new --name, or delete {shards} to shard it anew (the run's checkpoints "
                         f"then resume on the new data)") from None
    print(f"using the shards already built in {shards}")
    return manifest_url


def synthetic_dataset(config, run_url: str) -> str:
    """Rendered under the run when it is a local folder, else in a local scratch folder (then sharded)."""
    from dataloading import storage
    from dataloading.synthetic import generate_dataset

    root = Path(run_url.removeprefix("file://")) if storage.is_local(run_url) else Path(tempfile.mkdtemp())
    path = root / "synthetic-data"
    if not (path / "dataset.json").is_file():
        print(f"rendering {config.data.synthetic_count} synthetic images into {path}")
        partial = path.with_name(path.name + ".partial")  # an interrupted render is redone, never reused
        shutil.rmtree(partial, ignore_errors=True)
        generate_dataset(partial, count=config.data.synthetic_count, resolution=config.model.image_resolution,
                         seed=config.run.seed, workers=os.cpu_count() or 1)
        partial.rename(path)
    return str(path)


def absolute(url: str) -> str:
    from dataloading import storage

    return os.path.abspath(url.removeprefix("file://")) if storage.is_local(url) else url


def finished_checkpoint(config, run_url: str):
    """The run's newest checkpoint when it has reached run.total_kimg and exported its final snapshot (then no
    worker needs to start), else None."""
    from .training.checkpoints import CheckpointStore

    from dataloading import storage

    from .training.loop import snapshot_url

    latest = CheckpointStore(run_url).latest()
    target_nimg = int(config.run.total_kimg * 1000)  # as the worker loop counts it
    if latest is None or latest.nimg < target_nimg:
        return None
    # A crash between the final checkpoint and its snapshot leaves the snapshot to a resume (the workers export
    # it first thing); the snapshot's config.json is written last, so its presence means it is complete.
    if latest.manifest.get("snapshot_due") and not storage.exists(
            storage.join(snapshot_url(run_url, latest.nimg), "config.json")):
        return None
    return latest


def checked_init_source(config, run_url: str):
    """run.init_from checked (and a pickle's settings adopted, which a resumed run needs as much as a new one);
    says what will be copied, or that the run resumes from its own checkpoint instead."""
    from .training.checkpoints import CheckpointStore
    from .training.init_from import check_init_source

    config.run.init_from = absolute(config.run.init_from)
    own = CheckpointStore(run_url).latest()
    config = check_init_source(config, log=print if own is None else (lambda line: None))
    if own is not None:
        print(f"the weights of --init-from {config.run.init_from} are not loaded again: the run resumes from a "
              f"checkpoint of its own")
    validate(config)
    return config


def check_locations(config, storage_url: str, data: str | None) -> None:
    """--storage, --data and run.init_from are well-formed URLs (or local paths) with credentials for S3, and
    --data exists, before anything writes (storage: a local folder or s3://, the two that Ray Train writes)."""
    from dataloading import storage

    storage.check_url(storage_url, what="--storage", protocols=("s3",))
    for what, url in (("--data", data), ("--init-from", config.run.init_from)):
        if url is not None:
            storage.check_url(url, what=what)
    if data is not None and not storage.exists(data):
        raise FileNotFoundError(f"--data {data}: no such file or folder")


def check_resume(config, run_url: str) -> None:
    """A run that resumes keeps its architecture and its neural rendering resolution's course: ValueError
    naming every model.* field that differs from the config the run was trained with (its config.json), with
    both values and the ways out, or the resolution jump a changed rendering.* would make (`resolution_jump`)."""
    from dataloading import storage

    from .training.checkpoints import CheckpointStore
    from .training.loop import resolution_jump

    saved_url = storage.join(run_url, "config.json")
    latest = CheckpointStore(run_url).latest()
    if latest is None or not storage.exists(saved_url):
        return  # nothing to resume: the run starts with this architecture
    saved_config = json.loads(storage.read_bytes(saved_url))
    if jump := resolution_jump(saved_config, config, latest.nimg, run_url):
        raise ValueError(f"{run_url}: {jump}")
    saved = saved_config.get("model", {})
    now = json.loads(json.dumps(config.to_dict()["model"]))  # tuples as the saved lists
    differing = [f"model.{key} is {saved[key]!r} in the run, {value!r} now" for key, value in now.items()
                 if key in saved and saved[key] != value]
    if differing:
        raise ValueError(f"{run_url} resumes from its checkpoints, whose networks have another architecture "
                         f"({saved_url}): {'; '.join(differing)}. Resume it with its own --preset and model.* "
                         f"settings, train the new architecture under a new --name, or fine-tune from this run "
                         f"with --name NEW --init-from {run_url}")


def error_text(error: Exception) -> str:
    """An error as one line for the user: an OSError's own words without its "[Errno N]" prefix."""
    if isinstance(error, OSError) and error.errno is not None and error.strerror:
        return error.strerror + (f": {error.filename}" if error.filename else "")
    return str(error)


def interrupted_message(run_url: str, how: str = "interrupted") -> str:
    """What a Ctrl-C (or SIGTERM: `how`) left: the newest checkpoint, and that the same command resumes from it."""
    from .training.checkpoints import CheckpointStore

    latest = CheckpointStore(run_url).latest()
    if latest is None:
        return (f"stopped: {run_url} was {how} before its first checkpoint; the same command starts it "
                f"again from the beginning")
    return (f"stopped: {run_url} was {how}; its newest checkpoint is {latest.manifest_url} "
            f"({latest.nimg / 1000:g} kimg), and the same command resumes from it")


def main(argv=None) -> int:
    """`python -m eg3d.train`: the exit code. SIGTERM is handled as `stop_on_sigterm` says while this runs."""
    previous = signal.getsignal(signal.SIGTERM)
    try:
        return _main(argv)
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _main(argv=None) -> int:
    from cluster.lease import RunHeld, RunLease
    from cluster.signals import Terminated, stop_on_sigterm

    args = parse_args(argv)
    if args.print_config:
        return print_config(args)
    Terminated.received = False
    stop_on_sigterm()
    try:
        config = build_config(args)  # before anything imports torch: a bad --set is quick to hear of
        check_locations(config, args.storage or config.run.out, args.data or config.data.path)
        storage_url, name = run_location(args, config)
        run_url = run_url_of(storage_url, name)
        if config.run.init_from is not None:  # a bad source stops the run before any worker starts
            config = checked_init_source(config, run_url)
        check_resume(config, run_url)
        from cluster.backends import load_deepspeed_file

        deepspeed_file = load_deepspeed_file(config)  # a bad file stops the run before any worker starts
        finished = finished_checkpoint(config, run_url)
        if finished is not None:
            print(f"{run_url} has already trained its {config.run.total_kimg:g} kimg (its newest checkpoint is at "
                  f"{finished.nimg / 1000:g} kimg): nothing to do; pass a larger --kimg to train further")
            return 0
        rerun = rerun_message(run_url)  # read before the lease, itself a trace of an earlier start
        lease = RunLease(run_url)
        lease.acquire(take_over=args.take_over)
    except (ValueError, OSError, RunHeld) as error:  # OSError: storage unreachable, no bucket, no permission
        print(f"error: {error_text(error)}", file=sys.stderr)
        return CONFIG_ERROR_EXIT_CODE
    print(rerun)
    lease.start_heartbeat(on_lost=_thread.interrupt_main)  # stops training as a Ctrl-C does
    try:
        return train(config, args, storage_url=storage_url, name=name, deepspeed_file=deepspeed_file)
    except KeyboardInterrupt:
        if lease.lost:
            print(f"error: {lease.lost_message()}", file=sys.stderr)
            return 1
        if Terminated.received:
            print(interrupted_message(run_url, "terminated (SIGTERM)"), file=sys.stderr)
            return TERMINATED_EXIT_CODE
        print(interrupted_message(run_url), file=sys.stderr)
        return INTERRUPTED_EXIT_CODE
    finally:
        lease.release()


def train(config, args: argparse.Namespace, *, storage_url: str, name: str, deepspeed_file) -> int:
    """Prepare the data and train the run on Ray (the driver holds the run's lease); the exit code."""
    from .training.stats import StatsReporter

    run_url = run_url_of(storage_url, name)
    try:
        stats = StatsReporter()  # the driver's own statistics, exported beside the workers'
        preparation_start = time.perf_counter()
        manifest_url = absolute(prepare_data(config, args.data or config.data.path, run_url,
                                             args.accept_camera_conventions))
        stats.add("data_preparation_seconds", time.perf_counter() - preparation_start)
    except (ValueError, OSError) as error:
        print(f"error: {error_text(error)}", file=sys.stderr)
        return CONFIG_ERROR_EXIT_CODE
    from cluster.launch import launch
    from dataloading.shard_reader import load_manifest

    from .training.loop import ResumeRefused, RunStopped, TrainingDiverged

    _, (driver_values,) = stats.collect_all()
    record = {"run_start_timestamp": time.time(), "dataset_images": load_manifest(manifest_url).sample_count}
    try:
        launch(config, manifest_url=manifest_url, storage_url=storage_url, name=name,
               driver_record=(record, driver_values), deepspeed_file=deepspeed_file)
    except RunStopped as error:
        print(f"error: {error}", file=sys.stderr)
        return (DIVERGED_EXIT_CODE if isinstance(error, TrainingDiverged) else
                CONFIG_ERROR_EXIT_CODE if isinstance(error, ResumeRefused) else STOPPED_EXIT_CODE)
    print(done_message(run_url))
    return 0


if __name__ == "__main__":
    sys.exit(main())
