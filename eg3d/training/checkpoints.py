"""Checkpoints on any fsspec URL (a local folder or s3://), complete or absent.

    {run}/checkpoints/000004000-1a2b3c4d/trainer.pt           rank 0: networks, EMA, optimizers, images seen
    {run}/checkpoints/000004000-1a2b3c4d/data-rank0001.json   each rank: its data reader's position
    {run}/checkpoints/000004000-1a2b3c4d/optimizer-rank0001.pt each rank, ZeRO only: its optimizer shard
    {run}/checkpoints/000004000-1a2b3c4d.json                  the manifest, written last

Every rank writes its files under a folder no earlier attempt used; rank 0 then publishes the manifest,
which names each file with its size and SHA-256. Readers trust manifests only, and only when every
file they name is present with its size, so a crash at any moment leaves the previous checkpoint in
force. Nothing published is overwritten; pruning deletes a manifest before its files.

A published checkpoint found damaged (a file missing, of another size, or not matching its SHA-256) is set
aside, never deleted: its manifest is renamed to {folder}.json.damaged, which neither counts as a
checkpoint nor lets pruning touch its folder. So is a file named like a manifest that is none (not JSON, cut
short, not ours): its .json.damaged holds the reason and its original text.
"""

import errno
import hashlib
import io
import json
import re
import time
import uuid
from dataclasses import dataclass

import torch

from dataloading import storage

FORMAT = "eg3d-checkpoint-1"
DAMAGED_SUFFIX = ".damaged"
MANIFEST_NAME = re.compile(r"\d{9,}-[0-9a-f]{8}\.json")  # what new_folder_name and publish name a manifest
MANIFEST_KEYS = ("nimg", "world_size", "folder", "created_unix", "files")


class ChecksumMismatch(ValueError):
    """A checkpoint file whose content does not match the SHA-256 its manifest names."""


class DiskFull(OSError):
    """No space left on the device (ENOSPC) while writing `url`, which needed `needed` bytes."""

    def __init__(self, url: str, needed: int):
        super().__init__(errno.ENOSPC, f"no space left on the device writing {url} ({needed} bytes needed)")
        self.url, self.needed = url, needed

    def __reduce__(self):  # pickled (gathered from other ranks) with its own arguments, not OSError's
        return DiskFull, (self.url, self.needed)


def write_bytes(url: str, data: bytes, *, needed: int | None = None) -> None:
    """storage.write_bytes_atomic, with a full disk raised as DiskFull naming `url` and the bytes `needed` (by
    default the file's own size; a caller writing several files passes what all of them still need)."""
    try:
        storage.write_bytes_atomic(url, data)
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise DiskFull(url, len(data) if needed is None else needed) from error
        raise


@dataclass
class Checkpoint:
    """A published checkpoint: its manifest URL, its folder URL, and the manifest's contents."""

    manifest_url: str
    folder_url: str
    manifest: dict

    @property
    def nimg(self) -> int:
        return self.manifest["nimg"]

    @property
    def world_size(self) -> int:
        return self.manifest["world_size"]

    def is_complete(self) -> bool:
        """Every file the manifest names is present with its size."""
        return not self.missing_files()

    def missing_files(self) -> list[str]:
        """The files the manifest names that are absent or of another size."""
        present = storage.list(self.folder_url)
        return [name for name, entry in self.manifest["files"].items() if present.get(name) != entry["size"]]

    @classmethod
    def of_manifest(cls, manifest_url: str, manifest: dict) -> "Checkpoint":
        """The checkpoint of a parsed manifest (its folder lies beside it)."""
        return cls(manifest_url, storage.join(storage.parent(manifest_url), manifest["folder"]), manifest)

    def read_bytes(self, name: str) -> bytes:
        if name not in self.manifest["files"]:
            raise FileNotFoundError(f"{self.manifest_url}: names no file {name!r}")
        data = storage.read_bytes(storage.join(self.folder_url, name))
        expected = self.manifest["files"][name]["sha256"]
        if hashlib.sha256(data).hexdigest() != expected:
            raise ChecksumMismatch(f"{storage.join(self.folder_url, name)}: content does not match the SHA-256 in "
                                   f"{self.manifest_url}")
        return data

    def load_torch(self, name: str):
        return torch.load(io.BytesIO(self.read_bytes(name)), map_location="cpu", weights_only=False)

    def load_json(self, name: str):
        return json.loads(self.read_bytes(name))


def torch_bytes(value) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def parse_manifest(data: bytes) -> tuple[dict | None, str | None]:
    """(the manifest, None), or (None, why it is none)."""
    try:
        manifest = json.loads(data)
    except ValueError as error:  # JSON's errors and undecodable bytes
        return None, f"its manifest is not JSON ({error}; {len(data)} bytes)"
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return None, f"its manifest is not an {FORMAT} manifest"
    missing = [key for key in MANIFEST_KEYS if key not in manifest]
    return (None, f"its manifest lacks {', '.join(missing)}") if missing else (manifest, None)


