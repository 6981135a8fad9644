"""User job types (tests/plugins/sdk_jobs.py, loaded through OFFLOAD_JOB_MODULES) run by a real
worker behind the real API: each promise of the job SDK, observed from outside."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from offload_dev.processes import Service
from tests.support import TEST_SETTINGS, wait_job
from tests.support import cluster as own_cluster

FINISHED = {"succeeded", "failed", "cancelled"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, Service]]:
    base = tmp_path_factory.mktemp("sdk")
    env = {
        **TEST_SETTINGS,
        "OFFLOAD_JOB_MODULES": "tests.plugins.sdk_jobs",
        # No exemption: the outbound client must refuse loopback here.
        "OFFLOAD_OUTBOUND_ALLOWED_HOSTS": "",
        "OFFLOAD_LOG_FORMAT": "json",
    }
    with own_cluster(base, env) as own:
        own.start_api()
        worker = own.start_worker("worker")
        yield own.client, worker


def run(client: httpx.Client, job_type: str, payload: dict[str, Any]) -> dict[str, Any]:
    response = client.post(f"/v1/jobs/{job_type}", json={"payload": payload})
    assert response.status_code == 202, response.text
    return wait_job(client, response.json()["id"], FINISHED)


def test_the_plugin_types_are_listed_with_their_declared_options(cluster: tuple[httpx.Client, Service]) -> None:
    client, _ = cluster
    types = {t["name"]: t for t in client.get("/v1/job-types").json()["job_types"]}

    assert {"sdk.async_sum", "sdk.flaky", "sdk.permanent", "sdk.fetch", "sdk.slow", "offload.echo"} <= set(types)
    assert types["sdk.flaky"]["max_retries"] == 2
    assert types["sdk.slow"]["time_limit_seconds"] == 1
    assert types["sdk.async_sum"]["result_schema"]["required"] == ["total", "steps"]
    assert types["sdk.async_sum"]["description"].startswith("Adds the numbers in steps")


def test_an_async_handler_reports_progress_and_returns_its_typed_result(
    cluster: tuple[httpx.Client, Service],
) -> None:
    client, worker = cluster

    done = run(client, "sdk.async_sum", {"numbers": [1, 2, 3, 4]})

    assert done["status"] == "succeeded", done
    assert done["result"] == {"total": 10, "steps": 4}
    assert done["progress"] == {"percent": 100, "message": "4 of 4"}
    lines = [json.loads(line) for line in Path(worker.log).read_text().splitlines() if line.startswith("{")]
    logged = [line for line in lines if line.get("message") == "summed 4 numbers"]
    assert logged, worker.log_tail()
    assert logged[0]["job_id"] == done["id"]
    assert logged[0]["task"] == "sdk.async_sum"


def test_a_plain_exception_is_retried_up_to_the_declared_retries(cluster: tuple[httpx.Client, Service]) -> None:
    client, _ = cluster

    recovered = run(client, "sdk.flaky", {"failures": 2})
    exhausted = run(client, "sdk.flaky", {"failures": 5})

    assert recovered["status"] == "succeeded", recovered
    assert (recovered["attempts"], recovered["result"]) == (3, {"attempt": 3})
    assert exhausted["status"] == "failed", exhausted
    assert exhausted["attempts"] == 3  # the first run and max_retries=2 retries
    assert "ConnectionError: attempt 3 failed" in exhausted["error"]


def test_a_permanent_error_fails_at_once_and_leaves_a_dead_letter(cluster: tuple[httpx.Client, Service]) -> None:
    client, _ = cluster

    done = run(client, "sdk.permanent", {})

    assert done["status"] == "failed", done
    assert (done["attempts"], done["error"]) == (1, "the partner refused this order for good")
    letter = client.get(f"/v1/dead-letters/{done['id']}")
    assert letter.status_code == 200, letter.text
    assert letter.json()["task"] == "sdk.permanent"


def test_a_result_that_breaks_the_declared_model_fails_the_job(cluster: tuple[httpx.Client, Service]) -> None:
    client, _ = cluster

    done = run(client, "sdk.bad_result", {})

    assert done["status"] == "failed", done
    assert done["attempts"] == 1
    assert "returned an invalid result" in done["error"]
    assert "total" in done["error"]


def test_the_outbound_client_refuses_a_private_address_for_good(cluster: tuple[httpx.Client, Service]) -> None:
    client, _ = cluster

    done = run(client, "sdk.fetch", {"url": "http://127.0.0.1:9/"})

    assert done["status"] == "failed", done
    assert done["attempts"] == 1  # refused, not retried
    assert "outbound request refused" in done["error"]
    assert "loopback" in done["error"]


def test_the_declared_time_limit_stops_an_attempt(cluster: tuple[httpx.Client, Service]) -> None:
    client, _ = cluster

    done = run(client, "sdk.slow", {"seconds": 5})

    assert done["status"] == "failed", done
    assert done["error"] == "timed out after 1 s"


def test_the_api_validates_a_plugin_payload_against_its_model(cluster: tuple[httpx.Client, Service]) -> None:
    client, _ = cluster
    response = client.post("/v1/jobs/sdk.async_sum", json={"payload": {"numbers": []}})

    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == "body.payload.numbers"
