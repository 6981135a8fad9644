"""Job plugins on real processes: a worker runs a plugin module's job (OFFLOAD_JOB_MODULES) with
its callbacks on a real Redis, and a worker, notifier or API given a plugin it cannot import
exits at start with one line naming it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from offload_core.store.dead_letters import DeadLetters
from offload_core.store.jobs import FINISHED, SUBMIT, Job, JobStatus, JobStore, submit_call
from offload_core.store.queue_state import ENQUEUED_AT_HEADER
from offload_dev.polling import wait_for
from offload_dev.processes import Service, start_api, start_worker
from offload_dev.redis_server import RedisServer, free_port
from tests.sdk_user.hook_jobs import ENDS_KEY
from tests.support import TEST_OWNER, TEST_SETTINGS, api_client

PLUGIN = "tests.sdk_user.hook_jobs"
HOOKED = "tests.hooked"


@dataclass
class Plugged:
    store: JobStore
    worker: Service
    api: httpx.Client

    def submit(self, **kwargs: Any) -> str:
        job_id = uuid.uuid4().hex
        now = time.time()
        keys, args = submit_call(
            job_id,
            HOOKED,
            kwargs,
            queue="default",
            priority=3,
            headers={ENQUEUED_AT_HEADER: now},
            origin="tests",
            now=now,
            ttl_seconds=600,
            owner=TEST_OWNER,
        )
        self.store.client.eval(SUBMIT, len(keys), *keys, *args)
        return job_id

    def ended(self, job_id: str, timeout: float = 30) -> Job:
        def finished() -> Job | None:
            job = self.store.get(job_id)
            return job if job is not None and job.status in FINISHED else None

        return wait_for(finished, timeout, f"job {job_id} to end")

    def ends(self, marker: str, count: int = 1) -> list[dict[str, Any]]:
        """What on_end was given for this marker's jobs, once it ran ``count`` times."""
        key = ENDS_KEY.format(marker)
        wait_for(lambda: self.store.client.llen(key) >= count, 10, f"on_end for {marker} to run {count} times")
        return [json.loads(entry) for entry in self.store.client.lrange(key, 0, -1)]


@pytest.fixture(scope="module")
def plugged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plugged]:
    base = tmp_path_factory.mktemp("plugins")
    server = RedisServer(free_port(), base / "redis").start()
    # One pool process: a second job waits while the first runs.
    env = {**TEST_SETTINGS, "OFFLOAD_REDIS_URL": server.url, "OFFLOAD_JOB_MODULES": PLUGIN}
    env["OFFLOAD_WORKER_CONCURRENCY"] = "1"
    services = [worker := start_worker("plugged", env, base, queues="default"), api := start_api(env, base)]
    try:
        with api_client(api) as client:
            yield Plugged(JobStore(redis.Redis.from_url(server.url, decode_responses=True), 600), worker, client)
    finally:
        for service in services:
            service.stop()
        server.stop()


def test_on_end_sees_a_success(plugged: Plugged) -> None:
    job_id = plugged.submit(marker="ok")
    job = plugged.ended(job_id)
    assert (job.status, job.result) == (JobStatus.SUCCEEDED, {"marker": "ok"})
    assert plugged.ends("ok") == [
        {"job_id": job_id, "job_type": HOOKED, "queue": "default", "status": "succeeded", "error": None}
    ]


def test_a_failure_runs_on_end_and_keeps_the_dead_letter_payload_the_job_chose(plugged: Plugged) -> None:
    job_id = plugged.submit(marker="failing", targets=["a", "b", "c"], fail=True)
    job = plugged.ended(job_id)
    assert (job.status, job.error) == (JobStatus.FAILED, "asked to fail")
    [end] = plugged.ends("failing")
    assert (end["status"], end["error"], end["queue"]) == ("failed", "asked to fail", "default")
    letter = DeadLetters(plugged.store.client, 600).get(job_id)
    assert letter is not None
    assert letter.payload == {"marker": "failing", "targets": ["a"], "sleep_ms": 0, "fail": True}