class CheckpointStore:
    def __init__(self, run_url: str):
        self.url = storage.join(run_url, "checkpoints")

    def new_folder_name(self, nimg: int) -> str:
        """A folder name for the checkpoint at `nimg` that no earlier attempt used (rank 0 picks it)."""
        return f"{nimg:09d}-{uuid.uuid4().hex[:8]}"

    def write_files(self, folder: str, files: dict[str, bytes]) -> dict[str, dict]:
        """Write this rank's files; returns their manifest entries (size, SHA-256). DiskFull names the file and
        the bytes that this rank's files still needed."""
        storage.makedirs(storage.join(self.url, folder))
        entries, needed = {}, sum(len(data) for data in files.values())
        for name, data in files.items():
            write_bytes(storage.join(self.url, folder, name), data, needed=needed)
            needed -= len(data)
            entries[name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        return entries

    def publish(self, folder: str, *, nimg: int, world_size: int, files: dict[str, dict], keep: int,
                snapshot_due: bool = False, record: dict | None = None) -> Checkpoint:
        """Publish the manifest of a folder whose files every rank has written, then prune to `keep`.
        `snapshot_due`: a snapshot falls due at this point, and is exported after the checkpoint (a run
        resumed from it exports the snapshot when it is missing). `record`: the log record of the checkpoint's
        own step, appended to log.jsonl after the snapshot (a run resumed from it writes it when missing)."""
        manifest = {"format": FORMAT, "nimg": nimg, "world_size": world_size, "folder": folder,
                    "created_unix": time.time(), "snapshot_due": snapshot_due, "files": files,
                    **({"record": record} if record is not None else {})}
        manifest_url = storage.join(self.url, folder + ".json")
        write_bytes(manifest_url, json.dumps(manifest, indent=1).encode())
        self.prune(keep)
        return Checkpoint(manifest_url, storage.join(self.url, folder), manifest)

    def published(self) -> list[Checkpoint]:
        """Manifests that parse, newest first (by images seen, then publication time)."""
        return sorted(self._manifests()[0], key=lambda c: (c.nimg, c.manifest["created_unix"]), reverse=True)

    def unreadable(self) -> dict[str, tuple[str, bytes]]:
        """{URL: (why, its bytes)} of the files named like a manifest that are none: damaged checkpoints."""
        return self._manifests()[1]

    def _manifests(self) -> tuple[list[Checkpoint], dict[str, tuple[str, bytes]]]:
        """The published checkpoints (unsorted) and the unreadable manifests (see `unreadable`)."""
        found, unreadable = [], {}
        for name in storage.list(self.url):
            if not name.endswith(".json"):
                continue
            url = storage.join(self.url, name)
            try:
                data = storage.read_bytes(url)
            except FileNotFoundError:
                continue  # deleted by a concurrent prune
            manifest, why = parse_manifest(data)
            if why is None:
                found.append(Checkpoint.of_manifest(url, manifest))
            elif MANIFEST_NAME.fullmatch(name):  # other JSON files are not ours
                unreadable[url] = (why, data)
        return found, unreadable

    def latest(self) -> Checkpoint | None:
        """The newest checkpoint whose files are all present with the sizes its manifest names."""
        return next((checkpoint for checkpoint in self.published() if checkpoint.is_complete()), None)

    def set_aside(self, checkpoint: Checkpoint, why: str) -> str:
        """Rename a damaged checkpoint's manifest to {folder}.json.damaged, with `why` added under "damaged" (its
        files stay); the new URL. Renaming it back makes it a checkpoint again."""
        return self._set_aside(checkpoint.manifest_url, {**checkpoint.manifest, "damaged": why})

    def set_aside_unreadable(self) -> list[tuple[str, str, str]]:
        """Set aside every unreadable manifest as NAME.json.damaged holding "damaged" (why) and "manifest_text" (its
        bytes, exactly: UTF-8 with surrogateescape); (URL, why, new URL) of each."""
        return [(url, why, self._set_aside(url, {"damaged": why, "manifest_text": data.decode("utf-8",
                                                                                             "surrogateescape")}))
                for url, (why, data) in self.unreadable().items()]

    def _set_aside(self, manifest_url: str, document: dict) -> str:
        url = manifest_url + DAMAGED_SUFFIX
        storage.write_bytes_atomic(url, json.dumps(document, indent=1).encode())
        storage.delete(manifest_url)
        return url

    def set_aside_checkpoints(self) -> dict[str, str]:
        """{manifest URL: why} of the checkpoints set aside as damaged."""
        urls = [storage.join(self.url, name) for name in storage.list(self.url) if name.endswith(".json" + DAMAGED_SUFFIX)]
        return {url: json.loads(storage.read_bytes(url)).get("damaged", "damaged") for url in urls}

    def prune(self, keep: int) -> None:
        """Delete all but the newest `keep` published checkpoints, manifest first, and orphan folders
        older than the oldest one kept (left by attempts that crashed before publishing)."""
        checkpoints, unreadable = self._manifests()
        published = sorted(checkpoints, key=lambda c: (c.nimg, c.manifest["created_unix"]), reverse=True)
        for checkpoint in published[keep:]:
            storage.delete(checkpoint.manifest_url)
            storage.delete(checkpoint.folder_url, recursive=True)
        kept = {c.manifest["folder"] for c in published[:keep]}
        aside = [url.removesuffix(DAMAGED_SUFFIX) for url in self.set_aside_checkpoints()] + [*unreadable]
        kept |= {url.rsplit("/", 1)[-1].removesuffix(".json") for url in aside}
        oldest_kept = min((c.nimg for c in published[:keep]), default=None)
        if oldest_kept is None:
            return
        fs, path = storage.open_filesystem(self.url)
        for entry in storage.with_retries(lambda: fs.ls(path, detail=True), self.url):
            name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
            if entry["type"] == "directory" and name not in kept and name[:9].isdigit() and int(name[:9]) < oldest_kept:
                storage.delete(storage.join(self.url, name), recursive=True)
