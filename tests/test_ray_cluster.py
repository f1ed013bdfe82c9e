"""A real Ray cluster on 127.0.0.1 (`ray start --head`, then a second node): `ray job submit`, elastic
growth, a worker killed at a random moment, and the driver killed and rerun. Data and runs live on
moto's S3 server, as they would on a cluster.

The tests share one cluster and run in order: the head offers 1 CPU; the elastic test adds a second
node, which the fault tests then use for two workers. The whole module runs beside another, unrelated Ray,
as a user's own run may be: the suite's clusters take none of its ports and stop none of its processes.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time

import psutil
import pytest

from model_helpers import MICRO_OVERRIDES
from dataloading import storage
from eg3d.training.checkpoints import CheckpointStore
from ray_jobs import LocalCluster, submit_job
from s3_fixtures import BUCKET, moto_server  # noqa: F401 - the fixture

pytestmark = pytest.mark.slow

PREFIX = f"s3://{BUCKET}/ray-cluster"
OVERRIDES = MICRO_OVERRIDES + ["data.synthetic_count=12", "run.log_kimg=0.004", "run.checkpoint_kimg=0.008",
                               "run.snapshot_kimg=0.008", "run.keep_checkpoints=2", "distributed.cpus_per_worker=1",
                               "distributed.resize_check_seconds=2"]


@pytest.fixture(scope="module")
def cluster_env(moto_server) -> dict:
    """The head and its workers take the S3 endpoint and test credentials from this environment."""
    return {**os.environ, "RAY_AUTH_MODE": "token", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def unrelated_ray(cluster_env):
    """Another Ray on the machine, as a user's own `ray start --head` runs it (Ray's default ports but for the
    GCS and dashboard, which a user's Ray may hold already): the whole module runs beside it."""
    other = LocalCluster(cluster_env, own_ports=False)
    try:
        yield other
    finally:
        other.stop()


@pytest.fixture(scope="module")
def ray_cluster(cluster_env, unrelated_ray):
    cluster = LocalCluster(cluster_env)
    try:
        yield cluster
    finally:
        cluster.stop()


def test_stopping_a_test_cluster_leaves_another_ray_running(cluster_env, unrelated_ray):
    """A test cluster is stopped by ending only its own processes (Ray's own stop command would end every Ray on
    the machine), and its head's job agent has a port of its own (Ray's default was taken by the other Ray:
    "no job agent")."""
    other = [p for p in unrelated_ray.processes() if p.name() in ("gcs_server", "raylet")]
    assert sorted(p.name() for p in other) == ["gcs_server", "raylet"]
    cluster = LocalCluster(cluster_env)
    try:
        cluster.add_node()
        command = ["ray", "job", "submit", "--address", f"http://127.0.0.1:{cluster.dashboard_port}", "--",
                   "python", "-c", "print('the job ran')"]
        result = submit_job(command, env=cluster.env, timeout=120, agent_deadline=60)
        assert result.returncode == 0 and "the job ran" in result.stdout, result.stdout[-3000:] + result.stderr[-3000:]
        ours = cluster.processes()
        assert sorted(p.name() for p in ours if p.name() in ("gcs_server", "raylet")) == [
            "gcs_server", "raylet", "raylet"]
    finally:
        cluster.stop()
    assert [process_title(p) for p in ours if alive(p)] == []
    assert sorted(p.name() for p in other if alive(p)) == ["gcs_server", "raylet"]
    assert "Active:" in unrelated_ray.ray("status", f"--address={unrelated_ray.address}", timeout=60).stdout


def train_command(name: str, kimg: float, *extra: str) -> list[str]:
    command = [sys.executable, "-m", "eg3d.train", "--preset", "tiny", "--storage", f"{PREFIX}/runs", "--name", name,
               "--kimg", str(kimg), "--data", f"{PREFIX}/shards"]
    return command + [a for o in OVERRIDES for a in ("--set", o)] + list(extra)


@pytest.fixture(scope="module")
def shards(moto_server, tmp_path_factory):
    from dataloading.build import build
    from dataloading.synthetic import generate_dataset

    data = tmp_path_factory.mktemp("ray-data") / "data"
    generate_dataset(data, count=12, resolution=32, seed=0)
    build(str(data), f"{PREFIX}/shards", workers=1, progress=False)
    return f"{PREFIX}/shards"


def log_records(name: str) -> list[dict]:
    return [json.loads(line) for line in storage.read_bytes(f"{PREFIX}/runs/{name}/log.jsonl").decode().splitlines()]


