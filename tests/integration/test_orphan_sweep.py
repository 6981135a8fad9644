"""An accepted job whose broker message Redis lost is published again by the workers' orphan
sweep, and runs once; a job whose message is still waiting on a list, or held by a worker, is
left alone. Real Redis, API and worker processes with a short grace and sweep interval."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from offload_core.contract.api_keys import parse_api_key
from offload_core.contract.topology import priority_lists
from offload_core.runtime.celery_app import create_celery_app, job_signature, send_jobs
from offload_core.runtime.orphans import UNACKED_KEY, OrphanSweep
from offload_core.settings import Settings
from offload_core.store.dead_letters import DeadLetters
from offload_core.store.jobs import WAITING_KEY, JobStore
from offload_dev.polling import wait_for
from offload_dev.processes import Service, start_redis
from tests.support import API_KEY, TEST_SETTINGS, Cluster, cluster, sample, scrape, submit_echo, wait_job

pytestmark = pytest.mark.slow

SWEEP_INTERVAL = 0.5
GRACE = 4.0
RECOVERED = "offload_jobs_recovered_total"

ENV = {
    **TEST_SETTINGS,
    "OFFLOAD_ORPHAN_SWEEP_INTERVAL_SECONDS": str(SWEEP_INTERVAL),
    "OFFLOAD_ORPHAN_GRACE_SECONDS": str(GRACE),
    # The grace must exceed the longest publish: (0 + 1) x (1 + 2) s here.
    "OFFLOAD_PUBLISH_MAX_RETRIES": "0",
    "OFFLOAD_BROKER_CONNECT_TIMEOUT_SECONDS": "1",
    "OFFLOAD_BROKER_SOCKET_TIMEOUT_SECONDS": "2",
    # Room for a job that runs while the sweeps look at the one a worker holds.
    "OFFLOAD_TASK_SOFT_TIME_LIMIT_SECONDS": "20",
    "OFFLOAD_TASK_TIME_LIMIT_SECONDS": "25",
    "OFFLOAD_VISIBILITY_TIMEOUT_SECONDS": "40",
    "OFFLOAD_WORKER_CONCURRENCY": "1",
}


@pytest.fixture
def own(tmp_path: Path) -> Iterator[Cluster]:
    with cluster(tmp_path, ENV) as started:
        started.start_api()
        yield started


def _listed(direct: redis.Redis, queue: str, job_id: str) -> list[tuple[str, str]]:
    """(list name, raw message) of every message of the job on the queue's lists."""
    return [
        (name, str(raw))
        for name in priority_lists(queue)
        for raw in direct.lrange(name, 0, -1)
        if json.loads(raw)["headers"]["id"] == job_id
    ]


def _held(direct: redis.Redis, job_id: str) -> int:
    """How many messages of the job workers hold (kombu's unacked hash)."""
    return sum(json.loads(raw)[0]["headers"]["id"] == job_id for raw in direct.hvals(UNACKED_KEY))


def _recovered(worker: Service, queue: str) -> float:
    return sample(scrape(worker.extra["metrics_url"]), RECOVERED, task="offload.echo", queue=queue)


def test_a_job_whose_message_was_lost_is_published_again_and_runs_once(own: Cluster) -> None:
    client, direct = own.client, own.redis
    lost = submit_echo(client, message="lost")
    # No worker consumes `low` in this test: its job's message stays on the list throughout.
    backlog = submit_echo(client, message="backlog", queue="low")
    [(name, raw)] = _listed(direct, "default", lost)
    assert direct.lrem(name, 1, raw) == 1  # what a Redis restart between BRPOP and the unacked write leaves
    assert _listed(direct, "default", lost) == []
    assert _held(direct, lost) == 0

    worker = own.start_worker("sweeper", queues="default")
    done = wait_job(client, lost, {"succeeded", "failed"}, timeout=GRACE + 4 * SWEEP_INTERVAL + 20)
    assert (done["status"], done["attempts"], done["worker"]) == ("succeeded", 1, "sweeper@test"), done
    assert done["result"] == {"message": "lost", "attempts": 1, "worker": "sweeper@test"}
    assert _recovered(worker, "default") == 1
    log = worker.log.read_text()
    assert f"job {lost} (offload.echo on default) was queued but its broker message was lost" in log

    # The backlog job is past its grace too; a few more sweeps must leave its one message alone.
    deadline = time.monotonic() + 6 * SWEEP_INTERVAL
    while time.monotonic() < deadline:  # a negative check needs time to pass: several sweeps
        assert len(_listed(direct, "low", backlog)) == 1
        time.sleep(SWEEP_INTERVAL / 2)
    assert _recovered(worker, "low") == 0
    assert wait_job(client, backlog, {"queued"})["attempts"] == 0
    assert f"job {backlog}" not in worker.log.read_text()
    # The lost job ran once: nothing of it is left to run again.
    assert _listed(direct, "default", lost) == []
    assert _held(direct, lost) == 0


