"""The one stats reporter: every statistic goes through it, and `collect` hands out what was reported.

`report` values are averaged: they are kept as sums and counts so that means over micro-batches, log
intervals and workers are exact. `add` values are totals over the interval (seconds, bytes, images)
and stay per worker. The training loop turns what `collect_all` returns into the log record and the
Prometheus metrics (monitoring.exporter), so both show the same numbers.

Reporting never waits for a GPU: a tensor's sum stays on its device (in float64, which adds a float32 sum
exactly as the host's Python floats do), a count is its number of elements (known on the host), and a
`Stopwatch` times a GPU's work between two CUDA events. `collect_all` reads them all at once, once per log
interval: the reporter's one sync point, as in NVlabs/edm's training_stats.
"""

import math
import os
import sys
import time
from collections import defaultdict

import torch


class Stopwatch:
    """The time of the work queued on `device` from its creation to `stop()`. On a GPU: between two CUDA events,
    whose elapsed time is known once the GPU has run them (`StatsReporter.add_time` reads it at collect time); on
    a CPU, where the work is done by the time the host returns: the wall clock. `wall_seconds` is the host's
    time on every device (what compiling graphs costs, say)."""

    def __init__(self, device: torch.device):
        self._start, self.wall_seconds = time.perf_counter(), None
        self.events = None
        if device.type == "cuda":
            self.events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            self.events[0].record()

    def stop(self) -> "Stopwatch":
        self.wall_seconds = time.perf_counter() - self._start
        if self.events is not None:
            self.events[1].record()
        return self


class StatsReporter:
    def __init__(self):
        self._sums: dict[str, float | torch.Tensor] = defaultdict(float)  # tensors: float64, on their device
        self._counts: dict[str, int] = defaultdict(int)
        self._totals: dict[str, float | torch.Tensor] = defaultdict(float)
        self._timings: list[tuple[str, Stopwatch]] = []  # GPU work, read at collect time

    def report(self, name: str, value) -> None:
        """Add a scalar, or every element of a tensor, to the running mean of `name` (a tensor's sum stays on its
        device)."""
        if isinstance(value, torch.Tensor):
            value = value.detach()
            self._sums[name] = self._sums[name] + value.float().sum().double()
            self._counts[name] += value.numel()
        else:
            self._sums[name] += float(value)
            self._counts[name] += 1

    def add(self, name: str, amount) -> None:
        """Add to this worker's total of `name` for the interval (a tensor's stays on its device)."""
        if isinstance(amount, torch.Tensor):
            self._totals[name] = self._totals[name] + amount.detach().double()
        else:
            self._totals[name] += float(amount)

    def add_time(self, name: str, stopwatch: Stopwatch) -> None:
        """Add a stopped `Stopwatch`'s seconds to this worker's total of `name`."""
        if stopwatch.events is None:
            self.add(name, stopwatch.wall_seconds)
        else:
            self._timings.append((name, stopwatch))

    def collect(self, sync=None) -> dict[str, float]:
        """The means over every rank's reports since the last collect; see `collect_all`."""
        return self.collect_all(sync)[0]

    def collect_all(self, sync=None) -> tuple[dict[str, float], list[dict[str, float]]]:
        """(means over what every rank reported, [each rank's own means and totals]), then reset.

        Reads every value still on a device: this waits for the device to run all it was given. Non-finite means
        pass through as NaN. With a `sync` (see eg3d.training.trainer.GradientSync) of several ranks, all ranks
        must call this at the same point; they all get the same answer.
        """
        sums, totals = on_host(self._sums, self._totals)
        for name, stopwatch in self._timings:
            start, end = stopwatch.events
            end.synchronize()
            totals[name] = totals.get(name, 0.0) + start.elapsed_time(end) / 1000
        mine = (sums, dict(self._counts), totals)
        every = sync.all_gather_object(mine) if sync is not None and sync.world_size > 1 else [mine]
        self._sums.clear()
        self._counts.clear()
        self._totals.clear()
        self._timings.clear()
        sums, counts = defaultdict(float), defaultdict(int)
        for rank_sums, rank_counts, _ in every:
            for name, value in rank_sums.items():
                sums[name] += value
                counts[name] += rank_counts[name]
        ranks = [{**_means(rank_sums, rank_counts), **totals} for rank_sums, rank_counts, totals in every]
        return _means(sums, counts), ranks


def on_host(*tables: dict) -> list[dict[str, float]]:
    """Each of `tables` with its tensors read as floats, in one transfer per device."""
    tensors: dict[torch.device, list[tuple[int, str, torch.Tensor]]] = defaultdict(list)
    for index, table in enumerate(tables):
        for name, value in table.items():
            if isinstance(value, torch.Tensor):
                tensors[value.device].append((index, name, value))
    read = {}
    for entries in tensors.values():
        values = torch.stack([value.double() for _, _, value in entries]).tolist()  # sync point: waits for the device
        read.update({(index, name): value for (index, name, _), value in zip(entries, values)})
    return [{name: read.get((index, name), value) for name, value in table.items()}
            for index, table in enumerate(tables)]


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
