import numpy as np
import pytest
import torch

from dataloading.batches import DatasetBatches
from dataloading.reference_format import ReferenceDataset
from eg3d.camera import mirror_label
from eg3d.synthetic import generate_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "ds"
    generate_dataset(path, count=10, resolution=16, seed=3)
    return ReferenceDataset(path)


def identify(dataset, images, labels):
    """Index of each batch item in the dataset, and whether it was flipped (by exact pixel match)."""
    found = []
    for image, label in zip(images, labels):
        pixels = ((image + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
        for i in range(len(dataset)):
            source, source_label = dataset[i]
            if np.array_equal(pixels, source) and np.array_equal(label.numpy(), source_label):
                found.append((i, False))
                break
            if np.array_equal(pixels, source[:, ::-1]) and torch.equal(label, mirror_label(torch.from_numpy(source_label))):
                found.append((i, True))
                break
        else:
            raise AssertionError("batch item matches no dataset image")
    return found


def test_each_epoch_visits_every_image_once_and_values_are_scaled(dataset):
    batches = DatasetBatches(dataset, batch_size=5, seed=1)
    images, labels = next(batches)
    assert images.shape == (5, 3, 16, 16) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1
    second = next(batches)
    seen = [i for i, _ in identify(dataset, images, labels) + identify(dataset, *second)]
    assert sorted(seen) == list(range(10))


def test_resume_continues_exactly(dataset):
    reference = DatasetBatches(dataset, batch_size=3, seed=2, xflip=True)
    expected = [next(reference) for _ in range(6)]
    first = DatasetBatches(dataset, batch_size=3, seed=2, xflip=True)
    got = [next(first) for _ in range(2)]
    resumed = DatasetBatches(dataset, batch_size=3, seed=2, xflip=True)
    resumed.load_state_dict(first.state_dict())
    got += [next(resumed) for _ in range(4)]
    for (a_img, a_c), (b_img, b_c) in zip(expected, got):
        assert torch.equal(a_img, b_img) and torch.equal(a_c, b_c)


def test_xflip_mirrors_pixels_and_camera_together(dataset):
    batches = DatasetBatches(dataset, batch_size=10, seed=0, xflip=True)
    flips = []
    for _ in range(3):
        flips += [flipped for _, flipped in identify(dataset, *next(batches))]
    assert 0 < sum(flips) < len(flips)  # both kinds occur (identify checks the mirrored label)
