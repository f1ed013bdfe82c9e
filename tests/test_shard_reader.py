"""The shard reader: rank assignment, seeded shuffle and flips, exact resume, image_raw."""

import numpy as np
import pytest
import torch

from dataloading.build import build
from dataloading.reference_format import ReferenceDataset
from dataloading.shard_reader import EpochPlan, ShardReader, load_manifest, shuffle_order
from dataloading.synthetic import generate_dataset
from eg3d.networks.camera import mirror_label


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """(manifest URL, source dataset) of 24 images of 32 px in 5 shards (5, 5, 5, 5, 4 samples)."""
    root = tmp_path_factory.mktemp("reader")
    generate_dataset(root / "data.zip", count=24, resolution=32, seed=5, as_zip=True, progress_every=10**9)
    build(root / "data.zip", root / "shards", shard_size_mb=0.04, workers=1, progress=False)
    return str(root / "shards" / "manifest.json"), ReferenceDataset(root / "data.zip")


def take(reader: ShardReader, count: int) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(manifest index, uint8 HWC image, camera) of the next `count` samples (batch size must divide it)."""
    samples = []
    while len(samples) < count:
        batch = next(reader)
        images = ((batch["image"] + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        samples += list(zip(batch["index"].tolist(), images, batch["c"].numpy()))
    assert len(samples) == count
    return samples


def indices(samples) -> list[int]:
    return [index for index, _, _ in samples]


def test_resume_continues_exactly_where_the_state_was_saved(shards):
    manifest_url, _ = shards
    options = dict(batch_size=3, seed=7, xflip=True, shuffle_buffer=6)
    with ShardReader(manifest_url, **options) as uninterrupted:
        reference = take(uninterrupted, 24 + 6)  # one epoch and two batches into the next
    with ShardReader(manifest_url, **options) as first:
        before = take(first, 9)
        state = first.state_dict()
    assert state["epoch"] == 0 and state["position"] == 9
    with ShardReader(manifest_url, **options) as resumed:
        resumed.load_state_dict(state)
        after = take(resumed, 21 + 6)
    epoch = indices(before) + indices(after)[:15]
    assert sorted(epoch) == list(range(24))  # no duplicates, nothing missing
    assert epoch != sorted(epoch)  # shuffled
    for (index, image, camera), (expected_index, expected_image, expected_camera) in zip(before + after, reference):
        assert index == expected_index
        np.testing.assert_array_equal(image, expected_image)
        np.testing.assert_array_equal(camera, expected_camera)


def test_two_ranks_are_disjoint_and_cover_the_epoch(shards):
    manifest_url, dataset = shards
    seen = []
    for rank in range(2):
        with ShardReader(manifest_url, rank=rank, world_size=2, seed=1, batch_size=1) as reader:
            length = len(reader.plan(0))
            samples = take(reader, length)
            assert reader.state_dict()["epoch"] == 1  # exactly one epoch was read
        for index, image, camera in samples:
            np.testing.assert_array_equal(image, dataset[index][0])
            np.testing.assert_array_equal(camera, dataset.labels[index])
        seen.append(set(indices(samples)))
        assert len(seen[-1]) == length
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(24))


@pytest.mark.parametrize("world_size", [2, 3, 8])
def test_rank_plans_partition_every_epoch(shards, world_size):
    manifest = load_manifest(shards[0])
    for epoch in range(3):
        plans = [EpochPlan(manifest, rank=rank, world_size=world_size, seed=0, epoch=epoch, shuffle_buffer=4)
                 for rank in range(world_size)]
        parts = [set(plan.outputs.tolist()) for plan in plans]
        assert sum(len(part) for part in parts) == 24 and set().union(*parts) == set(range(24))
        if world_size > len(manifest.shards):  # fewer shards than ranks: samples split by index modulo
            assert all(part == set(range(rank, 24, world_size)) for rank, part in enumerate(parts))


def test_a_reader_over_more_ranks_than_shards_reads_its_share(shards):
    manifest_url, dataset = shards
    with ShardReader(manifest_url, rank=5, world_size=8, seed=0, batch_size=3) as reader:
        samples = take(reader, 3)
    assert sorted(indices(samples)) == [5, 13, 21]
    for index, image, _ in samples:
        np.testing.assert_array_equal(image, dataset[index][0])


def test_order_depends_on_seed_and_epoch_only(shards):
    manifest = load_manifest(shards[0])
    plan = lambda seed, epoch: EpochPlan(manifest, rank=0, world_size=1, seed=seed, epoch=epoch,  # noqa: E731
                                         shuffle_buffer=8).outputs.tolist()
    assert plan(0, 0) == plan(0, 0)
    assert plan(0, 0) != plan(1, 0) and plan(0, 0) != plan(0, 1)


def test_shuffle_buffer_order():
    inputs = np.arange(100)
    order = shuffle_order(inputs, 10, np.random.default_rng(0))
    assert sorted(order.tolist()) == list(range(100)) and order.tolist() != list(range(100))
    # a sample is delivered no earlier than it was read, and the buffer holds at most 10
    assert all(order[i] < i + 10 for i in range(100))
    assert shuffle_order(inputs, 1, np.random.default_rng(0)).tolist() == list(range(100))


def test_xflip_mirrors_pixels_and_camera(shards):
    manifest_url, dataset = shards
    with ShardReader(manifest_url, batch_size=4, seed=2, xflip=True) as reader:
        samples = take(reader, 24)
    flipped = 0
    for index, image, camera in samples:
        source_image, source_camera = dataset[index]
        if np.array_equal(image, source_image[:, ::-1]) and not np.array_equal(image, source_image):
            flipped += 1
            np.testing.assert_array_equal(camera, mirror_label(torch.from_numpy(source_camera)).numpy())
        else:
            np.testing.assert_array_equal(image, source_image)
            np.testing.assert_array_equal(camera, source_camera)
    assert 4 <= flipped <= 20


def test_a_new_world_size_starts_the_next_epoch(shards):
    with ShardReader(shards[0], rank=0, world_size=2, batch_size=2) as reader:
        reader.load_state_dict({"epoch": 3, "position": 4, "seed": 0, "world_size": 4})
        assert (reader.epoch, reader.position) == (4, 0)


def test_raw_images_are_an_antialiased_resize():
    y, x = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    checkerboard = ((x + y) % 2 * 2 - 1).float().expand(2, 3, 32, 32)
    raw = ShardReader.raw_images(checkerboard, 10)
    assert raw.shape == (2, 3, 10, 10)
    assert raw.abs().max() < 0.05  # filtered to its mean; plain bilinear sampling aliases to +-0.64
    assert ShardReader.raw_images(checkerboard, 32) is checkerboard
