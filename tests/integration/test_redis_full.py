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


# The API's own headroom off: these tests reach the point where Redis itself refuses writes.
NO_HEADROOM = {"OFFLOAD_REDIS_SUBMIT_MEMORY_RATIO": "1"}


@pytest.fixture
def small_redis(tmp_path: Path) -> Iterator[Cluster]:
    """A Redis with a small maxmemory and noeviction, and the API on it (no worker yet)."""
    with cluster(tmp_path, redis_maxmemory=SMALL_MAXMEMORY) as own:
        own.start_api(env=NO_HEADROOM)
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


def keep_full(direct: redis.Redis) -> None:
    """Lowers maxmemory just below what Redis uses: at the exact limit a refused write frees its
    buffers and lets the next small one in, which would make the checks below a matter of luck."""
    used = int(direct.info("memory")["used_memory"])
    direct.config_set("maxmemory", str(used - 256 * 1024))


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
    keep_full(small_redis.redis)
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


def test_running_and_queued_jobs_wait_out_a_full_redis_and_all_succeed(tmp_path: Path) -> None:
    """A worker already consuming when Redis fills cannot record its jobs' outcomes; none of them
    is lost or failed for it, and all finish once memory frees."""
    with cluster(tmp_path, redis_maxmemory=SMALL_MAXMEMORY) as own:
        own.start_worker("worker")
        own.start_api(env=NO_HEADROOM)
        client = own.client
        running = [submit_echo(client, message="long", sleep_ms=2000) for _ in range(2)]
        wait_for(
            lambda: all(client.get(f"/v1/jobs/{job_id}").json()["status"] == "started" for job_id in running),
            15,
            "the long jobs to start",
        )
        queued = [submit_echo(client, message=f"queued {n}") for n in range(4)]
        fill(own.redis)
        keep_full(own.redis)
        log = own.log_dir / "worker.log"
        wait_for(lambda: "maxmemory" in log.read_text(errors="replace"), 30, "the worker to meet the full Redis")
        statuses = {job_id: client.get(f"/v1/jobs/{job_id}").json()["status"] for job_id in running + queued}
        # A run whose outcome could not be recorded is retried, never failed or dropped.
        assert set(statuses.values()) <= {"queued", "started", "retrying"}, statuses

        ballast = list(own.redis.scan_iter(BALLAST.format("*"), count=1000))
        for start in range(0, len(ballast), 500):
            own.redis.delete(*ballast[start : start + 500])
        for job_id in running + queued:
            assert wait_job(client, job_id, {"succeeded", "failed"}, timeout=60)["status"] == "succeeded"


def test_the_api_keeps_headroom_so_workers_can_start_and_drain(tmp_path: Path) -> None:
    """Past OFFLOAD_REDIS_SUBMIT_MEMORY_RATIO of maxmemory the API refuses new jobs while Redis
    still takes writes: a worker starting then can consume and drain the queue. The ratio is
    lower than the default 0.95 here: 5 % of an 8 MB Redis is less than a worker's connections
    take, 5 % of a production one (hundreds of MB) is not."""
    with cluster(tmp_path, redis_maxmemory=SMALL_MAXMEMORY) as own:
        own.start_api(env={"OFFLOAD_REDIS_SUBMIT_MEMORY_RATIO": "0.7"})
        client = own.client
        accepted = [submit_echo(client, message=f"early {n}") for n in range(5)]
        fill(own.redis)
        # Redis at 80 % of a raised maxmemory: it takes writes, the API no longer takes jobs.
        used = int(own.redis.info("memory")["used_memory"])
        own.redis.config_set("maxmemory", str(int(used / 0.8)))

        def refused() -> httpx.Response | None:
            response = client.post("/v1/jobs/echo", json={"message": "late"})
            if response.status_code == 202:
                accepted.append(response.json()["id"])
                return None
            return response

        response = wait_for(refused, 10, "the API to refuse a job past the memory ratio")
        assert response.status_code == 503, response.text
        assert response.json()["code"] == "redis_full"
        assert "OFFLOAD_REDIS_SUBMIT_MEMORY_RATIO" in response.json()["detail"]
        assert response.headers["Retry-After"] == "30"

        own.start_worker("worker")  # would wait forever in a Redis that refuses its writes
        for job_id in accepted:
            assert wait_job(client, job_id, {"succeeded", "failed"})["status"] == "succeeded"
