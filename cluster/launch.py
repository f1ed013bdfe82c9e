"""Ray Train launch: the driver side of `python -m eg3d.train` and the function every worker runs.

The driver connects to the cluster in `RAY_ADDRESS` (what `ray job submit` sets) or starts a local Ray,
and runs a `TorchTrainer` whose `RunConfig(name, storage_path)` is the run: the same name and storage
give the same run, so the same command resumes it. Workers train with `eg3d.training.loop.train`; every
(re)started worker group (after a failure, an elastic resize or a driver restart) resumes from the
newest complete checkpoint under `{storage}/{name}/checkpoints/`.
"""

import functools
import logging
import os
import shutil
import signal
import socket
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from dataloading import storage
from eg3d.config.words import plural
from monitoring.exporter import PrometheusExporter, targets_url, write_targets

from .signals import stop_on_sigterm

# Forwarded to the workers so that they reach the same object store as the driver. Credentials are not
# forwarded (they would show in Ray's dashboard): workers take them from their own environment.
FORWARDED_ENVIRONMENT = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION")
DRIVER_SUFFIX = "-driver"  # the driver's Prometheus targets file, beside the workers' (rank 0 rewrites that)
# Ray Train's PreemptionWatcher watches for nodes being drained (cloud preemption), which the one node of a
# local Ray never is; starting it logs an error-level "E ... core_worker.cc ... PreemptionWatcher ...
# max_restarts > 0" notice from the TrainController that reads like a failure.
LOCAL_RAY_ENVIRONMENT = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
PREEMPTION_NOTICE = ("note: Ray Train may log an 'E ... PreemptionWatcher ... max_restarts > 0' line from its "
                     "TrainController: a notice about its node-preemption watcher, not a failure of this run")


@dataclass
class Job:
    """What every worker needs to train (sent to the workers as the train loop config)."""

    config: dict  # TrainConfig.to_dict()
    manifest_url: str
    storage_url: str
    name: str
    cpus_per_worker: float
    deepspeed_file: object = None  # backends.DeepSpeedFile: distributed.deepspeed_config as the driver read it

    @property
    def run_url(self) -> str:
        return storage.join(self.storage_url, self.name)


def worker_loop(job: dict) -> str | None:
    """Runs in each Ray Train worker. A run the loop stopped on purpose (RunStopped: diverged, disk full, no
    intact checkpoint, a refused resume) returns {"kind", "message"} rather than raising: Ray Train retries
    every worker exception (up to distributed.max_failures), and each retry would resume from the same
    checkpoint into the same stop. The driver turns rank 0's return value into the error."""
    import ray.train
    import ray.train.torch

    from eg3d.config import TrainConfig
    from eg3d.training.loop import RunStopped, train
    from eg3d.training.threads import flush_denormals, set_threads

    from .backends import make_sync

    job = Job(**job)
    config = TrainConfig.from_dict(job.config)
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        flush_denormals()
        set_threads(requested=config.run.threads, assigned_cpus=assigned_cpus(job.cpus_per_worker),
                    log=logging.getLogger("eg3d").info)
    else:
        torch.cuda.set_device(device)
    sync = make_sync(config.distributed.backend, zero_stage=config.distributed.zero_stage,
                     deepspeed_file=job.deepspeed_file)
    quiet_ray_train_reports()
    exporter = start_exporter(job, config, sync)
    try:
        train(config, manifest_url=job.manifest_url, run_url=job.run_url, sync=sync, device=device,
              report=functools.partial(report, exporter, sync.rank),
              log=logging.getLogger("eg3d").info)  # a print would reach the driver twice
    except RunStopped as error:  # the driver raises it again, prints the message and exits non-zero
        logging.getLogger("eg3d").error(f"rank {sync.rank}: stopping the run ({type(error).__name__}; see the "
                                        f"driver's error)")
        return {"kind": type(error).__name__, "message": str(error)}
    finally:
        if exporter is not None:
            exporter.close()
    return None


def assigned_cpus(requested: float) -> float:
    """The CPUs Ray assigned to this worker (what it was asked for, when Ray does not say)."""
    import ray

    return ray.get_runtime_context().get_assigned_resources().get("CPU", requested)


def start_exporter(job: Job, config, sync):
    """This worker's /metrics (None when telemetry.metrics_port is 0). For a run on local storage, rank 0
    writes where every worker listens for monitoring/prometheus/local.yml to find."""
    import ray.train

    telemetry = config.telemetry
    if not telemetry.metrics_port:
        return None
    local_rank = ray.train.get_context().get_local_rank()
    exporter = PrometheusExporter(run=job.name, rank=sync.rank, host=telemetry.metrics_host,
                                  port=telemetry.metrics_port + 1 + local_rank)
    logging.getLogger("eg3d").info(f"rank {sync.rank}: metrics on http://{exporter.host}:{exporter.port}/metrics")
    endpoints = sync.all_gather_object((exporter.host, exporter.port))
    if sync.rank == 0 and storage.is_local(job.storage_url):
        write_targets(targets_url(job.storage_url, job.name), job.name, dict(enumerate(endpoints)))
    return exporter


