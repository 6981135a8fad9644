"""Which exporter the standard OTEL_* variables select, and what the spans say about their source."""

from __future__ import annotations

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

from offload_core.telemetry import otlp_span_exporter, service_resource

OTEL_VARIABLES = [
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_TRACES_EXPORTER",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "KUBERNETES_SERVICE_HOST",
]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_without_an_endpoint_nothing_is_exported() -> None:
    assert otlp_span_exporter() is None


def test_an_endpoint_selects_otlp_over_http_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    exporter = otlp_span_exporter()
    assert isinstance(exporter, HttpExporter)
    assert exporter._endpoint == "http://collector:4318/v1/traces"


def test_the_grpc_protocol_selects_the_grpc_exporter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://collector:4317")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    assert isinstance(otlp_span_exporter(), GrpcExporter)


def test_exporter_none_or_an_unknown_protocol(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert otlp_span_exporter() is None
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    with pytest.raises(ValueError, match="http/protobuf or grpc"):
        otlp_span_exporter()


def test_the_resource_names_service_queues_and_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    attributes = service_resource("offload-worker", ["default", "low"]).attributes
    assert attributes["service.name"] == "offload-worker"
    assert attributes["offload.queues"] == "default,low"
    assert "k8s.pod.name" not in attributes

    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("HOSTNAME", "offload-worker-default-5d9f-abcde")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "jobs-worker")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=staging")
    attributes = service_resource("offload-worker", ["default"]).attributes
    assert attributes["service.name"] == "jobs-worker"
    assert attributes["k8s.pod.name"] == "offload-worker-default-5d9f-abcde"
    assert attributes["deployment.environment.name"] == "staging"
