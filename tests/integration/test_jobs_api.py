"""The API and real workers over HTTP: submit, progress, retries, cancellation, auth, validation."""

from __future__ import annotations

import httpx
import pytest

from offload_dev.polling import wait_for
from tests.support import Stack, api_client, job, submit_echo, wait_job


@pytest.mark.parametrize(
    ("queue", "runs_on"), [("high", "notifier@test"), ("default", "worker@test"), ("low", "worker@test")]
)
def test_echo_runs_on_the_workers_of_its_queue(stack: Stack, queue: str, runs_on: str) -> None:
    job_id = submit_echo(stack.client, message=f"hello {queue}", queue=queue)
    done = wait_job(stack.client, job_id, {"succeeded", "failed"})
    assert done["status"] == "succeeded", done
    assert done["queue"] == queue
    assert done["result"] == {"message": f"hello {queue}", "attempts": 1, "worker": runs_on}
    assert done["worker"] == runs_on
    assert done["progress"]["percent"] == 100
    assert done["started_at"] is not None
    assert done["created_at"] <= done["started_at"] <= done["finished_at"]


def test_submit_answers_202_with_a_status_url(stack: Stack) -> None:
    response = stack.client.post("/v1/jobs/echo", json={"message": "x"})
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "queued"
    assert body["queue"] == "default"  # the route's default when the request names none
    assert response.headers["location"] == body["status_url"] == f"/v1/jobs/{body['id']}"


def test_progress_is_visible_while_the_job_runs(stack: Stack) -> None:
    job_id = submit_echo(stack.client, sleep_ms=2500)

    def mid_run() -> dict[str, object] | None:
        current = job(stack.client, job_id)
        return current if current["status"] == "started" and 0 < current["progress"]["percent"] < 100 else None

    seen = wait_for(mid_run, 10, "progress between 0 and 100 while started")
    assert "slept" in seen["progress"]["message"]  # type: ignore[index]
    assert wait_job(stack.client, job_id, {"succeeded"})["progress"]["percent"] == 100


def test_transient_failures_are_retried_until_success(stack: Stack) -> None:
    job_id = submit_echo(stack.client, fail_times=2)
    done = wait_job(stack.client, job_id, {"succeeded", "failed"})
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 3
    assert done["result"]["attempts"] == 3
    assert done["error"] is None  # the earlier attempts' error no longer describes the job


def test_a_job_that_keeps_failing_ends_failed_with_its_error(stack: Stack) -> None:
    job_id = submit_echo(stack.client, fail_times=10)  # more than OFFLOAD_TASK_MAX_RETRIES=3
    done = wait_job(stack.client, job_id, {"succeeded", "failed"})
    assert done["status"] == "failed"
    assert done["attempts"] == 4  # the first run and three retries
    assert done["error"] == "TransientJobError: planned failure 4 of 10"


def test_cancelling_a_queued_job_means_it_never_runs(stack: Stack) -> None:
    # Occupy both of the worker's processes so the next job waits in the queue.
    blockers = [submit_echo(stack.client, sleep_ms=2000, queue="low") for _ in range(2)]
    for blocker in blockers:
        wait_job(stack.client, blocker, {"started"})
    waiting = submit_echo(stack.client, queue="low")
    assert job(stack.client, waiting)["status"] == "queued"

    response = stack.client.delete(f"/v1/jobs/{waiting}")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"

    for blocker in blockers:
        wait_job(stack.client, blocker, {"succeeded"})
    # The worker has taken the cancelled message by now (the queue is empty) and skipped it.
    wait_for(lambda: _depth(stack.client, "low") == 0, 10, "the low queue to drain")
    after = job(stack.client, waiting)
    assert after["status"] == "cancelled"
    assert after["attempts"] == 0
    assert after["started_at"] is None
    assert stack.client.delete(f"/v1/jobs/{waiting}").status_code == 409


def test_cancelling_a_running_job_stops_it(stack: Stack) -> None:
    job_id = submit_echo(stack.client, sleep_ms=8000)
    wait_job(stack.client, job_id, {"started"})
    response = stack.client.delete(f"/v1/jobs/{job_id}")
    assert response.status_code == 202
    assert response.json()["cancel_requested"] is True
    done = wait_job(stack.client, job_id, {"cancelled", "succeeded", "failed"}, timeout=3)
    assert done["status"] == "cancelled"
    assert done["result"] is None


def test_unknown_job_is_404_with_a_message(stack: Stack) -> None:
    for method in ("GET", "DELETE"):
        response = stack.client.request(method, "/v1/jobs/0123456789abcdef0123456789abcdef")
        assert response.status_code == 404
        assert "No job 0123456789abcdef0123456789abcdef" in response.json()["detail"]


@pytest.mark.parametrize("key", [None, "wrong-key-0123456789abcdef"])
def test_v1_requires_an_api_key(stack: Stack, key: str | None) -> None:
    with api_client(stack.api, key=key) as client:
        for method, path in [("POST", "/v1/jobs/echo"), ("GET", "/v1/jobs/x"), ("GET", "/v1/queues")]:
            response = client.request(method, path, json={"message": "x"})
            assert response.status_code == 401, (method, path)
            assert response.json()["code"] == "unauthorized"
            assert response.headers["www-authenticate"] == "Bearer"
        assert client.get("/livez").status_code == 200  # probes stay open


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"message": "x", "sleep_ms": 60_001}, "body.sleep_ms"),
        ({"message": "x", "queue": "urgent"}, "body.queue"),
        ({"message": "x", "priority": 10}, "body.priority"),
        ({"message": "x", "surprise": True}, "body.surprise"),
        ({"sleep_ms": 1}, "body.message"),
        ({"message": "x", "fail_times": -1}, "body.fail_times"),
    ],
)
def test_invalid_input_is_422_naming_the_field(stack: Stack, body: dict[str, object], field: str) -> None:
    response = stack.client.post("/v1/jobs/echo", json=body)
    assert response.status_code == 422
    payload = response.json()
    assert payload["code"] == "invalid_request"
    assert field in [error["field"] for error in payload["errors"]]
    assert field in payload["detail"]


def test_malformed_json_and_oversized_bodies_are_4xx(stack: Stack) -> None:
    response = stack.client.post("/v1/jobs/echo", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422
    huge = b'{"message": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    response = stack.client.post("/v1/jobs/echo", content=huge, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"


def test_queues_report_consumers_per_queue(stack: Stack) -> None:
    queues = {q["name"]: q for q in stack.client.get("/v1/queues").json()["queues"]}
    assert set(queues) == {"high", "default", "low", "in-process"}  # in-process: the API's own (POST /v1/compute)
    assert queues["high"]["consumers"] == 1  # the notifier alone
    assert queues["default"]["consumers"] == 1
    assert queues["low"]["consumers"] == 1


def test_readyz_is_200_while_redis_answers(stack: Stack) -> None:
    assert httpx.get(f"{stack.api.extra['url']}/readyz").json() == {"status": "ready"}


def _depth(client: httpx.Client, queue: str) -> int:
    queues = {q["name"]: q for q in client.get("/v1/queues").json()["queues"]}
    depth: int = queues[queue]["depth"]
    return depth
