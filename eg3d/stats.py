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

    def collect(self) -> dict[str, float]:
        """Means since the last collect (non-finite means pass through as NaN/inf), then reset."""
        means = {name: self._sums[name] / self._counts[name] for name in self._sums if self._counts[name]}
        self._sums.clear()
        self._counts.clear()
        return {name: (value if math.isfinite(value) else float("nan")) for name, value in means.items()}
