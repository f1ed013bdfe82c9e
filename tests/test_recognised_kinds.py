"""bench/recognised_kinds.py: the table's numbers from class probabilities, against hand-counted values, and
its picture's tiles against the images that belong in them."""

import numpy as np
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


def test_kinds_picture_puts_real_images_then_confidently_recognised_draws_in_each_kinds_row():
    R, per_kind, label_width, gap = 4, 2, 64, 16

    def flat(value):  # a uniform image, told apart by its grey value
        return torch.full((3, R, R), value, dtype=torch.uint8)

    real = torch.stack([flat(v) for v in (10, 20, 30, 40, 50)])
    real_classes = torch.tensor([0, 1, 0, 0, 1])  # kind 0: 10, 30, (40: beyond per_kind); kind 1: 20, 50
    generated = torch.stack([flat(v) for v in (100, 110, 120, 130)])
    probabilities = torch.tensor([[0.05, 0.95],    # kind 1, confident: first in row 1
                                  [0.95, 0.05],    # kind 0, confident: first in row 0
                                  [0.40, 0.60],    # kind 1, not confident: left out
                                  [0.01, 0.99]])   # kind 1, confident: second in row 1
    picture = np.asarray(load_script().kinds_picture(real, real_classes, generated, probabilities, ["a", "b"],
                                                     per_kind=per_kind, confident=0.9))
    assert picture.shape == (2 * R, label_width + 2 * per_kind * R + gap, 3)

    def tile(row, column):  # column 0..per_kind-1: real; per_kind..: generated
        x = label_width + column * R + (gap if column >= per_kind else 0)
        values = np.unique(picture[row * R:(row + 1) * R, x:x + R])
        assert len(values) == 1, (row, column, values)
        return int(values[0])

    assert [tile(0, k) for k in range(4)] == [10, 30, 110, 255]  # one confident draw of kind 0; the rest white
    assert [tile(1, k) for k in range(4)] == [20, 50, 100, 130]
