"""Request rate limits of API keys, on a real API and Redis: a key over its limit gets 429 with
Retry-After and the IETF draft's RateLimit-Policy / RateLimit fields, from its headers alone (no
body read), other keys are not affected, allowed answers say what is left, throttled requests
are counted by key id, and the limit is one for all API replicas (it lives in Redis)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from offload_api.rate_limit import RequestLimiter
from offload_client import Offload
from offload_client.errors import RateLimited
from offload_core.contract.api_keys import RequestRate
from offload_core.settings import Settings
from offload_core.store.jobs import async_redis_client
from tests.support import TEST_SETTINGS, Cluster, api_client, cluster, sample, scrape

SHOP = "shop-key-0123456789abcdef"
BULK = "bulk-key-0123456789abcdef"
FREE = "free-key-0123456789abcdef"
KEYS = f"shop::{SHOP},bulk::{BULK},free::{FREE}"
LIMITS = {
    "OFFLOAD_API_KEYS": KEYS,
    "OFFLOAD_API_RATE_LIMIT": "1000/60",
    "OFFLOAD_API_KEY_RATE_LIMITS": "shop=3/60,free=off",
}


def _limit_fields(value: str) -> tuple[int, int]:
    """r and t of a RateLimit field of the "key" policy."""
    name, remaining, reset = value.split(";")
    assert name == '"key"', value
    assert remaining.startswith("r="), value
    assert reset.startswith("t="), value
    return int(remaining[2:]), int(reset[2:])


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster(tmp_path_factory.mktemp("rate"), {**TEST_SETTINGS, **LIMITS}) as started:
        started.start_api(name="api-1")
        started.start_api(name="api-2")
        yield started


def test_a_key_over_its_limit_gets_429_with_the_draft_fields_on_any_replica(limited: Cluster) -> None:
    first, second = (api_client(api, SHOP) for api in limited.services[:2])
    with first, second:
        answers = [first.get("/v1/job-types"), second.get("/v1/job-types"), first.get("/v1/job-types")]
        assert [a.status_code for a in answers] == [200, 200, 200]
        # Requests left, and seconds until all 3 are back (20 s a request, less the time passed).
        fields = [_limit_fields(a.headers["RateLimit"]) for a in answers]
        assert [r for r, _ in fields] == [2, 1, 0]
        assert all(20 * n - 10 <= t <= 20 * n for n, (_, t) in enumerate(fields, start=1)), fields
        assert {a.headers["RateLimit-Policy"] for a in answers} == {'"key";q=3;w=60'}

        refused = second.get("/v1/job-types")
        assert refused.status_code == 429
        # One request every 20 s comes back; the whole quota in 60 s.
        assert 10 <= int(refused.headers["Retry-After"]) <= 20
        assert refused.headers["RateLimit-Policy"] == '"key";q=3;w=60'
        remaining, reset = _limit_fields(refused.headers["RateLimit"])
        assert remaining == 0
        assert 50 <= reset <= 60
        body = refused.json()
        assert body["code"] == "rate_limited"
        assert "'shop'" in body["detail"]
        assert "retry in" in body["detail"]


def _call_more_than_the_quota(client: Offload) -> None:
    for _ in range(4):
        client.job_types()


def test_the_client_gives_up_with_the_limit_fields_of_the_answer(limited: Cluster) -> None:
    # With no retry left the client raises the refusal as it came.
    with Offload(limited.services[0].extra["url"], SHOP, retries=0) as client, pytest.raises(RateLimited) as refused:
        _call_more_than_the_quota(client)
    error = refused.value
    assert error.code == "rate_limited"
    assert error.retry_after is not None
    assert error.retry_after > 0
    assert error.rate_limit_policy == '"key";q=3;w=60'
    assert error.rate_limit is not None
    assert error.rate_limit.startswith('"key";r=0;t=')


def test_other_keys_keep_their_own_limits(limited: Cluster) -> None:
    with api_client(limited.services[0], BULK) as bulk, api_client(limited.services[0], FREE) as free:
        answer = bulk.get("/v1/job-types")
        assert answer.status_code == 200
        assert answer.headers["RateLimit-Policy"] == '"default";q=1000;w=60'
        assert answer.headers["RateLimit"].startswith('"default";r=999;')
        unlimited = [free.get("/v1/job-types") for _ in range(5)]
        assert {a.status_code for a in unlimited} == {200}
        assert all("RateLimit" not in a.headers for a in unlimited)


def test_a_throttled_request_is_refused_before_its_body_is_read_and_counted_by_key_id(limited: Cluster) -> None:
    api = limited.services[0]
    with api_client(api, SHOP) as shop:
        while shop.get("/v1/job-types").status_code != 429:
            pass
    parts = urlsplit(api.extra["url"])
    started = time.monotonic()
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
        # A 10 MiB upload announced, none of it sent: the 429 comes from the headers alone.
        sock.sendall(
            b"POST /v1/jobs/echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + SHOP.encode() + b"\r\n"
            b"Content-Type: application/json\r\nContent-Length: 10485760\r\n\r\n"
        )
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 429"), answer[:200]
    assert b"retry-after:" in answer.lower()
    assert time.monotonic() - started < 5
    metrics = scrape(api.extra["metrics_url"])
    assert sample(metrics, "offload_api_requests_throttled_total", key_id="shop") >= 2
    assert SHOP not in str(metrics)


def test_without_redis_requests_go_through_unchecked() -> None:
    # A real client of a port nothing listens on: Redis is away.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = Settings(REDIS_URL=f"redis://127.0.0.1:{port}/0", REDIS_CONNECT_TIMEOUT_SECONDS=0.5)

    async def check_twice() -> float:
        client = async_redis_client(settings)
        limiter = RequestLimiter(RequestRate(1, 60), {})
        limiter.start(client)
        try:
            assert await limiter.check("shop") is None  # fail open: let through, counted
            started = time.monotonic()
            assert await limiter.check("shop") is None  # and not asked again at once
            return time.monotonic() - started
        finally:
            await client.aclose()

    assert asyncio.run(check_twice()) < 0.1
