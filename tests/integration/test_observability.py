"""Following a job from the HTTP request into the worker: one trace across processes (exported
over real OTLP/HTTP to a receiver in the test that decodes the protobuf requests), with client
spans for Redis, webhooks and SMTP and the trace continued in the webhook's `traceparent`;
Prometheus counters that move by exactly the jobs run, and the same metrics and the logs over
OTLP; JSON logs that name the job and trace and carry no secret."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from prometheus_client import CollectorRegistry

from offload_api.metrics import QueueCollector
from offload_core.contract.topology import priority_lists
from offload_dev.polling import wait_for
from offload_dev.processes import Service, start_redis
from tests.receivers import ScriptedSmtpHandler, WebhookReceiver, smtp_server
from tests.support import (
    API_KEY,
    TEST_SETTINGS,
    OtlpReceiver,
    ReceivedLog,
    ReceivedPoint,
    ReceivedSpan,
    Stack,
    cluster,
    sample,
    scrape,
    submit_echo,
    wait_job,
)

REDIS_PASSWORD = "observed-redis-password-7f3a9c"
SERVER_SPAN, PRODUCER_SPAN, CONSUMER_SPAN = 2, 4, 5  # OTLP's SpanKind numbers
ECHO = "offload.echo"


OTLP_TOKEN = "otlp-token-5d1e0c"


@dataclass
class ObservedStack:
    receiver: OtlpReceiver
    api: Service
    worker: Service
    notifier: Service
    client: httpx.Client
    smtp: ScriptedSmtpHandler
    webhooks: WebhookReceiver

    @property
    def services(self) -> list[Service]:
        return [self.api, self.worker, self.notifier]


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObservedStack]:
    """A password-protected Redis, the API, a worker for `default` only (so `low` jobs wait and
    show in the depth gauge) and the notifier, exporting traces, metrics and logs to a local OTLP
    receiver, and an SMTP server and webhook receiver for the notifier to deliver to."""
    with OtlpReceiver().running() as receiver, smtp_server() as (smtp, smtp_port):
        webhooks = WebhookReceiver().start()
        env = {
            **TEST_SETTINGS,
            "OFFLOAD_LOG_FORMAT": "json",
            "OFFLOAD_QUEUE_METRICS_CACHE_SECONDS": "0.5",
            "OFFLOAD_SMTP_PORT": str(smtp_port),
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_EXPORTER_OTLP_HEADERS": f"authorization=Bearer {OTLP_TOKEN}",
            "OTEL_BSP_SCHEDULE_DELAY": "100",  # export within a tenth of a second
            "OTEL_BLRP_SCHEDULE_DELAY": "100",
            "OTEL_METRIC_EXPORT_INTERVAL": "300",
        }
        try:
            with cluster(tmp_path_factory.mktemp("observed"), env, redis_password=REDIS_PASSWORD) as own:
                worker = own.start_worker("worker", queues="default")
                notifier = own.start_worker("notifier", module="offload_notifier")
                api = own.start_api()
                yield ObservedStack(receiver, api, worker, notifier, own.client, smtp, webhooks)
        finally:
            webhooks.stop()


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
    server = start_redis(tmp_path / "redis")
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


CLIENT_SPAN = 3


def _trace_of(receiver: OtlpReceiver, trace_id: str, ready: Callable[[list[ReceivedSpan]], bool]) -> list[ReceivedSpan]:
    def spans() -> list[ReceivedSpan] | None:
        found = [s for s in receiver.received() if s.trace_id == trace_id]
        return found if ready(found) else None

    return wait_for(spans, 15, f"the spans of trace {trace_id}", interval=0.1)


def test_a_notification_is_one_trace_from_the_request_to_the_receivers_headers(observed: ObservedStack) -> None:
    path = f"/hooks/{uuid.uuid4().hex[:12]}"
    targets = [
        {"channel": "webhook", "url": observed.webhooks.url(path)},
        {"channel": "email", "address": "oncall@tests.example"},
    ]
    message = {"title": "Disk almost full", "body": "db-1 is at 97%"}
    response = observed.client.post("/v1/notifications", json={"message": message, "targets": targets})
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    assert wait_job(observed.client, job_id, {"succeeded", "failed"})["status"] == "succeeded"

    [delivery] = observed.webhooks.received(path)
    version, trace_id, parent_id, flags = delivery.headers["traceparent"].split("-")
    assert version == "00"
    assert int(flags, 16) & 1  # sampled

    def complete(spans: list[ReceivedSpan]) -> bool:
        return {parent_id, "smtp send"} <= {s.span_id for s in spans} | {s.name for s in spans}

    spans = _trace_of(observed.receiver, trace_id, complete)
    (request,) = [s for s in spans if s.kind == SERVER_SPAN]
    assert (request.service, request.attributes["http.route"]) == ("offload-api", "/v1/notifications")
    assert request.attributes["offload.job.id"] == job_id
    # The receiver's parent is the notifier's HTTP client span, under the run of the job.
    (webhook_call,) = [s for s in spans if s.span_id == parent_id]
    assert (webhook_call.service, webhook_call.kind, webhook_call.name) == ("offload-notifier", CLIENT_SPAN, "POST")
    chain = _ancestors(webhook_call, spans)
    assert chain[0].kind == CONSUMER_SPAN
    assert chain[0].attributes["offload.job.id"] == job_id
    assert chain[-1].span_id == request.span_id
    (mail,) = [s for s in spans if s.name == "smtp send"]
    assert (mail.service, mail.kind, mail.attributes["network.protocol.name"]) == (
        "offload-notifier",
        CLIENT_SPAN,
        "smtp",
    )
    assert _ancestors(mail, spans)[-1].span_id == request.span_id
    assert observed.smtp.messages_to("oncall@tests.example")
    # Redis calls are client spans in the same trace, on both sides of the queue.
    redis_spans = {s.service for s in spans if s.kind == CLIENT_SPAN and s.attributes.get("db.system") == "redis"}
    assert redis_spans == {"offload-api", "offload-notifier"}


def _points_of(receiver: OtlpReceiver, service: str, metric: str, **attributes: str) -> list[ReceivedPoint]:
    return [
        p
        for p in receiver.received_points()
        if p.service == service and p.metric == metric and attributes.items() <= p.attributes.items()
    ]


def _points(observed: ObservedStack, service: str, metric: str, **attributes: str) -> list[ReceivedPoint]:
    return _points_of(observed.receiver, service, metric, **attributes)


def test_the_same_metrics_and_the_logs_arrive_over_otlp(observed: ObservedStack) -> None:
    job_id = submit_echo(observed.client, message=f"redis://:{REDIS_PASSWORD}@example:6379/0")
    wait_job(observed.client, job_id, {"succeeded"})
    (run,) = _runs_of(observed.receiver, job_id, 1)

    def succeeded_points() -> list[ReceivedPoint] | None:
        scraped = sample(
            scrape(observed.worker.extra["metrics_url"]), "offload_jobs_succeeded_total", task=ECHO, queue="default"
        )
        points = _points(observed, "offload-worker", "offload_jobs_succeeded", task=ECHO, queue="default")
        return points if points and points[-1].value == scraped else None

    # A counter is a monotonic cumulative sum of the value /metrics shows, from the main process.
    [*_, last] = wait_for(succeeded_points, 15, "offload_jobs_succeeded over OTLP to match /metrics", interval=0.2)
    assert (last.kind, last.monotonic) == ("sum", True)
    [*_, run_time] = wait_for(
        lambda: _points(observed, "offload-worker", "offload_job_run_seconds", task=ECHO, queue="default") or None,
        5,
        "the run-time histogram over OTLP",
    )
    assert run_time.kind == "histogram"
    assert run_time.value >= 1
    assert len(run_time.bucket_counts) == len(run_time.explicit_bounds) + 1
    assert sum(run_time.bucket_counts) == run_time.value
    requests = _points(observed, "offload-api", "offload_http_requests", route="/v1/jobs/echo", status="202")
    assert requests
    assert requests[-1].monotonic
    assert {p.attributes["queue"] for p in _points(observed, "offload-api", "offload_queue_depth")} >= {
        "default",
        "high",
        "low",
    }

    def run_logs() -> list[ReceivedLog] | None:
        logs = [r for r in observed.receiver.received_logs() if r.attributes.get("job_id") == job_id]
        return logs if {r.service for r in logs} >= {"offload-api", "offload-worker"} else None

    logs = wait_for(run_logs, 15, f"OTLP log records about job {job_id} from the API and the worker", interval=0.2)
    for record in logs:
        assert record.trace_id == run.trace_id
        assert len(record.span_id) == 16
        assert REDIS_PASSWORD not in str(record.body)
    worker_log = next(r for r in logs if r.service == "offload-worker")
    assert (worker_log.attributes["task"], worker_log.attributes["queue"]) == (ECHO, "default")
    assert all(r.severity_text for r in logs)
    # OTEL_EXPORTER_OTLP_HEADERS reached the receiver with every request.
    assert {h.get("authorization") for h in observed.receiver.headers} == {f"Bearer {OTLP_TOKEN}"}


@pytest.mark.parametrize("module", ["offload_api", "offload_worker", "offload_notifier"])
def test_an_unsupported_otlp_protocol_is_refused_at_start_naming_the_variable(module: str, tmp_path: Path) -> None:
    env = {
        **os.environ,
        **TEST_SETTINGS,
        "OFFLOAD_REDIS_URL": "redis://127.0.0.1:1/0",  # never reached
        "OFFLOAD_WORKER_STATE_DIR": str(tmp_path / "state"),
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json",
    }
    done = subprocess.run(
        [sys.executable, "-m", module], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1, done.stderr
    assert "OTEL_EXPORTER_OTLP_PROTOCOL=http/json is not supported: use http/protobuf" in done.stderr
    assert "grpc" in done.stderr
    assert "Traceback" not in done.stderr


def test_redis_gauges_say_whether_redis_answers_and_how_full_it_is(tmp_path: Path) -> None:
    server = start_redis(tmp_path / "redis")
    client = redis.Redis(port=server.port, decode_responses=True, socket_timeout=1, socket_connect_timeout=1)
    collector = QueueCollector(client, stale_after=3, cache_seconds=0)
    registry = CollectorRegistry()
    registry.register(collector)
    try:
        assert registry.get_sample_value("offload_redis_up") == 1
        assert registry.get_sample_value("offload_redis_maxmemory_bytes") == 0  # no limit
        client.config_set("maxmemory", str(64 * 1024 * 1024))
        client.set("filler", "x" * 1_000_000)
        assert registry.get_sample_value("offload_redis_maxmemory_bytes") == 64 * 1024 * 1024
        used = registry.get_sample_value("offload_redis_memory_used_bytes")
        assert used is not None
        assert used == pytest.approx(int(client.info("memory")["used_memory"]), rel=0.05)
        assert used > 1_000_000
    finally:
        server.stop()
    # Redis gone: the scrape still answers, saying so, without stale memory figures.
    assert registry.get_sample_value("offload_redis_up") == 0
    assert registry.get_sample_value("offload_redis_memory_used_bytes") is None
    assert registry.get_sample_value("offload_queue_depth", {"queue": "default"}) is None


def test_grpc_carries_all_three_signals_too(tmp_path: Path) -> None:
    receiver = OtlpReceiver()
    with receiver.running_grpc() as endpoint:
        env = {
            **TEST_SETTINGS,
            "OFFLOAD_LOG_FORMAT": "json",
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_EXPORTER_OTLP_HEADERS": f"authorization=Bearer {OTLP_TOKEN}",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "OTEL_BLRP_SCHEDULE_DELAY": "100",
            "OTEL_METRIC_EXPORT_INTERVAL": "300",
        }
        with cluster(tmp_path, env) as own:
            own.start_api()
            job_id = submit_echo(own.client)  # accepted (and logged) by the API; no worker runs it

            def arrived() -> bool:
                spans = [s for s in receiver.received() if s.attributes.get("offload.job.id") == job_id]
                logs = [r for r in receiver.received_logs() if r.attributes.get("job_id") == job_id]
                points = _points_of(receiver, "offload-api", "offload_jobs_submitted", task=ECHO)
                return bool(spans and logs and points)

            wait_for(arrived, 15, "a span, a log record and a metric of the job over OTLP/gRPC", interval=0.2)
    (span, *_) = [s for s in receiver.received() if s.attributes.get("offload.job.id") == job_id]
    (log, *_) = [r for r in receiver.received_logs() if r.attributes.get("job_id") == job_id]
    assert log.trace_id == span.trace_id
    assert _points_of(receiver, "offload-api", "offload_jobs_submitted", task=ECHO)[-1].value >= 1
