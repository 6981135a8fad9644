"""Real processes for the tests: Redis, the API under uvicorn, worker and notifier entrypoints."""

from __future__ import annotations

import base64
import contextlib
import gzip
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import httpx
import redis
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from prometheus_client.parser import text_string_to_metric_families

from offload_dev.polling import wait_for
from offload_dev.redis_server import RedisServer, free_port

API_KEY = "test-key-0123456789abcdef"
# Standard Webhooks secrets: "whsec_" + base64 of 32 bytes; the second is the "new" one of a rotation.
WEBHOOK_SECRETS = (
    "whsec_" + base64.b64encode(b"offload-test-webhook-secret-0001").decode(),
    "whsec_" + base64.b64encode(b"offload-test-webhook-secret-0002").decode(),
)
T = TypeVar("T")

# Small limits so shutdown and crash scenarios finish in seconds. They keep the rule the
# settings enforce: visibility timeout > hard time limit + longest retry countdown.
TEST_SETTINGS = {
    "OFFLOAD_ENVIRONMENT": "production",
    "OFFLOAD_API_KEYS": API_KEY,
    "OFFLOAD_LOG_LEVEL": "INFO",
    "OFFLOAD_TASK_SOFT_TIME_LIMIT_SECONDS": "8",
    "OFFLOAD_TASK_TIME_LIMIT_SECONDS": "10",
    "OFFLOAD_TASK_MAX_RETRIES": "3",
    "OFFLOAD_RETRY_BACKOFF_SECONDS": "0.1",
    "OFFLOAD_RETRY_BACKOFF_MAX_SECONDS": "0.5",
    "OFFLOAD_VISIBILITY_TIMEOUT_SECONDS": "12",
    "OFFLOAD_UNACKED_RESTORE_INTERVAL_SECONDS": "1",
    "OFFLOAD_UNACKED_RESTORE_THROTTLE": "1",
    "OFFLOAD_WORKER_HEARTBEAT_INTERVAL_SECONDS": "1",
    "OFFLOAD_WORKER_SOFT_SHUTDOWN_TIMEOUT_SECONDS": "2",
    "OFFLOAD_WORKER_CONCURRENCY": "2",
    "OFFLOAD_WORKER_METRICS_HOST": "127.0.0.1",
    # Delivery: the tests' SMTP server and webhook receiver listen on loopback, exempt here from
    # the outbound rule that refuses private addresses; two secrets, as during a rotation.
    "OFFLOAD_SMTP_HOST": "127.0.0.1",
    "OFFLOAD_SMTP_SECURITY": "none",
    "OFFLOAD_SMTP_TIMEOUT_SECONDS": "5",
    "OFFLOAD_EMAIL_FROM": "Offload Tests <offload@tests.example>",
    "OFFLOAD_OUTBOUND_ALLOWED_HOSTS": "127.0.0.1",
    "OFFLOAD_WEBHOOK_SECRETS": f"{WEBHOOK_SECRETS[0]},{WEBHOOK_SECRETS[1]}",
    "OFFLOAD_WEBHOOK_CONNECT_TIMEOUT_SECONDS": "2",
    "OFFLOAD_WEBHOOK_TIMEOUT_SECONDS": "3",
}


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def log_tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def alive(self) -> bool:
        return self.process.poll() is None

    def terminate(self) -> None:
        """SIGTERM to the main process only, as Kubernetes does with an exec-form entrypoint."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL to the whole process group: the worker and its pool processes die at once."""
        if self.alive():
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self, timeout: float = 20) -> None:
        self.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        else:
            # Reap pool processes the main one may have left behind.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)


