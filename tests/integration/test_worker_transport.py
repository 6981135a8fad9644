"""The worker takes a backlog in batches (offload_core.runtime.worker_transport) without giving up what
kombu's one-message-per-BRPOP path guarantees: priority order, every taken message recorded as
unacknowledged until its job ended, acks that reach Redis, and a killed worker's reserved jobs
coming back. Real Redis, API and worker processes."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from offload_core.runtime.orphans import UNACKED_KEY
from offload_dev.polling import wait_for
from tests.support import (
    TEST_SETTINGS,
    Cluster,
    cluster,
    job,
    submit_echo,
    wait_job,
)

pytestmark = pytest.mark.slow

UNACKED_INDEX_KEY = "unacked_index"
ENV = {
    **TEST_SETTINGS,
    # One process reserving four messages: the batches are the prefetch window.
    "OFFLOAD_WORKER_CONCURRENCY": "1",
    "OFFLOAD_WORKER_PREFETCH_MULTIPLIER": "4",
    "OFFLOAD_WORKER_SEND_EVENTS": "true",
}


@pytest.fixture
def own(tmp_path: Path) -> Iterator[Cluster]:
    with cluster(tmp_path, ENV) as started:
        started.start_api()
        yield started


def test_a_backlog_drains_in_priority_order_and_leaves_nothing_unacknowledged(own: Cluster) -> None:
    client, direct = own.client, own.redis
    # Queued before any worker runs, lowest priority first: the worker must still start every
    # priority-0 job before any priority-9 one, batch or not.
    last = [submit_echo(client, message=f"last {n}", priority=9) for n in range(12)]
    first = [submit_echo(client, message=f"first {n}", priority=0) for n in range(12)]
    worker = own.start_worker("batcher", queues="default")

    done = {job_id: wait_job(client, job_id, {"succeeded", "failed"}) for job_id in first + last}
    assert {d["status"] for d in done.values()} == {"succeeded"}
    assert {d["attempts"] for d in done.values()} == {1}
    started = {job_id: datetime.fromisoformat(d["started_at"]) for job_id, d in done.items()}
    assert max(started[j] for j in first) < min(started[j] for j in last)

    # Every ack reached Redis: nothing is left to be handed back after the visibility timeout.
    wait_for(lambda: direct.hlen(UNACKED_KEY) == 0, 5, "the acks to reach the unacked hash")
    assert direct.zcard(UNACKED_INDEX_KEY) == 0
    assert "Traceback" not in worker.log.read_text()


def test_jobs_a_killed_worker_had_reserved_run_after_the_visibility_timeout(own: Cluster) -> None:
    client, direct = own.client, own.redis
    # Queued before the worker starts: BRPOP takes the first (priority 0), one batch the rest.
    running = submit_echo(client, message="running", sleep_ms=6000, priority=0)  # within the time limits
    reserved = [submit_echo(client, message=f"reserved {n}", priority=9) for n in range(3)]
    holder = own.start_worker("holder", queues="default")
    wait_job(client, running, {"started"})
    wait_for(lambda: direct.hlen(UNACKED_KEY) == 4, 10, "the worker to reserve the three other jobs")
    assert {job(client, job_id)["status"] for job_id in reserved} == {"queued"}

    os.killpg(holder.process.pid, signal.SIGKILL)  # no soft shutdown: nothing is handed back
    holder.process.wait(10)
    own.start_worker("rescuer", queues="default")

    # The unacked entries the batch wrote are kombu's own: the restore reads them back.
    timeout = float(own.env["OFFLOAD_VISIBILITY_TIMEOUT_SECONDS"]) + 20
    for job_id in reserved:
        assert wait_job(client, job_id, {"succeeded", "failed"}, timeout=timeout)["status"] == "succeeded"
    # The interrupted one runs again, from the start.
    again = wait_job(client, running, {"succeeded", "failed"}, timeout=timeout)
    assert (again["status"], again["attempts"]) == ("succeeded", 2), again
