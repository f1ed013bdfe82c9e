"""A CPU worker's settings: how many torch threads it runs (the cores it really has, unless run.threads says
otherwise), and denormal floats flushed to zero.

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


def flush_denormals() -> None:
    """Treat denormal floats (magnitudes below 1.2e-38 in float32) as zero on the CPU: in this thread and in the
    OpenMP threads it starts later, which copy its floating-point control register when they are created, so call
    it before the first parallel torch operation.

    A CPU computes with denormals in microcode, many times slower than with normal numbers, and training makes
    more of them as it goes: the tiny worker loop on synthetic shards trained 18.2 img/s flushed against 17.8
    unflushed between 2.4 and 3.2 kimg (two interleaved pairs of runs on 2 cores), the same at the start.
    Values that small change no result that matters. GPUs compute with denormals at full speed.
    """
    torch.set_flush_denormal(True)
