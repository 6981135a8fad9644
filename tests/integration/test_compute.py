"""POST /v1/compute: statistics computed by a process pool inside a real API process, fed by a
bounded priority queue; statuses through GET /v1/jobs/{id}, depth through GET /v1/queues."""

from __future__ import annotations

import os
import random
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from offload_dev.polling import wait_for
from tests.integration.standalone_api import StandaloneApi, pool_processes, standalone_api, stopped
from tests.support import Stack, job, wait_job

FINISHED = {"succeeded", "failed", "cancelled"}


def submit(client: httpx.Client, **body: Any) -> str:
    response = client.post("/v1/compute", json=body)
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert (accepted["task"], accepted["queue"], accepted["status"]) == ("offload.compute", "in-process", "queued")
    assert response.headers["location"] == accepted["status_url"] == f"/v1/jobs/{accepted['id']}"
    job_id: str = accepted["id"]
    return job_id


def test_the_result_matches_a_computation_in_the_test(stack: Stack) -> None:
    rng = random.Random(7)
    numbers = [rng.gauss(100, 15) for _ in range(20_000)] + [rng.randint(-50, 50) for _ in range(1_001)]
    wanted = [1, 25, 50, 90, 99]
    job_id = submit(stack.client, numbers=numbers, percentiles=[*wanted, 99.9])

    done = wait_job(stack.client, job_id, FINISHED)
    assert done["status"] == "succeeded", done
    assert (done["queue"], done["attempts"], done["progress"]["percent"]) == ("in-process", 1, 100)
    assert done["worker"].startswith("in-process@")
    result = done["result"]
    assert result["count"] == len(numbers)
    assert result["mean"] == pytest.approx(statistics.mean(numbers), rel=1e-12)
    assert result["median"] == statistics.median(numbers)
    assert result["stdev"] == pytest.approx(statistics.stdev(numbers), rel=1e-12)
    assert (result["min"], result["max"]) == (min(numbers), max(numbers))
    # For whole percents, linear interpolation is statistics.quantiles' "inclusive" method.
    cuts = statistics.quantiles(numbers, n=100, method="inclusive")
    for percent in wanted:
        assert result["percentiles"][str(percent)] == pytest.approx(cuts[percent - 1], rel=1e-12)
    ordered = sorted(numbers)
    rank = 0.999 * (len(ordered) - 1)
    low = int(rank)
    expected = ordered[low] + (ordered[low + 1] - ordered[low]) * (rank - low)
    assert result["percentiles"]["99.9"] == pytest.approx(expected, rel=1e-12)


def test_one_number_has_no_standard_deviation_and_default_percentiles(stack: Stack) -> None:
    done = wait_job(stack.client, submit(stack.client, numbers=[42]), FINISHED)
    assert done["status"] == "succeeded", done
    assert done["result"] == {
        "count": 1,
        "mean": 42.0,
        "median": 42,
        "stdev": None,
        "min": 42.0,
        "max": 42.0,
        "percentiles": {"50": 42.0, "90": 42.0, "95": 42.0, "99": 42.0},
    }


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"numbers": []}, "body.numbers"),
        ({"numbers": ["1.5"]}, "body.numbers.0"),
        ({"numbers": [1, True]}, "body.numbers.1"),
        ({"numbers": [1], "percentiles": [101]}, "body.percentiles.0"),
        ({"numbers": [1], "percentiles": list(range(21))}, "body.percentiles"),
        ({"numbers": [1], "priority": 10}, "body.priority"),
        ({"numbers": [1], "queue": "low"}, "body.queue"),
        ({"numbers": list(range(100_001))}, "body.numbers"),  # OFFLOAD_COMPUTE_MAX_NUMBERS
    ],
)
def test_invalid_input_is_refused_naming_the_field(stack: Stack, body: dict[str, Any], field: str) -> None:
    response = stack.client.post("/v1/compute", json=body)
    assert response.status_code == 422, response.text
    assert field in [error["field"] for error in response.json()["errors"]]


