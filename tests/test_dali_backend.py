"""The "dali" backend of ShardReader: same plan, same batches and same resume as the pytorch backend."""

import pytest
import torch

pytest.importorskip("nvidia.dali")

from dataloading.build import build  # noqa: E402
from dataloading.shard_reader import BACKENDS, ShardReader  # noqa: E402
from dataloading.synthetic import generate_dataset  # noqa: E402


@pytest.fixture(scope="module")
def manifest_url(tmp_path_factory):
    """24 PNG images of 32 px in 5 shards."""
    root = tmp_path_factory.mktemp("dali")
    generate_dataset(root / "data.zip", count=24, resolution=32, seed=5, as_zip=True, progress_every=10**9)
    build(root / "data.zip", root / "shards", shard_size_mb=0.04, workers=1, progress=False)
    return str(root / "shards" / "manifest.json")


OPTIONS = dict(batch_size=4, seed=3, xflip=True, shuffle_buffer=6)


def take(reader: ShardReader, batches: int) -> list[dict[str, torch.Tensor]]:
    return [next(reader) for _ in range(batches)]


def assert_same(batches, expected):
    assert len(batches) == len(expected)
    for batch, reference in zip(batches, expected):
        assert batch.keys() == reference.keys()
        for key in reference:
            assert batch[key].dtype == reference[key].dtype and batch[key].shape == reference[key].shape, key
            assert batch[key].device == reference[key].device, key
            torch.testing.assert_close(batch[key], reference[key], rtol=0, atol=0)  # PNG is lossless: exact


def test_dali_is_listed():
    assert "dali" in BACKENDS


def test_dali_gives_the_pytorch_batches(manifest_url):
    with ShardReader(manifest_url, backend="pytorch", **OPTIONS) as reader:
        expected = take(reader, 8)  # one epoch (6 batches) and two into the next
        expected_state = reader.state_dict()
    with ShardReader(manifest_url, backend="dali", **OPTIONS) as reader:
        batches = take(reader, 8)
        assert reader.state_dict() == expected_state
    assert_same(batches, expected)
    indices = torch.cat([batch["index"] for batch in batches[:6]]).tolist()
    assert sorted(indices) == list(range(24)) and indices != sorted(indices)
    # some samples were flipped: their images differ from the unflipped reading
    with ShardReader(manifest_url, backend="dali", **{**OPTIONS, "xflip": False}) as reader:
        unflipped = take(reader, 6)
    assert any(not torch.equal(a["image"], b["image"]) for a, b in zip(batches, unflipped))
    assert all(torch.equal(a["index"], b["index"]) for a, b in zip(batches, unflipped))


def test_dali_resume_is_exact(manifest_url):
    with ShardReader(manifest_url, backend="dali", **OPTIONS) as reader:
        reference = take(reader, 8)
    with ShardReader(manifest_url, backend="dali", **OPTIONS) as first:
        before = take(first, 3)
        state = first.state_dict()
    assert state["epoch"] == 0 and state["position"] == 12
    with ShardReader(manifest_url, backend="pytorch", **OPTIONS) as resumed:  # a state moves across backends
        resumed.load_state_dict(state)
        middle = take(resumed, 2)
        state = resumed.state_dict()
    with ShardReader(manifest_url, backend="dali", **OPTIONS) as resumed:
        resumed.load_state_dict(state)
        after = take(resumed, 3)
    assert_same(before + middle + after, reference)


def test_dali_rejects_bad_shards(manifest_url, tmp_path):
    import json
    import shutil
    from pathlib import Path

    source = Path(manifest_url).parent
    broken = tmp_path / "shards"
    shutil.copytree(source, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    shard = broken / manifest["shards"][0]["name"]
    shard.write_bytes(shard.read_bytes()[:-10])
    with ShardReader(str(broken / "manifest.json"), backend="dali", batch_size=24, seed=0) as reader:
        with pytest.raises(ValueError, match="manifest says"):
            next(reader)


def test_asking_for_dali_without_it_names_the_extra(manifest_url, monkeypatch):
    import dataloading.shard_reader as shard_reader

    monkeypatch.setattr(shard_reader, "BACKENDS", ("pytorch",))
    with pytest.raises(ValueError, match="`dali` extra"):
        ShardReader(manifest_url, backend="dali", batch_size=2)
