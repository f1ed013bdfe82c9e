"""Ray as the tests run it: a local cluster that touches nothing it did not start, and `ray job submit` as a
careful user's script runs it against a head that has just started.

    cluster = LocalCluster(env)               # `ray start --head` on 127.0.0.1, every port its own
    cluster.add_node()                        # a second node on the same machine
    result = submit_job(["ray", "job", "submit", "--address", url, "--", *entrypoint], env=env, timeout=400)
    cluster.stop()                            # ends this cluster's processes, and no other Ray's

Ray's own stop command ends every Ray on the machine (a user's training run beside the tests included), and Ray's default
ports (dashboard agent 52365, client server 10001, dashboard metrics 44227, ...) are taken by whichever Ray came
first. So a test cluster gets its own temp dir, its own ports, and `ray start` runs in a session of its own:
stopping the cluster ends the processes of those sessions, their descendants (Ray's workers put themselves in
process groups of their own) and whatever names the cluster's temp dir, nothing else.

Until the head's job agent is up (seconds after `ray start --head`, longer on a busy machine), the head
answers every submission with "No available agent to submit job, please try again later" and runs
nothing; so that answer is retried until a deadline, and anything else is returned to the test.
"""

import contextlib
import os
import random
import signal
import socket
import subprocess
import tempfile
import time

import psutil

AGENT_NOT_READY = "No available agent to submit job"
# Worker ports come from between Ray's default worker range (10002-19999) and Linux's ephemeral range (32768-),
# so that neither another Ray's workers nor a port the kernel hands out (free_ports) takes them; each node gets a
# block of its own.
WORKER_PORTS, WORKER_BLOCK = range(20000, 32000), 200
_blocks_taken: set[int] = set()  # the worker-port blocks handed to nodes by this test process


def free_ports(count: int) -> list[int]:
    """`count` distinct ports that are free now (held together while the kernel picks them)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("", 0))
        return [s.getsockname()[1] for s in sockets]


def free_worker_ports(*, tries: int = 50) -> range:
    """A block of WORKER_BLOCK ports of WORKER_PORTS that are free now and that no other node here was given."""
    for _ in range(tries):
        block = random.randrange(len(WORKER_PORTS) // WORKER_BLOCK)
        ports = range(WORKER_PORTS.start + block * WORKER_BLOCK, WORKER_PORTS.start + (block + 1) * WORKER_BLOCK)
        if block not in _blocks_taken and all(port_is_free(port) for port in ports):
            _blocks_taken.add(block)
            return ports
    raise AssertionError(f"no {WORKER_BLOCK} free ports in a row in {WORKER_PORTS} after {tries} tries")


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
        return True


def node_port_options() -> list[str]:
    """`ray start` options that give one node its own ports instead of Ray's defaults."""
    workers = free_worker_ports()
    names = ("node-manager", "object-manager", "dashboard-agent-listen", "dashboard-agent-grpc", "runtime-env-agent",
             "metrics-export")
    return [f"--{name}-port={port}" for name, port in zip(names, free_ports(len(names)))] + [
        f"--min-worker-port={workers.start}", f"--max-worker-port={workers.stop - 1}"]


class LocalCluster:
    """A Ray cluster on 127.0.0.1 in its own temp dir. With `own_ports` (the default) every port Ray opens is
    one of its own; without, only the GCS and dashboard ports are, the rest are Ray's defaults, as a user's
    `ray start --head` takes them."""

    def __init__(self, env: dict, *, own_ports: bool = True, num_cpus: int = 1):
        self.temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit
        self.port, self.dashboard_port, client_port, dashboard_metrics_port = free_ports(4)
        self.address = f"127.0.0.1:{self.port}"
        # The dashboard's own metrics server takes its port from the environment only (Ray's default: 44227).
        self.env = {**env, "DASHBOARD_METRIC_PORT": str(dashboard_metrics_port)} if own_ports else dict(env)
        self.own_ports, self.num_cpus, self.nodes = own_ports, num_cpus, 0
        self.sessions: set[int] = set()  # the session (and process group) of each `ray start`
        head = ["--head", f"--port={self.port}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard_port}"]
        try:
            self.start_node(*head, *([f"--ray-client-server-port={client_port}"] if own_ports else []))
        except BaseException:
            self.stop()  # whatever the failed start left running
            raise

    def ray(self, *args: str, timeout: float = 120, new_session: bool = False) -> subprocess.CompletedProcess:
        """Run `ray <args>` in this cluster's environment (in a session of its own if `new_session`, whose id is
        then recorded as one of this cluster's); assert that it succeeded."""
        with subprocess.Popen(["ray", *args], env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, start_new_session=new_session) as process:
            if new_session:
                self.sessions.add(process.pid)
            try:
                stdout, stderr = process.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                raise
        assert process.returncode == 0, f"ray {' '.join(args)}:\n{stdout}\n{stderr}"
        return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)

    def start_node(self, *args: str) -> None:
        """`ray start` in a session of its own: the processes it leaves running stay in that session."""
        self.ray("start", *args, "--node-ip-address=127.0.0.1", f"--num-cpus={self.num_cpus}",
                 f"--temp-dir={self.temp_dir}", "--disable-usage-stats",
                 *(node_port_options() if self.own_ports else []), new_session=True)
        self.nodes += 1

    def add_node(self) -> None:
        self.start_node(f"--address={self.address}")

    def processes(self) -> list[psutil.Process]:
        """This cluster's processes: those in its `ray start` sessions or naming its temp dir, and their
        descendants."""
        found = {}
        for process in psutil.process_iter():
            try:
                if os.getsid(process.pid) in self.sessions or self.names_temp_dir(process.cmdline()):
                    found.update({p.pid: p for p in [process, *process.children(recursive=True)]})
            except (psutil.Error, OSError):  # ended meanwhile, or not ours to read
                continue
        return list(found.values())

    def names_temp_dir(self, command_line: list[str]) -> bool:
        return any(arg == self.temp_dir or arg.endswith(f"={self.temp_dir}") or f"{self.temp_dir}/" in arg
                   for arg in command_line)

    def stop(self, grace_seconds: float = 10) -> None:
        """End this cluster's processes: SIGTERM, then SIGKILL for any still running after `grace_seconds`."""
        processes = self.processes()
        for process in processes:
            try:
                process.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(processes, timeout=grace_seconds)
        for process in alive:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=grace_seconds)
        self.sessions.clear()  # ended: their ids may now be reused by anyone


def submit_job(command: list[str], *, env: dict, timeout: float, agent_deadline: float = 180,
               retry_seconds: float = 2) -> subprocess.CompletedProcess:
    """Run a `ray job submit ...` command line; retry it while the head has no job agent yet."""
    give_up = time.monotonic() + agent_deadline
    while True:
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
        if result.returncode == 0 or AGENT_NOT_READY not in result.stdout + result.stderr:
            return result
        if time.monotonic() + retry_seconds > give_up:
            raise AssertionError(f"the Ray head had no job agent {agent_deadline:g} s after the first submission; "
                                 f"its last answer:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
        time.sleep(retry_seconds)
