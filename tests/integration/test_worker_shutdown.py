"""Workers stopped the way Kubernetes stops pods: SIGTERM to the main process, or SIGKILL.
Whatever happens to the worker, an accepted job ends succeeded."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from offload_core.settings import Settings
from offload_dev.polling import wait_for
from offload_dev.redis_server import RedisServer, free_port
from tests.support import TEST_SETTINGS, Service, api_client, start_api, start_worker, submit_echo, wait_job

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[dict[str, str], httpx.Client, list[Service]]]:
    redis = RedisServer(free_port(), tmp_path / "redis").start()
    env = {**TEST_SETTINGS, "OFFLOAD_REDIS_URL": redis.url, "OFFLOAD_WORKER_CONCURRENCY": "1"}
    services: list[Service] = []
    try:
        services.append(api := start_api(env, tmp_path))
        with api_client(api) as client:
            yield env, client, services
    finally:
        for service in services:
            service.stop()
        redis.stop()


def _start(name: str, env: dict[str, str], services: list[Service], log_dir: Path) -> Service:
    service = start_worker(name, env, log_dir, queues="default")
    services.append(service)
    return service


def test_sigterm_hands_an_unfinished_job_back_to_another_worker(cluster, tmp_path: Path) -> None:
    env, client, services = cluster
    first = _start("first", env, services, tmp_path)
    job_id = submit_echo(client, sleep_ms=6000)
    assert wait_job(client, job_id, {"started"})["worker"] == "first@test"

    first.terminate()
    # Soft shutdown: 2 s for the running job, then it goes back to the queue and the worker exits.
    wait_for(lambda: not first.alive(), 20, "the first worker to exit after SIGTERM")
    assert "Soft Shutdown" in first.log.read_text()
    # Started only now, so how long a worker takes to start cannot let the job finish first.
    _start("second", env, services, tmp_path)

    done = wait_job(client, job_id, {"succeeded", "failed"}, timeout=30)
    assert done["status"] == "succeeded", done
    assert done["worker"] == "second@test"
    assert done["attempts"] == 2


def test_sigterm_lets_a_job_that_ends_within_the_soft_timeout_finish(cluster, tmp_path: Path) -> None:
    env, client, services = cluster
    only = _start("only", env, services, tmp_path)
    job_id = submit_echo(client, sleep_ms=1000)
    wait_job(client, job_id, {"started"})

    only.terminate()
    done = wait_job(client, job_id, {"succeeded", "failed"}, timeout=10)
    assert done["status"] == "succeeded", done
    assert done["worker"] == "only@test"
    assert done["attempts"] == 1
    wait_for(lambda: not only.alive(), 20, "the worker to exit after SIGTERM")


def test_sigkill_job_comes_back_within_the_documented_bound(cluster, tmp_path: Path, record_property) -> None:
    env, client, services = cluster
    settings = Settings(**{k.removeprefix("OFFLOAD_"): v for k, v in env.items() if k.startswith("OFFLOAD_")})
    first = _start("first", env, services, tmp_path)
    job_id = submit_echo(client, sleep_ms=3000)
    taken = wait_job(client, job_id, {"started"})
    assert taken["worker"] == "first@test"

    first.kill()
    killed_at = time.time()
    # Started after the kill (within the visibility timeout), so the job cannot finish first.
    _start("second", env, services, tmp_path)
    again = wait_for(
        lambda: (j := client.get(f"/v1/jobs/{job_id}").json()) and (j if j["attempts"] >= 2 else None),
        settings.unacked_restore_bound_seconds + 10,
        "the killed worker's job to start again",
    )
    # The bound runs from the moment the first worker took the message.
    taken_at = datetime.fromisoformat(taken["started_at"]).timestamp()
    came_back_after = time.time() - taken_at
    record_property("sigkill_job_back_after_seconds", round(came_back_after, 1))
    print(
        f"\nSIGKILLed worker's job started again {came_back_after:.1f}s after it was first taken "
        f"({time.time() - killed_at:.1f}s after the kill); bound {settings.unacked_restore_bound_seconds:.0f}s"
    )
    assert again["worker"] == "second@test"
    assert came_back_after <= settings.unacked_restore_bound_seconds + 2  # + pickup and polling slack

    done = wait_job(client, job_id, {"succeeded", "failed"}, timeout=20)
    assert done["status"] == "succeeded", done
    assert done["result"]["worker"] == "second@test"