def test_not_a_number_is_refused(stack: Stack) -> None:
    response = stack.client.post(
        "/v1/compute", content=b'{"numbers": [1, NaN]}', headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == "body.numbers.1"


def test_a_repeated_idempotency_key_returns_the_first_job(stack: Stack) -> None:
    headers = {"Idempotency-Key": f"compute-{time.time_ns()}"}
    first = stack.client.post("/v1/compute", json={"numbers": [1, 2]}, headers=headers)
    again = stack.client.post("/v1/compute", json={"priority": 3, "numbers": [1, 2]}, headers=headers)
    other = stack.client.post("/v1/compute", json={"numbers": [1, 2, 3]}, headers=headers)
    assert (first.status_code, again.status_code, other.status_code) == (202, 200, 422)  # another body: 422
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"


def test_the_in_process_queue_is_listed_with_the_celery_queues(stack: Stack) -> None:
    queues = {q["name"]: q for q in stack.client.get("/v1/queues").json()["queues"]}
    assert {"high", "default", "low"} < set(queues)
    assert queues["in-process"] == {
        "name": "in-process",
        "depth": 0,
        "consumers": 2,  # OFFLOAD_COMPUTE_WORKERS
        "oldest_age_seconds": None,
        "dead_letters": 0,
    }


def _blocked_pool(api: StandaloneApi) -> int:
    """The API's one pool process, once it exists (spawned at start)."""
    [pid] = wait_for(lambda: pool_processes(api.api.process.pid), 30, "the compute pool process")
    return pid


def _in_process_queue(api: StandaloneApi) -> dict[str, Any]:
    queues = {q["name"]: q for q in api.client.get("/v1/queues").json()["queues"]}
    queue: dict[str, Any] = queues["in-process"]
    return queue


def test_priorities_order_the_queue_and_a_full_queue_answers_429(tmp_path: Path) -> None:
    with standalone_api(tmp_path, COMPUTE_WORKERS="1", COMPUTE_QUEUE_MAX="4") as api:
        with stopped(_blocked_pool(api)):
            # The pool process is stopped: the first job runs "forever", the others wait.
            running = submit(api.client, numbers=[0])
            wait_job(api.client, running, {"started"})
            waiting = {
                "low": submit(api.client, numbers=[1], priority=9),
                "middle-first": submit(api.client, numbers=[2], priority=5),
                "urgent": submit(api.client, numbers=[3], priority=0),
                "middle-second": submit(api.client, numbers=[4], priority=5),
            }
            full = api.client.post("/v1/compute", json={"numbers": [5]})
            assert full.status_code == 429, full.text
            assert full.json()["code"] == "queue_full"
            assert "OFFLOAD_COMPUTE_QUEUE_MAX" in full.json()["detail"]
            assert 1 <= int(full.headers["retry-after"]) <= 60
            queue = _in_process_queue(api)
            assert (queue["depth"], queue["consumers"]) == (4, 1)
            assert queue["oldest_age_seconds"] > 0
            # A waiting computation can be cancelled like any job; it never runs.
            second = waiting.pop("middle-second")
            cancelled = api.client.delete(f"/v1/jobs/{second}")
            assert cancelled.status_code == 200, cancelled.text
        jobs = {name: wait_job(api.client, job_id, FINISHED) for name, job_id in waiting.items()}
        assert all(done["status"] == "succeeded" for done in jobs.values()), jobs
        order = sorted(jobs, key=lambda name: jobs[name]["started_at"])
        assert order == ["urgent", "middle-first", "low"]
        assert job(api.client, running)["started_at"] < jobs["urgent"]["started_at"]
        assert (job(api.client, second)["status"], job(api.client, second)["attempts"]) == ("cancelled", 0)
        assert _in_process_queue(api)["depth"] == 0


def test_shutdown_fails_waiting_and_unfinished_computations_with_a_reason(tmp_path: Path) -> None:
    with standalone_api(tmp_path, COMPUTE_WORKERS="1", API_SHUTDOWN_TASKS_TIMEOUT_SECONDS="1") as api:
        pid = _blocked_pool(api)
        with stopped(pid):
            running = submit(api.client, numbers=[1, 2, 3])
            wait_job(api.client, running, {"started"})
            waiting = [submit(api.client, numbers=[n]) for n in range(3)]
            started = time.monotonic()
            api.stop_and_wait(timeout=15)
            took = time.monotonic() - started
        # The running one had its second, then its process was ended; the waiting ones at once.
        assert took < 10, f"shutdown took {took:.1f}s"
        for job_id in [running, *waiting]:
            record = api.redis.hgetall(f"offload:job:{job_id}")
            assert (record["status"], record["error"]) == ("failed", "API shutting down; resubmit"), record
        log = api.log()
        assert "failed 3 waiting computations" in log
        assert f"failed 1 computations still running after 1.0s: {running}" in log
        wait_for(lambda: not _exists(pid), 5, "the stopped pool process to be gone")


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
