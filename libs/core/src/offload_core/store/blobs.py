"""The blob store: the bytes of image uploads and results and of report results, kept out of the
broker Redis, which holds only their metadata (offload_core.store.blob_usage).

One small interface, two backends: S3-compatible object storage (production; several API and
worker pods share it) and a local directory (``make run``, or a volume every pod mounts). Keys
are namespaced per job or image (``images/<id>/original``, ``reports/<job id>/result``); a key
that is not made of such safe segments is refused, so no key can reach outside its namespace.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

CHUNK_BYTES = 256 * 1024
_SEGMENT = re.compile(r"[A-Za-z0-9_-]{1,64}")
# type/subtype with optional parameters; never a line break (the filesystem store's header line).
_CONTENT_TYPE = re.compile(r"[a-z0-9.+-]+/[a-z0-9.+-]+(; ?[a-z0-9_-]+=[A-Za-z0-9_.-]+)*")


class BlobStoreUnavailable(Exception):
    """The store could not be read or written (a disk error, S3 unreachable or refusing)."""


class BlobKeyError(ValueError):
    """A key that is not ``<namespace>/<segment>/...`` of letters, digits, '_' and '-'."""


def check_key(key: str) -> str:
    parts = key.split("/")
    if len(parts) < 2 or not all(_SEGMENT.fullmatch(part) for part in parts):
        raise BlobKeyError(
            f"blob key {key!r} must be 2 or more '/'-separated segments of 1 to 64 letters, digits, '_' or '-'"
        )
    return key


def image_blob_key(image_id: str, part: str) -> str:
    return check_key(f"images/{image_id}/{part}")


def report_blob_key(job_id: str) -> str:
    return check_key(f"reports/{job_id}/result")


@dataclass(frozen=True)
class BlobInfo:
    size: int
    content_type: str


class Blob:
    """An open blob: its size and type, and its bytes in chunks (read once, then closed)."""

    def __init__(self, info: BlobInfo, chunks: Iterator[bytes], close: Any) -> None:
        self.info = info
        self._chunks = chunks
        self._close = close

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._chunks
        finally:
            self.close()

    def read(self) -> bytes:
        """All of it: for callers that need the whole blob anyway (Pillow), bounded by a size limit."""
        return b"".join(self)

    def close(self) -> None:
        self._close()


class BlobStore(Protocol):
    """Where blob bytes live. ``put`` takes bytes or a binary file (read in chunks from its current
    position) and returns what was stored; ``open`` is None for a key that holds nothing."""

    description: str

    def put(self, key: str, source: bytes | IO[bytes], content_type: str) -> BlobInfo: ...

    def open(self, key: str) -> Blob | None: ...

    def info(self, key: str) -> BlobInfo | None: ...

    def delete(self, key: str) -> None: ...


def _chunks_of(source: bytes | IO[bytes]) -> Iterator[bytes]:
    if isinstance(source, bytes):
        yield source
        return
    while chunk := source.read(CHUNK_BYTES):
        yield chunk


def _check_content_type(content_type: str) -> str:
    if not _CONTENT_TYPE.fullmatch(content_type):
        raise ValueError(f"content type {content_type!r} is not type/subtype with optional ; name=value parameters")
    return content_type


class FilesystemBlobStore:
    """Blobs as files under ``root``: ``root/<key>``, the content type on the first line.

    Written to a temporary file in the same directory and renamed into place, so a reader sees
    the whole old blob or the whole new one, never a part; the type travels in the same file, so
    one rename publishes both."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.description = f"the directory {self.root}"

    def _path(self, key: str) -> Path:
        path = (self.root / check_key(key)).resolve()
        if not path.is_relative_to(self.root):  # check_key already rules this out; defence in depth
            raise BlobKeyError(f"blob key {key!r} leads outside the blob directory")
        return path

    def put(self, key: str, source: bytes | IO[bytes], content_type: str) -> BlobInfo:
        try:
            return self._put(key, source, content_type)
        except OSError as exc:
            raise BlobStoreUnavailable(f"writing {key} to {self.description} failed: {exc}") from exc

    def _put(self, key: str, source: bytes | IO[bytes], content_type: str) -> BlobInfo:
        path = self._path(key)
        header = _check_content_type(content_type).encode() + b"\n"
        path.parent.mkdir(parents=True, exist_ok=True)
        size = 0
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".partial")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(header)
                for chunk in _chunks_of(source):
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
        return BlobInfo(size, content_type)

    def _open_file(self, key: str) -> tuple[IO[bytes], BlobInfo] | None:
        try:
            handle = self._path(key).open("rb")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise BlobStoreUnavailable(f"reading {key} from {self.description} failed: {exc}") from exc
        try:
            header = handle.readline(256)
            size = os.fstat(handle.fileno()).st_size - len(header)
            return handle, BlobInfo(size, header.rstrip(b"\n").decode())
        except BaseException:
            handle.close()
            raise

    def open(self, key: str) -> Blob | None:
        opened = self._open_file(key)
        if opened is None:
            return None
        handle, info = opened
        return Blob(info, _chunks_of(handle), handle.close)

    def info(self, key: str) -> BlobInfo | None:
        opened = self._open_file(key)
        if opened is None:
            return None
        handle, info = opened
        handle.close()
        return info

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise BlobStoreUnavailable(f"deleting {key} from {self.description} failed: {exc}") from exc
        # Empty namespace directories go too, up to the root; one still in use stays.
        for parent in path.parents:
            if parent == self.root or not parent.is_relative_to(self.root):
                break
            try:
                parent.rmdir()
            except OSError:
                break