def report(exporter, rank: int, record: dict) -> None:
    """A log interval's record: to this worker's /metrics, and its run-wide part to Ray Train."""
    import ray.train

    if exporter is not None:
        exporter.update(record, record["ranks"][rank])
    ray.train.report({key: value for key, value in record.items() if key != "ranks"})


def quiet_ray_train_reports() -> None:
    """Ray Train logs every report with all its metrics; our own status line says what matters."""
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # an internal module: if it moves, the reports are merely verbose
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


@contextmanager
def ray_cluster():
    """Connected to RAY_ADDRESS, or to a local Ray started here; yields True for a local one, which is shut
    down (and its temporary folder removed) on the way out."""
    import ray

    if ray.is_initialized():
        yield False
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        print(f"connecting to the Ray cluster at {address}")
        print(PREEMPTION_NOTICE)
        ray.init(address=address, log_to_driver=True)
        stop_on_sigterm()
        yield False
        return
    temp_dir = tempfile.mkdtemp(prefix="eg3d-ray-")
    try:
        with own_local_environment(temp_dir):
            start_local_ray(temp_dir)
            stop_on_sigterm()
            try:
                yield True
            finally:
                ray.shutdown()
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)


@contextmanager
def own_local_environment(temp_dir: str):
    """The environment of a local Ray, restored on the way out. Its own temporary folder, so that `ray.init`
    does not join a cluster that `ray start` left in Ray's default one; the address of its dashboard in
    RAY_API_SERVER_ADDRESS, which its processes inherit: Ray Train's placement-group cleaner asks the
    dashboard whether the run's controller lives, and without the address it looks for Ray processes on
    this machine and fails ("Found multiple active Ray instances") when another Ray runs here."""
    saved = dict(os.environ)
    try:
        for name, value in LOCAL_RAY_ENVIRONMENT.items():
            os.environ.setdefault(name, value)  # the user's own choice wins
        os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{free_port()}"
        os.environ["RAY_TMPDIR"] = temp_dir
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_local_ray(temp_dir: str) -> None:
    """ray.init of a one-machine cluster in `temp_dir`, its dashboard where RAY_API_SERVER_ADDRESS says;
    then RAY_ADDRESS names it, for whatever the driver starts after."""
    import ray

    # Ray warns that it turned token authentication on (its default) when RAY_AUTH_MODE is unset; we say so.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    token_auth = os.environ.get("RAY_AUTH_MODE", "token") == "token"
    print("starting a local Ray" + (" with token authentication (Ray's default; the token is kept in "
                                    "~/.ray/auth_token, and RAY_AUTH_MODE=disabled turns it off)" if token_auth else ""))
    dashboard_port = int(os.environ["RAY_API_SERVER_ADDRESS"].rsplit(":", 1)[1])
    # The dashboard serves Ray's state API, which Ray Train's placement-group cleaner polls (it warns
    # every few seconds without it); on loopback only.
    ray.init(include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=dashboard_port, _temp_dir=temp_dir)
    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address


def storage_for_ray(storage_url: str):
    """(storage_path, storage_filesystem) for Ray's RunConfig: an absolute local path, or an s3:// URL
    with a pyarrow S3 filesystem at the endpoint our own storage uses."""
    if storage.is_local(storage_url):
        return os.path.abspath(storage_url.removeprefix("file://")), None
    if not storage_url.startswith("s3://"):
        raise ValueError(f"--storage {storage_url}: expected a local folder or an s3:// URL")
    import pyarrow.fs

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    options = {}
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        options = {"endpoint_override": host.rstrip("/"), "scheme": scheme}
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        options["region"] = region
    # Delayed open: a small object goes up in one PUT rather than a multipart upload, which some
    # S3-compatible stores (moto among them) reject for empty objects such as Ray's storage marker.
    filesystem = pyarrow.fs.S3FileSystem(allow_delayed_open=True, **options)
    return storage_url.removeprefix("s3://").rstrip("/"), filesystem


