"""A queue of the deployment's own (OFFLOAD_QUEUES): a worker or notifier told to consume it runs
the jobs published to it, and the API counts it among the queues."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
import redis

from offload_core.contract.topology import priority_lists
from offload_core.store.jobs import SUBMIT, submit_call
from offload_core.store.queue_state import ENQUEUED_AT_HEADER
from offload_dev.polling import wait_for
from tests.integration.own_queue_jobs import OWN_QUEUE
from tests.support import TEST_OWNER, TEST_SETTINGS, cluster, wait_job

REPO_ROOT = Path(__file__).resolve().parents[2]
OWN_QUEUE_ENV = {
    **TEST_SETTINGS,
    "OFFLOAD_QUEUES": f"high,default,low,{OWN_QUEUE}",
    "OFFLOAD_JOB_MODULES": "tests.integration.own_queue_jobs",
    "PYTHONPATH": str(REPO_ROOT),  # so the worker imports the test module
}


def publish(client: redis.Redis, task: str, queue: str, message: str) -> str:
    """Publish a job as the API does (one SUBMIT script): the worker cannot tell the difference."""
    job_id = uuid.uuid4().hex
    now = time.time()
    keys, args = submit_call(
        job_id,
        task,
        {"message": message},
        queue=queue,
        priority=3,
        headers={ENQUEUED_AT_HEADER: now},
        origin="offload-tests",
        now=now,
        ttl_seconds=600,
        owner=TEST_OWNER,
    )
    client.register_script(SUBMIT)(keys=keys, args=args)
    return job_id


@pytest.mark.parametrize("module", ["offload_worker", "offload_notifier"])
def test_a_worker_consumes_a_queue_of_the_deployments_own(module: str, tmp_path: Path) -> None:
    with cluster(tmp_path, OWN_QUEUE_ENV) as own:
        api_service = own.start_api()
        api, direct = own.client, own.redis
        worker = own.start_worker(module.removeprefix("offload_"), module=module, queues=OWN_QUEUE)
        job_id = publish(direct, "acme.echo", OWN_QUEUE, "to the own queue")
        done = wait_job(api, job_id, {"succeeded", "failed"})
        assert done["status"] == "succeeded", done
        assert done["queue"] == OWN_QUEUE
        assert done["result"]["message"] == "to the own queue"
        assert done["result"]["worker"] == worker.extra["hostname"]

        def own_queue_state() -> dict[str, object] | None:
            queues = {q["name"]: q for q in api.get("/v1/queues").json()["queues"]}
            return queues[OWN_QUEUE] if queues[OWN_QUEUE]["consumers"] == 1 else None

        state = wait_for(own_queue_state, 10, f"GET /v1/queues to count the consumer of {OWN_QUEUE}")
        assert state["depth"] == 0
        metrics = httpx.get(api_service.extra["metrics_url"], timeout=15).text
        assert f'offload_queue_depth{{queue="{OWN_QUEUE}"}} 0.0' in metrics
        if module == "offload_notifier":  # allowed, but said: nothing of this notifier's takes `high`
            wait_for(lambda: "this notifier does not consume high" in worker.log_tail(200), 10, "the warning")


def start_refused(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """A worker that must stop at start, before it reaches Redis."""
    env = {**OWN_QUEUE_ENV, "OFFLOAD_WORKER_STATE_DIR": str(tmp_path), "OFFLOAD_WORKER_METRICS_PORT": "0", **env}
    return subprocess.run(
        [sys.executable, "-m", "offload_worker"], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_a_worker_refuses_a_queue_the_deployment_does_not_have(tmp_path: Path) -> None:
    result = start_refused(tmp_path, OFFLOAD_QUEUES="high,default,low", OFFLOAD_WORKER_QUEUES=OWN_QUEUE)
    assert result.returncode != 0
    assert f"OFFLOAD_WORKER_QUEUES names {OWN_QUEUE}, which OFFLOAD_QUEUES (high,default,low) lacks" in result.stderr


def test_a_job_type_on_an_undeclared_queue_stops_the_worker_at_start(tmp_path: Path) -> None:
    result = start_refused(tmp_path, OFFLOAD_QUEUES="high,default,low", OFFLOAD_WORKER_QUEUES="default")
    assert result.returncode != 0
    assert "job type 'acme.echo'" in result.stderr
    assert f"names the queue(s) {OWN_QUEUE}, which this deployment does not have" in result.stderr


def test_the_orphan_sweep_publishes_a_lost_job_again_on_its_own_queue(tmp_path: Path) -> None:
    """Any worker sweeps, whatever it consumes: it must know every queue of OFFLOAD_QUEUES to
    publish a job there again."""
    grace = 3.0
    env = {
        **OWN_QUEUE_ENV,
        "OFFLOAD_ORPHAN_SWEEP_INTERVAL_SECONDS": "0.5",
        "OFFLOAD_ORPHAN_GRACE_SECONDS": str(grace),
        # The grace must exceed the longest publish: (0 + 1) x (1 + 1.5) s here.
        "OFFLOAD_PUBLISH_MAX_RETRIES": "0",
        "OFFLOAD_BROKER_CONNECT_TIMEOUT_SECONDS": "1",
        "OFFLOAD_BROKER_SOCKET_TIMEOUT_SECONDS": "1.5",
    }
    with cluster(tmp_path, env) as own:
        own.start_api()
        direct = own.redis
        job_id = publish(direct, "acme.echo", OWN_QUEUE, "lost")
        waiting = priority_lists(OWN_QUEUE)[1]  # priority 3: the second list
        (raw,) = direct.lrange(waiting, 0, -1)
        assert direct.lrem(waiting, 1, str(raw)) == 1  # lost, as in a Redis restart

        sweeper = own.start_worker("sweeper", queues="default")

        def republished() -> bool:
            return any(
                json.loads(m)["headers"]["id"] == job_id
                for n in priority_lists(OWN_QUEUE)
                for m in direct.lrange(n, 0, -1)
            )

        wait_for(republished, grace + 15, f"the sweep to publish {job_id} again on {OWN_QUEUE}")
        said = f"job {job_id} (acme.echo on {OWN_QUEUE}) was queued but its broker message was lost"
        wait_for(lambda: said in sweeper.log.read_text(), 5, "the sweeper to log the recovery")
