"""Seeds derived from run.seed: the trainer's per (step, phase, sample) and the quality measurement's per chunk,
so that every worker draws the same numbers whatever their count."""

import numpy as np


def step_seed(*keys: int) -> int:
    """A seed for torch generators from integer keys (run seed, step, phase, sample)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, dtype=np.uint64)[0] >> 1)