def test_a_job_a_worker_holds_is_not_published_again(own: Cluster) -> None:
    client, direct = own.client, own.redis
    # One process that reserves a second message while it runs the first one.
    worker = own.start_worker("holder", queues="default", env={"OFFLOAD_WORKER_PREFETCH_MULTIPLIER": "2"})
    running = submit_echo(client, message="long", sleep_ms=int((GRACE + 8 * SWEEP_INTERVAL + 2) * 1000))
    wait_job(client, running, {"started"})
    held = submit_echo(client, message="held")
    accepted_at = time.time()
    wait_for(lambda: _held(direct, held) == 1, 10, "the worker to reserve the second job")

    # Past the grace, sweeps look at it while it waits in the worker's hands.
    deadline = accepted_at + GRACE + 6 * SWEEP_INTERVAL
    while time.time() < deadline:  # a negative check needs time to pass: several sweeps
        assert _held(direct, held) == 1
        assert _listed(direct, "default", held) == []
        assert job_status(client, held) == "queued"
        time.sleep(SWEEP_INTERVAL / 2)

    done = wait_job(client, held, {"succeeded", "failed"}, timeout=30)
    assert (done["status"], done["attempts"]) == ("succeeded", 1), done
    assert _recovered(worker, "default") == 0
    assert "broker message was lost" not in worker.log.read_text()


def job_status(client: httpx.Client, job_id: str) -> str:
    status: str = client.get(f"/v1/jobs/{job_id}").json()["status"]
    return status


# --- the sweep's rules, one sweep at a time, against a real Redis and no worker ----------------


@pytest.fixture
def sweeper(tmp_path: Path) -> Iterator[OrphanSweep]:
    server = start_redis(tmp_path / "redis")
    settings = Settings.model_validate(
        {k.removeprefix("OFFLOAD_"): v for k, v in ENV.items() if k.startswith("OFFLOAD_")} | {"REDIS_URL": server.url}
    )
    app = create_celery_app(settings)
    store = JobStore.from_settings(settings)
    try:
        yield OrphanSweep(app, store, settings, owner="test@sweeper")
    finally:
        store.client.close()
        app.close()
        server.stop()


def _accepted_long_ago(sweep: OrphanSweep, job_id: str) -> None:
    """A job the API accepted past the grace; its message is on no list and held by no worker."""
    sweep.store.create(job_id, task="offload.echo", queue="default", kwargs={"message": job_id}, priority=6)
    _waited_past_the_grace(sweep, job_id)


def _waited_past_the_grace(sweep: OrphanSweep, job_id: str) -> None:
    sweep.client.zadd(WAITING_KEY, {job_id: time.time() - GRACE - 60})


def _messages(sweep: OrphanSweep, job_id: str) -> list[tuple[str, dict[str, Any]]]:
    return [(name, message) for name, raw in _listed(sweep.client, "default", job_id) for message in [json.loads(raw)]]


def _lose_its_message(sweep: OrphanSweep, job_id: str) -> None:
    for name, raw in _listed(sweep.client, "default", job_id):
        sweep.client.lrem(name, 1, raw)


def test_a_lost_message_is_published_again_only_when_missing_in_two_sweeps_in_a_row(sweeper: OrphanSweep) -> None:
    _accepted_long_ago(sweeper, "lost1")
    assert sweeper.sweep() == []  # seen missing once: it may be between a list and a worker
    assert _messages(sweeper, "lost1") == []

    assert sweeper.sweep() == ["lost1"]
    [(name, message)] = _messages(sweeper, "lost1")
    assert name == priority_lists("default")[2]  # priority 6, as accepted
    assert message["headers"]["id"] == "lost1"
    assert message["properties"]["priority"] == 6
    args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
    assert (args, kwargs) == ([], {"message": "lost1"})
    assert sweeper.store.get("lost1").status == "queued"  # type: ignore[union-attr]
    assert sweeper.sweep() == []  # its message is there again: nothing more to do


def test_a_message_seen_in_between_sightings_restarts_the_count(sweeper: OrphanSweep) -> None:
    _accepted_long_ago(sweeper, "moving")
    assert sweeper.sweep() == []
    # The next sweep finds it in a worker's hands (a message caught between a list and the hash).
    held = json.dumps([{"headers": {"id": "moving"}}, "offload", "default"])
    sweeper.client.hset(UNACKED_KEY, "tag-1", held)
    assert sweeper.sweep() == []
    sweeper.client.hdel(UNACKED_KEY, "tag-1")
    assert sweeper.sweep() == []  # missing again, but only once in a row
    assert _messages(sweeper, "moving") == []
    assert sweeper.sweep() == ["moving"]


