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
import os
import random
import time
import uuid
from contextlib import contextmanager

import fsspec

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
