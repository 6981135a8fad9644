"""Idempotency-Key over HTTP: a repeat returns the first job and publishes nothing, a reused key
with another body is refused, keys expire and are scoped per API key, concurrent repeats make one
job. The API runs without workers here, so a queue's depth counts exactly the messages published."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from fastapi import HTTPException, Response

from offload_api.idempotency import IN_PROGRESS_LEASE_SECONDS, IdempotencyKey
from offload_core.contract.topology import priority_lists
from offload_dev.polling import wait_for
from offload_dev.processes import Service, start_redis
from tests.support import API_KEY, ECHO_PATH, TEST_SETTINGS, Stack, api_client, cluster, job

OTHER_API_KEY = "other-client-key-0123456789"


@dataclass
class Unconsumed:
    api: Service  # OFFLOAD_IDEMPOTENCY_TTL_SECONDS at its default
    short_ttl_api: Service  # keys expire after one second
    client: httpx.Client
    redis: redis.Redis


@pytest.fixture(scope="module")
def unconsumed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Unconsumed]:
    """Redis and two APIs on it, no worker: every published message stays in its queue."""
    env = {**TEST_SETTINGS, "OFFLOAD_API_KEYS": f"{API_KEY},{OTHER_API_KEY}"}
    with cluster(tmp_path_factory.mktemp("idempotency"), env) as own:
        api = own.start_api()
        short_ttl_api = own.start_api(name="short-ttl-api", env={"OFFLOAD_IDEMPOTENCY_TTL_SECONDS": "1"})
        yield Unconsumed(api, short_ttl_api, own.client, own.redis)


def _submit(client: httpx.Client, key: str, **body: Any) -> httpx.Response:
    return client.post(ECHO_PATH, json={"message": "once", **body}, headers={"Idempotency-Key": key})


def _depth(client: httpx.Client, queue: str = "default") -> int:
    queues = {q["name"]: q for q in client.get("/v1/queues").json()["queues"]}
    depth: int = queues[queue]["depth"]
    return depth


def test_a_repeat_returns_the_first_job_and_publishes_nothing(unconsumed: Unconsumed) -> None:
    key = str(uuid.uuid4())
    before = _depth(unconsumed.client)
    first = _submit(unconsumed.client, key, sleep_ms=5)
    assert first.status_code == 202, first.text
    assert "idempotent-replayed" not in first.headers
    # Spelled differently (key order, a default written out), the same request once validated.
    repeat = unconsumed.client.post(
        "/v1/jobs/echo",
        json={"fail_times": 0, "sleep_ms": 5, "message": "once", "queue": "default"},
        headers={"Idempotency-Key": key},
    )
    assert repeat.status_code == 200, repeat.text
    assert repeat.json() == first.json()
    assert repeat.headers["idempotent-replayed"] == "true"
    assert repeat.headers["location"] == first.headers["location"]
    assert _depth(unconsumed.client) == before + 1
    assert job(unconsumed.client, first.json()["id"])["status"] == "queued"


def test_the_same_key_with_another_body_is_422(unconsumed: Unconsumed) -> None:
    key = str(uuid.uuid4())
    assert _submit(unconsumed.client, key).status_code == 202
    before = _depth(unconsumed.client)
    response = _submit(unconsumed.client, key, message="something else")
    assert response.status_code == 422  # as the IETF Idempotency-Key draft asks
    assert "already used for a different request" in response.json()["detail"]
    assert _submit(unconsumed.client, key, queue="low").status_code == 422
    assert _depth(unconsumed.client) == before


def test_concurrent_repeats_make_one_job_and_never_answer_an_id_that_does_not_exist(unconsumed: Unconsumed) -> None:
    key = str(uuid.uuid4())
    before = _depth(unconsumed.client, "low")

    def submit_and_look(_: int) -> tuple[httpx.Response, int | None]:
        response = _submit(unconsumed.client, key, queue="low")
        if response.status_code not in (200, 202):
            return response, None
        # Whatever a client is told was accepted must exist the moment it is told.
        return response, unconsumed.client.get(f"/v1/jobs/{response.json()['id']}").status_code

    with ThreadPoolExecutor(10) as pool:
        outcomes = list(pool.map(submit_and_look, range(10)))
    statuses = sorted(response.status_code for response, _ in outcomes)
    assert statuses.count(202) == 1, [r.text for r, _ in outcomes]
    assert set(statuses) <= {200, 202, 409}, statuses
    assert all(looked == 200 for response, looked in outcomes if response.status_code in (200, 202))
    for response, _ in outcomes:
        if response.status_code == 409:
            assert response.headers["retry-after"] == "1"
            assert "still in progress" in response.json()["detail"]
    assert len({r.json()["id"] for r, _ in outcomes if r.status_code in (200, 202)}) == 1
    assert _depth(unconsumed.client, "low") == before + 1


def test_a_repeat_while_the_first_is_in_flight_is_409_until_it_finishes(tmp_path: Path) -> None:
    server = start_redis(tmp_path / "redis")
    try:
        client = redis.Redis.from_url(server.url, decode_responses=True)

        def key() -> IdempotencyKey:
            return IdempotencyKey("k", "offload:idempotency:test:k", "/v1/jobs/echo", 600, Response())

        first = key()
        assert first.claim(client, "fingerprint", '{"id": "job-1"}') is None  # claimed, job not accepted yet
        with pytest.raises(HTTPException) as in_flight:
            key().claim(client, "fingerprint", '{"id": "job-2"}')
        assert (in_flight.value.status_code, in_flight.value.headers) == (409, {"Retry-After": "1"})
        assert 0 < client.ttl("offload:idempotency:test:k") <= IN_PROGRESS_LEASE_SECONDS
        first.finish(client)  # the first job exists now
        repeat = key()
        assert repeat.claim(client, "fingerprint", '{"id": "job-3"}') == '{"id": "job-1"}'
        assert repeat.response.status_code == 200
        assert client.ttl("offload:idempotency:test:k") > IN_PROGRESS_LEASE_SECONDS
    finally:
        server.stop()


def test_keys_are_scoped_per_api_key(unconsumed: Unconsumed) -> None:
    key = str(uuid.uuid4())
    mine = _submit(unconsumed.client, key)
    with api_client(unconsumed.api, key=OTHER_API_KEY) as other:
        theirs = _submit(other, key, message="theirs")
    assert (mine.status_code, theirs.status_code) == (202, 202)
    assert mine.json()["id"] != theirs.json()["id"]


def test_an_expired_key_submits_a_new_job(unconsumed: Unconsumed) -> None:
    key = str(uuid.uuid4())
    with api_client(unconsumed.short_ttl_api) as client:
        first = _submit(client, key)
        assert first.status_code == 202
        # Repeats within the second return the first job; the first one after it makes a new job.

        def new_job() -> httpx.Response | None:
            response = _submit(client, key)
            return response if response.status_code == 202 else None

        fresh = wait_for(new_job, 15, "the idempotency key to expire", interval=0.2)
    assert fresh.json()["id"] != first.json()["id"]


def test_a_key_whose_publish_failed_is_free_for_the_retry(unconsumed: Unconsumed) -> None:
    """The first request claims the key, then its publish fails (the queue's list is not a list
    in Redis): 503, and the key is released, so the client's retry with it makes the job."""
    key = str(uuid.uuid4())
    queue_list = priority_lists("high")[0]  # priority 0 on high: the list the message goes to
    unconsumed.redis.set(queue_list, "not a list")
    try:
        failed = _submit(unconsumed.client, key, queue="high", priority=0)
        assert failed.status_code == 503, failed.text
        assert failed.json()["code"] == "redis_unavailable"
    finally:
        unconsumed.redis.delete(queue_list)

    retry = _submit(unconsumed.client, key, queue="high", priority=0)
    assert retry.status_code == 202, retry.text
    assert "idempotent-replayed" not in retry.headers
    assert _depth(unconsumed.client, "high") == 1
    assert job(unconsumed.client, retry.json()["id"])["status"] == "queued"


@pytest.mark.parametrize("key", [b"", b"x" * 256, "caf\xe9".encode("latin-1")])
def test_a_malformed_key_is_422_naming_the_header(unconsumed: Unconsumed, key: bytes) -> None:
    before = _depth(unconsumed.client)
    response = unconsumed.client.post("/v1/jobs/echo", json={"message": "x"}, headers={b"Idempotency-Key": key})
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == "header.Idempotency-Key"
    assert "Idempotency-Key" in response.json()["detail"]
    assert _depth(unconsumed.client) == before


def test_every_submitting_route_takes_the_header(stack: Stack) -> None:
    schema = stack.client.get("/openapi.json").json()
    posts = {path: ops["post"] for path, ops in schema["paths"].items() if "post" in ops}
    assert {"/v1/jobs/echo", "/v1/dead-letters/{dead_letter_id}/replay"} <= set(posts)
    for path, operation in posts.items():
        headers = {p["name"] for p in operation.get("parameters", []) if p["in"] == "header"}
        assert "Idempotency-Key" in headers, path
