"""The generic job API on the real stack: job types, typed submit operations, listing, events."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.support import Stack, wait_job


def submit(client: httpx.Client, job_type: str, body: dict[str, Any]) -> httpx.Response:
    return client.post(f"/v1/jobs/{job_type}", json=body)


def sse(client: httpx.Client, path: str, headers: dict[str, str] | None = None) -> Iterator[tuple[str, str, Any]]:
    """(event, id, data) of a Server-Sent Events stream, until the server closes it."""
    with client.stream("GET", path, headers=headers, timeout=30) as response:
        assert response.status_code == 200, response.read()
        fields: dict[str, str] = {}
        for line in response.iter_lines():
            if not line:
                if "data" in fields:
                    yield fields.get("event", "message"), fields.get("id", ""), json.loads(fields["data"])
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")


def test_job_types_lists_the_built_ins_with_their_routing_and_schemas(stack: Stack) -> None:
    response = stack.client.get("/v1/job-types")

    assert response.status_code == 200, response.text
    types = {t["name"]: t for t in response.json()["job_types"]}
    echo = types["offload.echo"]
    assert (echo["queue"], echo["queues"], echo["priority"]) == ("default", ["default", "high", "low"], 3)
    assert echo["max_retries"] == 3  # OFFLOAD_TASK_MAX_RETRIES of the test settings
    assert echo["time_limit_seconds"] == 8
    assert echo["request_schema"]["required"] == ["message"]
    assert echo["consumed"] is True  # the stack's worker consumes default
    assert echo["submit_url"] == "/v1/jobs/offload.echo"


def test_a_typed_submit_runs_the_job_and_its_status_carries_the_result(stack: Stack) -> None:
    response = submit(stack.client, "offload.echo", {"payload": {"message": "typed"}, "queue": "low", "priority": 6})

    assert response.status_code == 202, response.text
    accepted = response.json()
    assert (accepted["task"], accepted["queue"], accepted["priority"]) == ("offload.echo", "low", 6)
    assert response.headers["Location"] == f"/v1/jobs/{accepted['id']}"
    done = wait_job(stack.client, accepted["id"], {"succeeded", "failed"})
    assert done["status"] == "succeeded", done
    assert done["result"]["message"] == "typed"
    assert (done["queue"], done["priority"]) == ("low", 6)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"payload": {"message": "x"}, "queue": "nowhere"}, ["body", "queue"]),
        ({"payload": {"message": "x", "colour": "red"}}, ["body", "payload", "colour"]),
        ({"payload": {}}, ["body", "payload", "message"]),
        ({"message": "x"}, ["body", "payload"]),
        ({"payload": {"message": "x"}, "priority": 10}, ["body", "priority"]),
    ],
)
def test_a_bad_submission_is_a_422_naming_the_field(stack: Stack, body: dict[str, Any], field: list[str]) -> None:
    response = submit(stack.client, "offload.echo", body)

    assert response.status_code == 422, response.text
    assert ".".join(field) in [error["field"] for error in response.json()["errors"]], response.text


def test_an_unknown_job_type_is_a_404_naming_the_known_ones(stack: Stack) -> None:
    response = submit(stack.client, "acme.nothing", {"payload": {}})

    assert response.status_code == 404, response.text
    assert "acme.nothing" in response.json()["detail"]
    assert "offload.echo" in response.json()["detail"]


def test_every_job_type_has_its_own_operation_in_the_openapi_schema(stack: Stack) -> None:
    schema = stack.client.get("/openapi.json").json()
    names = [t["name"] for t in stack.client.get("/v1/job-types").json()["job_types"]]

    for name in names:
        operation = schema["paths"][f"/v1/jobs/{name}"]["post"]
        body_ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        body = schema["components"]["schemas"][body_ref.rsplit("/", 1)[-1]]
        assert list(body["properties"]) == ["payload", "queue", "priority", "run_at", "delay_seconds"], body
    assert "/v1/jobs/{job_type}" not in schema["paths"]  # the 404 catch-all is not an operation


def test_listing_is_newest_first_filtered_and_paged_without_gaps(stack: Stack) -> None:
    since = datetime.now(UTC)
    ids = []
    for n in range(5):
        response = submit(stack.client, "offload.echo", {"payload": {"message": f"list {n}"}, "queue": "low"})
        ids.append(response.json()["id"])
    for job_id in ids:
        wait_job(stack.client, job_id, {"succeeded"})

    pages: list[list[str]] = []
    params: dict[str, Any] = {"type": "offload.echo", "created_after": since.isoformat(), "limit": 2}
    while True:
        page = stack.client.get("/v1/jobs", params=params)
        assert page.status_code == 200, page.text
        pages.append([j["id"] for j in page.json()["jobs"]])
        if page.json()["next_cursor"] is None:
            break
        params["cursor"] = page.json()["next_cursor"]

    assert [job_id for page in pages for job_id in page] == list(reversed(ids))
    assert all(len(page) <= 2 for page in pages)
    assert (
        stack.client.get("/v1/jobs", params={"status": "failed", "created_after": since.isoformat()}).json()["jobs"]
        == []
    )
    on_low = stack.client.get("/v1/jobs", params={"queue": "low", "created_after": since.isoformat()}).json()
    assert {j["id"] for j in on_low["jobs"]} == set(ids)


@pytest.mark.parametrize(
    "params",
    [{"cursor": "not-a-cursor"}, {"created_after": "yesterday"}, {"limit": 0}, {"created_before": "2026-01-01T00:00"}],
)
def test_a_bad_listing_query_is_a_422(stack: Stack, params: dict[str, str]) -> None:
    response = stack.client.get("/v1/jobs", params=params)

    assert response.status_code == 422, response.text


def test_events_follow_a_job_to_its_end_and_resume_after_the_last_seen_state(stack: Stack) -> None:
    response = submit(stack.client, "offload.echo", {"payload": {"message": "events", "sleep_ms": 1500}})
    job_id = response.json()["id"]

    events = list(sse(stack.client, f"/v1/jobs/{job_id}/events"))

    *progress, (end_event, end_id, end) = events
    assert end_event == "end"
    assert end["status"] == "succeeded"
    assert end["result"]["message"] == "events"
    assert [e for e, _, _ in progress] == ["progress"] * len(progress)
    assert len({d["percent"] for _, _, d in progress}) >= 3, progress  # steps on the way
    assert [float(i) for _, i, _ in progress] == sorted({float(i) for _, i, _ in progress})
    # Resuming after the final state sends nothing new but the end.
    again = list(sse(stack.client, f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": end_id}))
    assert [e for e, _, _ in again] == ["end"]
    # Resuming after an older state sends the newer one first.
    again = list(sse(stack.client, f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": progress[0][1]}))
    assert [e for e, _, _ in again] == ["progress", "end"]
    assert again[0][2]["status"] == "succeeded"


def test_events_of_an_unknown_job_are_a_404(stack: Stack) -> None:
    assert stack.client.get(f"/v1/jobs/nope{int(time.time())}/events").status_code == 404
