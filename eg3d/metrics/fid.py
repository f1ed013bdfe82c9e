"""FID and KID from feature vectors: the running statistics and the two distances, in float64.

Where the features come from (`eg3d.metrics.inception`) and how workers combine their statistics is up to the
caller: `FeatureStatistics` holds sums, so statistics of disjoint samples add up with `merge`.
"""

import io

import numpy as np
import torch


class FeatureStatistics:
    """Count, sum and sum of outer products of feature vectors, enough for their mean and covariance,
    plus the first `max_kept` vectors themselves (for KID)."""

    def __init__(self, dim: int, *, max_kept: int = 0):
        self.dim = dim
        self.max_kept = max_kept
        self.count = 0
        self.sum = torch.zeros(dim, dtype=torch.float64)
        self.outer = torch.zeros(dim, dim, dtype=torch.float64)
        self.kept = torch.zeros(0, dim, dtype=torch.float32)

    def add(self, features: torch.Tensor) -> None:
        """Features [N, dim], any device and float dtype."""
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise ValueError(f"expected features [N, {self.dim}], got {list(features.shape)}")
        x = features.detach().to("cpu", torch.float64)
        self.count += x.shape[0]
        self.sum += x.sum(dim=0)
        self.outer += x.T @ x
        self.keep(x)

    def keep(self, rows: torch.Tensor) -> None:
        room = self.max_kept - self.kept.shape[0]
        if room > 0:
            self.kept = torch.cat([self.kept, rows[:room].float()])

    def merge(self, other: "FeatureStatistics") -> None:
        """Add the statistics of another, disjoint sample."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge statistics of {other.dim}-d features into {self.dim}-d ones")
        self.count += other.count
        self.sum += other.sum
        self.outer += other.outer
        self.keep(other.kept)

    def mean(self) -> torch.Tensor:
        self.require(1)
        return self.sum / self.count

    def covariance(self) -> torch.Tensor:
        """Unbiased (divided by count - 1), as numpy.cov."""
        self.require(2)
        mean = self.mean()
        return (self.outer - self.count * torch.outer(mean, mean)) / (self.count - 1)

    def require(self, count: int) -> None:
        if self.count < count:
            raise ValueError(f"statistics of {self.count} feature vectors; at least {count} needed")

    # --- serialization ----------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, np.ndarray]:
        return {"count": np.array(self.count, dtype=np.int64), "max_kept": np.array(self.max_kept, dtype=np.int64),
                "sum": self.sum.numpy(), "outer": self.outer.numpy(), "kept": self.kept.numpy()}

    @classmethod
    def from_dict(cls, values: dict) -> "FeatureStatistics":
        total = np.asarray(values["sum"], dtype=np.float64)
        statistics = cls(total.shape[0], max_kept=int(values["max_kept"]))
        statistics.count = int(values["count"])
        statistics.sum = torch.from_numpy(total.copy())
        statistics.outer = torch.from_numpy(np.asarray(values["outer"], dtype=np.float64).copy())
        statistics.kept = torch.from_numpy(np.asarray(values["kept"], dtype=np.float32).copy())
        return statistics

    def to_bytes(self) -> bytes:
        """An .npz file's bytes, for any storage (local or an fsspec URL)."""
        buffer = io.BytesIO()
        np.savez(buffer, **self.to_dict())
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "FeatureStatistics":
        with np.load(io.BytesIO(data)) as archive:
            return cls.from_dict(dict(archive))

    def save(self, path_or_file) -> None:
        """To a local path or an open binary file."""
        if hasattr(path_or_file, "write"):
            path_or_file.write(self.to_bytes())
            return
        with open(path_or_file, "wb") as file:
            file.write(self.to_bytes())

    @classmethod
    def load(cls, path_or_file) -> "FeatureStatistics":
        if hasattr(path_or_file, "read"):
            return cls.from_bytes(path_or_file.read())
        with open(path_or_file, "rb") as file:
            return cls.from_bytes(file.read())


def as_float64(array) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().double().numpy()
    return np.asarray(array, dtype=np.float64)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """|mu1 - mu2|^2 + Tr(S1 + S2 - 2 sqrtm(S1 S2)), the Frechet distance of two Gaussians (FID)."""
    mu1, sigma1, mu2, sigma2 = (as_float64(a) for a in (mu1, sigma1, mu2, sigma2))
    # With A = sqrt(S1), S1 S2 = A (A S2) has the eigenvalues of (A S2) A = A S2 A (AB and BA share their
    # eigenvalues), which is symmetric positive semi-definite. So S1 S2 has real non-negative eigenvalues and
    # the trace of its square root is the sum of their square roots: no non-symmetric sqrtm needed.
    root1 = symmetric_sqrt(sigma1)
    product = root1 @ sigma2 @ root1
    trace_sqrt = np.sqrt(clamp_round_off(np.linalg.eigvalsh((product + product.T) / 2))).sum()
    difference = mu1 - mu2
    return float(difference @ difference + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt)


def clamp_round_off(eigenvalues: np.ndarray) -> np.ndarray:
    """Eigenvalues of a positive semi-definite matrix with those indistinguishable from 0 set to 0. Round-off
    leaves ~1e-16 * largest in place of a zero, whose square root (~1e-8) would add up over the null space
    of a rank-deficient covariance; the cutoff is numpy's matrix_rank tolerance."""
    tolerance = np.abs(eigenvalues).max(initial=0) * len(eigenvalues) * np.finfo(np.float64).eps
    return np.where(eigenvalues > tolerance, eigenvalues, 0)


def symmetric_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix."""
    eigenvalues, eigenvectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (eigenvectors * np.sqrt(clamp_round_off(eigenvalues))) @ eigenvectors.T


def kernel_distance(features1, features2, *, num_subsets: int = 100, max_subset_size: int = 1000,
                    seed: int = 0) -> float:
    """KID: the unbiased MMD^2 with the kernel k(x, y) = (x.y / d + 1)^3, averaged over random subsets of
    m = min(n1, n2, max_subset_size) vectors from each set, drawn without replacement."""
    x_all, y_all = as_float64(features1), as_float64(features2)
    m = min(len(x_all), len(y_all), max_subset_size)
    if m < 2:
        raise ValueError(f"KID needs at least 2 feature vectors per set, got {len(x_all)} and {len(y_all)}")
    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(num_subsets):
        x = x_all[rng.choice(len(x_all), m, replace=False)]
        y = y_all[rng.choice(len(y_all), m, replace=False)]
        total += squared_mmd(x, y)
    return total / num_subsets


def squared_mmd(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 of two equal-size samples: k(x, x') and k(y, y') over distinct pairs, k(x, y) over all."""
    m, d = x.shape
    within = ((x @ x.T / d + 1) ** 3 + (y @ y.T / d + 1) ** 3)
    across = (x @ y.T / d + 1) ** 3
    return float((within.sum() - np.trace(within)) / (m * (m - 1)) - 2 * across.mean())
