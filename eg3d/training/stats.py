"""The one stats reporter: every statistic goes through it, and `collect` hands out what was reported.

`report` values are averaged: they are kept as sums and counts so that means over micro-batches, log
intervals and workers are exact. `add` values are totals over the interval (seconds, bytes, images)
and stay per worker. The training loop turns what `collect_all` returns into the log record and the
Prometheus metrics (monitoring.exporter), so both show the same numbers.
"""

import math
import os
import sys
from collections import defaultdict

import torch


class StatsReporter:
    def __init__(self):
        self._sums: dict[str, float] = defaultdict(float)
        self._counts: dict[str, int] = defaultdict(int)
        self._totals: dict[str, float] = defaultdict(float)

    def report(self, name: str, value) -> None:
        """Add a scalar, or every element of a tensor, to the running mean of `name`."""
        if isinstance(value, torch.Tensor):
            value = value.detach().float()
            self._sums[name] += value.sum().item()
            self._counts[name] += value.numel()
        else:
            self._sums[name] += float(value)
            self._counts[name] += 1

    def add(self, name: str, amount: float) -> None:
        """Add to this worker's total of `name` for the interval."""
        self._totals[name] += float(amount)

    def collect(self, sync=None) -> dict[str, float]:
        """The means over every rank's reports since the last collect; see `collect_all`."""
        return self.collect_all(sync)[0]

    def collect_all(self, sync=None) -> tuple[dict[str, float], list[dict[str, float]]]:
        """(means over what every rank reported, [each rank's own means and totals]), then reset.

        Non-finite means pass through as NaN. With a `sync` (see eg3d.training.trainer.GradientSync) of
        several ranks, all ranks must call this at the same point; they all get the same answer.
        """
        mine = (dict(self._sums), dict(self._counts), dict(self._totals))
        every = sync.all_gather_object(mine) if sync is not None and sync.world_size > 1 else [mine]
        self._sums.clear()
        self._counts.clear()
        self._totals.clear()
        sums, counts = defaultdict(float), defaultdict(int)
        for rank_sums, rank_counts, _ in every:
            for name, value in rank_sums.items():
                sums[name] += value
                counts[name] += rank_counts[name]
        ranks = [{**_means(rank_sums, rank_counts), **totals} for rank_sums, rank_counts, totals in every]
        return _means(sums, counts), ranks


def _means(sums: dict[str, float], counts: dict[str, int]) -> dict[str, float]:
    means = {name: sums[name] / counts[name] for name in sorted(sums) if counts[name]}
    return {name: (value if math.isfinite(value) else float("nan")) for name, value in means.items()}


def memory_usage(device: torch.device) -> dict[str, float]:
    """This process's resident memory and, on a GPU, what torch's allocator holds, in bytes."""
    values = {"memory/rss_bytes": _resident_bytes()}
    if device.type == "cuda":
        values.update({"memory/gpu_allocated_bytes": torch.cuda.memory_allocated(device),
                       "memory/gpu_reserved_bytes": torch.cuda.memory_reserved(device),
                       "memory/gpu_peak_bytes": torch.cuda.max_memory_allocated(device)})
    return values


def _resident_bytes() -> float:
    try:
        with open("/proc/self/statm") as file:
            return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # not Linux: the peak is the best the standard library offers
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024