def wait_for_checkpoint(name: str, process: subprocess.Popen, timeout: float = 240) -> None:
    store = CheckpointStore(f"{PREFIX}/runs/{name}")
    deadline = time.monotonic() + timeout
    while store.latest() is None:
        assert process.poll() is None, f"the run ended before its first checkpoint:\n{process.communicate()[0]}"
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"no checkpoint in {timeout} s; the driver said:\n{process.communicate()[0]}")
        time.sleep(0.5)


def start_driver(cluster: LocalCluster, command: list[str]) -> subprocess.Popen:
    env = {**cluster.env, "RAY_ADDRESS": cluster.address}
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen, timeout: float = 400) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-5000:]
    return output


def assert_contiguous(records: list[dict], total_kimg: float) -> None:
    """One log record per 4 images from the first to the last: a resume neither repeats nor skips."""
    assert [round(r["kimg"] * 1000) for r in records] == list(range(4, round(total_kimg * 1000) + 1, 4))


def test_ray_job_submit_trains_from_s3_to_s3(ray_cluster, shards):
    entrypoint = ["python", *train_command("submitted", 0.016)[1:]]  # the cluster's own interpreter
    command = ["ray", "job", "submit", "--address", f"http://127.0.0.1:{ray_cluster.dashboard_port}", "--", *entrypoint]
    result = submit_job(command, env=ray_cluster.env, timeout=400)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-3000:]
    assert "succeeded" in result.stdout + result.stderr
    assert_contiguous(log_records("submitted"), 0.016)
    assert CheckpointStore(f"{PREFIX}/runs/submitted").latest().nimg == 16
    assert storage.exists(f"{PREFIX}/runs/submitted/snapshots/snapshot-000000016/config.json")


def test_elastic_run_grows_when_a_node_joins(ray_cluster, shards):
    driver = start_driver(ray_cluster, train_command("elastic", 0.12, "--workers", "1:2"))
    wait_for_checkpoint("elastic", driver)
    ray_cluster.add_node()
    output = finish(driver)
    assert "saved by 1 worker, now 2" in output  # the group restarted from a checkpoint at the new size
    records = log_records("elastic")
    assert_contiguous(records, 0.12)
    sizes = [r["world_size"] for r in records]
    assert sizes[0] == 1 and sizes[-1] == 2 and sizes == sorted(sizes), output[-3000:]
    for record in records:  # the effective batch stays the configured one
        assert record["micro_batch"] * record["accumulation_steps"] * record["world_size"] == 4
    assert CheckpointStore(f"{PREFIX}/runs/elastic").latest().nimg == 120


def ray_train_worker_pids(cluster: LocalCluster) -> list[int]:
    """The Ray Train workers of this cluster (not those of any other Ray on the machine)."""
    return [p.pid for p in cluster.processes() if process_title(p).startswith("ray::RayTrainWorker")]


def alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def process_title(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except psutil.Error:  # ended meanwhile
        return ""


def test_a_worker_killed_at_a_random_moment_is_replaced(ray_cluster, shards):
    if ray_cluster.nodes < 2:
        ray_cluster.add_node()
    moment = random.Random().uniform(0, 3)
    print(f"killing a worker {moment:.2f} s after the first checkpoint")
    driver = start_driver(ray_cluster, train_command("killed-worker", 0.1, "--workers", "2"))
    wait_for_checkpoint("killed-worker", driver)
    time.sleep(moment)
    pids = ray_train_worker_pids(ray_cluster)
    assert len(pids) == 2, pids
    os.kill(random.choice(pids), signal.SIGKILL)
    output = finish(driver)
    assert "resumed from" in output
    records = log_records("killed-worker")
    assert_contiguous(records, 0.1)
    assert CheckpointStore(f"{PREFIX}/runs/killed-worker").latest().nimg == 100
    assert {r["world_size"] for r in records} == {2}


def test_a_killed_driver_resumes_when_the_command_is_rerun(ray_cluster, shards):
    """The dead driver's lease on the run would hold for 2 minutes: the rerun takes it over, as a user whose
    driver is gone does."""
    if ray_cluster.nodes < 2:
        ray_cluster.add_node()
    command = train_command("killed-driver", 0.06, "--workers", "2")
    driver = start_driver(ray_cluster, command)
    wait_for_checkpoint("killed-driver", driver)
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=60)
    deadline = time.monotonic() + 60
    while ray_train_worker_pids(ray_cluster):  # Ray ends a dead driver's actors
        assert time.monotonic() < deadline, "workers outlived their driver"
        time.sleep(0.5)
    first = CheckpointStore(f"{PREFIX}/runs/killed-driver").latest().nimg
    assert first < 60
    output = finish(start_driver(ray_cluster, command + ["--take-over"]))
    assert "resumed from" in output
    assert_contiguous(log_records("killed-driver"), 0.06)
    assert CheckpointStore(f"{PREFIX}/runs/killed-driver").latest().nimg == 60
