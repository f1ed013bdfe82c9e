"""The one storage abstraction: fsspec URLs (a local path, file://, s3://bucket/key, any fsspec protocol).

`s3://` goes through s3fs. The endpoint comes from the standard `AWS_ENDPOINT_URL_S3` or
`AWS_ENDPOINT_URL` variable (unset: AWS itself) and credentials from the standard AWS chain
(`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, profiles, instance roles).

Two layers of retries, both bounded and with exponential backoff: botocore retries each request
("standard" mode: throttling, 5xx, dropped connections), and every helper here retries the whole
operation on what still escapes as transient, such as a refused connection while an endpoint restarts.
A missing bucket or object raises FileNotFoundError and a refused one PermissionError, both naming the
full URL; nothing is retried for them.
"""

import errno
import hashlib
import os
import random
import re
import time
import uuid
from contextlib import contextmanager

import fsspec
from fsspec.registry import known_implementations

ATTEMPTS = 3  # operation-level tries
REQUEST_ATTEMPTS = 3  # botocore tries per request
BACKOFF_SECONDS = 0.25  # first wait; doubled after each failure, with jitter
THROTTLING_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded",
                    "TooManyRequestsException", "ServiceUnavailable", "RequestTimeout", "InternalError"}


def open_filesystem(url: str):
    """(filesystem, path inside it) for a URL or local path."""
    url = str(url)
    if url.startswith("s3://"):
        return _s3_filesystem(), url.removeprefix("s3://")
    fs, path = fsspec.core.url_to_fs(url)
    return fs, path


def _s3_filesystem():
    import s3fs  # only when an s3:// URL is used: it pulls in aiobotocore

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
    # Listings are not cached: other processes (build workers, other ranks) write to the same prefix.
    return s3fs.S3FileSystem(endpoint_url=endpoint, use_listings_cache=False,
                             config_kwargs={"retries": {"max_attempts": REQUEST_ATTEMPTS, "mode": "standard"}})