def test_a_plugin_jobs_dead_letter_is_replayed_with_the_payload_it_chose(plugged: Plugged) -> None:
    job_id = plugged.submit(marker="replayed", targets=["a", "b"], fail=True)
    assert plugged.ended(job_id).status == JobStatus.FAILED
    response = plugged.api.post(f"/v1/dead-letters/{job_id}/replay")
    assert response.status_code == 202, response.text
    assert (response.json()["task"], response.json()["queue"]) == (HOOKED, "default")
    assert plugged.ended(response.json()["id"]).replay_of == job_id
    assert [end["job_id"] for end in plugged.ends("replayed", count=2)] == [job_id, response.json()["id"]]


def test_a_dead_letter_of_a_type_no_longer_registered_cannot_be_replayed(plugged: Plugged) -> None:
    plugged.store.create("gone-1", task="acme.uninstalled", queue="default", owner=TEST_OWNER)
    plugged.store.fail("gone-1", "ValueError: x", task="acme.uninstalled", queue="default", payload={"n": 1})
    response = plugged.api.post("/v1/dead-letters/gone-1/replay")
    assert response.status_code == 409, response.text
    assert response.json()["detail"] == (
        "Job type 'acme.uninstalled' is no longer registered here, so dead letter gone-1 cannot be replayed; "
        "install the package that declares it, or delete the dead letter."
    )


def test_a_job_cancelled_while_queued_runs_on_end_without_running(plugged: Plugged) -> None:
    busy = plugged.submit(marker="busy", sleep_ms=1500)
    wait_for(lambda: plugged.store.get(busy).status == JobStatus.STARTED, 10, "the first job to start")  # type: ignore[union-attr]
    waiting = plugged.submit(marker="waiting")
    assert plugged.store.cancel(waiting).value == "cancelled"
    assert plugged.ended(busy).status == JobStatus.SUCCEEDED
    job = plugged.ended(waiting)
    assert (job.status, job.attempts) == (JobStatus.CANCELLED, 0)
    [end] = plugged.ends("waiting")
    assert (end["job_id"], end["status"]) == (waiting, "cancelled")


def test_a_handler_can_catch_its_time_limit(plugged: Plugged) -> None:
    job_id = plugged.submit(marker="slow", sleep_ms=4000)  # time_limit=2
    job = plugged.ended(job_id, timeout=20)
    assert job.status == JobStatus.FAILED
    assert (job.error or "").startswith("stopped at the time limit"), job.error
    assert plugged.ends("slow")[0]["status"] == "failed"


@pytest.mark.parametrize(
    ("module", "program"),
    [("offload_worker", "offload-worker"), ("offload_notifier", "offload-notifier"), ("offload_api", "offload-api")],
)
def test_a_process_given_a_broken_plugin_exits_naming_it(tmp_path: Path, module: str, program: str) -> None:
    plugin = f"broken_jobs_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{plugin}.py").write_text("import a_library_this_image_lacks\n")
    env = {
        **os.environ,
        **TEST_SETTINGS,
        "PYTHONPATH": str(tmp_path),
        "OFFLOAD_JOB_MODULES": plugin,
        "OFFLOAD_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",  # never reached
        "OFFLOAD_WORKER_STATE_DIR": str(tmp_path / "state"),
        "OFFLOAD_WORKER_METRICS_PORT": "0",
    }
    finished = subprocess.run(
        [sys.executable, "-m", module], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert finished.returncode != 0
    assert finished.stderr.strip().splitlines()[-1] == (
        f"{program}: module {plugin} (OFFLOAD_JOB_MODULES) cannot be imported: ModuleNotFoundError: No module "
        f"named 'a_library_this_image_lacks'. Install its dependencies into this image, or remove it "
        f"(OFFLOAD_JOB_MODULES)."
    )
    assert "Traceback" not in finished.stderr
