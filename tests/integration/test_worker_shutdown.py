"""Workers stopped the way Kubernetes stops pods: SIGTERM to the main process, or SIGKILL.
Whatever happens to the worker, an accepted job ends succeeded."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import redis

from offload_core.contract.topology import priority_lists
from offload_core.runtime.orphans import UNACKED_KEY
from offload_core.settings import Settings
from offload_dev.polling import wait_for
from tests.support import TEST_SETTINGS, Cluster, cluster, submit_echo, wait_job

pytestmark = pytest.mark.slow


@pytest.fixture
def own(tmp_path: Path) -> Iterator[Cluster]:
    with cluster(tmp_path, {**TEST_SETTINGS, "OFFLOAD_WORKER_CONCURRENCY": "1"}) as started:
        started.start_api()
        yield started


def _held(direct: redis.Redis, job_id: str) -> bool:
    """Whether a worker holds the job's message (kombu's unacked hash)."""
    return any(json.loads(raw)[0]["headers"]["id"] == job_id for raw in direct.hvals(UNACKED_KEY))


def _listed(direct: redis.Redis, job_id: str) -> bool:
    """Whether the job's message waits on one of default's lists."""
    return any(
        json.loads(raw)["headers"]["id"] == job_id
        for name in priority_lists("default")
        for raw in direct.lrange(name, 0, -1)
    )


def test_a_running_workers_heartbeat_stays_fresh(own: Cluster) -> None:
    worker = own.start_worker("beating", queues="default")
    heartbeat = worker.extra["state_dir"] / "heartbeat"
    interval = float(own.env["OFFLOAD_WORKER_HEARTBEAT_INTERVAL_SECONDS"])
    touches = {heartbeat.stat().st_mtime}
    # Touched every interval (1 s here): over a few intervals it is touched again and again and
    # never gets old (the bound leaves room for a loaded machine; a probe allows three intervals).
    deadline = time.monotonic() + 4 * interval
    while time.monotonic() < deadline:  # a freshness check needs time to pass
        touched = heartbeat.stat().st_mtime
        assert time.time() - touched < 10 * interval
        touches.add(touched)
        time.sleep(interval / 4)
    assert len(touches) >= 3, touches


def test_sigterm_hands_an_unfinished_job_back_to_another_worker(own: Cluster) -> None:
    client, direct = own.client, own.redis
    # 4 s for running jobs: time enough to see the worker not ready while the job still runs.
    first = own.start_worker("first", queues="default", env={"OFFLOAD_WORKER_SOFT_SHUTDOWN_TIMEOUT_SECONDS": "4"})
    ready = first.extra["state_dir"] / "ready"
    job_id = submit_echo(client, sleep_ms=7000)  # within the 8 s soft time limit of the tests
    assert wait_job(client, job_id, {"started"})["worker"] == "first@test"
    assert _held(direct, job_id)

    first.terminate()
    # Not ready as soon as shutdown starts, while the running job still has its soft timeout.
    wait_for(lambda: not ready.exists(), 5, "the ready file to go when shutdown starts", interval=0.05)
    assert first.alive()
    assert _held(direct, job_id)  # still running within its soft timeout
    # Soft shutdown: 4 s for the running job, then it goes back to the queue and the worker exits.
    wait_for(lambda: not first.alive(), 20, "the first worker to exit after SIGTERM")
    # Straight back on the queue as the worker exits, not held: nothing waits for the restore
    # after the visibility timeout (12 s here), which would also bring it back.
    assert _listed(direct, job_id)
    assert not _held(direct, job_id)
    # Started only now, so how long a worker takes to start cannot let the job finish first.
    own.start_worker("second", queues="default")

    done = wait_job(client, job_id, {"succeeded", "failed"}, timeout=30)
    assert done["status"] == "succeeded", done
    assert done["worker"] == "second@test"
    assert done["attempts"] == 2


def test_sigterm_lets_a_job_that_ends_within_the_soft_timeout_finish(own: Cluster) -> None:
    client = own.client
    only = own.start_worker("only", queues="default")
    job_id = submit_echo(client, sleep_ms=1000)
    wait_job(client, job_id, {"started"})

    only.terminate()
    done = wait_job(client, job_id, {"succeeded", "failed"}, timeout=10)
    assert done["status"] == "succeeded", done
    assert done["worker"] == "only@test"
    assert done["attempts"] == 1
    wait_for(lambda: not only.alive(), 20, "the worker to exit after SIGTERM")


def test_sigkill_job_comes_back_within_the_documented_bound(own: Cluster, record_property) -> None:
    client = own.client
    settings = Settings.model_validate(
        {k.removeprefix("OFFLOAD_"): v for k, v in own.env.items() if k.startswith("OFFLOAD_")}
    )
    first = own.start_worker("first", queues="default")
    job_id = submit_echo(client, sleep_ms=3000)
    taken = wait_job(client, job_id, {"started"})
    assert taken["worker"] == "first@test"

    first.kill()
    killed_at = time.time()
    # Started after the kill (within the visibility timeout), so the job cannot finish first.
    own.start_worker("second", queues="default")
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