def _spawn(name: str, module: str, env: dict[str, str], log_dir: Path) -> Service:
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}.log"
    process = subprocess.Popen(
        [sys.executable, "-m", module],
        env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return Service(name, process, log)


def start_worker(
    name: str, env: dict[str, str], log_dir: Path, *, module: str = "offload_worker", queues: str | None = None
) -> Service:
    state_dir = log_dir / f"{name}-state"
    metrics_port = int(env.get("OFFLOAD_WORKER_METRICS_PORT") or free_port())  # never the shared default
    worker_env = {
        **env,
        "OFFLOAD_WORKER_NAME": f"{name}@test",
        "OFFLOAD_WORKER_STATE_DIR": str(state_dir),
        "OFFLOAD_WORKER_METRICS_PORT": str(metrics_port),
    }
    if queues is not None:
        worker_env["OFFLOAD_WORKER_QUEUES"] = queues
    service = _spawn(name, module, worker_env, log_dir)
    service.extra["state_dir"] = state_dir
    service.extra["hostname"] = f"{name}@test"
    service.extra["metrics_url"] = f"http://127.0.0.1:{metrics_port}/metrics" if metrics_port else None
    ready = state_dir / "ready"

    def is_ready() -> bool:
        if not service.alive():
            raise AssertionError(f"{name} exited early:\n{service.log_tail()}")
        return ready.exists()

    wait_for(is_ready, 60, f"{name} to write its ready file")
    return service


def start_api(env: dict[str, str], log_dir: Path) -> Service:
    port, metrics_port = free_port(), free_port()
    service = _spawn(
        "api",
        "offload_api",
        {**env, "OFFLOAD_API_PORT": str(port), "OFFLOAD_API_METRICS_PORT": str(metrics_port)},
        log_dir,
    )
    service.extra["url"] = f"http://127.0.0.1:{port}"
    service.extra["metrics_url"] = f"http://127.0.0.1:{metrics_port}/metrics"

    def is_up() -> bool:
        if not service.alive():
            raise AssertionError(f"api exited early:\n{service.log_tail()}")
        try:
            return httpx.get(f"{service.extra['url']}/livez", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(is_up, 30, "the API to answer /livez")
    return service


Cluster = tuple[dict[str, str], httpx.Client, redis.Redis, list[Service]]


@contextlib.contextmanager
def api_on_own_redis(env: dict[str, str], log_dir: Path) -> Iterator[Cluster]:
    """A Redis of its own and an API on it: (env with its URL, API client, direct Redis client,
    the services started, to which a test appends its workers; all stopped at the end)."""
    server = RedisServer(free_port(), log_dir / "redis").start()
    env = {**env, "OFFLOAD_REDIS_URL": server.url}
    services: list[Service] = []
    try:
        services.append(api := start_api(env, log_dir))
        with api_client(api) as client, redis.Redis.from_url(server.url, decode_responses=True) as direct:
            yield env, client, direct, services
    finally:
        for service in reversed(services):
            service.stop()
        server.stop()


def child_pids(parent_pid: int) -> list[int]:
    """The processes whose parent is ``parent_pid`` (a worker's pool processes), from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent_pid:  # after "pid (comm) state"
            found.append(int(entry.name))
    return found


def api_client(api: Service, key: str | None = API_KEY) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=api.extra["url"], headers=headers, timeout=15)


def submit_echo(client: httpx.Client, **body: Any) -> str:
    response = client.post("/v1/jobs/echo", json={"message": "ping", **body})
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def job(client: httpx.Client, job_id: str) -> dict[str, Any]:
    response = client.get(f"/v1/jobs/{job_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def wait_job(client: httpx.Client, job_id: str, statuses: set[str], timeout: float = 30) -> dict[str, Any]:
    return wait_for(
        lambda: (j := job(client, job_id)) and (j if j["status"] in statuses else None),
        timeout,
        f"job {job_id} to reach {sorted(statuses)}",
    )


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """One Prometheus scrape as {(sample name, labels): value}."""
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200, response.text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def sample(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """A sample's value, 0 when absent (a labelled counter appears only once it moved)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


@dataclass
class ReceivedSpan:
    service: str
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    resource: dict[str, Any]


def _plain(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


class OtlpReceiver:
    """A real OTLP/HTTP trace receiver on 127.0.0.1: the services export to it over HTTP with
    their ordinary OTLP exporter, and the test reads back what arrived."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                receiver.add(ExportTraceServiceRequest.FromString(body))
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: the test reports what matters

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def add(self, request: ExportTraceServiceRequest) -> None:
        received = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _plain(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(
                        ReceivedSpan(
                            service=resource.get("service.name", ""),
                            name=span.name,
                            kind=span.kind,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            attributes={a.key: _plain(a.value) for a in span.attributes},
                            resource=resource,
                        )
                    )
        with self.lock:
            self.spans.extend(received)

    def received(self) -> list[ReceivedSpan]:
        with self.lock:
            return list(self.spans)

    @contextlib.contextmanager
    def running(self) -> Iterator[OtlpReceiver]:
        self.thread.start()
        try:
            yield self
        finally:
            self.server.shutdown()
            self.server.server_close()
