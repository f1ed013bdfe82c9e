"""Files fetched once from a URL into this machine's cache ($EG3D_CACHE or ~/.cache/eg3d), checked by SHA-256:
the Inception and LPIPS weights, MediaPipe's face_landmarker.task."""

import hashlib
import os
import re
import uuid


def default_cache_dir() -> str:
    return os.environ.get("EG3D_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "eg3d")


def normalized_digest(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    digest = sha256.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{8,64}", digest):
        raise ValueError(f"a SHA-256 must be 8 to 64 hex digits (a prefix of the digest), got {sha256!r}")
    return digest


def file_digest(path: str) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def check_digest(path: str, expected: str | None, *, name: str) -> None:
    if expected is None:
        return
    actual = file_digest(path)
    if not actual.startswith(expected):
        raise ValueError(f"{name}: SHA-256 mismatch: expected {expected}, got {actual}")


def cached_download(url: str, expected: str | None, cache_dir: str) -> str:
    """Local path of `url` in the cache, downloaded if absent. A download lands under a temporary name and
    is renamed once complete and checked, so concurrent workers never read a partial file."""
    # The URL's digest in the name keeps files of the same name from different places apart.
    name = f"{hashlib.sha256(url.encode()).hexdigest()[:12]}-{url.rstrip('/').rsplit('/', 1)[-1]}"
    path = os.path.join(cache_dir, name)
    if os.path.exists(path):
        try:
            check_digest(path, expected, name=f"{url} (cached as {path})")
        except ValueError:
            os.remove(path)
            raise
        return path
    os.makedirs(cache_dir, exist_ok=True)
    temporary = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        download(url, temporary)
        check_digest(temporary, expected, name=url)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return path


def download(url: str, destination: str) -> None:
    from . import storage  # retries, s3 endpoints; imported only when a URL is used

    fs, path = storage.open_filesystem(url)
    # A whole-file GET, streamed to disk: no range requests, which plain HTTP servers may not support.
    storage.with_retries(lambda: fs.get_file(path, destination), url)
