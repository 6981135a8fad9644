"""The API without Redis: clear 503s within seconds, then recovery on its own; queue depth that
sums every priority list kombu keeps for a queue; and a worker that keeps consuming after Redis
went away under it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from offload_core.contract.topology import priority_lists
from offload_dev.polling import wait_for
from offload_dev.processes import Service
from offload_dev.redis_server import RedisServer
from tests.support import cluster, submit_echo, wait_job


@pytest.fixture
def api_alone(tmp_path: Path) -> Iterator[tuple[RedisServer, Service, httpx.Client]]:
    """The API and Redis with no worker: whatever is submitted stays in its queue."""
    with cluster(tmp_path) as own:
        api = own.start_api()
        yield own.server, api, own.client


def test_queue_depth_sums_the_priority_lists(api_alone) -> None:
    server, _, client = api_alone
    for priority in (0, 5, 9, 9):
        submit_echo(client, queue="low", priority=priority)
    raw = redis.Redis(port=server.port)
    # kombu's own layout: steps 0, 3, 6, 9; priority 5 lands in the list of step 3.
    assert [raw.llen(name) for name in priority_lists("low")] == [1, 1, 0, 2]

    time.sleep(0.05)
    queues = {q["name"]: q for q in client.get("/v1/queues").json()["queues"]}
    assert queues["low"]["depth"] == 4
    assert queues["low"]["consumers"] == 0
    assert queues["low"]["oldest_age_seconds"] > 0
    assert queues["high"] == {"name": "high", "depth": 0, "consumers": 0, "oldest_age_seconds": None, "dead_letters": 0}


def test_redis_down_gives_503_in_seconds_and_the_api_recovers(api_alone) -> None:
    server, api, client = api_alone
    server.stop()

    for method, path in [("GET", "/readyz"), ("POST", "/v1/jobs/echo"), ("GET", "/v1/jobs/abc"), ("GET", "/v1/queues")]:
        started = time.monotonic()
        response = client.request(method, path, json={"message": "x"})
        elapsed = time.monotonic() - started
        assert response.status_code == 503, (path, response.text)
        assert elapsed < 5, (path, elapsed)
        assert f"127.0.0.1:{server.port}" in response.json()["detail"]
        assert response.json()["code"] == "redis_unavailable"
    assert client.get("/livez").status_code == 200  # alive, only not ready

    server.start()
    wait_for(lambda: client.get("/readyz").status_code == 200, 15, "/readyz to recover")
    job_id = submit_echo(client)
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"
    assert api.alive()


@pytest.fixture
def worker_stack(tmp_path: Path) -> Iterator[tuple[RedisServer, Service, httpx.Client]]:
    """Redis (append-only, so queued work survives a restart), the API and a default+low worker."""
    with cluster(tmp_path, persistent=True) as own:
        worker = own.start_worker("worker")
        own.start_api()
        yield own.server, worker, own.client


def test_a_worker_consumes_again_after_redis_goes_away_mid_job(
    worker_stack: tuple[RedisServer, Service, httpx.Client],
) -> None:
    """Redis stops while the worker runs a job (an unacknowledged message) with its BRPOP
    pending. Its pub/sub connection is killed first, so the worker handles that error while the
    BRPOP reply is still unread: the order in which kombu's channel close used to stop half-way
    and Celery's second close then crashed the worker ("Unrecoverable error: AttributeError").
    The same process must reconnect, finish the job and run new ones, outage after outage."""
    server, worker, client = worker_stack

    def broker_losses() -> int:
        return worker.log.read_text(errors="replace").count("Connection to broker lost")

    def finished(job_id: str) -> dict[str, object] | None:
        assert worker.alive(), f"the worker exited:\n{worker.log_tail()}"
        record: dict[str, object] = client.get(f"/v1/jobs/{job_id}").json()
        return record if record["status"] in {"succeeded", "failed"} else None

    def outage(number: int) -> None:
        running = submit_echo(client, sleep_ms=3000)
        wait_job(client, running, {"started"}, timeout=15)
        losses = broker_losses()

        redis.Redis(port=server.port).client_kill_filter(_type="pubsub")
        server.stop()
        wait_for(lambda: broker_losses() > losses, 15, "the worker to notice the lost connection")
        server.start()

        wait_for(lambda: client.get("/readyz").status_code == 200, 15, "/readyz to recover")
        after = submit_echo(client, message=f"after outage {number}")
        assert wait_for(lambda: finished(after), 30, "a job submitted after the outage")["status"] == "succeeded"
        # Handed back (or restored after the visibility timeout), the interrupted job runs again.
        assert wait_for(lambda: finished(running), 30, "the interrupted job")["status"] == "succeeded"

    outage(1)
    outage(2)
    assert "Unrecoverable error" not in worker.log.read_text(errors="replace")
