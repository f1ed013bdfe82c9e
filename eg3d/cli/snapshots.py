"""A snapshot opened for a command or the viewer: every way it can fail is one line naming the URL and the fault.

Missing files, damaged or misfit ones (eg3d.networks.snapshot.SnapshotError), a training run's folder (its newest
snapshot named), refused access and absent object-storage credentials become a SnapshotError; a command turns it into an argparse error (exit 2), the
viewer into a message in the page.
"""

import argparse

import torch

from dataloading import storage
from eg3d.networks.snapshot import CONFIG_FILE, WEIGHTS_FILE, SnapshotError, load_generator

EXPECTED = "expected a snapshot folder (config.json and G_ema.safetensors)"


def open_snapshot(url: str, device: str):
    """The snapshot's generator; SnapshotError (one line, naming `url`) for anything that stops it loading."""
    try:
        return load_generator(url, device, read_bytes=storage.read_bytes)
    except SnapshotError:
        refuse_run_folder(url)
        raise
    except FileNotFoundError as error:
        refuse_what_is_no_snapshot(url)
        raise SnapshotError(f"{url}: {EXPECTED}: {error}") from None
    except PermissionError as error:
        raise SnapshotError(f"{url}: access refused: {error}") from None
    except OSError as error:  # a folder where a file should be, an endpoint that stays unreachable, ...
        if isinstance(error, (NotADirectoryError, IsADirectoryError)):  # not for a network fault: asking again waits
            refuse_other_paths(url)
        raise SnapshotError(f"{url}: could not be read ({type(error).__name__}: {error})") from None
    except Exception as error:
        if not missing_credentials(error):
            raise
        raise SnapshotError(f"{url}: no object-storage credentials ({error}): set {storage.CREDENTIAL_VARIABLES}") from None


def refuse_run_folder(url: str) -> None:
    """SnapshotError naming the newest snapshot where `url` is a training run's folder (it holds checkpoints/ or
    snapshots/); nothing where it is not, or cannot be listed."""
    folders = subfolders(url)
    if not {"checkpoints", "snapshots"} & set(folders):
        return
    snapshots = storage.join(url, "snapshots")
    newest = newest_snapshot(url)
    raise SnapshotError(f"{url}: a training run's folder, not a snapshot: "
                        + (f"pass one of its snapshot folders, such as the newest, {newest}" if newest else
                           f"it has no snapshot yet (they are written under {snapshots}): pass a snapshot folder"))


def refuse_what_is_no_snapshot(url: str) -> None:
    """SnapshotError saying what `url` is where it is no snapshot folder (a run's folder, a missing path, one of a
    snapshot's files, a run's snapshots/ folder) and what to pass instead; nothing where it cannot be told."""
    refuse_run_folder(url)
    refuse_other_paths(url)


def refuse_other_paths(url: str) -> None:
    """SnapshotError saying what `url` is where it is no snapshot folder: missing, one of a snapshot's files, or a
    run's snapshots/ folder (its newest snapshot named); nothing otherwise, or where it cannot be told."""
    try:
        present = storage.exists(url)
    except Exception:  # whatever stops the question (credentials, network) leaves the first answer standing
        return
    name = url.rstrip("/").rsplit("/", 1)[-1]
    if not present:
        raise SnapshotError(f"{url}: {EXPECTED}: no such file or folder")
    if name in (CONFIG_FILE, WEIGHTS_FILE):
        raise SnapshotError(f"{url}: {EXPECTED}: this is one of a snapshot's files: pass its folder, "
                            f"{storage.parent(url)}")
    if name == "snapshots" and (newest := newest_snapshot(storage.parent(url))):
        raise SnapshotError(f"{url}: a run's folder of snapshots, not a snapshot: pass one of them, such as the "
                            f"newest, {newest}")


def newest_snapshot(run_url: str) -> str | None:
    """The URL of a run's newest complete snapshot folder (its config.json, written last, exists), or None."""
    snapshots = storage.join(run_url, "snapshots")
    return next((storage.join(snapshots, name) for name in sorted(subfolders(snapshots), reverse=True)
                 if name.startswith("snapshot-") and storage.exists(storage.join(snapshots, name, "config.json"))),
                None)


def subfolders(url: str) -> list[str]:
    """The names of the folders directly under `url`; none where it cannot be listed."""
    fs, path = storage.open_filesystem(url)
    try:
        entries = fs.ls(path, detail=True)
    except (OSError, ValueError):
        return []
    return [entry["name"].rstrip("/").rsplit("/", 1)[-1] for entry in entries if entry["type"] == "directory"]


def missing_credentials(error: BaseException) -> bool:
    """Whether botocore found no (or only part of the) credentials to sign a request with."""
    try:
        from botocore.exceptions import NoCredentialsError, PartialCredentialsError
    except ImportError:  # no object-storage client installed: not a credentials problem
        return False
    kinds = (NoCredentialsError, PartialCredentialsError)
    return isinstance(error, kinds) or isinstance(error.__cause__, kinds)


def open_generator(parser: argparse.ArgumentParser, url: str, device: str):
    """open_snapshot for a command: a fault is an argparse error (exit 2) naming SNAPSHOT, or --device where this
    torch cannot run on it."""
    try:
        kind = torch.device(device).type
    except RuntimeError:
        parser.error(f"--device {device}: not a torch device (expected cpu, cuda, cuda:1, ...)")
    if kind == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {device}: this torch sees no CUDA GPU; use --device cpu")
    try:
        return open_snapshot(url, device)
    except SnapshotError as error:
        parser.error(f"SNAPSHOT {error}")
