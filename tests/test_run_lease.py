"""One writer per run: the driver's lease on `{run}/lease.json`, on a local folder and on S3 (moto)."""

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import eg3d.train
from cluster.lease import LEASE_FILE, MISSED_HEARTBEATS, RunLease
from dataloading import storage
from s3_fixtures import BUCKET, moto_server  # noqa: F401 - the fixture
from test_train_cli import cli_args

ROOT = Path(__file__).resolve().parent.parent
HOLD = """
import sys, time
from cluster.lease import RunLease
RunLease(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(120)
"""


@pytest.fixture(params=["local", "s3"])
def storage_url(request, tmp_path) -> str:
    """Where the runs live: a local folder, or a fresh prefix of the moto bucket."""
    if request.param == "local":
        return str(tmp_path)
    request.getfixturevalue("moto_server")
    return f"s3://{BUCKET}/run-lease/{tmp_path.name}"


def no_training(*args, **kwargs):
    raise AssertionError("the run should have been refused before its data or workers")


def test_a_second_driver_is_refused_naming_the_first(storage_url, monkeypatch, capsys):
    """The holder is another process: the refusal names its host and pid, before any data or worker."""
    monkeypatch.setattr(eg3d.train, "train", no_training)
    run = storage.join(storage_url, "run")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, run], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline() == "held\n"
        assert eg3d.train.main(cli_args(storage_url, 0.004)) == 2
    finally:
        holder.kill()
        holder.wait()
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith(f"error: {run} is being trained by another eg3d.train (")
    assert f"host {socket.gethostname()}, pid {holder.pid}, started " in error
    assert "train under another --name" in error and "rerun this command with --take-over" in error
    assert json.loads(storage.read_bytes(storage.join(run, LEASE_FILE)))["pid"] == holder.pid  # left alone


def test_an_expired_lease_is_taken_over_and_its_holder_finds_out(storage_url):
    run = storage.join(storage_url, "run")
    long_ago = time.time() - 30 * MISSED_HEARTBEATS - 1
    crashed = RunLease(run, clock=lambda: long_ago)
    crashed.acquire()
    said = []
    successor = RunLease(run)
    successor.acquire(log=said.append)
    assert said == [f"taking {run} over from host {socket.gethostname()}, pid {os.getpid()}, started "
                    f"{time.strftime('%Y-%m-%d %H:%M:%S %Z', time.localtime(long_ago))}, last heartbeat 121 s ago "
                    f"(it expires 120 s after that): its lease expired"]
    assert not crashed.renew() and crashed.lost and crashed.lost_to.token == successor.holder.token
    assert successor.renew()
    crashed.release()  # not its lease any more: left in place
    assert storage.exists(successor.url)
    successor.release()
    assert not storage.exists(successor.url)


def test_take_over_and_the_heartbeat_of_the_driver_that_lost_the_run(storage_url):
    """--take-over takes a live lease; the old holder's heartbeat thread notices and calls on_lost."""
    run = storage.join(storage_url, "run")
    first = RunLease(run, heartbeat_seconds=0.5)
    first.acquire()
    lost = threading.Event()
    first.start_heartbeat(on_lost=lost.set)
    deadline = time.monotonic() + 10
    while first.holder.heartbeat == first.holder.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not lost.is_set() and first.holder.heartbeat > first.holder.started  # renewed
    second = RunLease(run)
    second.acquire(take_over=True, log=lambda line: None)
    assert lost.wait(10) and first.lost_to.token == second.holder.token
    assert "was taken over by another eg3d.train (host " in first.lost_message()
    first.release()
    second.release()


def test_the_driver_holds_the_lease_while_it_trains_and_releases_it(tmp_path, monkeypatch):
    seen = []

    def training(config, args, *, storage_url, name, deepspeed_file):
        seen.append(json.loads((tmp_path / "run" / LEASE_FILE).read_text()))
        return 0

    monkeypatch.setattr(eg3d.train, "train", training)
    RunLease(str(tmp_path / "run")).acquire()  # a live holder, taken over on request
    assert eg3d.train.main(cli_args(tmp_path, 0.004, "--take-over")) == 0
    assert seen[0]["pid"] == os.getpid() and seen[0]["expires_seconds"] == 120
    assert not (tmp_path / "run" / LEASE_FILE).exists()


def test_conditional_writes_refuse_a_stale_version(storage_url):
    """The store decides (S3: If-None-Match / If-Match; local: under a lock): a write from a stale read fails."""
    url = storage.join(storage_url, "object.json")
    first = storage.write_if_unchanged(url, b"1", None)
    with pytest.raises(storage.VersionMismatch):
        storage.write_if_unchanged(url, b"2", None)  # it exists now
    second = storage.write_if_unchanged(url, b"2", first)
    with pytest.raises(storage.VersionMismatch):
        storage.write_if_unchanged(url, b"3", first)  # stale
    assert storage.read_versioned(url) == (b"2", second) and first != second


def test_the_lease_of_a_killed_process_on_this_host_is_taken_at_once(storage_url):
    """A driver killed with no chance to release its lease (SIGKILL, a timeout) leaves it behind; a rerun on
    the same host sees that the pid no longer runs and takes the run without waiting for the lease to expire."""
    run = storage.join(storage_url, "run")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, run], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert holder.stdout.readline() == "held\n"
    holder.kill()
    holder.wait()
    said = []
    successor = RunLease(run)
    successor.acquire(log=said.append)
    assert len(said) == 1 and f"pid {holder.pid}, started " in said[0]
    assert said[0].endswith(": its process is gone from this host")
    successor.release()


def test_a_live_lease_of_another_host_is_not_judged_by_its_pid(tmp_path):
    """Another host's pid says nothing here: its lease holds until it expires (or --take-over)."""
    run = str(tmp_path / "run")
    elsewhere = RunLease(run)
    elsewhere.acquire()
    lease = json.loads(storage.read_bytes(elsewhere.url))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    lease.update(host=socket.gethostname() + "-elsewhere", pid=int(dead))  # a pid that no longer runs here
    storage.write_bytes_atomic(elsewhere.url, json.dumps(lease).encode())
    with pytest.raises(Exception, match="is being trained by another eg3d.train"):
        RunLease(run).acquire()
