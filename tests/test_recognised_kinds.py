"""bench/recognised_kinds.py: the table's numbers from class probabilities, against hand-counted values."""

import torch

from bench_scripts import load_bench_script


def load_script():
    return load_bench_script("recognised_kinds")


def test_summary_counts_only_confident_images_per_class():
    probabilities = torch.tensor([[0.95, 0.03, 0.02],    # class 0, confident
                                  [0.50, 0.45, 0.05],    # class 0, not confident
                                  [0.02, 0.03, 0.95],    # class 2, confident
                                  [0.01, 0.98, 0.01]])   # class 1, confident
    mean, share, counts = load_script().summary(probabilities, confident=0.9)
    assert abs(mean - (0.95 + 0.50 + 0.95 + 0.98) / 4) < 1e-6
    assert share == 0.75
    assert counts == [1, 1, 1]


def test_summary_lists_every_class_even_when_none_is_recognised():
    probabilities = torch.full((5, 6), 1 / 6)
    mean, share, counts = load_script().summary(probabilities, confident=0.9)
    assert abs(mean - 1 / 6) < 1e-6 and share == 0.0 and counts == [0] * 6
