"""The one stats reporter: every statistic goes through `report`; `collect` averages and resets.

Values are accumulated as sums and counts so that averages over micro-batches and logging intervals
are exact; later layers (multi-worker reduction, Prometheus export) read the same collected dict.
"""

import math
from collections import defaultdict

import torch


class StatsReporter:
    def __init__(self):
        self._sums: dict[str, float] = defaultdict(float)
        self._counts: dict[str, int] = defaultdict(int)

    def report(self, name: str, value) -> None:
        """Add a scalar, or every element of a tensor, to the running mean of `name`."""
        if isinstance(value, torch.Tensor):
            value = value.detach().float()
            self._sums[name] += value.sum().item()
            self._counts[name] += value.numel()
        else:
            self._sums[name] += float(value)
            self._counts[name] += 1

    def collect(self, sync=None) -> dict[str, float]:
        """Means since the last collect (non-finite means pass through as NaN), then reset.

        With a `sync` (see eg3d.training.SingleProcess) of several ranks, the means are over what every
        rank reported: all ranks must call this at the same point.
        """
        names = sorted(self._sums)
        if sync is not None and sync.world_size > 1:
            names = sorted(set().union(*sync.all_gather_object(names)))
            totals = torch.tensor([[self._sums.get(n, 0.0), self._counts.get(n, 0)] for n in names],
                                  dtype=torch.float64).reshape(-1, 2)
            totals = sync.all_reduce_sum(totals)
            sums, counts = dict(zip(names, totals[:, 0].tolist())), dict(zip(names, totals[:, 1].tolist()))
        else:
            sums, counts = self._sums, self._counts
        means = {name: sums[name] / counts[name] for name in names if counts[name]}
        self._sums.clear()
        self._counts.clear()
        return {name: (value if math.isfinite(value) else float("nan")) for name, value in means.items()}
