"""How many torch threads a worker runs: the cores it really has, unless run.threads says otherwise.

A worker's cores are the CPUs its launcher assigned to it (Ray's CPU resources; cluster.launch reads
them), capped by the cores the operating system lets the process run on (its affinity mask, which
container CPU sets and `taskset` narrow); without a launcher, the affinity count. More threads than
cores only make OpenMP's threads wait for each other.
"""

import os

import torch


def available_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def thread_count(*, requested: int | None, assigned_cpus: float | None, cores: int) -> int:
    """`requested` (run.threads) when set; else the whole CPUs assigned (None: no launcher assignment),
    at most `cores` and at least 1."""
    if requested is not None:
        return requested
    whole = cores if assigned_cpus is None else int(assigned_cpus)
    return max(min(whole, cores), 1)


def set_threads(*, requested: int | None, assigned_cpus: float | None = None, log=print) -> int:
    """Set torch's intra-op threads for this worker, say why once, and return the count."""
    cores = available_cores()
    threads = thread_count(requested=requested, assigned_cpus=assigned_cpus, cores=cores)
    torch.set_num_threads(threads)
    reason = ("as requested" if requested is not None else
              f"{'the ' + format(assigned_cpus, 'g') + ' CPU(s) assigned, ' if assigned_cpus is not None else ''}"
              f"{cores} core(s) in the affinity mask")
    log(f"torch threads: {threads} ({reason})")
    return threads
