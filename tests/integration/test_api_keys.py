"""API keys with ids and scopes, on a real API and Redis: /v1 is authenticated from the headers
before any body is read, a key sees and acts on its own records only (404 for another's), an
admin key on all, hashed keys work, and two keys with one id are one principal (a rotation)."""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from offload_core.store.jobs import JobStore
from offload_dev.polling import wait_for
from tests.support import TEST_SETTINGS, Cluster, api_client, cluster

SHOP = "shop-key-0123456789abcdef"
SHOP_NEXT = "shop-key-rotated-0123456789"
OTHER = "other-key-0123456789abcdef"
OPS = "ops-key-0123456789abcdef00"


def _hashed(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


KEYS = f"shop::{SHOP},shop::{_hashed(SHOP_NEXT)},other::{_hashed(OTHER)},ops:admin:{_hashed(OPS)}"


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster(tmp_path_factory.mktemp("keys"), {**TEST_SETTINGS, "OFFLOAD_API_KEYS": KEYS}) as started:
        started.start_api()
        yield started


def _as(keyed: Cluster, key: str | None) -> httpx.Client:
    return api_client(keyed.services[0], key)


def _raw_request(url: str, head: bytes, timeout: float = 5) -> bytes:
    """Send a request head only (no body) and read what the server answers meanwhile."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.sendall(head)
        return sock.recv(4096)


def test_a_keyless_request_is_refused_before_its_body_is_read(keyed: Cluster) -> None:
    url = keyed.services[0].extra["url"]
    # A 10 MiB upload announced, none of it sent: the 401 comes from the headers alone.
    started = time.monotonic()
    answer = _raw_request(
        url,
        b"POST /v1/images HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        b"Content-Length: 10485760\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 401"), answer
    assert time.monotonic() - started < 4
    with _as(keyed, None) as anonymous:
        # Malformed JSON without a key: 401, not the 422 of a parsed body.
        response = anonymous.post("/v1/jobs/echo", content=b"{not json", headers={"Content-Type": "application/json"})
        assert (response.status_code, response.json()["code"]) == (401, "unauthorized")
        assert response.headers["www-authenticate"] == "Bearer"
    with _as(keyed, "wrong-key-0123456789abcdef") as wrong:
        assert wrong.post("/v1/jobs/echo", content=b"{not json").status_code == 401


def test_a_key_sees_its_own_records_only_and_an_admin_all(keyed: Cluster) -> None:
    direct = keyed.redis
    with _as(keyed, SHOP) as shop, _as(keyed, OTHER) as other, _as(keyed, OPS) as ops:
        job_id = shop.post("/v1/jobs/echo", json={"message": "mine"}).json()["id"]
        assert shop.get(f"/v1/jobs/{job_id}").json()["owner"] == "shop"
        assert ops.get(f"/v1/jobs/{job_id}").status_code == 200
        missing = other.get(f"/v1/jobs/{job_id}")
        assert missing.status_code == 404, missing.text  # not 403: its existence is not told
        assert other.delete(f"/v1/jobs/{job_id}").status_code == 404
        assert shop.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"  # other's cancel did nothing

        notification = shop.post(
            "/v1/notifications",
            json={
                "message": {"title": "t", "body": "b"},
                "targets": [{"channel": "email", "address": "a@example.com"}],
            },
        ).json()["id"]
        assert other.get(f"/v1/notifications/{notification}").status_code == 404
        assert shop.get(f"/v1/notifications/{notification}").status_code == 200

        # The job fails for good, as a worker would record it: its dead letter is shop's too.
        JobStore(direct, ttl_seconds=600).fail(job_id, "boom", payload={"message": "mine"})
        assert shop.get(f"/v1/dead-letters/{job_id}").json()["owner"] == "shop"
        assert other.get(f"/v1/dead-letters/{job_id}").status_code == 404
        assert other.post(f"/v1/dead-letters/{job_id}/replay").status_code == 404
        assert other.delete(f"/v1/dead-letters/{job_id}").status_code == 404
        assert job_id not in [d["id"] for d in other.get("/v1/dead-letters").json()["dead_letters"]]
        assert job_id in [d["id"] for d in shop.get("/v1/dead-letters").json()["dead_letters"]]
        assert job_id in [d["id"] for d in ops.get("/v1/dead-letters").json()["dead_letters"]]
        replay = shop.post(f"/v1/dead-letters/{job_id}/replay").json()["id"]
        assert shop.get(f"/v1/jobs/{replay}").json()["owner"] == "shop"

        # The audit trail: a key reads its own entries, an admin everyone's.
        def audited(client: httpx.Client) -> set[str]:
            return {entry["key_id"] for entry in client.get("/v1/audit", params={"limit": 500}).json()["entries"]}

        wait_for(lambda: "shop" in audited(ops), 10, "the audit entries to be written")
        assert audited(shop) == {"shop"}
        assert audited(other) == set()
        assert other.get("/v1/audit", params={"key_id": "shop"}).json()["entries"] == []


def test_a_rotated_key_is_the_same_principal(keyed: Cluster) -> None:
    with _as(keyed, SHOP) as old, _as(keyed, SHOP_NEXT) as new:
        job_id = old.post("/v1/jobs/echo", json={"message": "rotating"}).json()["id"]
        assert new.get(f"/v1/jobs/{job_id}").json()["owner"] == "shop"
        # An Idempotency-Key is the principal's, whichever of its keys sends the repeat.
        first = old.post("/v1/jobs/echo", json={"message": "once"}, headers={"Idempotency-Key": "rotate-1"})
        again = new.post("/v1/jobs/echo", json={"message": "once"}, headers={"Idempotency-Key": "rotate-1"})
        assert (first.status_code, again.status_code) == (202, 200)
        assert first.json()["id"] == again.json()["id"]


def test_a_schedule_is_its_keys_alone_and_an_admins(keyed: Cluster) -> None:
    body = {"job_type": "offload.echo", "payload": {"message": "mine"}, "interval_seconds": 3600}
    with _as(keyed, SHOP) as shop, _as(keyed, OTHER) as other, _as(keyed, OPS) as ops:
        created = shop.post("/v1/schedules", json=body)
        assert created.status_code == 201, created.text
        schedule_id = created.json()["id"]

        assert other.get(f"/v1/schedules/{schedule_id}").status_code == 404
        assert other.patch(f"/v1/schedules/{schedule_id}", json={"paused": True}).status_code == 404
        assert other.delete(f"/v1/schedules/{schedule_id}").status_code == 404
        assert schedule_id not in [s["id"] for s in other.get("/v1/schedules").json()["schedules"]]

        assert schedule_id in [s["id"] for s in ops.get("/v1/schedules").json()["schedules"]]
        assert ops.get(f"/v1/schedules/{schedule_id}").json()["paused"] is False
        assert shop.delete(f"/v1/schedules/{schedule_id}").status_code == 204
        assert ops.get(f"/v1/schedules/{schedule_id}").status_code == 404
