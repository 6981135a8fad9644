"""Prometheus metrics of task runs, served by each worker's main process.

Prefork pool processes count in files under PROMETHEUS_MULTIPROC_DIR (see worker_env), which
the main process sums on every scrape; jobs in flight are read from the main process's own
record of active requests, so a killed pool process cannot leave a stale count behind.
"""

from __future__ import annotations

import logging
from collections import Counter as Tally
from collections.abc import Iterator
from enum import StrEnum

from celery.worker import state as worker_state
from celery.worker.request import Request
from prometheus_client import CollectorRegistry, Counter, Histogram, multiprocess, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from offload_core.settings import Settings

logger = logging.getLogger(__name__)

LABELS = ("task", "queue")
RUN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)

JOBS_STARTED = Counter("offload_jobs_started_total", "Attempts that started running.", LABELS)
JOBS_SUCCEEDED = Counter("offload_jobs_succeeded_total", "Attempts that succeeded.", LABELS)
JOBS_FAILED = Counter("offload_jobs_failed_total", "Jobs that failed for good (no retry left).", LABELS)
JOBS_RETRIED = Counter("offload_jobs_retried_total", "Attempts that failed and were scheduled again.", LABELS)
JOBS_CANCELLED = Counter("offload_jobs_cancelled_total", "Attempts stopped by a cancel request.", LABELS)
RUN_SECONDS = Histogram("offload_job_run_seconds", "Run time of one attempt.", LABELS, buckets=RUN_BUCKETS)
# Counted by the worker that ran the orphan sweep (offload_core.runtime.orphans).
JOBS_RECOVERED = Counter(
    "offload_jobs_recovered_total", "Queued jobs whose lost broker message was published again.", LABELS
)
# Counted by the worker whose timekeeper published them (offload_core.runtime.timekeeper).
DELAYED_JOBS_PUBLISHED = Counter(
    "offload_delayed_jobs_published_total", "Delayed jobs published onto their queue when due."
)
DELAYED_PUBLISH_LAG_SECONDS = Histogram(
    "offload_delayed_job_publish_lag_seconds",
    "Time from a delayed job's due time to its publication.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
SCHEDULE_TICKS = Counter(
    "offload_schedule_ticks_total",
    "Ticks of recurring schedules: `fired` made a job, `skipped` did not (a misfire under `skip`).",
    ["outcome"],
)
SCHEDULE_MISFIRES = Counter(
    "offload_schedule_misfires_total", "Times a schedule's ticks were found later than the misfire grace."
)
QUEUE_WAIT_SECONDS = Histogram(
    "offload_job_queue_wait_seconds",
    "Time from the API's publish to the start of the job's first attempt.",
    LABELS,
    buckets=WAIT_BUCKETS,
)
# Limits of job types across workers (offload_core.store.rate_limits), by job type.
JOBS_THROTTLED = Counter(
    "offload_jobs_throttled_total",
    "Jobs that waited for their type's rate or concurrency limit before they started.",
    ("task", "limit"),
)
LIMIT_WAIT_SECONDS = Histogram(
    "offload_job_limit_wait_seconds",
    "Time a job of a limited type waited in its worker for its limits.",
    ("task",),
    buckets=WAIT_BUCKETS,
)
JOBS_HANDED_BACK = Counter(
    "offload_jobs_limit_handed_back_total",
    "Jobs put back on their queue after waiting OFFLOAD_JOB_LIMIT_MAX_WAIT_SECONDS for their type's limits.",
    ("task",),
)


class RunOutcome(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    RETRIED = "retried"
    CANCELLED = "cancelled"


OUTCOME_COUNTERS = {
    RunOutcome.SUCCEEDED: JOBS_SUCCEEDED,
    RunOutcome.RETRIED: JOBS_RETRIED,
    RunOutcome.CANCELLED: JOBS_CANCELLED,
}


class InFlightCollector(Collector):
    """offload_jobs_in_flight from the worker's active requests, at scrape time."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauge = GaugeMetricFamily("offload_jobs_in_flight", "Jobs running in this worker now.", labels=LABELS)
        running = Tally((request.name, (request.delivery_info or {}).get("routing_key") or "") for request in _active())
        for (task, queue), count in sorted(running.items()):
            gauge.add_metric([task, queue], count)
        yield gauge


def _active() -> list[Request]:
    # The worker's main thread changes the set while a scrape reads it; try again then.
    for _ in range(5):
        try:
            return list(worker_state.active_requests)
        except RuntimeError:
            continue
    return []


def worker_registry() -> CollectorRegistry:
    """What a worker's main process reports: its pool processes' counts summed, and jobs in flight."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    registry.register(InFlightCollector())
    return registry


def serve_worker_metrics(settings: Settings, registry: CollectorRegistry) -> None:
    try:
        start_http_server(settings.WORKER_METRICS_PORT, addr=settings.WORKER_METRICS_HOST, registry=registry)
    except OSError as exc:
        raise RuntimeError(
            f"cannot serve metrics on {settings.WORKER_METRICS_HOST}:{settings.WORKER_METRICS_PORT} ({exc}); "
            "set OFFLOAD_WORKER_METRICS_PORT to a free port, or 0 to turn the endpoint off"
        ) from exc
    logger.info("metrics on http://%s:%d/metrics", settings.WORKER_METRICS_HOST, settings.WORKER_METRICS_PORT)
