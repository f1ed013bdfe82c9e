"""How the global batch is spread over workers (eg3d.config.BatchSplit): hand-derived cases."""

import pytest

from eg3d.config import apply_overrides, batch_split, validate
from eg3d.config.presets import ffhq512, tiny


def split_of(config_overrides: list[str], world_size: int, preset=ffhq512):
    return batch_split(apply_overrides(preset(), config_overrides), world_size)


def global_cut(split) -> list[tuple[int, int]]:
    """(first image, size) of every micro-batch of the step, over all ranks in order."""
    cut = []
    for rank in range(split.world_size):
        first = split.offset(rank)
        for size in split.micro_batches(rank):
            cut.append((first, size))
            first += size
    return cut


def test_paper_batch_on_three_workers():
    split = split_of([], 3)  # 32 images, minibatch-std groups of 4, micro-batches of 4
    assert split.shares == (12, 12, 8)
    assert [split.offset(rank) for rank in range(3)] == [0, 12, 24]
    assert split.micro_batches(0) == (4, 4, 4) and split.micro_batches(2) == (4, 4)
    assert split.accumulation_steps == 3 and split.largest_micro_batch == 4
    assert split.describe() == ("32 images per step = 12 + 12 + 8 over 3 workers, in micro-batches of 4 "
                                "(3 accumulation steps)")


@pytest.mark.parametrize("world_size", range(1, 9))
def test_every_world_size_up_to_the_number_of_groups_trains_the_same_micro_batches(world_size):
    split = split_of([], world_size)
    assert sum(split.shares) == 32
    assert all(share % 4 == 0 for share in split.shares), "whole minibatch-std groups"
    assert max(split.shares) - min(split.shares) <= 4, "as even as whole groups allow"
    assert list(split.shares) == sorted(split.shares, reverse=True), "the first ranks take the extra group"
    assert global_cut(split) == [(first, 4) for first in range(0, 32, 4)]


def test_more_workers_than_groups_are_refused_with_what_to_change():
    with pytest.raises(ValueError, match=r"run\.batch_size \(32\) makes 8 minibatch-std groups of 4 images, and "
                                         r"each of 9 workers needs at least one; lower distributed\.max_workers to 8"):
        split_of([], 9)
    with pytest.raises(ValueError, match="each of 9 workers"):
        validate(apply_overrides(ffhq512(), ["distributed.min_workers=4", "distributed.max_workers=9"]))
    validate(apply_overrides(ffhq512(), ["distributed.min_workers=4", "distributed.max_workers=8"]))


@pytest.mark.parametrize("world_size, shares, accumulation_steps", [
    (16, (16,) * 16, 4),
    (22, (12,) * 20 + (8,) * 2, 3),  # 64 groups: 20 workers take 3, 2 take 2
    (32, (8,) * 32, 2),
    (48, (8,) * 16 + (4,) * 32, 2),  # 256 / 48 is not whole: 16 workers take 2 groups, 32 take 1
    (64, (4,) * 64, 1),
])
def test_a_batch_of_256_over_16_to_64_workers(world_size, shares, accumulation_steps):
    split = split_of(["run.batch_size=256"], world_size)
    assert split.shares == shares and split.accumulation_steps == accumulation_steps
    assert global_cut(split) == [(first, 4) for first in range(0, 256, 4)], "every micro-batch one group of 4"


def test_every_world_size_from_16_to_64_takes_256_and_65_is_refused_naming_the_batch():
    validate(apply_overrides(ffhq512(), ["run.batch_size=256", "distributed.min_workers=16",
                                         "distributed.max_workers=64"]))
    with pytest.raises(ValueError, match=r"each of 65 workers needs at least one; lower distributed\.max_workers to "
                                         r"64 \(--workers \.\.\.:64\), raise run\.batch_size to 260 or more "
                                         r"\(--batch 260"):
        validate(apply_overrides(ffhq512(), ["run.batch_size=256", "distributed.min_workers=16",
                                             "distributed.max_workers=65"]))


def test_a_share_larger_than_a_micro_batch_ends_with_a_smaller_one():
    split = split_of(["run.micro_batch=8"], 3)
    assert split.shares == (12, 12, 8)
    assert [split.micro_batches(rank) for rank in range(3)] == [(8, 4), (8, 4), (8,)]
    assert split.accumulation_steps == 2
    assert global_cut(split) == [(0, 8), (8, 4), (12, 8), (20, 4), (24, 8)]


def test_no_micro_batch_means_each_share_at_once():
    assert [split_of([], 2, tiny).micro_batches(rank) for rank in range(2)] == [(4,), (4,)]  # 8 images, groups of 4
    assert split_of([], 1, tiny).micro_batches(0) == (8,)
    with pytest.raises(ValueError, match="makes 2 minibatch-std groups"):
        split_of([], 3, tiny)


def test_a_micro_batch_below_the_group_size_is_the_group():
    split = split_of(["run.micro_batch=2"], 3, tiny)  # D's groups are then pairs: 4 pairs over 3 workers
    assert split.group == 2 and split.shares == (4, 2, 2)
    assert split.micro_batches(0) == (2, 2)


@pytest.mark.parametrize("overrides, message", [
    (["run.micro_batch=6"], r"run\.micro_batch \(6\) must be a multiple of model\.disc_mbstd_group \(4\)"),
    (["run.batch_size=30"], r"run\.batch_size \(30\) must be a multiple of the minibatch-std group \(4 images"),
    (["run.micro_batch=0"], r"config field run\.micro_batch: 0 is not >= 1"),
])
def test_batches_that_cannot_hold_whole_groups_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        split_of(overrides, 1)
