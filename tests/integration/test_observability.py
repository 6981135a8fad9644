"""Following a job from the HTTP request into the worker: one trace across processes (exported
over real OTLP/HTTP to a receiver in the test), Prometheus counters that move by exactly the
jobs run, and JSON logs that name the job and trace and carry no secret."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from prometheus_client import CollectorRegistry

from offload_api.metrics import QueueCollector
from offload_core.topology import priority_lists
from offload_dev.polling import wait_for
from offload_dev.redis_server import RedisServer, free_port
from tests.conftest import Stack
from tests.support import (
    API_KEY,
    TEST_SETTINGS,
    OtlpReceiver,
    ReceivedSpan,
    Service,
    api_client,
    sample,
    scrape,
    start_api,
    start_worker,
    submit_echo,
    wait_job,
)

REDIS_PASSWORD = "observed-redis-password-7f3a9c"
SERVER_SPAN, PRODUCER_SPAN, CONSUMER_SPAN = 2, 4, 5  # OTLP's SpanKind numbers
ECHO = "offload.echo"


@dataclass
class ObservedStack:
    receiver: OtlpReceiver
    api: Service
    worker: Service
    notifier: Service
    client: httpx.Client

    @property
    def services(self) -> list[Service]:
        return [self.api, self.worker, self.notifier]


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObservedStack]:
    """A password-protected Redis, the API, a worker for `default` only (so `low` jobs wait and
    show in the depth gauge) and the notifier, exporting spans to a local OTLP receiver."""
    base = tmp_path_factory.mktemp("observed")
    redis = RedisServer(free_port(), base / "redis", password=REDIS_PASSWORD).start()
    services: list[Service] = []
    with OtlpReceiver().running() as receiver:
        env = {
            **TEST_SETTINGS,
            "OFFLOAD_REDIS_URL": redis.url,
            "OFFLOAD_LOG_FORMAT": "json",
            "OFFLOAD_QUEUE_METRICS_CACHE_SECONDS": "0.5",
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "100",  # export within a tenth of a second
        }
        try:
            services.append(worker := start_worker("worker", env, base, queues="default"))
            services.append(notifier := start_worker("notifier", env, base, module="offload_notifier"))
            services.append(api := start_api(env, base))
            with api_client(api) as client:
                yield ObservedStack(receiver, api, worker, notifier, client)
        finally:
            for service in services:
                service.stop()
            redis.stop()


def _runs_of(receiver: OtlpReceiver, job_id: str, count: int) -> list[ReceivedSpan]:
    def finished_runs() -> list[ReceivedSpan] | None:
        runs = [
            s
            for s in receiver.received()
            if s.kind == CONSUMER_SPAN
            and s.attributes.get("offload.job.id") == job_id
            and "offload.outcome" in s.attributes
        ]
        return sorted(runs, key=lambda s: s.attributes["offload.attempt"]) if len(runs) >= count else None

    return wait_for(finished_runs, 15, f"{count} exported run spans of job {job_id}", interval=0.1)


def _ancestors(span: ReceivedSpan, spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
    by_id = {s.span_id: s for s in spans}
    chain = []
    while span.parent_span_id:
        parent = by_id.get(span.parent_span_id)
        assert parent is not None, f"parent {span.parent_span_id} of {span.name} ({span.service}) was never exported"
        chain.append(parent)
        span = parent
    return chain


def test_a_job_and_its_retry_run_in_the_trace_of_the_request_that_submitted_it(observed: ObservedStack) -> None:
    job_id = submit_echo(observed.client, fail_times=1)
    assert wait_job(observed.client, job_id, {"succeeded", "failed"})["status"] == "succeeded"

    first, second = _runs_of(observed.receiver, job_id, 2)

    def with_parents() -> list[ReceivedSpan] | None:
        spans = observed.receiver.received()
        exported = {s.span_id for s in spans}
        return spans if {first.parent_span_id, second.parent_span_id} <= exported else None

    spans = wait_for(with_parents, 10, "the publish spans of both runs")
    for run, attempt, outcome in [(first, 1, "retried"), (second, 2, "succeeded")]:
        assert run.service == "offload-worker"
        assert run.resource["offload.queues"] == "default"
        assert run.attributes["offload.task"] == ECHO
        assert run.attributes["offload.queue"] == "default"
        assert (run.attributes["offload.attempt"], run.attributes["offload.outcome"]) == (attempt, outcome)

    # The first run: worker run <- API publish <- API request, the root of the trace.
    publish, request, *_ = _ancestors(first, spans)
    assert (publish.service, publish.kind, publish.attributes["offload.job.id"]) == (
        "offload-api",
        PRODUCER_SPAN,
        job_id,
    )
    assert (request.service, request.kind, request.attributes["http.route"]) == (
        "offload-api",
        SERVER_SPAN,
        "/v1/jobs/echo",
    )
    assert request.parent_span_id == ""
    assert request.attributes["offload.job.id"] == job_id
    # The retry is a separate run, published by the first one, in the same trace.
    chain = _ancestors(second, spans)
    assert (chain[0].service, chain[0].kind) == ("offload-worker", PRODUCER_SPAN)
    assert chain[1].span_id == first.span_id
    assert chain[-1].span_id == request.span_id
    assert {s.trace_id for s in [first, second, *chain]} == {request.trace_id}


def _all_metrics(observed: ObservedStack) -> dict[str, dict[Any, float]]:
    return {
        "api": scrape(observed.api.extra["metrics_url"]),
        "worker": scrape(observed.worker.extra["metrics_url"]),
        "notifier": scrape(observed.notifier.extra["metrics_url"]),
    }


def test_counters_move_by_exactly_the_jobs_that_ran(observed: ObservedStack) -> None:
    before = _all_metrics(observed)

    long = submit_echo(observed.client, sleep_ms=1500)
    wait_job(observed.client, long, {"started"})
    running = scrape(observed.worker.extra["metrics_url"])
    assert sample(running, "offload_jobs_in_flight", task=ECHO, queue="default") == 1

    jobs = [
        long,
        submit_echo(observed.client),
        submit_echo(observed.client, fail_times=1),  # succeeds on its second attempt
        submit_echo(observed.client, fail_times=10),  # fails for good after 1 + 3 retries
        submit_echo(observed.client, queue="high"),
    ]
    waiting = [submit_echo(observed.client, queue="low") for _ in range(2)]  # nobody consumes low here
    for job_id in jobs:
        wait_job(observed.client, job_id, {"succeeded", "failed"})
    assert observed.client.get("/v1/jobs/0123456789abcdef").status_code == 404
    assert observed.client.get("/no/such/path").status_code == 404

    expected_worker = {
        "offload_jobs_started_total": 1 + 1 + 2 + 4,
        "offload_jobs_succeeded_total": 3,
        "offload_jobs_retried_total": 1 + 3,
        "offload_jobs_failed_total": 1,
        "offload_job_run_seconds_count": 8,
        "offload_job_queue_wait_seconds_count": 4,  # first attempts only
    }

    def worker_moved() -> dict[Any, float] | None:
        now = scrape(observed.worker.extra["metrics_url"])
        moved = {
            name: sample(now, name, task=ECHO, queue="default")
            - sample(before["worker"], name, task=ECHO, queue="default")
            for name in expected_worker
        }
        return now if moved == expected_worker else None

    worker = wait_for(worker_moved, 10, f"worker counters to move by {expected_worker}", interval=0.2)
    assert sample(worker, "offload_jobs_in_flight", task=ECHO, queue="default") == 0
    assert sample(worker, "offload_job_run_seconds_bucket", task=ECHO, queue="default", le="1.0") < sample(
        worker, "offload_job_run_seconds_count", task=ECHO, queue="default"
    )  # the 1.5 s job is in a higher bucket

    after = _all_metrics(observed)

    def moved(where: str, name: str, **labels: str) -> float:
        return sample(after[where], name, **labels) - sample(before[where], name, **labels)

    assert moved("notifier", "offload_jobs_succeeded_total", task=ECHO, queue="high") == 1
    assert moved("notifier", "offload_job_queue_wait_seconds_count", task=ECHO, queue="high") == 1
    assert moved("api", "offload_jobs_submitted_total", task=ECHO, queue="default") == 4
    assert moved("api", "offload_jobs_submitted_total", task=ECHO, queue="high") == 1
    assert moved("api", "offload_jobs_submitted_total", task=ECHO, queue="low") == 2
    assert moved("api", "offload_job_enqueue_seconds_count", task=ECHO, queue="default") == 4
    assert moved("api", "offload_http_requests_total", method="POST", route="/v1/jobs/echo", status="202") == 7
    assert moved("api", "offload_http_requests_total", method="GET", route="/v1/jobs/{job_id}", status="404") == 1
    assert moved("api", "offload_http_requests_total", method="GET", route="unmatched", status="404") == 1
    assert (
        moved("api", "offload_http_request_duration_seconds_count", method="POST", route="/v1/jobs/echo", status="202")
        == 7
    )

    def queue_gauges() -> dict[Any, float] | None:
        now = scrape(observed.api.extra["metrics_url"])
        depth_moved = sample(now, "offload_queue_depth", queue="low") - sample(
            before["api"], "offload_queue_depth", queue="low"
        )
        return now if depth_moved == len(waiting) else None

    gauges = wait_for(queue_gauges, 10, "the low queue's depth gauge to count the waiting jobs", interval=0.2)
    assert sample(gauges, "offload_queue_oldest_job_age_seconds", queue="low") > 0
    consumers = {q: sample(gauges, "offload_queue_consumers", queue=q) for q in ("high", "default", "low")}
    assert consumers == {"high": 1, "default": 1, "low": 0}


def _log_lines(service: Service) -> list[dict[str, Any]]:
    lines = service.log.read_text().splitlines()
    entries = []
    for line in lines:
        entry = json.loads(line)  # every line is one JSON object
        assert {"time", "level", "service", "message"} <= set(entry), line
        entries.append(entry)
    return entries


def test_logs_are_json_lines_naming_job_and_trace_and_carry_no_secrets(observed: ObservedStack) -> None:
    # A job whose own data holds the secrets: they are masked even in Celery's result line.
    leaky = f"key {API_KEY} url redis://:{REDIS_PASSWORD}@example:6379/0"
    job_id = submit_echo(observed.client, message=leaky)
    assert wait_job(observed.client, job_id, {"succeeded"})["result"]["message"] == leaky
    (run,) = _runs_of(observed.receiver, job_id, 1)

    def succeeded_line() -> dict[str, Any] | None:
        lines = _log_lines(observed.worker)
        return next((e for e in lines if e.get("job_id") == job_id and "succeeded" in e["message"]), None)

    line = wait_for(succeeded_line, 10, f"the worker's log line about job {job_id} succeeding")
    assert line["service"] == "offload-worker"
    assert (line["task"], line["queue"], line["trace_id"]) == (ECHO, "default", run.trace_id)
    assert len(line["span_id"]) == 16
    assert "key *** url redis://:***@example" in line["message"]  # Celery logs the result, masked
    accepted = [e for e in _log_lines(observed.api) if e.get("job_id") == job_id]
    assert [(e["service"], e["trace_id"]) for e in accepted] == [("offload-api", run.trace_id)]

    services = {e["service"] for s in observed.services for e in _log_lines(s)}
    assert services == {"offload-api", "offload-worker", "offload-notifier"}
    for service in observed.services:
        text = service.log.read_text()
        assert API_KEY not in text, service.name
        assert REDIS_PASSWORD not in text, service.name
        assert "redis://:***@127.0.0.1" in text or service.name == "api"  # Celery names its broker, masked


def test_without_an_otlp_endpoint_nothing_is_exported_and_nothing_complains(stack: Stack) -> None:
    job_id = submit_echo(stack.client)
    wait_job(stack.client, job_id, {"succeeded"})
    for service in (stack.api, stack.worker, stack.notifier):
        text = service.log.read_text()
        assert "opentelemetry" not in text, service.log_tail()
        assert "Failed to export" not in text, service.log_tail()


def test_queue_gauges_read_redis_once_per_cache_window(tmp_path: Path) -> None:
    server = RedisServer(free_port(), tmp_path / "redis").start()
    try:
        client = redis.Redis(port=server.port, decode_responses=True)
        collector = QueueCollector(client, stale_after=3, cache_seconds=2)

        def depth_and_commands() -> tuple[float, int]:
            registry = CollectorRegistry()
            registry.register(collector)
            depth = registry.get_sample_value("offload_queue_depth", {"queue": "low"})
            assert depth is not None
            return depth, int(client.info("commandstats").get("cmdstat_llen", {}).get("calls", 0))

        assert depth_and_commands()[0] == 0
        client.lpush(priority_lists("low")[1], "{}")  # a message at priority 3
        depth, commands = depth_and_commands()
        assert depth == 0  # still the cached reading
        assert depth_and_commands()[1] == commands  # and Redis was not asked again
        wait_for(lambda: depth_and_commands()[0] == 1, 5, "the cached depth to expire and count the message")
    finally:
        server.stop()
