"""The audit trail in a real API process: every accepted POST and DELETE under /v1 becomes an
entry in a capped Redis stream, written after the response, and GET /v1/audit pages through it."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import redis

from offload_dev.polling import wait_for
from tests.integration.standalone_api import standalone_api
from tests.support import API_KEY, Stack, submit_echo

STREAM = "offload:audit"
KEY_ID = hashlib.sha256(API_KEY.encode()).hexdigest()[:16]  # as the README says to compute it


def stream_order(stream_id: str) -> tuple[int, int]:
    milliseconds, sequence = stream_id.split("-")
    return int(milliseconds), int(sequence)


def entries_for(client: httpx.Client, job_id: str, count: int, **query: Any) -> list[dict[str, Any]]:
    """The newest entries naming the job, once ``count`` of them are there."""

    def found() -> list[dict[str, Any]] | None:
        page = client.get("/v1/audit", params={"limit": 200, **query})
        assert page.status_code == 200, page.text
        matching = [entry for entry in page.json()["entries"] if entry["job_id"] == job_id]
        return matching if len(matching) >= count else None

    return wait_for(found, 10, f"{count} audit entries for job {job_id}")


def test_accepted_submissions_and_deletions_are_audited(stack: Stack) -> None:
    before = datetime.now(UTC)
    job_id = submit_echo(stack.client, sleep_ms=5000)
    cancel = stack.client.delete(f"/v1/jobs/{job_id}")
    assert cancel.status_code in {200, 202}, cancel.text

    deleted, submitted = entries_for(stack.client, job_id, 2)  # newest first
    assert submitted["method"] == "POST"
    assert (submitted["route"], submitted["path"], submitted["status"]) == ("/v1/jobs/echo", "/v1/jobs/echo", 202)
    assert (deleted["method"], deleted["route"]) == ("DELETE", "/v1/jobs/{job_id}")
    assert (deleted["path"], deleted["status"]) == (f"/v1/jobs/{job_id}", cancel.status_code)
    for entry in (submitted, deleted):
        assert entry["key_id"] == KEY_ID
        assert before <= datetime.fromisoformat(entry["at"]) <= datetime.now(UTC)
        assert len(entry["trace_id"]) == 32
    assert stream_order(submitted["id"]) < stream_order(deleted["id"])
    # The key itself is nowhere in the stream.
    with redis.Redis.from_url(stack.redis.url, decode_responses=True) as client:
        assert API_KEY not in str(client.xrange(STREAM))


def test_refused_requests_and_reads_are_not_audited(stack: Stack) -> None:
    submit_echo(stack.client)  # so the stream is not empty
    wait_for(lambda: stack.client.get("/v1/audit", params={"limit": 1}).json()["entries"], 10, "an entry")
    [newest] = stack.client.get("/v1/audit", params={"limit": 1}).json()["entries"]
    assert stack.client.post("/v1/jobs/echo", json={"message": "x", "sleep_ms": -1}).status_code == 422
    assert stack.client.delete("/v1/dead-letters/no-such-letter").status_code == 404
    assert stack.client.post("/v1/compute", json={"numbers": []}).status_code == 422
    assert httpx.post(f"{stack.api.extra['url']}/v1/jobs/echo", json={"message": "x"}).status_code == 401
    assert stack.client.get("/v1/queues").status_code == 200
    # A marker submission: once its entry is there, any entry for the requests above would be too.
    marker = submit_echo(stack.client)
    [entry] = entries_for(stack.client, marker, 1)
    page = stack.client.get("/v1/audit", params={"limit": 10}).json()["entries"]
    since = [e for e in page if stream_order(e["id"]) > stream_order(newest["id"])]
    assert since == [entry], since


def test_pages_run_newest_first_with_a_cursor_and_filters(stack: Stack) -> None:
    submitted = [submit_echo(stack.client, sleep_ms=5000 if n == 0 else 0) for n in range(5)]
    deleted = stack.client.delete(f"/v1/jobs/{submitted[0]}")  # still waiting or running: accepted
    assert deleted.status_code in {200, 202}, deleted.text
    entries_for(stack.client, submitted[0], 2)

    seen: list[dict[str, Any]] = []
    cursor = None
    while len([e for e in seen if e["job_id"] in submitted]) < 5:
        params: dict[str, Any] = {"limit": 2, "method": "POST", "key_id": KEY_ID}
        if cursor:
            params["cursor"] = cursor
        page = stack.client.get("/v1/audit", params=params).json()
        assert len(page["entries"]) <= 2
        seen.extend(page["entries"])
        cursor = page["next_cursor"]
        assert cursor is not None, "the stream ended before all five submissions were seen"
    assert all(e["method"] == "POST" and e["key_id"] == KEY_ID for e in seen)
    ids = [e["id"] for e in seen]
    assert len(set(ids)) == len(ids), "an entry appeared on two pages"
    assert [stream_order(i) for i in ids] == sorted((stream_order(i) for i in ids), reverse=True)
    assert [e["job_id"] for e in seen if e["job_id"] in submitted] == submitted[::-1]

    deletes = stack.client.get("/v1/audit", params={"method": "DELETE", "limit": 50}).json()["entries"]
    assert deletes
    assert all(e["method"] == "DELETE" for e in deletes)
    assert submitted[0] in [e["job_id"] for e in deletes]
    nobody = stack.client.get("/v1/audit", params={"key_id": "anonymous"}).json()
    assert nobody == {"entries": [], "next_cursor": None}


def test_bad_query_parameters_are_refused(stack: Stack) -> None:
    too_large = f"{2**64}-0"  # stream id halves are 64-bit
    for params in (
        {"cursor": "yesterday"},
        {"cursor": too_large},
        {"key_id": "not an id!"},
        {"method": "GET"},
        {"limit": 0},
    ):
        response = stack.client.get("/v1/audit", params=params)
        assert response.status_code == 422, (params, response.text)
    # The oldest possible cursor: nothing comes before it.
    assert stack.client.get("/v1/audit", params={"cursor": "0-0"}).json() == {"entries": [], "next_cursor": None}


def test_every_v1_router_audits_including_async_routes(stack: Stack) -> None:
    compute = stack.client.post("/v1/compute", json={"numbers": [1, 2, 3]})
    assert compute.status_code == 202
    [entry] = entries_for(stack.client, compute.json()["id"], 1)
    assert (entry["route"], entry["status"]) == ("/v1/compute", 202)


def test_a_failed_audit_write_never_fails_the_request(tmp_path: Path) -> None:
    with standalone_api(tmp_path) as api:
        api.redis.set(STREAM, "not a stream")  # every XADD now fails with WRONGTYPE
        response = api.client.post("/v1/jobs/echo", json={"message": "audited?"})
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        assert api.client.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"
        logged = f"audit entry not written for POST /v1/jobs/echo (status 202, job {job_id})"
        wait_for(lambda: logged in api.log(), 10, "the failed write to be logged")
        assert "Traceback" not in api.log()

        api.redis.delete(STREAM)
        again = submit_echo(api.client)
        assert [e["job_id"] for e in entries_for(api.client, again, 1)] == [again]


def test_the_stream_keeps_about_audit_max_entries(tmp_path: Path) -> None:
    with standalone_api(tmp_path, AUDIT_MAX_ENTRIES="100") as api:
        last = ""
        for _ in range(300):
            last = submit_echo(api.client)
        entries_for(api.client, last, 1)  # the last write is in, and the trim ran with it
        # Approximate trimming removes whole stream nodes (100 entries each by default).
        assert 100 <= api.redis.xlen(STREAM) <= 200


def test_the_callers_trace_continues_when_spans_are_not_exported(tmp_path: Path) -> None:
    """No OTLP endpoint: spans are not recorded, yet the request continues the caller's trace
    (W3C traceparent), so the audit entry and the API's log line name the caller's trace id."""
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    with standalone_api(tmp_path) as api:
        response = api.client.post(
            "/v1/jobs/echo",
            json={"message": "traced"},
            headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"},
        )
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        (entry,) = entries_for(api.client, job_id, 1)
        assert entry["trace_id"] == trace_id
        untraced = submit_echo(api.client)
        (other,) = entries_for(api.client, untraced, 1)
        assert len(other["trace_id"]) == 32
        assert other["trace_id"] != trace_id  # a new trace for a caller that sent none
        wait_for(lambda: f'"job_id": "{job_id}"' in api.log(), 10, "the access line naming the job")
        (line,) = [line for line in api.log().splitlines() if f'"job_id": "{job_id}"' in line]
        assert f'"trace_id": "{trace_id}"' in line
        assert "POST /v1/jobs/echo" in line
