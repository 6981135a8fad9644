"""Redis at its maxmemory (policy noeviction, as the chart runs it) refuses writes: the API answers
503 with code redis_full and Retry-After instead of 500, and every job accepted before is kept
and runs once memory frees, by a worker that could not start consuming while Redis was full."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from offload_dev.polling import wait_for
from tests.support import Cluster, cluster, submit_echo, wait_job

# Small enough to fill in a moment, large enough for Redis, the API and a worker to start.
SMALL_MAXMEMORY = "8mb"
BALLAST = "offload-test:ballast:{}"


@pytest.fixture
def small_redis(tmp_path: Path) -> Iterator[Cluster]:
    """A Redis with a small maxmemory and noeviction, and the API on it (no worker yet)."""
    with cluster(tmp_path, redis_maxmemory=SMALL_MAXMEMORY) as own:
        own.start_api()
        yield own


def fill(direct: redis.Redis) -> int:
    """Writes ballast until Redis refuses a write for want of memory; returns the keys written."""
    written = 0
    for size in (64 * 1024, 4 * 1024, 256):
        while True:
            try:
                direct.set(BALLAST.format(written), b"x" * size)
            except redis.exceptions.OutOfMemoryError:
                break
            written += 1
    return written


def submit_until_full(client: httpx.Client, accepted: list[str], attempts: int = 500) -> httpx.Response:
    """Submits echo jobs until one is refused; the accepted ones are appended to ``accepted``."""
    for index in range(attempts):
        response = client.post("/v1/jobs/echo", json={"message": f"late {index}"})
        if response.status_code != 202:
            return response
        accepted.append(response.json()["id"])
    pytest.fail(f"Redis never refused a submission in {attempts} attempts")


def test_a_full_redis_refuses_new_jobs_with_503_and_keeps_every_accepted_one(small_redis: Cluster) -> None:
    client = small_redis.client
    accepted = [submit_echo(client, message=f"early {n}") for n in range(5)]
    assert fill(small_redis.redis) > 0

    refused = submit_until_full(client, accepted)
    assert refused.status_code == 503, refused.text
    assert refused.headers["Retry-After"] == "30"
    body = refused.json()
    assert body["code"] == "redis_full"
    assert "is full" in body["detail"]
    assert "maxmemory" in body["detail"]
    assert "nothing was accepted" in body["detail"]
    # Still full: the next submission is refused the same way, not accepted half-way.
    again = client.post("/v1/jobs/echo", json={"message": "again"})
    assert (again.status_code, again.json()["code"]) == (503, "redis_full")

    # Every job accepted before (or while filling) is still there and readable.
    for job_id in accepted:
        record = client.get(f"/v1/jobs/{job_id}")
        assert record.status_code == 200, record.text
        assert record.json()["status"] == "queued"
    assert client.get("/v1/queues").json()["queues"][1] == {
        "name": "default",
        "depth": len(accepted),
        "consumers": 0,
        "oldest_age_seconds": pytest.approx(0, abs=60),
        "dead_letters": 0,
    }

    # A worker that starts while Redis is full cannot begin consuming (its consumer setup
    # writes to Redis); once memory frees (the ballast goes) it does, and every accepted job runs.
    refused_worker = threading.Event()
    freeing = threading.Thread(target=free_once_the_worker_is_refused, args=(small_redis, refused_worker))
    freeing.start()
    try:
        small_redis.start_worker("worker")
    finally:
        freeing.join()
    assert refused_worker.is_set(), "the worker never met the full Redis"
    for job_id in accepted:
        assert wait_job(client, job_id, {"succeeded", "failed"})["status"] == "succeeded"
    later = submit_echo(client, message="after")
    assert wait_job(client, later, {"succeeded", "failed"})["status"] == "succeeded"


def free_once_the_worker_is_refused(own: Cluster, refused: threading.Event) -> None:
    """Deletes the ballast as soon as the worker's log shows Redis refusing it for want of memory
    (or after the deadline, so the test fails on the assertion rather than hanging)."""
    log = own.log_dir / "worker.log"

    def worker_refused() -> bool:
        return log.exists() and "maxmemory" in log.read_text(errors="replace")

    with contextlib.suppress(TimeoutError):
        wait_for(worker_refused, 30, "the worker to meet the full Redis")
        refused.set()
    ballast = list(own.redis.scan_iter(BALLAST.format("*"), count=1000))
    for start in range(0, len(ballast), 500):
        own.redis.delete(*ballast[start : start + 500])
