"""Recurring schedules (/v1/schedules): ticks on an interval or a cron expression in a time
zone, each a normal job with `schedule_id`, fired by the workers' timekeepers exactly once per
tick, whichever are killed meanwhile; pause/resume; the misfire policy after all were down.
Real Redis, API and workers."""

from __future__ import annotations

import itertools
import json
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import redis

from offload_core.contract.topology import priority_lists
from offload_core.store.jobs import job_key
from offload_core.store.schedules import schedule_key
from offload_dev.polling import wait_for
from offload_dev.processes import Service
from tests.support import TEST_SETTINGS, Cluster, Stack, cluster, job, sample, scrape, wait_job


def _create(client: httpx.Client, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/schedules", json={"job_type": "offload.echo", "payload": {"message": "tick"}, **body})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def _fired(client: httpx.Client, schedule_id: str) -> list[dict[str, Any]]:
    page = client.get("/v1/jobs", params={"schedule_id": schedule_id, "limit": 200})
    assert page.status_code == 200, page.text
    jobs: list[dict[str, Any]] = page.json()["jobs"]
    return jobs


def _seconds(moment: str) -> float:
    return datetime.fromisoformat(moment).timestamp()


def test_an_interval_schedule_fires_jobs_that_carry_its_id_and_pauses_and_resumes(stack: Stack) -> None:
    created = _create(stack.client, interval_seconds=1)
    schedule_id = created["id"]
    ticks = [_seconds(t) for t in created["next_fire_times"]]
    assert len(ticks) == 3
    assert [round(b - a, 3) for a, b in itertools.pairwise(ticks)] == [1.0, 1.0]
    assert created["misfire"] == "skip"

    wait_for(lambda: len(_fired(stack.client, schedule_id)) >= 2, 30, "two ticks")
    done = wait_job(stack.client, _fired(stack.client, schedule_id)[-1]["id"], {"succeeded", "failed"})
    assert done["status"] == "succeeded"
    assert done["schedule_id"] == schedule_id
    assert done["result"]["message"] == "tick"
    fired_ticks = sum(
        sample(scrape(worker.extra["metrics_url"]), "offload_schedule_ticks_total", outcome="fired")
        for worker in (stack.worker, stack.notifier)
    )
    assert fired_ticks >= 2

    paused = stack.client.patch(f"/v1/schedules/{schedule_id}", json={"paused": True})
    assert paused.status_code == 200, paused.text
    assert paused.json()["paused"] is True
    assert paused.json()["next_fire_times"] == []
    count = len(_fired(stack.client, schedule_id))
    # Once this 2.5 s delayed job ran, at least two ticks' worth of time passed while paused.
    witness = stack.client.post("/v1/jobs/echo", json={"message": "w", "delay_seconds": 2.5}).json()["id"]
    assert wait_job(stack.client, witness, {"succeeded"})["status"] == "succeeded"
    assert len(_fired(stack.client, schedule_id)) == count

    resumed = stack.client.patch(f"/v1/schedules/{schedule_id}", json={"paused": False})
    assert resumed.json()["paused"] is False
    assert _seconds(resumed.json()["next_fire_times"][0]) > time.time() - 1
    wait_for(lambda: len(_fired(stack.client, schedule_id)) > count, 30, "a tick after resuming")
    shown = stack.client.get(f"/v1/schedules/{schedule_id}").json()
    assert shown["fires"] >= count + 1
    assert shown["last_job_id"]

    assert stack.client.delete(f"/v1/schedules/{schedule_id}").status_code == 204
    assert stack.client.get(f"/v1/schedules/{schedule_id}").status_code == 404
    assert job(stack.client, shown["last_job_id"])["schedule_id"] == schedule_id  # its jobs stay


def test_a_cron_schedule_shows_its_next_fire_times_in_its_time_zone(stack: Stack) -> None:
    created = _create(stack.client, cron="30 9 * * MON-FRI", timezone="America/New_York", misfire="run_once")
    local = [datetime.fromisoformat(t).astimezone(ZoneInfo("America/New_York")) for t in created["next_fire_times"]]
    assert len(local) == 3
    assert all((t.hour, t.minute, t.second) == (9, 30, 0) for t in local)
    assert all(t.weekday() < 5 for t in local)
    assert local == sorted(set(local))
    assert created["misfire"] == "run_once"
    listed = stack.client.get("/v1/schedules").json()["schedules"]
    assert created["id"] in [s["id"] for s in listed]
    assert stack.client.delete(f"/v1/schedules/{created['id']}").status_code == 204


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"job_type": "acme.nothing"}, "body.job_type"),
        ({"payload": {"message": "x", "sleep_ms": -1}}, "body.payload.sleep_ms"),
        ({"payload": {}}, "body.payload.message"),
        ({}, "body.cron"),  # neither cron nor interval
        ({"cron": "* * * * *", "interval_seconds": 60}, "body.cron"),
        ({"cron": "61 * * * *"}, "body.cron"),
        ({"cron": "* * * * *", "timezone": "Mars/Olympus"}, "body.timezone"),
        ({"interval_seconds": 0.5}, "body.interval_seconds"),
        ({"interval_seconds": 60, "misfire": "sometimes"}, "body.misfire"),
        ({"interval_seconds": 60, "queue": "nowhere"}, "body.queue"),
    ],
)
def test_a_bad_schedule_is_refused_naming_the_field(stack: Stack, body: dict[str, Any], field: str) -> None:
    response = stack.client.post(
        "/v1/schedules", json={"job_type": "offload.echo", "payload": {"message": "x"}, **body}
    )
    assert response.status_code == 422, response.text
    assert field in [error["field"] for error in response.json()["errors"]], response.text


# --- exactly once per tick, with the loops killed ------------------------------------------

