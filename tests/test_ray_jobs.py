"""The Ray tests' helpers, against stand-ins (no Ray needed): job submission, and a local cluster's stop."""

import sys
import time

import pytest

from ray_jobs import AGENT_NOT_READY, submit_job


def stand_in(tmp_path, answers: list[tuple[int, str]]) -> list[str]:
    """A command that gives the next (exit status, stderr) of `answers` each time it runs."""
    script = f"""
import pathlib, sys
calls = pathlib.Path({str(tmp_path / "calls")!r})
n = int(calls.read_text()) if calls.exists() else 0
calls.write_text(str(n + 1))
status, message = {answers!r}[min(n, {len(answers) - 1})]
print(message, file=sys.stderr)
sys.exit(status)
"""
    return [sys.executable, "-c", script]


def calls(tmp_path) -> int:
    return int((tmp_path / "calls").read_text())


def test_a_head_without_its_job_agent_yet_is_asked_again(tmp_path):
    busy = (1, f"RuntimeError: Request failed with status code 500: {AGENT_NOT_READY}, please try again later.")
    command = stand_in(tmp_path, [busy, busy, (0, "Job 'raysubmit_1' succeeded")])
    result = submit_job(command, env={}, timeout=60, retry_seconds=0.01)
    assert result.returncode == 0 and "succeeded" in result.stderr
    assert calls(tmp_path) == 3


def test_any_other_failure_is_returned_at_once(tmp_path):
    result = submit_job(stand_in(tmp_path, [(1, "Job 'raysubmit_1' failed")]), env={}, timeout=60, retry_seconds=0.01)
    assert result.returncode == 1 and "failed" in result.stderr
    assert calls(tmp_path) == 1


def test_a_head_that_never_gets_its_agent_fails_with_its_answer(tmp_path):
    command = stand_in(tmp_path, [(1, f"{AGENT_NOT_READY}, please try again later.")])
    with pytest.raises(AssertionError, match=f"(?s)no job agent 1 s after the first submission.*{AGENT_NOT_READY}"):
        submit_job(command, env={}, timeout=60, agent_deadline=1, retry_seconds=0.01)
    assert calls(tmp_path) >= 2


def test_a_local_cluster_stops_its_own_processes_and_no_others(tmp_path):
    """Stand-ins for a cluster's processes (no Ray needed): those `ray start` left in its session, a descendant
    that made a session of its own (as Ray's job drivers do), one that names the cluster's temp dir; and a
    neighbour, as another Ray's, that must survive."""
    import subprocess

    import psutil

    from ray_jobs import LocalCluster

    cluster = LocalCluster.__new__(LocalCluster)  # its processes by hand, without `ray start`
    cluster.temp_dir, cluster.sessions = str(tmp_path / "ray"), set()
    leader = subprocess.Popen(["sh", "-c", "setsid sleep 60 & sleep 60"], start_new_session=True)
    cluster.sessions.add(leader.pid)
    named = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", f"--temp-dir={cluster.temp_dir}"])
    neighbour = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", f"--temp-dir={tmp_path}/rayx"])
    try:
        deadline = time.monotonic() + 10
        while len(psutil.Process(leader.pid).children()) < 2:  # the shell has started both sleeps
            assert time.monotonic() < deadline
            time.sleep(0.05)
        ours = cluster.processes()
        assert {p.pid for p in ours} >= {leader.pid, named.pid} and len(ours) == 4
        cluster.stop(grace_seconds=5)
        assert [p.pid for p in ours if p.is_running() and p.status() != psutil.STATUS_ZOMBIE] == []
        assert neighbour.poll() is None and cluster.sessions == set()
    finally:
        for process in (leader, named, neighbour):
            process.kill()
            process.wait()
