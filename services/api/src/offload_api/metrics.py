"""The API's Prometheus metrics, served at /metrics on a port of their own (never the public API
port): requests by route template and status, submitted jobs and how long publishing took, each
queue's depth and dead letters, and whether Redis answers and how much of its maxmemory it uses,
read from Redis at scrape time (cached, so frequent scrapes cost Redis two round trips every few
seconds). No Redis exporter is needed for the Redis alerts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from wsgiref.simple_server import WSGIServer

import redis
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from offload_api.route_templates import RouteTemplates
from offload_core.contract.topology import BUILTIN_QUEUES
from offload_core.settings import Settings
from offload_core.store.jobs import SCHEDULED_KEY
from offload_core.store.queue_state import QueueState, read_queue_states

disable_created_metrics()  # type: ignore[no-untyped-call]  # `_created` series only double what Prometheus stores anyway
REGISTRY = CollectorRegistry()

HTTP_REQUESTS = Counter(
    "offload_http_requests_total", "HTTP requests answered.", ("method", "route", "status"), registry=REGISTRY
)
HTTP_REQUEST_SECONDS = Histogram(
    "offload_http_request_duration_seconds",
    "Time to answer an HTTP request.",
    ("method", "route", "status"),
    registry=REGISTRY,
)
JOBS_SUBMITTED = Counter(
    "offload_jobs_submitted_total", "Jobs accepted and published.", ("task", "queue"), registry=REGISTRY
)
ENQUEUE_SECONDS = Histogram(
    "offload_job_enqueue_seconds",
    "Time to record and publish a job.",
    ("task", "queue"),
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
    registry=REGISTRY,
)
# By key id (never the key): ids are configured, so their number is bounded.
REQUESTS_THROTTLED = Counter(
    "offload_api_requests_throttled_total",
    "Requests refused with 429 because their API key was over its rate limit.",
    ("key_id",),
    registry=REGISTRY,
)
REQUESTS_UNLIMITED = Counter(
    "offload_api_rate_limit_unchecked_total",
    "Requests let through without a rate-limit check because Redis did not answer in time.",
    registry=REGISTRY,
)

# Paths that match no route share one label, so a scan of random URLs cannot add series.
UNMATCHED_ROUTE = "unmatched"

logger = logging.getLogger(__name__)


def serve_metrics(settings: Settings) -> WSGIServer:
    """Prometheus metrics of this API process and of every queue, on their own port
    (OFFLOAD_API_METRICS_PORT): never on the API's port, which an Ingress may route."""
    host = settings.API_METRICS_HOST or settings.API_HOST
    try:
        server, _ = start_http_server(settings.API_METRICS_PORT, addr=host, registry=REGISTRY)
    except OSError as exc:
        raise RuntimeError(
            f"cannot serve metrics on {host}:{settings.API_METRICS_PORT} ({exc}); "
            "set OFFLOAD_API_METRICS_PORT to a free port"
        ) from exc
    logger.info("metrics on http://%s:%d/metrics", host, settings.API_METRICS_PORT)
    return server


class RequestMetrics:
    """Counts and times every HTTP request by its route template (`/v1/jobs/{job_id}`)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.templates = RouteTemplates()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # unless a response starts

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            labels = (scope["method"], self.templates.of(scope) or UNMATCHED_ROUTE, str(status))
            HTTP_REQUESTS.labels(*labels).inc()
            HTTP_REQUEST_SECONDS.labels(*labels).observe(time.perf_counter() - started)


class QueueCollector(Collector):
    """Depth (all priority lists summed), consumers, oldest waiting job and dead letters of every queue."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        queues: Sequence[str] = BUILTIN_QUEUES,  # the deployment's, OFFLOAD_QUEUES
        stale_after: float,
        cache_seconds: float,
        dead_letter_ttl: float = Settings.model_fields["DEAD_LETTER_TTL_SECONDS"].default,
    ) -> None:
        self.client = client
        self.queues = list(queues)
        self.stale_after = stale_after
        self.cache_seconds = cache_seconds
        self.dead_letter_ttl = dead_letter_ttl
        self._lock = threading.Lock()
        self._read_at = float("-inf")
        self._states: list[QueueState] = []
        self._memory: dict[str, int] = {}
        self._scheduled = 0
        self._redis_up = False

    def states(self) -> list[QueueState]:
        with self._lock:
            if time.monotonic() - self._read_at >= self.cache_seconds:
                try:
                    self._states = read_queue_states(
                        self.client, self.queues, stale_after=self.stale_after, dead_letter_ttl=self.dead_letter_ttl
                    )
                    memory = self.client.info("memory")
                    self._memory = {name: int(memory.get(name) or 0) for name in ("used_memory", "maxmemory")}
                    self._scheduled = self.client.zcard(SCHEDULED_KEY)
                    self._redis_up = True
                except redis.RedisError:
                    # No queue series rather than a failed scrape; offload_redis_up and /readyz say why.
                    self._states, self._memory, self._redis_up = [], {}, False
                self._read_at = time.monotonic()
            return self._states

    def collect(self) -> Iterator[GaugeMetricFamily]:
        states = self.states()
        yield GaugeMetricFamily(
            "offload_redis_up", "1 when the last read of Redis succeeded, else 0.", value=int(self._redis_up)
        )
        if self._memory:
            yield GaugeMetricFamily(
                "offload_redis_memory_used_bytes",
                "Memory Redis uses (INFO memory used_memory).",
                value=self._memory["used_memory"],
            )
            yield GaugeMetricFamily(
                "offload_redis_maxmemory_bytes",
                "Redis's maxmemory setting; 0 means no limit.",
                value=self._memory["maxmemory"],
            )
        if self._redis_up:
            yield GaugeMetricFamily(
                "offload_jobs_scheduled", "Delayed jobs waiting for their due time.", value=self._scheduled
            )
        depth = GaugeMetricFamily("offload_queue_depth", "Jobs waiting in the queue.", labels=["queue"])
        consumers = GaugeMetricFamily("offload_queue_consumers", "Workers consuming the queue.", labels=["queue"])
        oldest = GaugeMetricFamily(
            "offload_queue_oldest_job_age_seconds", "Age of the oldest waiting job (0 when empty).", labels=["queue"]
        )
        dead_letters = GaugeMetricFamily(
            "offload_dead_letters", "Jobs that failed for good and are kept as dead letters.", labels=["queue"]
        )
        for state in states:
            depth.add_metric([state.name], state.depth)
            consumers.add_metric([state.name], state.consumers)
            oldest.add_metric([state.name], state.oldest_age_seconds or 0.0)
            dead_letters.add_metric([state.name], state.dead_letters)
        yield from (depth, consumers, oldest, dead_letters)
