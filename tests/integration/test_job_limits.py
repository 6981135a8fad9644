"""Limits of a job type across workers, on real Redis and two real worker processes: at most N
starts a second and M running at once, whichever worker runs them; every job succeeds exactly
once; the limits are shown in GET /v1/job-types and overridden by OFFLOAD_JOB_LIMITS; a slot
held by a worker that died frees when its lease ends, and a release wakes a waiter at once."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import redis

from offload_core.store.rate_limits import JobTypeLimiter
from offload_dev.polling import wait_for
from tests.sdk_user.limited_jobs import RUNS_KEY
from tests.support import TEST_SETTINGS, Cluster, cluster, sample, scrape, wait_job

RATE = 5  # declared by tests.limited
CONCURRENCY = 2  # OFFLOAD_JOB_LIMITS below, over the declared 3
JOBS = 20
HOLD_MS = 400
# Starts are granted by Redis; the handler reads its clock after the job store's start and the
# payload's validation, by a delay that varies from run to run (up to 42 ms measured on a busy
# 2-core machine). Windows are shorter by this much, so the test judges the limit, not that jitter.
START_JITTER_SECONDS = 0.1

LIMITED_ENV = {
    **TEST_SETTINGS,
    "OFFLOAD_JOB_MODULES": "tests.sdk_user.limited_jobs",
    "OFFLOAD_JOB_LIMITS": json.dumps({"tests.limited": {"concurrency": CONCURRENCY}}),
    "OFFLOAD_JOB_LIMIT_MAX_WAIT_SECONDS": "20",
    # The wait is inside a run's Celery time limit (10 s + 20 s), which the visibility timeout must exceed.
    "OFFLOAD_VISIBILITY_TIMEOUT_SECONDS": "60",
}


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster(tmp_path_factory.mktemp("limits"), LIMITED_ENV) as started:
        started.start_api()
        started.start_worker("worker-a", queues="default")
        started.start_worker("worker-b", queues="default")
        yield started


def test_the_limits_are_shown_with_the_deployments_override(two_workers: Cluster) -> None:
    listed = two_workers.client.get("/v1/job-types").json()["job_types"]
    limited = next(t for t in listed if t["name"] == "tests.limited")
    assert (limited["rate_limit"], limited["concurrency"]) == (RATE, CONCURRENCY)
    echo = next(t for t in listed if t["name"] == "offload.echo")
    assert (echo["rate_limit"], echo["concurrency"]) == (None, None)


def test_both_limits_hold_across_two_workers_and_every_job_runs_once(two_workers: Cluster) -> None:
    client = two_workers.client
    submitted = set()
    for _ in range(JOBS):
        answer = client.post("/v1/jobs/tests.limited", json={"payload": {"hold_ms": HOLD_MS}})
        assert answer.status_code == 202, answer.text
        submitted.add(answer.json()["id"])

    def all_succeeded() -> bool:
        return all(client.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded" for job_id in submitted)

    wait_for(all_succeeded, timeout=90, what="every limited job to succeed", interval=0.5)
    runs = [json.loads(run) for run in two_workers.redis.lrange(RUNS_KEY, 0, -1)]
    assert sorted(run["job_id"] for run in runs) == sorted(submitted)  # none lost, none twice
    assert len({run["worker"] for run in runs}) == 2, "both workers ran some: the limits are global"

    starts = sorted(run["started"] for run in runs)
    window = 1.0 - START_JITTER_SECONDS
    busiest = max(sum(1 for other in starts if start <= other < start + window) for start in starts)
    assert busiest <= RATE, f"{busiest} starts within one second: {starts}"
    most_running = max(sum(1 for run in runs if run["started"] <= start < run["ended"]) for start in starts)
    assert most_running <= CONCURRENCY
    # The limits were reached (the test proves something): runs overlapped, and jobs waited.
    assert most_running == CONCURRENCY
    throttled = sum(
        sample(scrape(worker.extra["metrics_url"]), "offload_jobs_throttled_total", task="tests.limited", limit=limit)
        for worker in two_workers.services[1:]
        for limit in ("rate", "concurrency")
    )
    assert throttled > 0


def test_a_limited_jobs_time_limit_counts_from_its_start_not_from_its_wait(two_workers: Cluster) -> None:
    # Celery's own limit of this type is 1 s + the longest wait (20 s); the handler's is 1 s.
    answer = two_workers.client.post("/v1/jobs/tests.limited_slow", json={"payload": {"hold_ms": 6000}})
    assert answer.status_code == 202, answer.text
    ended = wait_job(two_workers.client, answer.json()["id"], {"failed", "succeeded"}, timeout=30)
    assert ended["status"] == "failed"
    assert ended["error"] == "timed out after 1 s"
    ran = datetime.fromisoformat(ended["finished_at"]) - datetime.fromisoformat(ended["started_at"])
    assert ran.total_seconds() < 3


def _limiter(client: redis.Redis, lease_seconds: float) -> JobTypeLimiter:
    return JobTypeLimiter(
        client, "tests.slots", rate_limit=None, concurrency=1, lease_seconds=lease_seconds, block_seconds=2
    )


def test_a_dead_holders_slot_frees_when_its_lease_ends_and_a_release_wakes_a_waiter(tmp_path: Path) -> None:
    with cluster(tmp_path) as started:
        limiter = _limiter(started.redis, lease_seconds=1)
        assert limiter.acquire_slot("killed-job", time.monotonic() + 1)
        # Its worker died without releasing: the next job gets the slot once the lease ends.
        began = time.monotonic()
        assert limiter.acquire_slot("next-job", time.monotonic() + 5)
        assert 0.8 <= time.monotonic() - began < 2
        assert not limiter.acquire_slot("third-job", time.monotonic() + 0.2)  # held: refused in time

        long_lease = _limiter(started.redis, lease_seconds=30)
        assert long_lease.acquire_slot("holder", time.monotonic() + 5)
        woken: list[float] = []

        def wait_for_the_slot() -> None:
            if long_lease.acquire_slot("waiter", time.monotonic() + 10):
                woken.append(time.monotonic())

        waiter = threading.Thread(target=wait_for_the_slot)
        waiter.start()
        wait_for(
            lambda: any(c.get("cmd") == "blpop" for c in started.redis.client_list()),
            timeout=5,
            what="the waiter to block in Redis",
        )
        released = time.monotonic()
        long_lease.release_slot("holder")
        waiter.join(timeout=5)
        assert woken, "the waiter never got the slot"
        assert woken[0] - released < 0.5  # woken by the release, not by a poll or the lease


def test_a_job_that_waits_its_longest_goes_back_to_its_queue_and_still_runs_once(tmp_path: Path) -> None:
    env = {
        **TEST_SETTINGS,
        "OFFLOAD_JOB_MODULES": "tests.sdk_user.limited_jobs",
        "OFFLOAD_JOB_LIMITS": json.dumps({"tests.limited": {"concurrency": 1, "rate_limit": None}}),
        "OFFLOAD_JOB_LIMIT_MAX_WAIT_SECONDS": "1",
    }
    with cluster(tmp_path, env) as started:
        started.start_api()
        worker = started.start_worker("worker", queues="default")
        client = started.client
        submitted = [
            client.post("/v1/jobs/tests.limited", json={"payload": {"hold_ms": 1500}}).json()["id"] for _ in range(3)
        ]

        def all_succeeded() -> bool:
            return all(client.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded" for job_id in submitted)

        wait_for(all_succeeded, timeout=60, what="every job to succeed", interval=0.5)
        runs = [json.loads(run) for run in started.redis.lrange(RUNS_KEY, 0, -1)]
        assert sorted(run["job_id"] for run in runs) == sorted(submitted)
        ordered = sorted(runs, key=lambda run: run["started"])
        assert all(later["started"] >= earlier["ended"] for earlier, later in itertools.pairwise(ordered))
        metrics = scrape(worker.extra["metrics_url"])
        assert sample(metrics, "offload_jobs_limit_handed_back_total", task="tests.limited") >= 1
