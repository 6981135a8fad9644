"""Tracked asyncio tasks in a real API process: a submitted notification's webhook targets are
checked for reachability without holding up the answer, and stopping the API (SIGTERM) waits
for such checks up to OFFLOAD_API_SHUTDOWN_TASKS_TIMEOUT_SECONDS, then cancels and names them."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from offload_dev.polling import wait_for
from offload_dev.redis_server import free_port
from tests.integration.standalone_api import standalone_api
from tests.support import Stack

MESSAGE = {"title": "Reachability", "body": "checked at submission"}


def submit(client: httpx.Client, *targets: dict[str, str]) -> str:
    response = client.post("/v1/notifications", json={"message": MESSAGE, "targets": list(targets)})
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def targets(client: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    response = client.get(f"/v1/notifications/{job_id}")
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["targets"]
    return found


@contextlib.contextmanager
def unanswered_port() -> Iterator[int]:
    """A loopback port whose connections hang: the listener's accept queue (backlog 0) is kept
    full, so the kernel drops further handshakes and a connect waits until its timeout."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port: int = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=2):  # fills the queue
            yield port


def test_each_webhook_target_gets_its_reachability(stack: Stack) -> None:
    closed_port = free_port()  # nothing listens there: the connection is refused
    job_id = submit(
        stack.client,
        {"channel": "webhook", "url": stack.webhooks.url("/hooks/reachable")},
        {"channel": "webhook", "url": f"http://127.0.0.1:{closed_port}/hooks/down"},
        {"channel": "email", "address": "ops@tests.example"},
    )

    def checked() -> list[dict[str, Any]] | None:
        found = targets(stack.client, job_id)
        return found if all(t["reachable"] is not None for t in found[:2]) else None

    reachable, down, email = wait_for(checked, 15, "both webhook targets to be checked")
    assert (reachable["reachable"], down["reachable"], email["reachable"]) == (True, False, None)
    # The check only connects: the receiver sees the notifier's delivery and nothing else.
    wait_for(lambda: targets(stack.client, job_id)[0]["status"] == "delivered", 30, "the delivery")
    assert len(stack.webhooks.received("/hooks/reachable")) == 1
    assert f"notification {job_id}: webhook target 1 is not reachable" in stack.api.log.read_text()


def test_shutdown_waits_for_tracked_tasks_that_end_in_time(tmp_path: Path) -> None:
    with (
        unanswered_port() as port,
        standalone_api(tmp_path, WEBHOOK_CONNECT_TIMEOUT_SECONDS="2", API_SHUTDOWN_TASKS_TIMEOUT_SECONDS="10") as api,
    ):
        job_id = submit(api.client, {"channel": "webhook", "url": f"http://127.0.0.1:{port}/hooks"})
        started = time.monotonic()
        api.stop_and_wait(timeout=20)
        took = time.monotonic() - started

        # The check ran to its own 2 s timeout, well within the 10 s the shutdown allows.
        assert 1.5 < took < 9, f"shutdown took {took:.1f}s"
        log = api.log()
        assert f"waiting up to 10.0s for 1 tracked tasks: reachability:{job_id}" in log
        assert "cancelled" not in log
        record = json.loads(api.redis.hget(f"offload:job:{job_id}:reachability", "0") or "{}")
        assert record["reachable"] is False
        assert "no connection within 2s" in record["error"]


def test_shutdown_cancels_tracked_tasks_still_running_at_its_deadline(tmp_path: Path) -> None:
    with (
        unanswered_port() as port,
        standalone_api(tmp_path, WEBHOOK_CONNECT_TIMEOUT_SECONDS="30", API_SHUTDOWN_TASKS_TIMEOUT_SECONDS="1") as api,
    ):
        job_id = submit(api.client, {"channel": "webhook", "url": f"http://127.0.0.1:{port}/hooks"})
        started = time.monotonic()
        api.stop_and_wait(timeout=20)
        took = time.monotonic() - started

        assert took < 8, f"shutdown took {took:.1f}s; the bound is 1 s"
        assert f"cancelled 1 tracked tasks still running after 1.0s: reachability:{job_id}" in api.log()
        assert api.redis.hgetall(f"offload:job:{job_id}:reachability") == {}
