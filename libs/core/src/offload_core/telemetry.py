"""OpenTelemetry for every Offload process: traces, metrics and logs over OTLP.

Traces: the API's request span, the publish span and the task's run span form one trace, the
context travelling in the task message headers (W3C trace context); Redis, HTTP (webhooks,
report sources) and SMTP calls are client spans inside it.

Only the standard OTEL_* variables configure the export: OTLP over HTTP (http/protobuf, the
default) or gRPC to OTEL_EXPORTER_OTLP_ENDPOINT or a signal's own OTEL_EXPORTER_OTLP_<SIGNAL>_ENDPOINT.
Without an endpoint nothing is exported and spans are not recorded, yet each still has its ids,
so trace ids reach the logs and travel on to the workers. http/json is refused at start with an
error naming the variable (see PROTOCOLS).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence
from enum import StrEnum
from typing import TypeVar

import redis
import redis.asyncio as aioredis
from opentelemetry import trace
from opentelemetry._logs import set_logger_provider
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExporter
from opentelemetry.sdk.metrics.export import MetricExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased

logger = logging.getLogger(__name__)

API_SERVICE = "offload-api"
WORKER_SERVICE = "offload-worker"
NOTIFIER_SERVICE = "offload-notifier"

# Span attributes of a job, on the API's request span and on every run span.
JOB_ID = "offload.job.id"
TASK = "offload.task"
QUEUE = "offload.queue"
ATTEMPT = "offload.attempt"
OUTCOME = "offload.outcome"

_provider: TracerProvider | None = None
# Spans only inside a trace something else started: for Redis, whose background readers (metrics
# scrapes, the orphan sweep) would otherwise start a trace of their own every few seconds.
_inner_provider: TracerProvider | None = None
_exported = False
_log_provider: LoggerProvider | None = None

RedisClient = TypeVar("RedisClient", redis.Redis, aioredis.Redis)


def _env(*names: str) -> str:
    return next((value for name in names if (value := os.environ.get(name, "").strip())), "")


class Signal(StrEnum):
    TRACES = "traces"
    METRICS = "metrics"
    LOGS = "logs"


# What OTEL_EXPORTER_OTLP_PROTOCOL may say here. The OTLP exporters released with our SDK speak
# these two; the only http/json exporter is a beta pinned to an older release of the exporters'
# shared packages than the protobuf exporters need.
PROTOCOLS = ("http/protobuf", "grpc")
EXPORTERS = ("otlp", "none")


class TelemetryConfigError(ValueError):
    """An OTEL_* variable asks for something Offload cannot do; str(exc) names it and the fix."""


def _exporter_variable(signal: Signal) -> str:
    return f"OTEL_{signal.upper()}_EXPORTER"


def exports(signal: Signal) -> bool:
    """Whether the OTEL_* variables ask for this signal to be exported over OTLP."""
    if _env("OTEL_SDK_DISABLED").lower() == "true" or _env(_exporter_variable(signal)).lower() == "none":
        return False
    return bool(_env(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"))


def otlp_protocol(signal: Signal) -> str:
    """The signal's OTLP protocol; TelemetryConfigError for one Offload cannot export with."""
    for variable in (f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        if protocol := _env(variable):
            break
    else:
        return "http/protobuf"
    if protocol not in PROTOCOLS:
        raise TelemetryConfigError(
            f"{variable}={protocol} is not supported: use http/protobuf (the default, port 4318) or grpc "
            "(port 4317); an OpenTelemetry Collector accepts both"
        )
    return protocol


def telemetry_config_problem() -> str | None:
    """What is wrong with the OTEL_* variables, for the entrypoints to refuse to start with."""
    if _env("OTEL_SDK_DISABLED").lower() == "true":
        return None
    for signal in Signal:
        variable = _exporter_variable(signal)
        if (exporter := _env(variable).lower()) and exporter not in EXPORTERS:
            return f"{variable}={exporter} is not supported: use otlp (the default) or none"
        if exports(signal):
            try:
                otlp_protocol(signal)
            except TelemetryConfigError as exc:
                return str(exc)
    return None


def refuse_unsupported_settings(program: str) -> None:
    """Exit at start, naming the variable and its accepted values, rather than fail later."""
    if problem := telemetry_config_problem():
        raise SystemExit(f"{program} cannot start: {problem}")


def otlp_span_exporter() -> SpanExporter | None:
    """The exporter the OTEL_* variables ask for, or None when they name no endpoint."""
    if not exports(Signal.TRACES):
        return None
    # Each exporter reads its endpoint, headers, timeout and certificates from OTEL_* itself.
    if otlp_protocol(Signal.TRACES) == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter()


def otlp_metric_exporter() -> MetricExporter | None:
    if not exports(Signal.METRICS):
        return None
    if otlp_protocol(Signal.METRICS) == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcExporter

        return GrpcExporter()
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpExporter

    return HttpExporter()


def otlp_log_exporter() -> LogRecordExporter | None:
    if not exports(Signal.LOGS):
        return None
    if otlp_protocol(Signal.LOGS) == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcExporter

        return GrpcExporter()
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpExporter

    return HttpExporter()


def service_resource(service: str, queues: Sequence[str] = ()) -> Resource:
    """Who emits the spans: OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win over our defaults."""
    attributes: dict[str, str] = {
        SERVICE_NAME: _env("OTEL_SERVICE_NAME") or service,
        "host.name": socket.gethostname(),
    }
    if queues:
        attributes["offload.queues"] = ",".join(queues)
    if os.environ.get("KUBERNETES_SERVICE_HOST") and os.environ.get("HOSTNAME"):
        attributes["k8s.pod.name"] = os.environ["HOSTNAME"]  # Kubernetes sets HOSTNAME to the pod's name
    return Resource(attributes).merge(Resource.create({SERVICE_NAME: attributes[SERVICE_NAME]}))


def setup_tracing(service: str, queues: Sequence[str] = ()) -> bool:
    """Install this process's tracer provider, once; True when its spans are exported. Prefork
    workers call it in each pool process after the fork (worker_process_init), since the export
    thread does not survive one."""
    global _provider, _inner_provider, _exported
    if _provider is not None or _env("OTEL_SDK_DISABLED").lower() == "true":
        return _exported
    exporter = otlp_span_exporter()
    _exported = exporter is not None
    if exporter is None:
        # Nothing would read the spans: record none (recording costs the API about a third of a
        # submit's CPU), yet every span still has its trace and span ids, for logs and headers.
        _provider = TracerProvider(resource=service_resource(service, queues), sampler=ALWAYS_OFF)
    else:
        resource = service_resource(service, queues)
        processor = BatchSpanProcessor(exporter)
        _provider = TracerProvider(resource=resource)
        _provider.add_span_processor(processor)
        _inner_provider = TracerProvider(resource=resource, sampler=ParentBased(root=ALWAYS_OFF))
        _inner_provider.add_span_processor(processor)
        # Client spans for every outbound HTTP call (webhooks, report sources); the Redis clients
        # Offload makes are traced one by one (trace_redis_client), not the broker's polling.
        HTTPXClientInstrumentor().instrument()
    trace.set_tracer_provider(_provider)
    logger.debug("tracing for %s: %s", service, "exported over OTLP" if exporter else "no OTLP endpoint, not exported")
    return _exported


def trace_redis_client(client: RedisClient) -> RedisClient:
    """The client, with a client span for each command inside a trace when spans are exported.
    Only Offload's own clients: kombu's broker connection polls all the time."""
    if _inner_provider is not None:
        RedisInstrumentor.instrument_client(client, tracer_provider=_inner_provider)
    return client


def log_provider(service: str) -> LoggerProvider | None:
    """This process's OTLP log pipeline, made once; None when logs are not exported. Its batch
    thread restarts by itself in a forked pool process."""
    global _log_provider
    if _log_provider is None and _env("OTEL_SDK_DISABLED").lower() != "true":
        exporter = otlp_log_exporter()
        if exporter is not None:
            _log_provider = LoggerProvider(resource=service_resource(service))
            _log_provider.add_log_record_processor(BatchLogRecordProcessor(exporter))
            set_logger_provider(_log_provider)
    return _log_provider


def flush_telemetry() -> None:
    """Send buffered spans and log records now: a pool process ends without running atexit handlers."""
    if _provider is not None:
        _provider.force_flush(timeout_millis=5000)
    if _log_provider is not None:
        _log_provider.force_flush(timeout_millis=5000)
