"""Tracing for every Offload process: the API's request span, the publish span and the task's
run span form one trace, the context travelling in the task message headers (W3C trace context).

Only the standard OTEL_* variables configure the export: OTLP over HTTP (the default) or gRPC to
OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT). Without an endpoint nothing
is exported and spans are not recorded, yet each still has its ids, so trace ids reach the logs
and travel on to the workers.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

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
_exported = False


def _env(*names: str) -> str:
    return next((value for name in names if (value := os.environ.get(name, "").strip())), "")


def otlp_span_exporter() -> SpanExporter | None:
    """The exporter the OTEL_* variables ask for, or None when they name no endpoint."""
    if _env("OTEL_TRACES_EXPORTER").lower() == "none":
        return None
    if not _env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        return None
    protocol = _env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf"
    # Each exporter reads its endpoint, headers, timeout and certificates from OTEL_* itself.
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter()
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        return HttpExporter()
    raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol} is not supported; use http/protobuf or grpc")


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
    global _provider, _exported
    if _provider is not None or _env("OTEL_SDK_DISABLED").lower() == "true":
        return _exported
    exporter = otlp_span_exporter()
    _exported = exporter is not None
    if exporter is None:
        # Nothing would read the spans: record none (recording costs the API about a third of a
        # submit's CPU), yet every span still has its trace and span ids, for logs and headers.
        _provider = TracerProvider(resource=service_resource(service, queues), sampler=ALWAYS_OFF)
    else:
        _provider = TracerProvider(resource=service_resource(service, queues))
        _provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(_provider)
    logger.debug("tracing for %s: %s", service, "exported over OTLP" if exporter else "no OTLP endpoint, not exported")
    return _exported


def flush_tracing() -> None:
    """Send buffered spans now: a pool process ends without running atexit handlers."""
    if _provider is not None:
        _provider.force_flush(timeout_millis=5000)