CREDENTIAL_VARIABLES = ("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary "
                        "credentials), or AWS_PROFILE for a profile in the AWS credentials file; AWS_ENDPOINT_URL "
                        "for an S3-compatible store other than AWS")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):(/*)(.*)$")  # one letter and a colon is a Windows drive


def check_url(url: str, *, what: str, protocols: tuple[str, ...] | None = None) -> None:
    """ValueError naming `what` (e.g. "--storage") when `url` is no usable location: a malformed or unknown
    scheme, an s3:// URL without a bucket, a protocol outside `protocols` (None: any fsspec one), or s3://
    with no AWS credentials to sign requests with. Cheap: it reaches no store (at most the AWS credential
    chain, which may ask an instance's metadata service)."""
    match = _SCHEME.match(str(url))
    if match is None or str(url).startswith("file:"):
        return
    scheme, slashes, rest = match.groups()
    if scheme not in known_implementations and not slashes:  # a local name with a colon in it, such as runs:2
        return
    if scheme not in known_implementations:
        raise ValueError(f"{what} {url}: unknown storage protocol {scheme!r}; expected {_accepted(protocols)}")
    if slashes != "//":
        raise ValueError(f"{what} {url}: malformed URL; expected {scheme}://{rest.lstrip('/') or 'bucket/prefix'}")
    if protocols is not None and scheme not in protocols:
        raise ValueError(f"{what} {url}: {scheme}:// is not supported here; expected {_accepted(protocols)}")
    if scheme == "s3":
        _check_s3(url, rest, what)


def _accepted(protocols: tuple[str, ...] | None) -> str:
    """What a location may be: with `protocols`, a folder that runs live in ('a local folder or s3://bucket/prefix',
    as --storage's help says); without, a file or folder anywhere fsspec reaches (--data, --init-from)."""
    if protocols is None:
        return "a local path (file or folder) or an fsspec URL such as s3://bucket/key"
    return " or ".join(["a local folder", *(f"{protocol}://bucket/prefix" for protocol in protocols)])


def _check_s3(url: str, rest: str, what: str) -> None:
    bucket = rest.split("/", 1)[0]
    if not bucket:
        raise ValueError(f"{what} {url}: no bucket; expected s3://bucket/prefix")
    import botocore.session

    if botocore.session.get_session().get_credentials() is None:
        raise ValueError(f"{what} {url}: no AWS credentials found; set {CREDENTIAL_VARIABLES}")


def is_local(url: str) -> bool:
    return "://" not in str(url) or str(url).startswith("file://")


def join(url: str, *names: str) -> str:
    return "/".join([str(url).rstrip("/"), *names])


def parent(url: str) -> str:
    url = str(url).rstrip("/")
    return url.rsplit("/", 1)[0] if "/" in url else "."


# --- errors and retries ------------------------------------------------------------------------------

def is_transient(error: BaseException) -> bool:
    """Connection problems, timeouts, 5xx and throttling: worth another try."""
    if isinstance(error, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    if isinstance(error, (ConnectionError, TimeoutError)):
        return True
    if _is_transient_botocore(error):
        return True
    for candidate in (error, error.__cause__):
        response = getattr(candidate, "response", None)
        if isinstance(response, dict):
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            code = response.get("Error", {}).get("Code", "")
            if status >= 500 or status == 429 or code in THROTTLING_CODES:
                return True
    # s3fs turns "503 Slow Down" / "Service Unavailable" into OSError(EBUSY).
    return isinstance(error, OSError) and error.errno == errno.EBUSY


def _is_transient_botocore(error: BaseException) -> bool:
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError, HTTPClientError
    except ImportError:
        return False
    return isinstance(error, (BotoConnectionError, HTTPClientError)) or isinstance(
        error.__cause__, (BotoConnectionError, HTTPClientError))


def _named(error: BaseException, url: str) -> BaseException:
    """The error with the full URL in its message, for the kinds a user must act on."""
    detail = str(error) or type(error).__name__
    if isinstance(error, FileNotFoundError):
        what = "no such bucket" if "bucket" in detail.lower() else "no such file or object"
        return FileNotFoundError(errno.ENOENT, f"{url}: {what} ({detail})")
    if isinstance(error, PermissionError):
        return PermissionError(errno.EACCES, f"{url}: permission denied: {detail}; check the AWS "
                                             f"credentials and the bucket policy")
    return error


def with_retries(operation, url: str, *, attempts: int = ATTEMPTS, backoff: float = BACKOFF_SECONDS):
    """operation() retried on transient errors with exponential backoff; other errors name `url`."""
    for attempt in range(attempts):
        try:
            return operation()
        except Exception as error:
            if not is_transient(error):
                named = _named(error, url)
                if named is error:
                    raise
                raise named from error
            if attempt == attempts - 1:
                raise OSError(errno.EIO, f"{url}: still failing after {attempts} attempts: {error}") from error
            time.sleep(backoff * 2 ** attempt * random.uniform(0.5, 1.5))


# --- helpers -----------------------------------------------------------------------------------------

def read_bytes(url: str) -> bytes:
    fs, path = open_filesystem(url)
    return with_retries(lambda: fs.cat_file(path), url)


def exists(url: str) -> bool:
    fs, path = open_filesystem(url)
    return with_retries(lambda: fs.exists(path), url)


def size(url: str) -> int:
    fs, path = open_filesystem(url)
    return with_retries(lambda: fs.size(path), url)


def list(url: str) -> dict[str, int]:  # noqa: A001 - the storage verb, used as storage.list
    """{name: size in bytes} of the files directly under `url`, sorted by name; empty when there are
    none. An absent folder or prefix is empty; an absent bucket is an error."""
    fs, path = open_filesystem(url)

    def entries():
        try:
            listing = fs.ls(path, detail=True)
        except FileNotFoundError:
            if is_local(url) or fs.exists(path.split("/", 1)[0]):
                return {}
            raise
        files = [entry for entry in listing if entry["type"] == "file"]
        return {entry["name"].rsplit("/", 1)[-1]: int(entry["size"]) for entry in
                sorted(files, key=lambda entry: entry["name"])}

    return with_retries(entries, url)


def makedirs(url: str) -> None:
    """A local directory is created; object stores have no directories."""
    if is_local(url):
        fs, path = open_filesystem(url)
        fs.makedirs(path, exist_ok=True)


def write_bytes_atomic(url: str, data: bytes) -> None:
    """Readers see the old object or the new one, never a part. Local: temp file + rename; object
    stores: one PUT (an object appears whole)."""
    fs, path = open_filesystem(url)
    if is_local(url):
        temporary = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            with open(temporary, "wb") as file:
                file.write(data)
            os.replace(temporary, path)
        finally:
            if os.path.exists(temporary):
                os.remove(temporary)
        return
    with_retries(lambda: fs.pipe_file(path, data), url)


def publish_file(local_path: str, url: str) -> None:
    """Move a finished local file to `url` atomically (rename locally; an upload is atomic on S3,
    multipart included: the object appears when the upload completes)."""
    if is_local(url):
        _, path = open_filesystem(url)
        os.replace(local_path, path)
        return
    fs, path = open_filesystem(url)
    with_retries(lambda: fs.put_file(local_path, path), url)
    os.remove(local_path)


@contextmanager
def open_read(url: str, *, block_size: int = 8 << 20):
    """A binary file streamed from `url` (read-ahead in blocks of `block_size` on object stores)."""
    fs, path = open_filesystem(url)
    options = {} if is_local(url) else {"block_size": block_size, "cache_type": "readahead"}
    file = with_retries(lambda: fs.open(path, "rb", **options), url)
    try:
        yield file
    finally:
        file.close()


def delete(url: str, *, recursive: bool = False) -> None:
    """Remove a file (or, with `recursive`, a folder or prefix and everything under it); absent is fine."""
    fs, path = open_filesystem(url)

    def remove():
        try:
            fs.rm(path, recursive=recursive)
        except FileNotFoundError:
            pass

    with_retries(remove, url)


# --- conditional writes ------------------------------------------------------------------------------

class VersionMismatch(Exception):
    """A conditional write found the object changed (or present, or absent) since it was read."""


def read_versioned(url: str) -> tuple[bytes, str] | None:
    """(bytes, version) of an object, or None when it is absent. The version changes whenever the object is
    rewritten: its ETag on S3, the bytes' SHA-256 elsewhere. On S3 the version is read first, so a write
    conditioned on it fails rather than overwrite a newer object than the bytes returned."""
    fs, path = open_filesystem(url)
    if not exists(url):
        return None
    try:
        version = with_retries(lambda: fs.info(path).get("ETag"), url) if url.startswith("s3://") else None
        data = read_bytes(url)
    except FileNotFoundError:
        return None
    return data, version or hashlib.sha256(data).hexdigest()


def write_if_unchanged(url: str, data: bytes, version: str | None) -> str:
    """Write `data` only if the object is still at `version` (None: only if it is absent); its new version.
    VersionMismatch when it is not.

    S3: one conditional PUT (If-None-Match: * to create, If-Match: ETag to replace), decided by the store.
    Local: compare and replace under a lock file beside the object, atomic between processes that share the
    lock. Other stores, and S3-compatible ones that answer a conditional PUT with NotImplemented: compare,
    write, read back. Two writers within that window can then both see their own bytes for a moment; the
    later one keeps the object, and the earlier one finds out at its next conditional write."""
    if url.startswith("s3://"):
        try:
            return _write_s3_if_unchanged(url, data, version)
        except OSError as error:
            if error.errno != errno.ENOSYS:
                raise
    if is_local(url):
        import filelock

        with filelock.FileLock(url.removeprefix("file://") + ".lock"):
            return _compare_and_write(url, data, version)
    return _compare_and_write(url, data, version)


def _compare_and_write(url: str, data: bytes, version: str | None) -> str:
    current = read_versioned(url)
    if (current and current[1]) != version:
        raise VersionMismatch(f"{url} changed since it was read")
    write_bytes_atomic(url, data)
    written = read_versioned(url)
    if written is None or written[0] != data:
        raise VersionMismatch(f"{url} was rewritten by another writer at the same moment")
    return written[1]


def _write_s3_if_unchanged(url: str, data: bytes, version: str | None) -> str:
    fs, path = open_filesystem(url)
    condition = {"mode": "create"} if version is None else {"IfMatch": version}
    try:
        response = with_retries(lambda: fs.pipe_file(path, data, **condition), url)
    except (FileExistsError, FileNotFoundError) as error:
        raise VersionMismatch(f"{url} changed since it was read") from error
    except OSError as error:
        if _error_code(error) == "PreconditionFailed":
            raise VersionMismatch(f"{url} changed since it was read") from error
        raise
    return response["ETag"]


def _error_code(error: BaseException) -> str:
    for candidate in (error, error.__cause__):
        response = getattr(candidate, "response", None)
        if isinstance(response, dict):
            return response.get("Error", {}).get("Code", "")
    return ""