class S3BlobStore:
    """Blobs as objects of an S3-compatible bucket, under ``prefix``. Uploads go through boto3's
    managed transfer (multipart above its threshold), so a large blob is never held whole."""

    def __init__(self, client: S3Client, bucket: str, prefix: str = "") -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.description = f"the bucket {bucket}" + (f" under {self.prefix}" if self.prefix else "")

    def _object(self, key: str) -> str:
        return self.prefix + check_key(key)

    @contextlib.contextmanager
    def _failures(self, doing: str, key: str) -> Iterator[None]:
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except (BotoCoreError, ClientError, Boto3Error) as exc:
            raise BlobStoreUnavailable(f"{doing} {key} in {self.description} failed: {exc}") from exc

    def put(self, key: str, source: bytes | IO[bytes], content_type: str) -> BlobInfo:
        _check_content_type(content_type)
        counted = _CountingReader(source)
        with self._failures("writing", key):
            reader = io.BufferedReader(counted, CHUNK_BYTES)
            self.client.upload_fileobj(reader, self.bucket, self._object(key), ExtraArgs={"ContentType": content_type})
        return BlobInfo(counted.count, content_type)

    def open(self, key: str) -> Blob | None:
        with self._failures("reading", key):
            try:
                answer = self.client.get_object(Bucket=self.bucket, Key=self._object(key))
            except self.client.exceptions.NoSuchKey:
                return None
        body = answer["Body"]
        info = BlobInfo(answer["ContentLength"], answer.get("ContentType", "application/octet-stream"))
        return Blob(info, body.iter_chunks(CHUNK_BYTES), body.close)

    def info(self, key: str) -> BlobInfo | None:
        from botocore.exceptions import ClientError

        with self._failures("reading", key):
            try:
                answer = self.client.head_object(Bucket=self.bucket, Key=self._object(key))
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return None
                raise
        return BlobInfo(answer["ContentLength"], answer.get("ContentType", "application/octet-stream"))

    def delete(self, key: str) -> None:
        with self._failures("deleting", key):
            self.client.delete_object(Bucket=self.bucket, Key=self._object(key))  # no error when absent


class _CountingReader(io.RawIOBase):
    """A binary file over bytes or another file that counts what was read (the stored size)."""

    def __init__(self, source: bytes | IO[bytes]) -> None:
        super().__init__()
        self._chunks = _chunks_of(source)
        self._pending = b""
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = chunk
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        self.count += size
        return size


def blob_store_from_settings(settings: Any) -> BlobStore:
    """The store OFFLOAD_BLOB_BACKEND names. S3 credentials come from the environment (AWS_*
    variables, or a web identity / instance role), never from Offload's own settings."""
    if settings.BLOB_BACKEND == "filesystem":
        return FilesystemBlobStore(settings.BLOB_DIR)
    import boto3
    from botocore.config import Config

    config = Config(
        s3={"addressing_style": "path" if settings.BLOB_S3_PATH_STYLE else "auto"},
        connect_timeout=settings.BLOB_S3_CONNECT_TIMEOUT_SECONDS,
        read_timeout=settings.BLOB_S3_READ_TIMEOUT_SECONDS,
        retries={"max_attempts": 3, "mode": "standard"},
    )
    client = boto3.session.Session().client(
        "s3", endpoint_url=settings.BLOB_S3_ENDPOINT_URL or None, region_name=settings.BLOB_S3_REGION, config=config
    )
    return S3BlobStore(client, settings.BLOB_S3_BUCKET, settings.BLOB_S3_PREFIX)
