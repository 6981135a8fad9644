"""The client's retries, timeouts and configuration, against a scripted HTTP server on loopback
that answers as an overloaded or slow API would, and its event streams across reconnections."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from offload_client import ConfigurationError, Offload, RateLimited, TransportError, Unavailable
from offload_dev.redis_server import free_port
from tests.support import API_KEY, TEST_SETTINGS, cluster

ACCEPTED = {
    "id": "job-1",
    "status": "queued",
    "task": "acme.charge",
    "queue": "default",
    "priority": 3,
    "status_url": "/v1/jobs/job-1",
}


@dataclass
class Reply:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


class ScriptedApi:
    """Answers each request with the next scripted reply (the last one repeats) and records them."""

    def __init__(self, *replies: Reply) -> None:
        self.replies = list(replies)
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.times: list[float] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.answer()

            def do_GET(self) -> None:
                self.answer()

            def answer(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                api.requests.append((self.command, self.path, dict(self.headers)))
                api.times.append(time.monotonic())
                reply = api.replies.pop(0) if len(api.replies) > 1 else api.replies[0]
                time.sleep(reply.delay)
                body = json.dumps(reply.body).encode()
                try:
                    self.send_response(reply.status)
                    for name, value in {**reply.headers, "Content-Type": "application/json"}.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> ScriptedApi:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def busy(status: int, retry_after: str) -> Reply:
    return Reply(status, {"detail": "busy, retry later", "code": "queue_full"}, {"Retry-After": retry_after})


def test_a_refused_submission_is_retried_after_retry_after_with_the_same_idempotency_key() -> None:
    with ScriptedApi(busy(503, "1"), busy(429, "0"), Reply(202, ACCEPTED)) as api:
        client = Offload(api.url, "key-0123456789abcdef", retries=3, backoff=0.01)
        accepted = client.submit("acme.charge", {"amount": 5})

    assert accepted.id == "job-1"
    assert len(api.requests) == 3
    keys = {headers["Idempotency-Key"] for _, _, headers in api.requests}
    assert len(keys) == 1  # one key for every attempt: the API returns the first job
    assert api.times[1] - api.times[0] >= 0.95  # waited as Retry-After said, not the 0.01 s backoff
    assert api.requests[0][2]["Authorization"] == "Bearer key-0123456789abcdef"


def test_when_retries_run_out_the_error_carries_retry_after() -> None:
    with ScriptedApi(busy(429, "7")) as api:
        client = Offload(api.url, retries=0)
        with pytest.raises(RateLimited) as refused:
            client.submit("acme.charge", {})
    assert refused.value.retry_after == 7
    assert refused.value.code == "queue_full"

    with ScriptedApi(busy(503, "2")) as api:
        with pytest.raises(Unavailable) as unavailable:
            Offload(api.url, retries=1, backoff=0.01).queues()
        assert len(api.requests) == 2
    assert unavailable.value.retry_after == 2


def test_a_slow_answer_times_out_and_is_retried() -> None:
    with ScriptedApi(Reply(200, {"queues": []}, delay=1.0)) as api:
        client = Offload(api.url, timeout=0.2, retries=1, backoff=0.01)
        started = time.monotonic()
        with pytest.raises(TransportError, match="did not answer"):
            client.queues()
        assert time.monotonic() - started < 1.5
        assert len(api.requests) == 2


def test_nothing_listening_is_a_transport_error_naming_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(TransportError, match=url):
        Offload(url, retries=2, backoff=0.01).get("job-1")


def test_configuration_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    with ScriptedApi(Reply(200, {"queues": []})) as api:
        monkeypatch.setenv("OFFLOAD_URL", api.url)
        monkeypatch.setenv("OFFLOAD_API_KEY", "from-the-environment-0123")
        assert Offload().queues() == []
    assert api.requests[0][2]["Authorization"] == "Bearer from-the-environment-0123"

    monkeypatch.delenv("OFFLOAD_URL")
    with pytest.raises(ConfigurationError, match="OFFLOAD_URL"):
        Offload()


@pytest.fixture(autouse=True)
def _no_inherited_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OFFLOAD_URL", raising=False)
    monkeypatch.delenv("OFFLOAD_API_KEY", raising=False)


def test_events_resume_across_streams_the_server_ends_early(tmp_path: Path) -> None:
    """With one-second streams, a three-second job spans several; the client reconnects with
    Last-Event-ID and its caller sees one stream to the end, no `timeout` events."""
    env = {**TEST_SETTINGS, "OFFLOAD_JOB_EVENTS_MAX_SECONDS": "1", "OFFLOAD_JOB_EVENTS_POLL_SECONDS": "0.2"}
    with cluster(tmp_path, env) as own:
        api = own.start_api()
        own.start_worker("worker")
        with Offload(api.extra["url"], API_KEY) as offload:
            accepted = offload.submit("offload.echo", {"message": "long", "sleep_ms": 3000})
            single = list(offload.events(accepted.id, resume=False))
            followed = list(offload.events(accepted.id))

    assert single[-1].event == "timeout"  # without resume the caller sees where the server stopped
    assert [e.event for e in followed][-1] == "end"
    assert "timeout" not in [e.event for e in followed]
    assert followed[-1].job is not None
    assert followed[-1].job.result["message"] == "long"
    percents = [e.percent for e in followed]
    assert percents == sorted(percents)  # resumed after the last state seen, never repeated from 0
