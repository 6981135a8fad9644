"""Real processes for the tests: Redis, the API under uvicorn, worker and notifier entrypoints."""

from __future__ import annotations

import base64
import contextlib
import gzip
import struct
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import grpc  # type: ignore[import-untyped]  # no stubs; only the test receiver uses it
import httpx
import redis
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest, ExportLogsServiceResponse
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from prometheus_client.parser import text_string_to_metric_families

from offload_core.contract.api_keys import parse_api_key
from offload_dev.polling import wait_for
from offload_dev.processes import Service, start_api, start_redis, start_worker
from offload_dev.redis_server import RedisServer
from tests.receivers import ScriptedSmtpHandler, WebhookReceiver

API_KEY = "test-key-0123456789abcdef"
# The id the API gives API_KEY: records a test writes itself carry it, so the test's key sees them.
TEST_OWNER = parse_api_key(API_KEY).principal.id
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
class Cluster:
    """A Redis of the test's own and the processes a test starts on it, all stopped at the end:
    ``env`` is the settings every process gets (the Redis URL included), ``redis`` a direct
    client, ``client`` an API client of the first API started."""

    server: RedisServer
    env: dict[str, str]
    log_dir: Path
    redis: redis.Redis
    services: list[Service] = field(default_factory=list)
    _clients: list[httpx.Client] = field(default_factory=list)

    def start_api(self, *, name: str = "api", env: Mapping[str, str] | None = None) -> Service:
        api = start_api({**self.env, **(env or {})}, self.log_dir, name=name)
        self.services.append(api)
        return api

    def start_worker(
        self,
        name: str,
        *,
        module: str = "offload_worker",
        queues: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Service:
        worker = start_worker(name, {**self.env, **(env or {})}, self.log_dir, module=module, queues=queues)
        self.services.append(worker)
        return worker

    def api_client(self, api: Service | None = None, key: str | None = API_KEY) -> httpx.Client:
        """A client of ``api`` (the first API started by default), closed with the cluster."""
        if api is None:
            api = next(s for s in self.services if "url" in s.extra)
        client = api_client(api, key)
        self._clients.append(client)
        return client

    @property
    def client(self) -> httpx.Client:
        if not self._clients:
            return self.api_client()
        return self._clients[0]


@contextlib.contextmanager
def cluster(
    log_dir: Path,
    env: Mapping[str, str] = TEST_SETTINGS,
    *,
    persistent: bool = False,
    redis_password: str | None = None,
    redis_maxmemory: str | None = None,
) -> Iterator[Cluster]:
    """A Redis of its own on a free port; the test starts its API and workers on it. With
    ``redis_maxmemory`` (e.g. "8mb") Redis refuses writes once full (noeviction), as in the chart."""
    server = start_redis(log_dir / "redis", persistent=persistent, password=redis_password, maxmemory=redis_maxmemory)
    direct = redis.Redis.from_url(server.url, decode_responses=True)
    # The blob store's directory is the cluster's own unless the test names a backend of its own.
    blob_dir = {"OFFLOAD_BLOB_DIR": str(log_dir / "blobs")}
    started = Cluster(server, {**blob_dir, **env, "OFFLOAD_REDIS_URL": server.url}, log_dir, direct)
    try:
        yield started
    finally:
        for client in started._clients:
            client.close()
        for service in reversed(started.services):
            service.stop()
        direct.close()
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


@dataclass
class Stack:
    """The session's shared processes (tests/conftest.py): Redis, the API, a default+low worker
    and the notifier, with a real SMTP server and webhook receiver on loopback."""

    redis: RedisServer
    env: dict[str, str]
    api: Service
    worker: Service
    notifier: Service
    client: httpx.Client
    log_dir: Path
    smtp: ScriptedSmtpHandler
    webhooks: WebhookReceiver


def api_client(api: Service, key: str | None = API_KEY) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=api.extra["url"], headers=headers, timeout=15)