def test_the_fourth_loss_fails_the_job_and_makes_a_dead_letter(sweeper: OrphanSweep) -> None:
    _accepted_long_ago(sweeper, "cursed")
    for loss in range(1, 4):
        assert sweeper.sweep() == []
        assert sweeper.sweep() == ["cursed"], f"loss {loss}"
        _lose_its_message(sweeper, "cursed")
        _waited_past_the_grace(sweeper, "cursed")  # a recovery restarts its wait

    assert sweeper.sweep() == []
    assert sweeper.sweep() == []  # the fourth time: failed, not published
    assert _messages(sweeper, "cursed") == []
    job = sweeper.store.get("cursed")
    assert job is not None
    assert (job.status, job.error) == ("failed", "its broker message was lost 4 times; no worker ever took it")
    letter = DeadLetters(sweeper.client, 600).get("cursed")
    assert letter is not None
    assert (letter.task, letter.queue, letter.payload) == ("offload.echo", "default", {"message": "cursed"})
    assert sweeper.client.zscore(WAITING_KEY, "cursed") is None


def _drop_held(direct: redis.Redis, job_id: str) -> None:
    """Remove the job's messages from kombu's unacked hash and index: what a Redis that lost them leaves."""
    for tag, raw in direct.hgetall(UNACKED_KEY).items():
        if json.loads(raw)[0]["headers"]["id"] == job_id:
            direct.hdel(UNACKED_KEY, tag)
            direct.zrem(f"{UNACKED_KEY}_index", tag)


def test_a_retry_whose_message_was_lost_is_published_again(own: Cluster) -> None:
    client, direct = own.client, own.redis
    # A retry due in 5 s, held meanwhile by the worker that published it (Redis has no delayed delivery).
    env = {"OFFLOAD_RETRY_BACKOFF_SECONDS": "10", "OFFLOAD_RETRY_BACKOFF_MAX_SECONDS": "5"}
    first = own.start_worker("first", queues="default", env=env)
    flaky = submit_echo(client, message="flaky", fail_times=1)
    wait_job(client, flaky, {"retrying"})
    wait_for(lambda: _held(direct, flaky) == 1, 10, "the worker to hold the retry until it is due")
    first.kill()  # the worker and the retry it held are gone...
    _drop_held(direct, flaky)  # ...and so is its message, as after a Redis restart that lost it
    assert _listed(direct, "default", flaky) == []

    sweeper = own.start_worker("sweeper", queues="default", env=env)
    done = wait_job(client, flaky, {"succeeded", "failed"}, timeout=5 + GRACE + 4 * SWEEP_INTERVAL + 20)
    # Published again as the retry it was: the second attempt, which succeeds.
    assert (done["status"], done["worker"]) == ("succeeded", "sweeper@test"), done
    assert done["result"] == {"message": "flaky", "attempts": 2, "worker": "sweeper@test"}
    assert _recovered(sweeper, "default") == 1
    assert (
        f"job {flaky} (offload.echo on default) was queued but its broker message was lost" in sweeper.log.read_text()
    )


def test_a_chain_step_published_after_a_skipped_step_is_recovered(own: Cluster) -> None:
    client, direct = own.client, own.redis
    settings = Settings(REDIS_URL=own.env["OFFLOAD_REDIS_URL"])
    store = JobStore(direct, ttl_seconds=600)
    steps = [("skipped", "default"), ("after", "low")]
    ids = [uuid.uuid4().hex for _ in steps]
    for index, ((message, queue), job_id) in enumerate(zip(steps, ids, strict=True)):
        store.create(
            job_id,
            task="offload.echo",
            queue=queue,
            kwargs={"message": message},
            priority=5,
            published_now=index == 0,
            next_step=ids[index + 1] if index + 1 < len(ids) else None,
            owner=parse_api_key(API_KEY).principal.id,  # as the API would: the test's key sees them
        )
    app = create_celery_app(settings, main="offload-test")
    send_jobs(
        [
            job_signature(
                app, "offload.echo", job_id=job_id, kwargs={"message": message}, queue=queue, priority=5, headers={}
            )
            for (message, queue), job_id in zip(steps, ids, strict=True)
        ]
    )
    assert client.delete(f"/v1/jobs/{ids[0]}").json()["status"] == "cancelled"  # while queued
    # The worker skips the cancelled step; Celery publishes the next one, which no worker takes yet.
    skipper = own.start_worker("default-only", queues="default")
    wait_for(lambda: len(_listed(direct, "low", ids[1])) == 1, 20, "the next step to be published")
    wait_for(lambda: direct.zscore(WAITING_KEY, ids[1]) is not None, 5, "the next step to wait")
    [(name, raw)] = _listed(direct, "low", ids[1])
    assert direct.lrem(name, 1, raw) == 1  # and Redis loses it

    worker = own.start_worker("low", queues="low")
    done = wait_job(client, ids[1], {"succeeded", "failed"}, timeout=GRACE + 4 * SWEEP_INTERVAL + 20)
    assert (done["status"], done["result"]["message"]) == ("succeeded", "after"), done
    assert job_status(client, ids[0]) == "cancelled"
    # Either worker's sweep may have published it again; together they did once.
    assert _recovered(skipper, "low") + _recovered(worker, "low") == 1