def cpus_per_worker(config, started_locally: bool) -> float:
    import ray

    if config.distributed.cpus_per_worker is not None:
        return config.distributed.cpus_per_worker
    if started_locally:  # the local machine is the cluster: share it out
        return max(int(ray.cluster_resources().get("CPU", 1)) // config.distributed.max_workers, 1)
    return 1


def use_gpu(config) -> bool:
    import ray

    choice = config.distributed.use_gpu
    return ray.cluster_resources().get("GPU", 0) > 0 if choice == "auto" else choice


def launch(config, *, manifest_url: str, storage_url: str, name: str,
           driver_record: tuple[dict, dict] = ({}, {}), deepspeed_file=None) -> None:
    """Run (or resume) the training run `name` under `storage_url` on the Ray cluster. `driver_record`:
    the driver's (run-wide, own) values for its /metrics; `deepspeed_file`: distributed.deepspeed_config's
    `backends.DeepSpeedFile`, read by the driver.

    Raises what stopped the workers' run (eg3d.training.loop.RunStopped: TrainingDiverged for non-finite
    gradients, StorageFull, NoIntactCheckpoint, ResumeRefused), and Ray Train's error when the workers failed
    more than distributed.max_failures times."""
    from eg3d.training import loop

    exporter = start_driver_exporter(config, storage_url=storage_url, name=name)
    if exporter is not None:
        exporter.update(*driver_record)
    try:
        with ray_cluster() as started_locally:
            stopped = _fit(config, manifest_url=manifest_url, storage_url=storage_url, name=name,
                           started_locally=started_locally, deepspeed_file=deepspeed_file)
        if stopped is not None:
            kind = getattr(loop, stopped["kind"], loop.RunStopped)
            raise (kind if isinstance(kind, type) and issubclass(kind, loop.RunStopped) else loop.RunStopped)(
                stopped["message"])
    finally:
        if exporter is not None:
            exporter.close()
            if storage.is_local(storage_url):  # the run is over: a local Prometheus stops looking for it
                for suffix in ("", DRIVER_SUFFIX):
                    storage.delete(targets_url(storage_url, name + suffix))


def start_driver_exporter(config, *, storage_url: str, name: str):
    telemetry = config.telemetry
    if not telemetry.metrics_port:
        return None
    exporter = PrometheusExporter(run=name, rank="driver", host=telemetry.metrics_host, port=telemetry.metrics_port)
    print(f"driver metrics on http://{exporter.host}:{exporter.port}/metrics")
    if storage.is_local(storage_url):
        write_targets(targets_url(storage_url, name + DRIVER_SUFFIX), name, {"driver": (exporter.host, exporter.port)})
    return exporter


def interruptible_trainer_class():
    """TorchTrainer whose Ctrl-C ends in KeyboardInterrupt from `fit()`. Ray Train's own SIGINT handler aborts the
    run's controller gracefully, then exits the process with no word (status 1); this one keeps the graceful
    abort, then lets the driver say what the run left and how to resume it. A second Ctrl-C stops at once."""
    from ray.train.torch import TorchTrainer

    class InterruptibleTrainer(TorchTrainer):
        interrupted = False

        def _register_sigint_handler(self, controller):
            super()._register_sigint_handler(controller)
            abort = signal.getsignal(signal.SIGINT)

            def on_sigint(signum, frame):
                self.interrupted = True
                signal.signal(signal.SIGINT, signal.default_int_handler)
                try:
                    abort(signum, frame)
                except SystemExit:  # Ray's exit once the controller is gone
                    pass

            signal.signal(signal.SIGINT, on_sigint)

    return InterruptibleTrainer


def _fit(config, *, manifest_url: str, storage_url: str, name: str, started_locally: bool,
         deepspeed_file=None) -> str | None:
    """Run the workers; what rank 0's `worker_loop` returned ({"kind", "message"} of a stopped run, or None)."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig

    from eg3d.training.loop import PROGRESS_SECONDS

    d = config.distributed
    cpus = cpus_per_worker(config, started_locally)
    gpu = use_gpu(config)
    workers = d.max_workers if d.min_workers == d.max_workers else (d.min_workers, d.max_workers)
    storage_path, filesystem = storage_for_ray(storage_url)
    job = Job(config=config.to_dict(), manifest_url=manifest_url, storage_url=storage_url, name=name,
              cpus_per_worker=cpus, deepspeed_file=deepspeed_file)
    resources = {"CPU": cpus, **({"GPU": 1} if gpu else {})}
    forwarded = {k: os.environ[k] for k in FORWARDED_ENVIRONMENT if k in os.environ}
    trainer = interruptible_trainer_class()(
        worker_loop,
        train_loop_config=vars(job),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpu, resources_per_worker=resources,
                                     elastic_resize_monitor_interval_s=d.resize_check_seconds),
        run_config=RunConfig(name=name, storage_path=storage_path, storage_filesystem=filesystem,
                             failure_config=FailureConfig(max_failures=d.max_failures),
                             worker_runtime_env={"env_vars": forwarded} if forwarded else None),
    )
    size = (f"{workers[0]} to {workers[1]} Ray Train workers" if isinstance(workers, tuple) else
            plural(workers, "Ray Train worker"))
    print(f"starting {size}, each with {plural(float(cpus), 'CPU')}{' and 1 GPU' if gpu else ''}; "
          f"rank 0 prints its progress every {config.run.log_kimg:g} kimg and at least every "
          f"{PROGRESS_SECONDS:g} s")
    sigint = signal.getsignal(signal.SIGINT)
    try:
        result = trainer.fit()
    except Exception:
        if trainer.interrupted:  # the aborted controller is gone: what is left to say is the driver's
            raise KeyboardInterrupt from None
        raise
    finally:  # Ray Train's handler, which aborts this trainer's controller, must not outlive it
        signal.signal(signal.SIGINT, signal.default_int_handler if sigint is None else sigint)
    if trainer.interrupted:
        raise KeyboardInterrupt
    return result.return_value
