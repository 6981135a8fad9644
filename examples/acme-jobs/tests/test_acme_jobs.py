"""Unit tests of Acme's jobs: each handler runs in this process with a JobContext made here, and
acme.fetch reaches a real HTTP server on loopback through the same outbound client workers use."""

from __future__ import annotations

import hashlib
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from acme_jobs.jobs import FetchRequest, FetchResult, PrimesRequest, PrimesResult, count_primes, fetch
from offload_core.outbound import OutboundPolicy, UnsafeURL
from offload_core.registry import job_types_in
from offload_core.sdk import JobCancelled, JobContext, PermanentJobError, TransientJobError

BODY = b"acme " * 1000


class Recorder:
    """What a handler reported, and a switch that asks it to stop after some progress reports."""

    def __init__(self, cancel_after: int | None = None) -> None:
        self.progress: list[tuple[int, str]] = []
        self.cancel_after = cancel_after

    def report(self, percent: int, message: str) -> None:
        self.progress.append((percent, message))

    def cancel_requested(self) -> bool:
        return self.cancel_after is not None and len(self.progress) >= self.cancel_after


def context(recorder: Recorder, allowed_hosts: tuple[str, ...] = ()) -> JobContext:
    """A JobContext as a worker makes one, with the outbound rule of OFFLOAD_OUTBOUND_ALLOWED_HOSTS."""
    return JobContext(
        job_id="test-job",
        job_type="acme.test",
        queue="acme",
        attempt=1,
        max_retries=3,
        worker="test@localhost",
        deadline=None,
        report_progress=recorder.report,
        cancel_requested=recorder.cancel_requested,
        http_client=lambda: OutboundPolicy(allowed_hosts).client(connect_timeout=2, read_timeout=5),
    )


def run(job: Any, ctx: JobContext, request: Any) -> Any:
    try:
        return job.run(ctx, request)
    finally:
        ctx.close()


def test_the_entry_point_module_declares_both_jobs_on_the_acme_queue() -> None:
    import acme_jobs.jobs

    declared = {job_type.name: job_type for job_type in job_types_in(acme_jobs.jobs)}

    assert set(declared) == {"acme.primes", "acme.fetch"}
    assert {job_type.queue for job_type in declared.values()} == {"acme"}
    assert declared["acme.fetch"].handler_ref == "acme_jobs.fetch:fetch_url"


@pytest.mark.parametrize(
    ("limit", "count", "largest"), [(2, 0, None), (3, 1, 2), (100, 25, 97), (1_000_000, 78_498, 999_983)]
)
def test_primes_counts_the_primes_below_the_limit(limit: int, count: int, largest: int | None) -> None:
    result = run(count_primes, context(Recorder()), PrimesRequest(limit=limit, steps=7))

    assert result == PrimesResult(limit=limit, count=count, largest=largest)


def test_primes_reports_rising_progress_up_to_100() -> None:
    recorder = Recorder()

    run(count_primes, context(recorder), PrimesRequest(limit=100_000, steps=4))

    assert [percent for percent, _ in recorder.progress] == [25, 50, 75, 100]
    assert recorder.progress[-1][1] == "100,000 of 100,000 checked, 9,592 primes"


def test_a_cancelled_primes_job_stops_at_the_next_segment() -> None:
    recorder = Recorder(cancel_after=2)

    with pytest.raises(JobCancelled):
        run(count_primes, context(recorder), PrimesRequest(limit=100_000, steps=10))

    assert len(recorder.progress) == 2


@pytest.mark.parametrize(
    ("payload", "field"),
    [({"limit": 1}, "limit"), ({"limit": 10, "steps": 0}, "steps"), ({"limit": 10, "colour": "red"}, "colour")],
)
def test_primes_refuses_a_bad_request_naming_the_field(payload: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as refused:
        PrimesRequest.model_validate(payload)

    assert [error["loc"] for error in refused.value.errors()] == [(field,)]


@pytest.fixture
def server() -> Iterator[Callable[[str], str]]:
    """A real HTTP server on loopback: /ok answers BODY, /broken a 503; returns a URL maker."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body = (200, BODY) if self.path == "/ok" else (503, b"down")
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield lambda path: f"http://127.0.0.1:{httpd.server_address[1]}{path}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_fetch_returns_the_status_length_and_digest_of_the_body(server: Callable[[str], str]) -> None:
    url = server("/ok")

    result = run(fetch, context(Recorder(), allowed_hosts=("127.0.0.1",)), FetchRequest(url=url))

    assert result == FetchResult(
        url=url, status=200, bytes=len(BODY), sha256=hashlib.sha256(BODY).hexdigest(), content_type="text/plain"
    )


def test_fetch_of_a_body_longer_than_max_bytes_fails_for_good(server: Callable[[str], str]) -> None:
    request = FetchRequest(url=server("/ok"), max_bytes=100)

    with pytest.raises(PermanentJobError, match="max_bytes"):
        run(fetch, context(Recorder(), allowed_hosts=("127.0.0.1",)), request)


def test_fetch_of_a_server_error_is_retried(server: Callable[[str], str]) -> None:
    with pytest.raises(TransientJobError, match="503"):
        run(fetch, context(Recorder(), allowed_hosts=("127.0.0.1",)), FetchRequest(url=server("/broken")))


def test_fetch_of_a_private_address_is_refused_without_a_request(server: Callable[[str], str]) -> None:
    # Without OFFLOAD_OUTBOUND_ALLOWED_HOSTS, loopback is refused before anything is sent (and
    # the worker fails the job at once).
    with pytest.raises(UnsafeURL, match=r"127\.0\.0\.1"):
        run(fetch, context(Recorder()), FetchRequest(url=server("/ok")))


def test_a_network_failure_of_fetch_is_an_ordinary_error_that_offload_retries() -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}/"

    with pytest.raises(httpx.TransportError):
        run(fetch, context(Recorder(), allowed_hosts=("127.0.0.1",)), FetchRequest(url=closed))
