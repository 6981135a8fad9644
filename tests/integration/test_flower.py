"""Flower behind basic auth sees the workers and the jobs they run (from task events)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from offload_dev.polling import wait_for
from offload_dev.processes import PORT_ATTEMPTS
from offload_dev.redis_server import free_port
from tests.support import Stack, submit_echo, wait_job

AUTH = ("offload", "flower-test-password")


@pytest.fixture(scope="module")
def flower(stack: Stack) -> Iterator[str]:
    env = {**os.environ, "FLOWER_BASIC_AUTH": ":".join(AUTH)}
    # A port found free may be taken before Flower binds it: Flower then exits, and runs again
    # on another port.
    for attempt in range(PORT_ATTEMPTS):
        port = free_port()
        log = (stack.log_dir / "flower.log").open("ab")
        args = [
            sys.executable,
            "-m",
            "celery",
            f"--broker={stack.env['OFFLOAD_REDIS_URL']}",
            "flower",
            f"--port={port}",
        ]
        process = subprocess.Popen([*args, "--address=127.0.0.1"], env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"

        def up(process: subprocess.Popen[bytes] = process, url: str = url) -> bool:
            if process.poll() is not None:
                raise ProcessLookupError(f"Flower exited with {process.returncode}")
            try:
                return httpx.get(f"{url}/healthcheck", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        try:
            wait_for(up, 30, "Flower to answer")
            break
        except ProcessLookupError:
            if attempt == PORT_ATTEMPTS - 1:
                raise
    try:
        yield url
    finally:
        process.terminate()
        process.wait(10)


def test_flower_refuses_requests_without_credentials(flower: str) -> None:
    assert httpx.get(f"{flower}/").status_code == 401
    assert httpx.get(f"{flower}/api/workers", auth=("offload", "wrong")).status_code == 401


def test_flower_lists_the_workers_and_their_jobs(stack: Stack, flower: str) -> None:
    def workers() -> dict[str, Any] | None:
        response = httpx.get(f"{flower}/api/workers", params={"refresh": "1"}, auth=AUTH, timeout=10)
        body: dict[str, Any] = response.json() if response.status_code == 200 else {}
        return body if {"worker@test", "notifier@test"} <= set(body) else None

    found = wait_for(workers, 30, "Flower to list the worker and the notifier", interval=1)
    queues = {name: {q["name"] for q in info["active_queues"]} for name, info in found.items()}
    assert queues["notifier@test"] == {"high"}
    assert queues["worker@test"] == {"default", "low"}

    job_id = submit_echo(stack.client, queue="high", message="seen by flower")
    wait_job(stack.client, job_id, {"succeeded"})

    def task_seen() -> dict[str, object] | None:
        tasks = httpx.get(f"{flower}/api/tasks", auth=AUTH, timeout=10).json()
        task: dict[str, object] | None = tasks.get(job_id)
        return task if task and task.get("state") == "SUCCESS" else None

    task = wait_for(task_seen, 20, "Flower to show the job as succeeded", interval=0.5)
    assert task["name"] == "offload.echo"
    assert task["worker"] == "notifier@test"
