"""Delayed jobs (`run_at` / `delay_seconds`): `scheduled` until due, published by the workers'
timekeepers within a second of their time, exactly once however many timekeepers run and
whichever are killed meanwhile; cancellable before they run. Real Redis, API and workers."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from offload_core.contract.topology import priority_lists
from offload_core.store.jobs import SCHEDULED_KEY, job_key
from offload_dev.polling import wait_for
from tests.support import TEST_SETTINGS, Cluster, Stack, cluster, job, sample, scrape, wait_job

# A due job is published within this long of its time (the timekeepers poll every 0.2 s).
PUBLISH_BOUND = 1.0


@pytest.fixture
def stack_redis(stack: Stack) -> Iterator[redis.Redis]:
    direct = redis.Redis.from_url(stack.env["OFFLOAD_REDIS_URL"], decode_responses=True)
    yield direct
    direct.close()


def _published_at(direct: redis.Redis, job_id: str) -> float:
    return float(direct.hget(job_key(job_id), "published_at") or "nan")


def _seconds(moment: str) -> float:
    return datetime.fromisoformat(moment).timestamp()


def test_a_delayed_job_is_scheduled_then_runs_within_a_second_of_its_time(
    stack: Stack, stack_redis: redis.Redis
) -> None:
    response = stack.client.post("/v1/jobs/echo", json={"message": "later", "delay_seconds": 2})
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["status"] == "scheduled"
    run_at = _seconds(accepted["run_at"])

    shown = job(stack.client, accepted["id"])
    assert shown["status"] == "scheduled"
    assert _seconds(shown["run_at"]) == pytest.approx(run_at, abs=0.001)
    listed = stack.client.get("/v1/jobs", params={"status": "scheduled"}).json()["jobs"]
    assert accepted["id"] in [j["id"] for j in listed]
    assert all(j["status"] == "scheduled" for j in listed)

    done = wait_job(stack.client, accepted["id"], {"succeeded", "failed"})
    assert done["status"] == "succeeded", done
    assert done["result"]["message"] == "later"
    assert _seconds(done["started_at"]) >= run_at
    assert run_at <= _published_at(stack_redis, accepted["id"]) < run_at + PUBLISH_BOUND
    published = sum(
        sample(scrape(worker.extra["metrics_url"]), "offload_delayed_jobs_published_total")
        for worker in (stack.worker, stack.notifier)
    )
    assert published >= 1
    assert "offload_jobs_scheduled" in httpx.get(stack.api.extra["metrics_url"]).text


def test_every_submit_route_takes_a_start_time(stack: Stack) -> None:
    soon = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
    generic = stack.client.post("/v1/jobs/offload.echo", json={"payload": {"message": "at"}, "run_at": soon})
    assert generic.status_code == 202, generic.text
    assert generic.json()["status"] == "scheduled"
    assert _seconds(generic.json()["run_at"]) == pytest.approx(_seconds(soon), abs=0.001)
    done = wait_job(stack.client, generic.json()["id"], {"succeeded", "failed"})
    assert done["status"] == "succeeded"
    assert _seconds(done["started_at"]) >= _seconds(soon)


def test_a_time_already_past_runs_now(stack: Stack) -> None:
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    response = stack.client.post("/v1/jobs/echo", json={"message": "past", "run_at": past})
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "queued"
    assert response.json()["run_at"] is None
    assert wait_job(stack.client, response.json()["id"], {"succeeded", "failed"})["status"] == "succeeded"


def test_a_repeat_with_its_idempotency_key_matches_on_the_start_time_asked_for(stack: Stack) -> None:
    """The same delay sent again is a retry (the first job back, though its computed time has
    moved on); another start time under the same key is another request, 422."""
    body = {"payload": {"message": "later"}, "delay_seconds": 600}
    headers = {"Idempotency-Key": "delayed-once"}
    first = stack.client.post("/v1/jobs/offload.echo", json=body, headers=headers)
    again = stack.client.post("/v1/jobs/offload.echo", json=body, headers=headers)
    other = stack.client.post("/v1/jobs/offload.echo", json={**body, "delay_seconds": 60}, headers=headers)

    assert first.status_code == 202, first.text
    assert (again.status_code, again.json()["id"]) == (200, first.json()["id"])
    assert other.status_code == 422, other.text


def test_a_delayed_job_cancelled_before_its_time_never_runs(stack: Stack, stack_redis: redis.Redis) -> None:
    cancelled = stack.client.post("/v1/jobs/echo", json={"message": "never", "delay_seconds": 1}).json()["id"]
    # Due after the cancelled one: once it ran, the cancelled one's time has passed too.
    witness = stack.client.post("/v1/jobs/echo", json={"message": "witness", "delay_seconds": 1.5}).json()["id"]
    response = stack.client.delete(f"/v1/jobs/{cancelled}")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"
    assert stack_redis.zscore(SCHEDULED_KEY, cancelled) is None

    assert wait_job(stack.client, witness, {"succeeded", "failed"})["status"] == "succeeded"
    after = job(stack.client, cancelled)
    assert after["status"] == "cancelled"
    assert after["started_at"] is None
    assert after["attempts"] == 0
    assert stack.client.delete(f"/v1/jobs/{cancelled}").status_code == 409


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"run_at": "2030-01-01T00:00:00Z", "delay_seconds": 5}, "body.delay_seconds"),
        ({"run_at": "2030-01-01T00:00:00"}, "body.run_at"),  # no time zone
        ({"run_at": "next tuesday"}, "body.run_at"),
        ({"delay_seconds": -1}, "body.delay_seconds"),
        ({"delay_seconds": 400 * 24 * 3600}, "body.delay_seconds"),  # past OFFLOAD_DELAY_MAX_SECONDS
        ({"run_at": "2999-01-01T00:00:00+02:00"}, "body.run_at"),
    ],
)
def test_a_bad_start_time_is_refused_naming_the_field(stack: Stack, body: dict[str, Any], field: str) -> None:
    for path, base in (("/v1/jobs/echo", {"message": "x"}), ("/v1/jobs/offload.echo", {"payload": {"message": "x"}})):
        response = stack.client.post(path, json={**base, **body})
        assert response.status_code == 422, response.text
        assert field in [error["field"] for error in response.json()["errors"]], response.text


# --- exactly once, with timekeepers killed -------------------------------------------------

ENV = {**TEST_SETTINGS, "OFFLOAD_WORKER_CONCURRENCY": "1"}
TIMEKEEPERS = 3
JOBS = 60
SPREAD_SECONDS = 8.0


@pytest.fixture
def own(tmp_path: Path) -> Iterator[Cluster]:
    with cluster(tmp_path, ENV) as started:
        started.start_api()
        yield started


def _messages_per_job(direct: redis.Redis, queue: str) -> Counter[str]:
    return Counter(
        json.loads(raw)["headers"]["id"] for name in priority_lists(queue) for raw in direct.lrange(name, 0, -1)
    )


@pytest.mark.slow
def test_each_delayed_job_is_published_exactly_once_while_timekeepers_are_killed_and_restarted(own: Cluster) -> None:
    # The workers consume `default` only: what they publish onto `low` stays there to be counted.
    workers = [own.start_worker(f"keeper{n}", queues="default") for n in range(TIMEKEEPERS)]
    start = time.time() + 2.0
    ids = []
    for n in range(JOBS):
        run_at = datetime.fromtimestamp(start + SPREAD_SECONDS * n / JOBS, UTC).isoformat()
        response = own.client.post("/v1/jobs/echo", json={"message": str(n), "queue": "low", "run_at": run_at})
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])

    # Kill each timekeeper in turn (SIGKILL, mid-round or not) and start it again, while jobs fall due.
    for index in range(TIMEKEEPERS):
        workers[index].kill()
        (workers[index].extra["state_dir"] / "ready").unlink()  # left behind by the kill
        workers[index] = own.start_worker(f"keeper{index}", queues="default")

    wait_for(lambda: own.redis.zcard(SCHEDULED_KEY) == 0, SPREAD_SECONDS + 30, "every delayed job to be published")
    published = _messages_per_job(own.redis, "low")
    assert {job_id: published[job_id] for job_id in ids} == dict.fromkeys(ids, 1)
    lags = []
    for job_id in ids:
        record = own.redis.hgetall(job_key(job_id))
        assert record["status"] == "queued"
        lags.append(float(record["published_at"]) - float(record["run_at"]))
    # At least two timekeepers were alive at every moment: none was late.
    assert min(lags) >= 0
    assert max(lags) < PUBLISH_BOUND, sorted(lags)[-5:]
