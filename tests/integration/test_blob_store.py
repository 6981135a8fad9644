"""The blob store's one interface against both backends, on real parts: a directory, and an
S3-compatible server on loopback (moto's server mode); then the ledger in a real Redis:
quotas charged atomically, released on delete, and the sweep that ends expired blobs."""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
import redis

from offload_core.store.blob_ledger import (
    SWEEP_GRACE_SECONDS,
    USAGE_KEY,
    BlobLedger,
    BlobQuotas,
    Blobs,
    BlobSweep,
    QuotaExceeded,
)
from offload_core.store.blobs import (
    CHUNK_BYTES,
    BlobKeyError,
    BlobStore,
    BlobStoreUnavailable,
    FilesystemBlobStore,
    S3BlobStore,
)
from offload_dev.processes import start_redis
from offload_dev.redis_server import RedisServer
from tests.s3_server import S3Server, s3_server

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_server() as server:
        yield server


@pytest.fixture(params=["filesystem", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path, s3: S3Server) -> BlobStore:
    if request.param == "filesystem":
        return FilesystemBlobStore(tmp_path / "blobs")
    return S3BlobStore(s3.client(), s3.new_bucket(), prefix="offload/tests")


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("blob-ledger"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_server.url, decode_responses=True) as direct:
        direct.flushdb()
        yield direct


def test_put_open_info_and_delete(store: BlobStore) -> None:
    key = "images/abc123/original"
    assert store.open(key) is None
    assert store.info(key) is None
    info = store.put(key, b"\x89PNG and more", "image/png")
    assert (info.size, info.content_type) == (13, "image/png")
    assert store.info(key) == info
    blob = store.open(key)
    assert blob is not None
    assert blob.info == info
    assert blob.read() == b"\x89PNG and more"
    # Stored again: replaced whole, type and all.
    store.put(key, io.BytesIO(b"second"), "text/csv; charset=utf-8")
    again = store.open(key)
    assert again is not None
    assert (again.read(), again.info.content_type) == (b"second", "text/csv; charset=utf-8")
    store.delete(key)
    assert store.open(key) is None
    store.delete(key)  # deleting what is gone is no error


def test_a_large_blob_goes_in_and_out_in_chunks(store: BlobStore, tmp_path: Path) -> None:
    # Over boto3's 8 MiB multipart threshold: the S3 store uploads it in parts from the file.
    source = tmp_path / "large.bin"
    source.write_bytes(os.urandom(12 * MIB + 123))
    with source.open("rb") as upload:
        info = store.put("reports/job-1/result", upload, "application/octet-stream")
    assert info.size == 12 * MIB + 123
    blob = store.open("reports/job-1/result")
    assert blob is not None
    digest = hashlib.sha256()
    sizes = []
    for chunk in blob:
        sizes.append(len(chunk))
        digest.update(chunk)
    assert digest.hexdigest() == hashlib.sha256(source.read_bytes()).hexdigest()
    assert len(sizes) > 1
    assert max(sizes) <= CHUNK_BYTES  # never the whole blob at once


@pytest.mark.parametrize(
    "key", ["../outside", "images/../../etc/passwd", "/absolute/path", "images//x", "images/a b", "images", "a/.."]
)
def test_keys_cannot_leave_their_namespace(store: BlobStore, key: str) -> None:
    with pytest.raises(BlobKeyError, match="must be 2 or more '/'-separated segments"):
        store.put(key, b"x", "text/plain")
    with pytest.raises(BlobKeyError):
        store.open(key)


class _Breaks(io.RawIOBase):
    """A source that fails after some bytes, as a client that disconnects mid-upload."""

    def __init__(self) -> None:
        self.sent = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self.sent:
            raise OSError("the client went away")
        self.sent = True
        buffer[:4] = b"part"
        return 4


def test_a_failed_write_leaves_the_old_blob_whole_and_no_temporary_file(tmp_path: Path) -> None:
    store = FilesystemBlobStore(tmp_path / "blobs")
    store.put("images/x/original", b"the old bytes", "image/png")
    with pytest.raises(BlobStoreUnavailable, match="the client went away"):
        store.put("images/x/original", _as_file(_Breaks()), "image/png")
    blob = store.open("images/x/original")
    assert blob is not None
    assert blob.read() == b"the old bytes"
    assert sorted(p.name for p in (tmp_path / "blobs" / "images" / "x").iterdir()) == ["original"]
    store.delete("images/x/original")
    assert list((tmp_path / "blobs").iterdir()) == []  # empty namespace folders go too


def _as_file(raw: io.RawIOBase) -> IO[bytes]:
    return io.BufferedReader(raw)


# --- the ledger: quotas and expiry in Redis ---------------------------------------------------


def test_quotas_are_charged_replaced_and_released(client: redis.Redis) -> None:
    ledger = BlobLedger(client, BlobQuotas(100, {"big": 1000}))
    assert ledger.reserve("images/a/original", "alice", 60, ttl_seconds=60) == 60
    with pytest.raises(QuotaExceeded) as refused:
        ledger.reserve("images/b/original", "alice", 50, ttl_seconds=60)
    assert "over its blob quota of 100 bytes (60 in use; OFFLOAD_BLOB_QUOTA_BYTES" in str(refused.value)
    assert ledger.reserve("images/b/original", "big", 500, ttl_seconds=60) == 500  # its own override
    # The same key stored again replaces its charge rather than adding to it.
    assert ledger.reserve("images/a/original", "alice", 90, ttl_seconds=60) == 90
    assert ledger.release("images/a/original") == 90
    assert ledger.usage("alice") == 0
    assert client.hexists(USAGE_KEY, "alice") == 0  # no zero entries left behind
    assert ledger.reserve("images/b2/original", "alice", 100, ttl_seconds=60) == 100  # the quota is free again


def test_concurrent_charges_never_exceed_the_quota(client: redis.Redis, redis_server: RedisServer) -> None:
    taken: list[bool] = []

    def charge(index: int) -> None:
        with redis.Redis.from_url(redis_server.url) as own:
            try:
                BlobLedger(own, BlobQuotas(100)).reserve(f"images/{index}/original", "alice", 10, ttl_seconds=60)
                taken.append(True)
            except QuotaExceeded:
                taken.append(False)

    threads = [threading.Thread(target=charge, args=(i,)) for i in range(25)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert taken.count(True) == 10
    assert BlobLedger(client, BlobQuotas(100)).usage("alice") == 100


def test_a_write_refused_by_the_quota_stores_nothing(client: redis.Redis, tmp_path: Path) -> None:
    blobs = Blobs(FilesystemBlobStore(tmp_path / "blobs"), BlobLedger(client, BlobQuotas(10)))
    with pytest.raises(QuotaExceeded):
        blobs.put("images/a/original", b"x" * 11, size=11, content_type="image/png", owner="alice", ttl=60)
    assert blobs.open("images/a/original") is None
    assert blobs.ledger.usage("alice") == 0


def test_the_sweep_deletes_expired_blobs_and_frees_their_quota(store: BlobStore, client: redis.Redis) -> None:
    blobs = Blobs(store, BlobLedger(client, BlobQuotas(1000)))
    blobs.put("reports/old/result", b"o" * 100, size=100, content_type="text/csv", owner="alice", ttl=1)
    blobs.put("reports/new/result", b"n" * 200, size=200, content_type="text/csv", owner="alice", ttl=3600)
    sweep = BlobSweep(blobs, 60, owner="test")
    assert sweep.sweep() == 0  # not past its expiry and the grace yet
    later = time.time() + 1 + SWEEP_GRACE_SECONDS + 1
    assert sweep.sweep(now=later) == 1
    assert blobs.open("reports/old/result") is None
    kept = blobs.open("reports/new/result")
    assert kept is not None
    assert kept.read() == b"n" * 200
    assert blobs.ledger.usage("alice") == 200
    # A renewed blob is not taken.
    blobs.ledger.renew(["reports/new/result"], 7200)
    assert sweep.sweep(now=time.time() + 3600 + SWEEP_GRACE_SECONDS + 1) == 0
    assert blobs.ledger.usage("alice") == 200