# The echo probe's route: tests submit their jobs through submit_echo (and the system tests'
# Topology.submit), so a new route for it is changed here.
ECHO_PATH = "/v1/jobs/echo"


def submit_echo(client: httpx.Client, **body: Any) -> str:
    response = client.post(ECHO_PATH, json={"message": "ping", **body})
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


# A notification's message, as a test sends it.
MESSAGE = {"title": "Disk almost full", "body": "db-1 is at 97%", "severity": "critical", "data": {"host": "db-1"}}


def webhook(receiver: WebhookReceiver, path: str) -> dict[str, str]:
    """A notification's webhook target on the test's receiver."""
    return {"channel": "webhook", "url": receiver.url(path)}


def notification(client: httpx.Client, job_id: str) -> dict[str, Any]:
    response = client.get(f"/v1/notifications/{job_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def finished_notification(client: httpx.Client, job_id: str, timeout: float = 30) -> dict[str, Any]:
    wait_job(client, job_id, {"succeeded", "failed", "cancelled"}, timeout=timeout)
    return notification(client, job_id)


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


@dataclass
class ReceivedPoint:
    """One data point of an OTLP metric: a sum's or gauge's value, or a histogram's count and buckets."""

    service: str
    metric: str
    kind: str  # "sum", "gauge" or "histogram"
    attributes: dict[str, Any]
    value: float
    monotonic: bool = False
    bucket_counts: list[int] = field(default_factory=list)
    explicit_bounds: list[float] = field(default_factory=list)


@dataclass
class ReceivedLog:
    service: str
    body: Any
    severity_text: str
    trace_id: str
    span_id: str
    attributes: dict[str, Any]


def _attributes(pairs: Iterable[KeyValue]) -> dict[str, Any]:
    return {a.key: _plain(a.value) for a in pairs}


class OtlpReceiver:
    """A real OTLP/HTTP receiver on 127.0.0.1 for traces, metrics and logs: the services export
    to it with their ordinary OTLP exporters, it decodes the protobuf requests, and the test reads
    back what arrived. `headers` keeps each request's headers (e.g. OTEL_EXPORTER_OTLP_HEADERS)."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.points: list[ReceivedPoint] = []
        self.logs: list[ReceivedLog] = []
        self.headers: list[dict[str, str]] = []
        self.lock = threading.Lock()
        receiver = self
        routes: dict[str, tuple[Callable[[bytes], None], bytes]] = {
            "/v1/traces": (
                lambda body: receiver.add(ExportTraceServiceRequest.FromString(body)),
                ExportTraceServiceResponse().SerializeToString(),
            ),
            "/v1/metrics": (
                lambda body: receiver.add_metrics(ExportMetricsServiceRequest.FromString(body)),
                ExportMetricsServiceResponse().SerializeToString(),
            ),
            "/v1/logs": (
                lambda body: receiver.add_logs(ExportLogsServiceRequest.FromString(body)),
                ExportLogsServiceResponse().SerializeToString(),
            ),
        }

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path not in routes:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                decode, reply = routes[self.path]
                with receiver.lock:
                    receiver.headers.append({k.lower(): v for k, v in self.headers.items()})
                decode(body)
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
            resource = _attributes(resource_spans.resource.attributes)
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
                            attributes=_attributes(span.attributes),
                            resource=resource,
                        )
                    )
        with self.lock:
            self.spans.extend(received)

    def add_metrics(self, request: ExportMetricsServiceRequest) -> None:
        received = []
        for resource_metrics in request.resource_metrics:
            service = _attributes(resource_metrics.resource.attributes).get("service.name", "")
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    kind = metric.WhichOneof("data")
                    if kind in ("sum", "gauge"):
                        data = getattr(metric, kind)
                        for number in data.data_points:
                            value = number.as_double if number.HasField("as_double") else number.as_int
                            monotonic = kind == "sum" and data.is_monotonic
                            attributes = _attributes(number.attributes)
                            received.append(ReceivedPoint(service, metric.name, kind, attributes, value, monotonic))
                    elif kind == "histogram":
                        for point in metric.histogram.data_points:
                            received.append(
                                ReceivedPoint(
                                    service,
                                    metric.name,
                                    kind,
                                    _attributes(point.attributes),
                                    float(point.count),
                                    bucket_counts=list(point.bucket_counts),
                                    explicit_bounds=list(point.explicit_bounds),
                                )
                            )
        with self.lock:
            self.points.extend(received)

    def add_logs(self, request: ExportLogsServiceRequest) -> None:
        received = []
        for resource_logs in request.resource_logs:
            service = _attributes(resource_logs.resource.attributes).get("service.name", "")
            for scope_logs in resource_logs.scope_logs:
                for record in scope_logs.log_records:
                    received.append(
                        ReceivedLog(
                            service=service,
                            body=_plain(record.body),
                            severity_text=record.severity_text,
                            trace_id=record.trace_id.hex(),
                            span_id=record.span_id.hex(),
                            attributes=_attributes(record.attributes),
                        )
                    )
        with self.lock:
            self.logs.extend(received)

    def received(self) -> list[ReceivedSpan]:
        with self.lock:
            return list(self.spans)

    def received_points(self) -> list[ReceivedPoint]:
        with self.lock:
            return list(self.points)

    def received_logs(self) -> list[ReceivedLog]:
        with self.lock:
            return list(self.logs)

    def grpc_server(self) -> tuple[grpc.Server, str]:
        """The same receiver as an OTLP/gRPC server (insecure, 127.0.0.1): (server, endpoint)."""
        receiver = self

        class Traces(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request: ExportTraceServiceRequest, context: Any) -> ExportTraceServiceResponse:
                receiver.add(request)
                return ExportTraceServiceResponse()

        class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
            def Export(self, request: ExportMetricsServiceRequest, context: Any) -> ExportMetricsServiceResponse:
                receiver.add_metrics(request)
                return ExportMetricsServiceResponse()

        class Logs(logs_service_pb2_grpc.LogsServiceServicer):
            def Export(self, request: ExportLogsServiceRequest, context: Any) -> ExportLogsServiceResponse:
                receiver.add_logs(request)
                return ExportLogsServiceResponse()

        server = grpc.server(ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), server)  # type: ignore[no-untyped-call]
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(), server)  # type: ignore[no-untyped-call]
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(Logs(), server)  # type: ignore[no-untyped-call]
        port = server.add_insecure_port("127.0.0.1:0")
        return server, f"http://127.0.0.1:{port}"

    @contextlib.contextmanager
    def running_grpc(self) -> Iterator[str]:
        """Serve OTLP/gRPC; yields the endpoint for OTEL_EXPORTER_OTLP_ENDPOINT."""
        server, endpoint = self.grpc_server()
        server.start()
        try:
            yield endpoint
        finally:
            server.stop(grace=None)

    @contextlib.contextmanager
    def running(self) -> Iterator[OtlpReceiver]:
        self.thread.start()
        try:
            yield self
        finally:
            self.server.shutdown()
            self.server.server_close()


def png_declaring(width: int, height: int) -> bytes:
    """A real, complete single-colour PNG of any size, written row by row so making it takes no
    memory: a few hundred KB that decode to width x height pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte + one grey byte a pixel
    parts = [compressor.compress(row) for _ in range(height)]
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


SALES_CSV = b"city,qty\nOslo,3\nLima,5\nOslo,4\n"


@contextlib.contextmanager
def served(body: bytes, content_type: str = "text/csv") -> Iterator[str]:
    """A URL on loopback that answers every GET with ``body``, e.g. a report's source."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/sales.csv"
    finally:
        server.shutdown()
        server.server_close()
