"""Reports end to end: real workers fetch generated CSV and JSON Lines from an HTTP server on
loopback (chunked, with and without Content-Length), the aggregates are compared exactly with a
computation in the test, progress is read as Server-Sent Events, results are downloaded, and each
limit fails the report with a clear error. A 1,000,000-row source runs on a worker whose peak
memory the test measures."""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import redis

from offload_dev.polling import wait_for
from offload_dev.processes import Service
from tests.integration.standalone_api import standalone_api
from tests.support import TEST_SETTINGS, Stack, cluster, wait_job

# --- the generated source ----------------------------------------------------------------

CITIES = ("Zürich", "東京", "Oslo", "São Paulo", "Lagos", "Lima", "Perth")  # multi-byte UTF-8 on purpose
PRODUCTS = ("tea", "coffee", "cocoa", "mate")
NOTE = "padding that makes each row about a hundred bytes long as real rows are"
COLUMNS = ("city", "product", "qty", "price", "note")


def values(i: int) -> tuple[str, str, int, float]:
    """Row i's city, product, qty and price."""
    return CITIES[i % 7], PRODUCTS[(i // 7) % 4], (i * 31) % 100, ((i * 17) % 10_000) / 100


def is_malformed(i: int, every: int) -> bool:
    return every > 0 and i % every == every - 1


def source_lines(fmt: str, rows: int, malformed_every: int = 0) -> Iterator[str]:
    """The source, line by line. Malformed rows alternate between a broken structure (a missing
    field, cut-off JSON) and a quantity that is not a number."""
    if fmt == "csv":
        yield ",".join(COLUMNS) + "\n"
    for i in range(rows):
        city, product, qty, price = values(i)
        malformed = is_malformed(i, malformed_every)
        broken_structure = malformed and (i // malformed_every) % 2 == 0
        quantity: object = "n/a" if malformed and not broken_structure else qty
        if fmt == "csv":
            # str(float) is its shortest round-trip form: the worker parses back the same float.
            line = f"{city},{product},{quantity},{price}" + ("" if broken_structure else f",{NOTE}")
        else:
            record = {"city": city, "product": product, "qty": quantity, "price": price, "note": NOTE}
            line = json.dumps(record, ensure_ascii=False)
            line = line[:20] if broken_structure else line
        yield line + "\n"


def expected_report(rows: int, malformed_every: int = 0, min_qty: int = 10) -> dict[tuple[str, str], dict[str, Any]]:
    """What the report of REPORT_SPEC must find, computed here row by row: count, sum of qty,
    avg/min of price, max of qty per (city, product), over rows with qty >= min_qty. Floats are
    added in row order, one by one, as any streaming sum does."""
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for i in range(rows):
        if is_malformed(i, malformed_every):
            continue
        city, product, qty, price = values(i)
        if qty < min_qty:
            continue
        group = groups.get((city, product))
        if group is None:
            group = groups[(city, product)] = {"count": 0, "sum_qty": 0, "price": 0, "min_price": price, "max_qty": qty}
        group["count"] += 1
        group["sum_qty"] += qty
        group["price"] += price
        group["min_price"] = min(group["min_price"], price)
        group["max_qty"] = max(group["max_qty"], qty)
    for group in groups.values():
        group["avg_price"] = group.pop("price") / group["count"]
    return groups


REPORT_SPEC: dict[str, Any] = {
    "group_by": ["city", "product"],
    "metrics": [
        {"op": "count"},
        {"op": "sum", "column": "qty"},
        {"op": "avg", "column": "price"},
        {"op": "min", "column": "price"},
        {"op": "max", "column": "qty"},
    ],
    "filters": [{"column": "qty", "op": ">=", "value": 10}],
}


def parsed_csv_report(body: bytes) -> dict[tuple[str, str], dict[str, Any]]:
    found = {}
    for row in csv.DictReader(io.StringIO(body.decode())):
        found[(row["city"], row["product"])] = {
            "count": int(row["count"]),
            "sum_qty": int(row["sum_qty"]),
            "avg_price": float(row["avg_price"]),
            "min_price": float(row["min_price"]),
            "max_qty": int(row["max_qty"]),
        }
    return found


def parsed_json_report(body: bytes) -> dict[tuple[str, str], dict[str, Any]]:
    document = json.loads(body)
    assert document["columns"] == ["city", "product", "count", "sum_qty", "avg_price", "min_price", "max_qty"]
    return {(row.pop("city"), row.pop("product")): row for row in document["rows"]}


# --- the HTTP server that serves it ---------------------------------------------------------


class SourceServer:
    """A threaded HTTP/1.1 server on loopback generating sources on the fly, never whole:

    - ``/data.csv`` and ``/data.jsonl``: query ``rows``, ``malformed_every``, ``length`` (1: with
      Content-Length, else chunked), ``delay_ms`` (a pause after every ``batch`` rows);
    - ``/status/<code>``: that status; ``/flaky/<name>?fail=N&...``: 503 for the first N requests
      of that name, then ``/data.csv`` with the same query;
    - ``/numbers?rows=N``: a column ``n`` of 0 to N-1;
    - ``/claims-huge``: a Content-Length of a terabyte; ``/endless-line?bytes=N``: one line of N bytes.

    Bodies are written in pieces of odd sizes, so rows and UTF-8 characters are split between
    them. ``went_away`` lists the paths whose client closed the connection before the end."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.went_away: list[str] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                self.close_connection = True  # one request a connection: nothing is left to read after a reset
                parts = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                with server.lock:
                    server.hits[parts.path] += 1
                    hits = server.hits[parts.path]
                try:
                    server.answer(self, parts.path, query, hits)
                except (BrokenPipeError, ConnectionResetError):
                    with server.lock:
                        server.went_away.append(parts.path)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str, **query: object) -> str:
        text = "&".join(f"{k}={v}" for k, v in query.items())
        return f"{self.base}{path}" + (f"?{text}" if text else "")

    def answer(self, handler: BaseHTTPRequestHandler, path: str, query: dict[str, str], hits: int) -> None:
        if path.startswith("/status/"):
            self.send_empty(handler, int(path.removeprefix("/status/")))
        elif path.startswith("/flaky/"):
            if hits <= int(query.get("fail", "1")):
                self.send_empty(handler, 503)
            else:
                self.send_source(handler, "csv", query)
        elif path == "/claims-huge":
            handler.send_response(200)
            handler.send_header("Content-Length", str(10**12))
            handler.end_headers()
            handler.wfile.write(b"a,b\n1,2\n")
        elif path == "/numbers":
            numbers = (f"{n}\n".encode() for n in range(int(query["rows"])))
            self.send_body(handler, itertools.chain([b"n\n"], numbers), None, 0)
        elif path == "/endless-line":
            self.send_body(handler, iter([b"x" * int(query["bytes"])]), None, 0)
        elif path in ("/data.csv", "/data.jsonl"):
            self.send_source(handler, path.rsplit(".", 1)[1], query)
        else:
            self.send_empty(handler, 404)

    @staticmethod
    def send_empty(handler: BaseHTTPRequestHandler, status: int) -> None:
        handler.send_response(status)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    def send_source(self, handler: BaseHTTPRequestHandler, fmt: str, query: dict[str, str]) -> None:
        rows, every = int(query.get("rows", "1000")), int(query.get("malformed_every", "0"))
        batch, delay = int(query.get("batch", "500")), int(query.get("delay_ms", "0")) / 1000
        length = None
        if query.get("length") == "1":
            length = sum(len(line.encode()) for line in source_lines(fmt, rows, every))

        def pieces() -> Iterator[bytes]:
            lines: list[str] = []
            for number, line in enumerate(source_lines(fmt, rows, every)):
                lines.append(line)
                if number % batch == 0:
                    yield "".join(lines).encode()
                    lines.clear()
            yield "".join(lines).encode()

        self.send_body(handler, pieces(), length, delay)

    @staticmethod
    def send_body(handler: BaseHTTPRequestHandler, pieces: Iterator[bytes], length: int | None, delay: float) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "text/plain; charset=utf-8")
        if length is None:
            handler.send_header("Transfer-Encoding", "chunked")
        else:
            handler.send_header("Content-Length", str(length))
        handler.end_headers()
        pending = b""
        for piece in pieces:
            pending += piece
            while len(pending) >= 8191:  # an odd size: pieces end mid-row and mid-character
                SourceServer.write(handler, pending[:8191], chunked=length is None)
                pending = pending[8191:]
            if delay:
                SourceServer.write(handler, pending, chunked=length is None)
                pending = b""
                time.sleep(delay)
        SourceServer.write(handler, pending, chunked=length is None)
        if length is None:
            handler.wfile.write(b"0\r\n\r\n")
        handler.wfile.flush()

    @staticmethod
    def write(handler: BaseHTTPRequestHandler, data: bytes, *, chunked: bool) -> None:
        if not data:
            return
        handler.wfile.write(f"{len(data):X}\r\n".encode() + data + b"\r\n" if chunked else data)

    def __enter__(self) -> SourceServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def source() -> Iterator[SourceServer]:
    with SourceServer() as server:
        yield server


# --- helpers ---------------------------------------------------------------------------------


def submit(client: httpx.Client, source_url: str, **spec: Any) -> str:
    body = {"source_url": source_url, "source_format": "jsonl" if ".jsonl" in source_url else "csv", **spec}
    response = client.post("/v1/reports", json=body)
    assert response.status_code == 202, response.text
    accepted = response.json()
    job_id: str = accepted["id"]
    assert (accepted["task"], accepted["queue"]) == ("offload.report", "low")
    assert accepted["status_url"] == f"/v1/reports/{job_id}" == response.headers["location"]
    assert accepted["events_url"] == f"/v1/reports/{job_id}/events"
    assert accepted["download_url"] == f"/v1/reports/{job_id}/download"
    return job_id


def report(client: httpx.Client, job_id: str) -> dict[str, Any]:
    response = client.get(f"/v1/reports/{job_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def finished(client: httpx.Client, job_id: str, timeout: float = 30) -> dict[str, Any]:
    wait_job(client, job_id, {"succeeded", "failed", "cancelled"}, timeout=timeout)
    return report(client, job_id)


def download(client: httpx.Client, job_id: str) -> httpx.Response:
    return client.get(f"/v1/reports/{job_id}/download")


@dataclass
class Event:
    event: str
    data: dict[str, Any]
    id: str | None


def read_events(client: httpx.Client, job_id: str, timeout: float = 30) -> Generator[Event, None, None]:
    """Server-Sent Events of a report, parsed as a browser would, until the server closes."""
    with client.stream("GET", f"/v1/reports/{job_id}/events", timeout=timeout) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        fields: dict[str, str] = {}
        for line in response.iter_lines():
            if not line:
                if "data" in fields:
                    yield Event(fields.get("event", "message"), json.loads(fields["data"]), fields.get("id"))
                fields = {}
            elif not line.startswith(":"):  # ":" starts a comment (keep-alive pings)
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")


# --- on the shared stack (its worker: soft time limit 8 s, default report limits) -------------


def test_csv_report_with_content_length_has_exact_aggregates(stack: Stack, source: SourceServer) -> None:
    rows = 30_000
    job_id = submit(stack.client, source.url("/data.csv", rows=rows, length=1), **REPORT_SPEC)
    done = finished(stack.client, job_id)

    assert done["status"] == "succeeded", done
    assert done["progress"]["percent"] == 100
    assert done["progress"]["message"].startswith("30,000 rows")
    summary = done["result"]
    assert (summary["rows_read"], summary["rows_malformed"]) == (rows, 0)
    assert summary["rows_matched"] == sum(g["count"] for g in expected_report(rows).values())
    assert summary["groups"] == len(expected_report(rows))
    assert summary["output_format"] == "csv"
    assert summary["download_url"] == f"/v1/reports/{job_id}/download"

    result = download(stack.client, job_id)
    assert result.status_code == 200, result.text
    assert result.headers["content-type"] == "text/csv; charset=utf-8"
    assert result.headers["content-disposition"] == f'attachment; filename="report-{job_id}.csv"'
    assert len(result.content) == summary["result_bytes"]
    assert parsed_csv_report(result.content) == expected_report(rows)
    ttl = redis.Redis.from_url(stack.redis.url).ttl(f"offload:report:{job_id}:result")
    assert 0 < ttl <= 24 * 3600  # kept for OFFLOAD_REPORT_RESULT_TTL_SECONDS, then gone


def test_jsonl_report_without_content_length_as_json(stack: Stack, source: SourceServer) -> None:
    rows = 20_000
    job_id = submit(stack.client, source.url("/data.jsonl", rows=rows), **REPORT_SPEC, output_format="json")
    done = finished(stack.client, job_id)

    assert done["status"] == "succeeded", done
    assert done["result"]["rows_read"] == rows
    result = download(stack.client, job_id)
    assert result.headers["content-type"] == "application/json"
    assert result.headers["content-disposition"] == f'attachment; filename="report-{job_id}.json"'
    assert parsed_json_report(result.content) == expected_report(rows)


def test_malformed_rows_are_counted_reported_and_left_out(stack: Stack, source: SourceServer) -> None:
    rows, every = 20_000, 250  # 0.4% malformed, under the default 1%
    for path in ("/data.csv", "/data.jsonl"):
        job_id = submit(stack.client, source.url(path, rows=rows, malformed_every=every), **REPORT_SPEC)
        done = finished(stack.client, job_id)

        assert done["status"] == "succeeded", done
        summary = done["result"]
        assert summary["rows_read"] == rows
        assert summary["rows_malformed"] == rows // every
        header = 1 if path.endswith(".csv") else 0
        first, second = summary["malformed_examples"][:2]
        assert first["line"] == every + header  # row index every-1, after the header
        assert second["line"] == 2 * every + header
        assert "column 'qty': 'n/a' is not a number" in second["problem"]
        assert parsed_csv_report(download(stack.client, job_id).content) == expected_report(rows, every)


def test_too_many_malformed_rows_fail_the_report(stack: Stack, source: SourceServer) -> None:
    job_id = submit(stack.client, source.url("/data.csv", rows=50_000, malformed_every=10), **REPORT_SPEC)
    done = finished(stack.client, job_id)

    assert done["status"] == "failed", done
    assert done["attempts"] == 1  # no retry can fix the source
    assert "rows so far are malformed (10.0%), above the 1.0% allowed" in done["error"]
    assert "OFFLOAD_REPORT_MAX_MALFORMED_SHARE" in done["error"]
    refused = download(stack.client, job_id)
    assert refused.status_code == 409
    assert f"Report {job_id} failed" in refused.json()["detail"]


def test_a_4xx_source_fails_at_once_and_a_5xx_408_or_425_one_is_retried(stack: Stack, source: SourceServer) -> None:
    gone = submit(stack.client, source.url("/status/404"))
    done = finished(stack.client, gone)
    assert (done["status"], done["attempts"]) == ("failed", 1)
    assert done["error"] == "the source answered HTTP 404 Not Found; expected 200 with the data"

    # 408 Request Timeout and 425 Too Early say "later", as 5xx does: every retry is used.
    for status, reason in ((503, "Service Unavailable"), (408, "Request Timeout"), (425, "Too Early")):
        down = submit(stack.client, source.url(f"/status/{status}"))
        done = finished(stack.client, down)
        assert (done["status"], done["attempts"]) == ("failed", 4), done  # TASK_MAX_RETRIES=3 in the tests
        assert done["error"].endswith(f"the source answered HTTP {status} {reason}")

    flaky = submit(stack.client, source.url("/flaky/once", fail=1, rows=100), **REPORT_SPEC)
    done = finished(stack.client, flaky)
    assert (done["status"], done["attempts"]) == ("succeeded", 2)
    assert source.hits["/flaky/once"] == 2


def test_unsafe_and_invalid_requests_are_refused_at_submit(stack: Stack) -> None:
    private = stack.client.post("/v1/reports", json={"source_url": "http://10.1.2.3/data.csv", "source_format": "csv"})
    assert private.status_code == 422, private.text
    [error] = private.json()["errors"]
    assert error["field"] == "body.source_url"
    assert "10.1.2.3 is a private address" in error["message"]
    assert "OFFLOAD_OUTBOUND_ALLOWED_HOSTS" in error["message"]

    too_many = stack.client.post(
        "/v1/reports",
        json={"source_url": "https://example.com/a.csv", "source_format": "csv", "group_by": list("abcdef")},
    )
    assert too_many.status_code == 422
    assert too_many.json()["errors"][0]["field"] == "body.group_by"

    no_column = stack.client.post(
        "/v1/reports",
        json={"source_url": "https://example.com/a.csv", "source_format": "csv", "metrics": [{"op": "avg"}]},
    )
    assert no_column.status_code == 422
    assert "avg needs a column" in no_column.json()["detail"]


def test_unknown_reports_are_404(stack: Stack) -> None:
    for path in ("", "/events", "/download"):
        response = stack.client.get(f"/v1/reports/{'0' * 32}{path}")
        assert response.status_code == 404, response.text
        assert "never existed or its record expired" in response.json()["detail"]
    echo = stack.client.post("/v1/jobs/echo", json={"message": "not a report"}).json()["id"]
    assert stack.client.get(f"/v1/reports/{echo}").status_code == 404


def test_events_stream_progress_to_100_then_end(stack: Stack, source: SourceServer) -> None:
    # About 2.5 s of streaming, so several progress steps are seen on the way.
    url = source.url("/data.csv", rows=25_000, length=1, batch=250, delay_ms=25)
    job_id = submit(stack.client, url, **REPORT_SPEC)

    events = list(read_events(stack.client, job_id))

    *progress, end = events
    assert end.event == "end"
    assert end.data["status"] == "succeeded"
    assert end.data["result"]["rows_read"] == 25_000
    assert all(e.event == "progress" for e in progress)
    percents = [e.data["percent"] for e in progress]
    assert percents == sorted(percents), percents  # never goes back
    assert percents[-1] == 100
    assert len({p for p in percents if 0 < p < 100}) >= 2, percents  # steps in between
    assert any(e.data["message"].endswith("MB)") and " rows (" in e.data["message"] for e in progress)
    ids = [float(e.id or "nan") for e in progress]  # the time of each state: resumable, never repeated
    assert ids == sorted(set(ids)), ids
    # Once ended, a new stream gives the final state at once and closes.
    again = list(read_events(stack.client, job_id, timeout=5))
    assert [e.event for e in again] == ["progress", "end"]
    assert again[0].data == {"status": "succeeded", "percent": 100, "message": progress[-1].data["message"]}


def test_events_stream_closes_when_the_client_goes_away(stack: Stack, source: SourceServer) -> None:
    job_id = submit(stack.client, source.url("/data.csv", rows=20_000, batch=200, delay_ms=20), **REPORT_SPEC)
    stream = read_events(stack.client, job_id)
    first = next(stream)
    assert first.event == "progress"
    stream.close()  # leaves the `with client.stream(...)`: the connection is closed

    closed = f"report {job_id} events: stream closed after"
    line = wait_for(
        lambda: next((row for row in stack.api.log.read_text().splitlines() if closed in row), None),
        10,
        "the API to end the stream of a client that went away",
    )
    assert "the client went away" in line
    assert finished(stack.client, job_id)["status"] == "succeeded"


@pytest.mark.slow
def test_an_event_stream_keeps_alive_and_ends_with_timeout_at_its_time_limit(tmp_path: Path) -> None:
    """With no worker the report stays queued: the stream has nothing to say after its first
    event but a keep-alive comment every 15 s, then a `timeout` event at its time limit."""
    limit = 17  # past the first keep-alive
    with standalone_api(tmp_path, JOB_EVENTS_MAX_SECONDS=str(limit)) as alone:
        job_id = submit(alone.client, "http://127.0.0.1:9/never-fetched.csv")
        started = time.monotonic()
        lines: list[tuple[float, str]] = []
        with alone.client.stream("GET", f"/v1/reports/{job_id}/events", timeout=30) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                lines.append((time.monotonic() - started, line))
                assert time.monotonic() - started < limit + 13, f"the stream outlived its limit: {lines}"
        ended_after = time.monotonic() - started

    keep_alives = [at for at, line in lines if line.startswith(": ping")]
    assert keep_alives, lines
    assert 14 <= keep_alives[0] < limit, lines
    events = [line for _, line in lines if line and not line.startswith(":")]
    assert events[0].startswith("id: ")  # where a reconnect resumes
    assert events[1:] == [
        "event: progress",
        'data: {"status": "queued", "percent": 0, "message": ""}',
        "event: timeout",
        f'data: {{"detail": "The stream ended after {limit} s; reconnect to follow the report further."}}',
    ]
    assert limit <= ended_after < limit + 10


def test_download_is_409_until_the_report_ends(stack: Stack, source: SourceServer) -> None:
    job_id = submit(stack.client, source.url("/data.csv", rows=20_000, batch=200, delay_ms=20), **REPORT_SPEC)
    wait_job(stack.client, job_id, {"started"})
    early = download(stack.client, job_id)
    assert early.status_code == 409, early.text
    assert f"Report {job_id} is started (" in early.json()["detail"]
    assert "download it once it succeeded" in early.json()["detail"]

    assert finished(stack.client, job_id)["status"] == "succeeded"
    assert download(stack.client, job_id).status_code == 200


def test_a_running_report_stops_when_cancelled(stack: Stack, source: SourceServer) -> None:
    # Would stream for about 50 s; the cancel stops it at the next progress interval.
    path = "/data.csv"
    job_id = submit(stack.client, source.url(path, rows=100_000, batch=100, delay_ms=50), **REPORT_SPEC)
    wait_for(lambda: report(stack.client, job_id)["progress"]["message"], 10, "the report to show progress")
    went_away_before = source.went_away.count(path)

    cancel = stack.client.delete(f"/v1/jobs/{job_id}")
    assert cancel.status_code == 202, cancel.text
    asked = time.monotonic()
    done = finished(stack.client, job_id, timeout=20)
    assert done["status"] == "cancelled", done
    assert done["error"] == "cancelled while running"
    # Far sooner than the stream's 50 s (seen within a progress interval or two; not a bound).
    assert time.monotonic() - asked < 20
    # The worker closed its connection: the source server's next write failed.
    wait_for(lambda: source.went_away.count(path) > went_away_before, 5, "the source to see the worker go")
    assert download(stack.client, job_id).status_code == 409


# --- limits, on a stack of their own with small ones --------------------------------------------

LIMITS = {
    "OFFLOAD_REPORT_MAX_SOURCE_BYTES": "1200000",
    "OFFLOAD_REPORT_MAX_ROWS": "10000",
    "OFFLOAD_REPORT_MAX_GROUPS": "20",
    "OFFLOAD_REPORT_MAX_RESULT_BYTES": "1024",
    "OFFLOAD_REPORT_RESULT_TTL_SECONDS": "3",
    "OFFLOAD_REPORT_SOFT_TIME_LIMIT_SECONDS": "3",
    "OFFLOAD_REPORT_TIME_LIMIT_SECONDS": "5",
}


@dataclass
class ReportStack:
    client: httpx.Client
    api: Service
    worker: Service


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReportStack]:
    with _report_stack(tmp_path_factory.mktemp("report-limits"), LIMITS) as started:
        yield started


@contextlib.contextmanager
def _report_stack(base: Path, settings: dict[str, str]) -> Iterator[ReportStack]:
    """Redis, the API and a worker on `low` only, with these settings on top of the tests' own."""
    with cluster(base, {**TEST_SETTINGS, **settings}) as own:
        worker = own.start_worker("report-worker", queues="low")
        api = own.start_api()
        yield ReportStack(own.client, api, worker)


@pytest.mark.slow
def test_source_size_limit(limited: ReportStack, source: SourceServer) -> None:
    # Streamed without a Content-Length: stopped once a byte more than the limit arrived.
    streamed = submit(limited.client, source.url("/data.jsonl", rows=9000))  # about 1.35 MB
    done = finished(limited.client, streamed)
    assert (done["status"], done["attempts"]) == ("failed", 1)
    assert done["error"] == (
        "the source is larger than the 1,200,000 bytes a report may read "
        "(OFFLOAD_REPORT_MAX_SOURCE_BYTES); filter it at the source or split it"
    )
    # Announced by its Content-Length: refused before reading it.
    claimed = submit(limited.client, source.url("/claims-huge"))
    done = finished(limited.client, claimed)
    assert done["status"] == "failed"
    assert done["error"].startswith("the source is 1,000,000,000,000 bytes (its Content-Length), more than the 1,2")
    # One endless line is no row: refused, never buffered.
    line = submit(limited.client, source.url("/endless-line", bytes=1_100_000))
    done = finished(limited.client, line)
    assert done["status"] == "failed"
    assert "a line of the source is longer than 1,048,576 characters" in done["error"]


@pytest.mark.slow
def test_row_group_and_result_limits(limited: ReportStack, source: SourceServer) -> None:
    rows = submit(limited.client, source.url("/numbers", rows=10_001))
    done = finished(limited.client, rows)
    assert done["status"] == "failed"
    assert done["error"].startswith("the source has more than 10,000 rows, the limit (OFFLOAD_REPORT_MAX_ROWS)")
    at_the_limit = submit(limited.client, source.url("/numbers", rows=10_000), metrics=[{"op": "sum", "column": "n"}])
    done = finished(limited.client, at_the_limit)
    assert done["status"] == "succeeded", done
    assert download(limited.client, at_the_limit).text == f"sum_n\n{sum(range(10_000))}\n"

    groups = submit(limited.client, source.url("/data.csv", rows=1000), group_by=["qty"])
    done = finished(limited.client, groups)
    assert done["status"] == "failed"
    assert done["error"].startswith("the report has more than 20 groups, the limit (OFFLOAD_REPORT_MAX_GROUPS)")

    # 7 groups, but 10 floats each and long column names do not fit in 1 KiB.
    wide = [{"op": "avg", "column": "price", "name": f"average_price_in_a_long_column_name_{n}"} for n in range(10)]
    large = submit(limited.client, source.url("/data.csv", rows=1000), group_by=["city"], metrics=wide)
    done = finished(limited.client, large)
    assert done["status"] == "failed"
    assert "is larger than 1,024 bytes, the limit (OFFLOAD_REPORT_MAX_RESULT_BYTES)" in done["error"]


@pytest.mark.slow
def test_report_time_limit_records_a_timeout(limited: ReportStack, source: SourceServer) -> None:
    # Would stream for about 20 s; the report's own soft limit is 3 s.
    job_id = submit(limited.client, source.url("/data.csv", rows=4000, batch=10, delay_ms=50))
    done = finished(limited.client, job_id, timeout=15)
    assert (done["status"], done["attempts"]) == ("failed", 1)
    assert done["error"].startswith("timed out after 3 s with ")
    assert "OFFLOAD_REPORT_SOFT_TIME_LIMIT_SECONDS" in done["error"]


@pytest.mark.slow
def test_result_expires(limited: ReportStack, source: SourceServer) -> None:
    job_id = submit(limited.client, source.url("/data.csv", rows=100), group_by=["city"])
    assert finished(limited.client, job_id)["status"] == "succeeded"
    assert download(limited.client, job_id).status_code == 200

    def gone() -> httpx.Response | None:
        answer = download(limited.client, job_id)
        return answer if answer.status_code == 404 else None

    expired = wait_for(gone, 10, "the result to expire after OFFLOAD_REPORT_RESULT_TTL_SECONDS=3")
    assert f"The result of report {job_id} has expired" in expired.json()["detail"]
    assert report(limited.client, job_id)["status"] == "succeeded"  # the job's record outlives it


# --- memory: a 1,000,000-row source on a worker with one pool process ---------------------------

MEMORY_SETTINGS = {
    "OFFLOAD_WORKER_CONCURRENCY": "1",
    "OFFLOAD_REPORT_SOFT_TIME_LIMIT_SECONDS": "50",
    "OFFLOAD_REPORT_TIME_LIMIT_SECONDS": "55",
    "OFFLOAD_VISIBILITY_TIMEOUT_SECONDS": "60",
}
PEAK_GROWTH_BOUND_MIB = 60


def pool_peaks(worker: Service) -> dict[int, int]:
    """Peak resident memory (VmHWM, KiB) of each of the worker's pool processes."""
    ps = shutil.which("ps")
    assert ps, "ps is needed to find the worker's pool processes"
    children = subprocess.run(
        [ps, "--ppid", str(worker.process.pid), "-o", "pid="], capture_output=True, text=True, check=False
    ).stdout.split()
    peaks = {}
    for pid in map(int, children):
        status = Path(f"/proc/{pid}/status").read_text()
        peaks[pid] = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))
    return peaks


@pytest.mark.slow
def test_a_million_row_source_is_never_held_in_memory(
    tmp_path: Path, source: SourceServer, record_property: Any
) -> None:
    rows = 1_000_000
    with _report_stack(tmp_path, MEMORY_SETTINGS) as own:
        # A small report first, so what any report loads once (modules, connections) is in the baseline.
        warm_up = submit(own.client, source.url("/data.csv", rows=1000), **REPORT_SPEC)
        assert finished(own.client, warm_up)["status"] == "succeeded"
        before = pool_peaks(own.worker)
        assert before, "the worker has no pool process"

        started = time.monotonic()
        job_id = submit(own.client, source.url("/data.csv", rows=rows, length=1), **REPORT_SPEC)
        done = finished(own.client, job_id, timeout=60)
        elapsed = time.monotonic() - started
        after = pool_peaks(own.worker)

        assert done["status"] == "succeeded", done
        assert done["result"]["rows_read"] == rows
        source_bytes = done["result"]["bytes_read"]
        growth_mib = max(after[pid] - before.get(pid, 0) for pid in after) / 1024
        record_property("report_1m_rows_seconds", round(elapsed, 1))
        record_property("report_1m_rows_peak_growth_mib", round(growth_mib, 1))
        print(
            f"\n1,000,000 rows ({source_bytes / 2**20:.0f} MiB) in {elapsed:.1f} s; pool process peak "
            f"{max(after.values()) / 1024:.0f} MiB, {growth_mib:+.1f} MiB over the baseline"
        )
        assert source_bytes > PEAK_GROWTH_BOUND_MIB * 2**20  # holding the source would break the bound
        assert growth_mib < PEAK_GROWTH_BOUND_MIB
        assert parsed_csv_report(download(own.client, job_id).content) == expected_report(rows)
