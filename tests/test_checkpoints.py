"""Checkpoints are complete or absent, on a local folder and on S3 (moto's server on 127.0.0.1)."""

import json

import pytest

from dataloading import storage
from eg3d.training.checkpoints import CheckpointStore
from s3_fixtures import BUCKET, moto_server  # noqa: F401 - the fixture


@pytest.fixture(params=["local", "s3"])
def run_url(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "run")
    request.getfixturevalue("moto_server")
    return f"s3://{BUCKET}/checkpoint-tests/{tmp_path.name}"


def publish(store: CheckpointStore, nimg: int, payload: bytes = b"state", keep: int = 3) -> str:
    folder = store.new_folder_name(nimg)
    entries = store.write_files(folder, {"trainer.pt": payload, "data-rank0000.json": b"{}"})
    store.publish(folder, nimg=nimg, world_size=1, files=entries, keep=keep)
    return folder


def test_the_newest_complete_checkpoint_wins(run_url):
    store = CheckpointStore(run_url)
    assert store.latest() is None
    publish(store, 8, b"eight")
    publish(store, 16, b"sixteen")
    latest = store.latest()
    assert latest.nimg == 16 and latest.read_bytes("trainer.pt") == b"sixteen"

    # A crash after writing files but before the manifest: not a checkpoint.
    store.write_files(store.new_folder_name(24), {"trainer.pt": b"twenty-four"})
    assert store.latest().nimg == 16

    # A manifest whose file went missing or was truncated: skipped for the previous one.
    folder = publish(store, 32, b"thirty-two")
    storage.write_bytes_atomic(storage.join(store.url, folder, "trainer.pt"), b"short")
    assert store.latest().nimg == 16
    storage.delete(storage.join(store.url, folder, "trainer.pt"))
    assert store.latest().nimg == 16


def test_pruning_keeps_the_newest_and_removes_orphans(run_url):
    store = CheckpointStore(run_url)
    orphan = store.new_folder_name(4)
    store.write_files(orphan, {"trainer.pt": b"never published"})
    folders = [publish(store, nimg, keep=2) for nimg in (8, 16, 24)]
    names = storage.list(store.url)
    assert sorted(names) == sorted(f + ".json" for f in folders[1:])
    assert [c.nimg for c in store.published()] == [24, 16]
    assert not storage.exists(storage.join(store.url, folders[0], "trainer.pt"))
    assert not storage.exists(storage.join(store.url, orphan, "trainer.pt"))
    assert storage.exists(storage.join(store.url, folders[1], "trainer.pt"))


def test_a_corrupted_file_is_named(run_url):
    store = CheckpointStore(run_url)
    folder = publish(store, 8, b"original")
    storage.write_bytes_atomic(storage.join(store.url, folder, "trainer.pt"), b"tampered")  # same size
    with pytest.raises(ValueError, match=r"trainer.pt: content does not match the SHA-256"):
        store.latest().read_bytes("trainer.pt")


def test_manifests_name_every_file_with_size_and_hash(run_url):
    store = CheckpointStore(run_url)
    folder = publish(store, 8, b"abc")
    manifest = json.loads(storage.read_bytes(storage.join(store.url, folder + ".json")))
    assert manifest["nimg"] == 8 and manifest["folder"] == folder
    assert manifest["files"]["trainer.pt"] == {
        "size": 3, "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}  # sha256("abc")


def test_a_checkpoint_set_aside_as_damaged_is_kept_and_never_counts_or_pruned(run_url):
    """keep_checkpoints=1: the damaged checkpoint at 16 neither pushes out the good one at 8 nor is pruned
    (manifest or files) by the checkpoints published after it."""
    store = CheckpointStore(run_url)
    good = publish(store, 8, b"eight", keep=2)
    damaged = publish(store, 16, b"sixteen", keep=2)
    aside = store.set_aside(store.published()[0], "trainer.pt: content does not match")
    assert aside == storage.join(store.url, damaged + ".json.damaged")
    assert [c.nimg for c in store.published()] == [8] and store.latest().manifest["folder"] == good
    assert store.set_aside_checkpoints() == {aside: "trainer.pt: content does not match"}
    store.prune(1)
    assert [c.nimg for c in store.published()] == [8]  # the damaged one does not count against keep
    for nimg in (24, 32):
        publish(store, nimg, keep=1)
    assert [c.nimg for c in store.published()] == [32]
    assert storage.exists(aside)
    assert storage.read_bytes(storage.join(store.url, damaged, "trainer.pt")) == b"sixteen"  # its files stay


def test_a_full_disk_names_the_file_and_the_bytes_and_publishes_nothing(tmp_path, monkeypatch):
    import errno

    from eg3d.training.checkpoints import DiskFull

    store = CheckpointStore(str(tmp_path / "run"))
    publish(store, 8, b"eight")
    real_write = storage.write_bytes_atomic

    def full_at_trainer_pt(url, data):
        if url.endswith("trainer.pt"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(url, data)

    monkeypatch.setattr(storage, "write_bytes_atomic", full_at_trainer_pt)
    folder = store.new_folder_name(16)
    with pytest.raises(DiskFull) as full:
        store.write_files(folder, {"data-rank0000.json": b"{}", "trainer.pt": b"x" * 1000, "quality.json": b"{}"})
    assert full.value.url == storage.join(store.url, folder, "trainer.pt")
    assert full.value.needed == 1002  # trainer.pt and quality.json, still to write
    assert str(full.value) == f"[Errno 28] no space left on the device writing {full.value.url} (1002 bytes needed)"
    assert store.latest().nimg == 8


def test_a_manifest_that_does_not_parse_is_a_damaged_checkpoint_kept_byte_for_byte(run_url):
    """A truncated manifest is no checkpoint, but is listed, set aside with its exact bytes, and its folder is
    never pruned; other JSON files are not ours."""
    store = CheckpointStore(run_url)
    cut = publish(store, 8, keep=1)
    url = storage.join(store.url, cut + ".json")
    data = storage.read_bytes(url)[:50] + b"\xff"  # cut short, and not even UTF-8
    storage.write_bytes_atomic(url, data)
    storage.write_bytes_atomic(storage.join(store.url, "notes.json"), b"not ours")
    assert store.published() == [] and list(store.unreadable()) == [url]
    assert store.unreadable()[url][0].startswith("its manifest is not JSON (")
    publish(store, 16, keep=1)
    assert storage.exists(storage.join(store.url, cut, "trainer.pt"))  # pruning leaves the damaged one's folder
    [(named, why, aside)] = store.set_aside_unreadable()
    assert (named, aside) == (url, url + ".damaged") and not storage.exists(url)
    document = json.loads(storage.read_bytes(aside))
    assert document["damaged"] == why and document["manifest_text"].encode("utf-8", "surrogateescape") == data
    assert store.set_aside_checkpoints() == {aside: why} and store.unreadable() == {}
