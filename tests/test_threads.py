"""Torch threads per worker: the CPUs it was assigned, capped by the cores it may run on (eg3d.training.threads)."""

import os
import subprocess
import sys
import types

import pytest
import torch

from model_helpers import micro_config
from eg3d.training import threads


@pytest.mark.parametrize("requested, assigned_cpus, cores, expected", [
    (None, None, 2, 2),  # no launcher: every core of the affinity mask
    (None, None, 1, 1),  # taskset -c 0
    (None, 1.0, 2, 1),  # Ray gave the worker 1 CPU of 2
    (None, 4.0, 2, 2),  # Ray counts 4 CPUs, but the container lets the process run on 2
    (None, 1.5, 8, 1),  # fractional CPUs: the whole ones
    (None, 0.5, 8, 1),  # at least one thread
    (3, 1.0, 2, 3),  # run.threads wins, even above the cores
])
def test_thread_count(requested, assigned_cpus, cores, expected):
    assert threads.thread_count(requested=requested, assigned_cpus=assigned_cpus, cores=cores) == expected


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_set_threads_reads_the_affinity_mask_and_says_so_once(monkeypatch, restore_threads):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 2, 5})
    lines = []
    assert threads.set_threads(requested=None, assigned_cpus=8.0, log=lines.append) == 3
    assert torch.get_num_threads() == 3
    assert lines == ["torch threads: 3 (the 8 CPU(s) assigned, 3 core(s) in the affinity mask)"]
    threads.set_threads(requested=1, log=lines.append)
    assert torch.get_num_threads() == 1 and lines[-1] == "torch threads: 1 (as requested)"


def test_a_ray_worker_takes_the_cpus_ray_assigned_to_it(monkeypatch):
    ray = pytest.importorskip("ray")
    from cluster.launch import assigned_cpus

    def context(resources):
        return lambda: types.SimpleNamespace(get_assigned_resources=lambda: resources)

    monkeypatch.setattr(ray, "get_runtime_context", context({"CPU": 2.0, "memory": 1e9}))
    assert assigned_cpus(1.0) == 2.0
    monkeypatch.setattr(ray, "get_runtime_context", context({}))  # Ray did not say: what the worker asked for
    assert assigned_cpus(1.0) == 1.0


def test_run_threads_must_be_positive():
    from eg3d.config.schema import validate

    assert micro_config("run.threads=2").run.threads == 2
    with pytest.raises(ValueError, match="run.threads"):
        validate(micro_config("run.threads=0"))


FLUSH_CHECK = """
import torch
from eg3d.training.threads import flush_denormals
if {flush}:
    flush_denormals()
torch.set_num_threads(2)
tiny = torch.full((1 << 20,), 3e-39)  # a float32 denormal; the product is one too
print(int((tiny * 2).ne(0).sum()))  # elementwise over 2 OpenMP threads
"""


@pytest.mark.parametrize("flush", [True, False])
def test_flush_denormals_reaches_the_openmp_threads_started_afterwards(flush):
    """Flushed: every element of a product computed by two OpenMP threads is zero, so the threads started after the
    call flush too. Not flushed (the control): the denormal products survive."""
    result = subprocess.run([sys.executable, "-c", FLUSH_CHECK.format(flush=flush)], capture_output=True, text=True,
                            check=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert int(result.stdout) == (0 if flush else 1 << 20)