GRACE = 1.5
ENV = {
    **TEST_SETTINGS,
    "OFFLOAD_WORKER_CONCURRENCY": "1",
    "OFFLOAD_TIMEKEEPER_POLL_SECONDS": "0.1",
    "OFFLOAD_SCHEDULE_MISFIRE_GRACE_SECONDS": str(GRACE),
}
LOOPS = 3


@pytest.fixture
def own(tmp_path: Path) -> Iterator[Cluster]:
    with cluster(tmp_path, ENV) as started:
        started.start_api()
        yield started


def _ticks(direct: redis.Redis, schedule_id: str) -> Counter[float]:
    """The tick of every message a schedule's jobs put on `low` (no worker consumes it here)."""
    ticks: Counter[float] = Counter()
    for name in priority_lists("low"):
        for raw in direct.lrange(name, 0, -1):
            job_id = json.loads(raw)["headers"]["id"]
            record = direct.hgetall(job_key(job_id))
            if record.get("schedule_id") == schedule_id:
                ticks[round(float(record["scheduled_for"]), 3)] += 1
    return ticks


def _job_ids(direct: redis.Redis, schedule_id: str) -> list[str]:
    return [
        job_id
        for name in priority_lists("low")
        for raw in direct.lrange(name, 0, -1)
        if direct.hget(job_key(job_id := json.loads(raw)["headers"]["id"]), "schedule_id") == schedule_id
    ]


def _restart(own: Cluster, workers: list[Service], index: int) -> None:
    workers[index].kill()
    (workers[index].extra["state_dir"] / "ready").unlink()  # left behind by the kill
    workers[index] = own.start_worker(f"loop{index}", queues="default")


@pytest.mark.slow
def test_a_repeated_create_with_its_idempotency_key_makes_one_schedule(stack: Stack) -> None:
    """A create retried after a lost answer gets the first schedule back (200, Idempotent-Replayed),
    never a second one firing the same job; the key with another body is 422."""
    body = {"job_type": "offload.echo", "payload": {"message": "once"}, "cron": "0 3 * * *", "paused": True}
    headers = {"Idempotency-Key": "nightly-report-schedule"}
    first = stack.client.post("/v1/schedules", json=body, headers=headers)
    again = stack.client.post("/v1/schedules", json=body, headers=headers)
    other = stack.client.post("/v1/schedules", json={**body, "cron": "0 4 * * *"}, headers=headers)

    assert first.status_code == 201, first.text
    assert again.status_code == 200, again.text
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert other.status_code == 422, other.text
    assert "Idempotency-Key" in other.json()["detail"]
    listed = stack.client.get("/v1/schedules").json()["schedules"]
    assert [s["id"] for s in listed if s["payload"].get("message") == "once"] == [first.json()["id"]]


def test_each_tick_fires_once_while_loops_are_killed_and_the_misfire_policy_applies_after_all_were_down(
    own: Cluster,
) -> None:
    # The workers consume `default` only: the jobs the ticks make stay on `low` to be counted.
    workers = [own.start_worker(f"loop{n}", queues="default") for n in range(LOOPS)]
    every_second = _create(own.client, interval_seconds=1, queue="low")
    skipping = _create(own.client, interval_seconds=1, queue="low", misfire="skip")
    once = _create(own.client, interval_seconds=1, queue="low", misfire="run_once")
    first_tick = _seconds(every_second["next_fire_times"][0])

    for index in range(LOOPS):  # each loop killed (SIGKILL) and started again in turn
        _restart(own, workers, index)
    all_alive_until = time.time()

    # Every tick while at least one loop ran fired exactly once: none twice, none missing.
    wait_for(lambda: time.time() > all_alive_until + 1.5, 5, "a tick after the last restart")
    ticks = _ticks(own.redis, every_second["id"])
    assert set(ticks.values()) == {1}, ticks
    expected = [round(first_tick + n, 3) for n in range(int(all_alive_until - first_tick) + 1)]
    assert [t for t in expected if t not in ticks] == [], sorted(ticks)
    assert len(ticks) >= 5

    # All loops down for several ticks, then one back: `skip` fires none of the missed ticks,
    # `run_once` one job for all of them; both go on from the next tick after that.
    for worker in workers:
        worker.kill()
    down_at = time.time()
    wait_for(lambda: time.time() > down_at + GRACE + 3, 10, "ticks to be missed")
    (workers[0].extra["state_dir"] / "ready").unlink()
    workers[0] = own.start_worker("loop0", queues="default")
    back_at = time.time()

    def late_after_down(schedule_id: str) -> list[float]:
        """Ticks since about when the loops went down whose job was made later than the grace
        after them (a tick that fell while the last loop was being killed counts too)."""
        late = []
        for job_id in _job_ids(own.redis, schedule_id):
            record = own.redis.hgetall(job_key(job_id))
            tick = float(record["scheduled_for"])
            if tick > down_at - 1 and float(record["created_at"]) - tick > GRACE:
                late.append(tick)
        return late

    def fired_since_back(schedule_id: str) -> bool:
        return any(t > back_at for t in _ticks(own.redis, schedule_id))

    wait_for(lambda: fired_since_back(skipping["id"]) and fired_since_back(once["id"]), 15, "both to fire again")
    assert late_after_down(skipping["id"]) == []
    assert len(late_after_down(once["id"])) == 1
    for schedule in (skipping, once):
        assert set(_ticks(own.redis, schedule["id"]).values()) == {1}
        assert float(own.redis.hget(schedule_key(schedule["id"]), "next_fire") or 0) > back_at
    # The ticks due while no loop ran made no job of their own.
    missed = [t for t in _ticks(own.redis, skipping["id"]) if down_at + 1 < t < back_at - GRACE - 1]
    assert missed == [], missed
