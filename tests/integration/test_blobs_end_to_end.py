"""Blobs out of the broker, end to end on real processes: the API and a worker keep image and
report blobs in an S3-compatible server on loopback (moto's server mode); an image goes
upload → process → fetch and a report is downloaded through it; the broker Redis then holds no
blob bytes; and an API key's blob quota refuses an upload with 413 until a delete frees it."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from offload_core.contract.api_keys import parse_api_key
from offload_core.store.blob_ledger import USAGE_KEY
from offload_dev.polling import wait_for
from tests.integration.test_images import encoded, ended, noise, result, submit, upload, uploaded
from tests.integration.test_reports import download, finished
from tests.integration.test_reports import submit as submit_report
from tests.s3_server import S3Server, s3_server
from tests.support import API_KEY, TEST_OWNER, TEST_SETTINGS, Cluster, api_client, cluster, served

# A second API key with a small blob quota of its own (OFFLOAD_BLOB_QUOTA_OVERRIDES).
SMALL_KEY = "small-quota-key-0123456789"
SMALL_OWNER = "small"
SMALL_QUOTA = 400_000
PREFIX = "e2e"


@dataclass
class S3Stack:
    s3: S3Server
    bucket: str
    own: Cluster
    client: httpx.Client
    small: httpx.Client

    def objects(self) -> dict[str, int]:
        return self.s3.keys(self.bucket)


@pytest.fixture(scope="module")
def s3_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Stack]:
    with s3_server() as s3:
        bucket = s3.new_bucket()
        settings = {
            **TEST_SETTINGS,
            **s3.settings_env(bucket, prefix=PREFIX),
            "OFFLOAD_API_KEYS": f"{API_KEY},{SMALL_OWNER}::{SMALL_KEY}",
            "OFFLOAD_BLOB_QUOTA_OVERRIDES": f"{SMALL_OWNER}={SMALL_QUOTA}",
        }
        with cluster(tmp_path_factory.mktemp("s3-stack"), settings) as own:
            own.start_worker("worker", queues="default,low")
            api = own.start_api()
            with api_client(api, SMALL_KEY) as small:
                yield S3Stack(s3, bucket, own, own.client, small)


def test_an_image_goes_upload_process_fetch_through_s3(s3_stack: S3Stack) -> None:
    original = encoded(noise(400, 300), "PNG")
    body = uploaded(s3_stack.client, original, tags=["s3"])
    image_id = body["id"]
    assert s3_stack.objects()[f"{PREFIX}/images/{image_id}/original"] == len(original)

    accepted = submit(s3_stack.client, image_id, {"op": "grayscale"}, {"op": "thumbnail", "size": 100})
    done = ended(s3_stack.client, image_id)
    assert done["pipeline"]["status"] == "succeeded", done["pipeline"]
    response, picture = result(s3_stack.client, image_id)
    assert (picture.size, picture.mode, picture.format) == ((100, 75), "L", "PNG")
    assert response.headers["content-length"] == str(len(response.content)) == str(done["result"]["bytes"])
    result_key = f"{PREFIX}/images/{image_id}/result-{accepted['pipeline_id']}"
    assert s3_stack.objects()[result_key] == len(response.content)

    # Processing again replaces the result: the previous one leaves the bucket.
    again = submit(s3_stack.client, image_id, {"op": "rotate", "degrees": 90})
    assert ended(s3_stack.client, image_id)["pipeline"]["status"] == "succeeded"
    objects = s3_stack.objects()
    assert result_key not in objects
    assert f"{PREFIX}/images/{image_id}/result-{again['pipeline_id']}" in objects


def _wide_csv(rows: int) -> bytes:
    """A source whose report has one group per row: a result of tens of kilobytes."""
    lines = ["id,qty"] + [f"item-{i:06d},{i % 97}" for i in range(rows)]
    return ("\n".join(lines) + "\n").encode()


def _report_through(stack: S3Stack, rows: int) -> tuple[str, bytes]:
    with served(_wide_csv(rows)) as url:
        job_id = submit_report(
            stack.client, url, group_by=["id"], metrics=[{"op": "sum", "column": "qty"}], output_format="csv"
        )
        done = finished(stack.client, job_id)
    assert done["status"] == "succeeded", done
    answer = download(stack.client, job_id)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/csv")
    assert answer.headers["content-length"] == str(done["result"]["result_bytes"])
    return job_id, answer.content


def test_a_report_is_downloaded_from_s3(s3_stack: S3Stack) -> None:
    job_id, content = _report_through(s3_stack, 3000)
    rows = list(csv.reader(io.StringIO(content.decode())))
    assert rows[0] == ["id", "sum_qty"]
    assert len(rows) == 3001
    assert rows[1:4] == [["item-000000", "0"], ["item-000001", "1"], ["item-000002", "2"]]
    assert s3_stack.objects()[f"{PREFIX}/reports/{job_id}/result"] == len(content)


def test_the_broker_redis_holds_no_blob_bytes(s3_stack: S3Stack) -> None:
    original = encoded(noise(300, 300), "PNG")  # about 270 KB
    body = uploaded(s3_stack.client, original)
    submit(s3_stack.client, body["id"], {"op": "convert", "format": "png"})
    assert ended(s3_stack.client, body["id"])["pipeline"]["status"] == "succeeded"
    _, report = _report_through(s3_stack, 5000)
    assert len(report) > 50_000

    direct = redis.Redis.from_url(s3_stack.own.server.url)
    sizes = {key: len(direct.dump(key) or b"") for key in direct.scan_iter(count=1000)}
    largest = max(sizes, key=lambda key: sizes[key])
    # Records, indexes, queues and the ledger: a few kilobytes each at most, against blobs of
    # 50 to 270 KB. (DUMP is the serialized value, whatever its type.)
    assert sizes[largest] < 16_384, f"{largest!r} holds {sizes[largest]} bytes"
    assert direct.hget(USAGE_KEY, TEST_OWNER) is not None  # what Redis keeps instead: the sizes
    direct.close()


def test_a_blob_quota_refuses_with_413_until_a_delete_frees_it(s3_stack: S3Stack) -> None:
    first = encoded(noise(250, 250), "PNG")
    second = encoded(noise(300, 300), "PNG")
    assert len(first) < SMALL_QUOTA < len(first) + len(second)
    kept = uploaded(s3_stack.small, first)

    refused = upload(s3_stack.small, second)
    assert refused.status_code == 413, refused.text
    detail = refused.json()["detail"]
    assert f"API key 'small' over its blob quota of {SMALL_QUOTA:,} bytes" in detail
    assert "OFFLOAD_BLOB_QUOTA_BYTES" in detail
    # The other key's quota is its own.
    assert upload(s3_stack.client, second).status_code == 201

    deleted = s3_stack.small.delete(f"/v1/images/{kept['id']}")
    assert deleted.status_code == 204, deleted.text
    assert s3_stack.small.get(f"/v1/images/{kept['id']}").status_code == 404
    assert f"{PREFIX}/images/{kept['id']}/original" not in s3_stack.objects()
    stored = uploaded(s3_stack.small, second)  # the quota is free again

    # A worker's result counts too: this one would not fit, and the job says why.
    submit(s3_stack.small, stored["id"], {"op": "convert", "format": "png"})
    pipeline = ended(s3_stack.small, stored["id"])["pipeline"]
    assert (pipeline["status"], pipeline["failed_step"]) == ("failed", "process")
    assert "the result cannot be kept" in pipeline["error"]
    assert "over its blob quota" in pipeline["error"]
    usage = redis.Redis.from_url(s3_stack.own.server.url, decode_responses=True)
    assert usage.hget(USAGE_KEY, SMALL_OWNER) == str(len(second))  # the refused result was not charged
    usage.close()


def test_deleting_someone_elses_image_is_404(s3_stack: S3Stack) -> None:
    body = uploaded(s3_stack.client, encoded(noise(20, 20), "PNG"))
    assert s3_stack.small.delete(f"/v1/images/{body['id']}").status_code == 404
    assert s3_stack.client.get(f"/v1/images/{body['id']}").status_code == 200


def test_expired_blobs_are_swept_and_their_quota_freed(tmp_path: Path) -> None:
    settings = {
        **TEST_SETTINGS,
        "OFFLOAD_REPORT_RESULT_TTL_SECONDS": "1",
        "OFFLOAD_BLOB_SWEEP_INTERVAL_SECONDS": "0.5",
    }
    with cluster(tmp_path, settings) as own:
        own.start_worker("worker", queues="low")
        own.start_api()
        with served(_wide_csv(100)) as url:
            job_id = submit_report(own.client, url, group_by=["id"], output_format="csv")
            assert finished(own.client, job_id)["status"] == "succeeded"
        owner = parse_api_key(API_KEY).principal.id
        blob = Path(own.env["OFFLOAD_BLOB_DIR"]) / "reports" / job_id / "result"
        assert blob.exists()  # its expiry, then the sweep's grace, are seconds away

        def swept() -> bool:
            return not blob.exists() and own.redis.hget(USAGE_KEY, owner) is None

        wait_for(swept, 15, "the expired report result to be swept and its quota freed")
        assert download(own.client, job_id).status_code == 404
