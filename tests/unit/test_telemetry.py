"""Which exporters the standard OTEL_* variables select, what they refuse, what the spans say about
their source, and how Prometheus samples become OTLP metrics."""

from __future__ import annotations

import pytest
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.metrics.export import Gauge as Gauge_
from opentelemetry.sdk.metrics.export import Histogram as HistogramData
from opentelemetry.sdk.metrics.export import Sum
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from offload_core.otlp_metrics import metrics_data
from offload_core.telemetry import (
    Signal,
    TelemetryConfigError,
    exports,
    otlp_log_exporter,
    otlp_metric_exporter,
    otlp_span_exporter,
    service_resource,
    telemetry_config_problem,
)

OTEL_VARIABLES = [
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
    "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL",
    "OTEL_TRACES_EXPORTER",
    "OTEL_METRICS_EXPORTER",
    "OTEL_LOGS_EXPORTER",
    "OTEL_SDK_DISABLED",
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
    with pytest.raises(TelemetryConfigError, match=r"OTEL_EXPORTER_OTLP_PROTOCOL=http/json is not supported"):
        otlp_span_exporter()


def test_http_json_is_a_start_up_problem_naming_the_variable_and_the_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    assert telemetry_config_problem() is None  # nothing is exported without an endpoint
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "http://collector:4318/v1/logs")
    problem = telemetry_config_problem()
    assert problem is not None
    assert problem.startswith("OTEL_EXPORTER_OTLP_PROTOCOL=http/json is not supported")
    assert "http/protobuf" in problem
    assert "grpc" in problem
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "grpc")  # the signal's own variable wins
    assert telemetry_config_problem() is None
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "prometheus")
    assert (
        telemetry_config_problem()
        == "OTEL_METRICS_EXPORTER=prometheus is not supported: use otlp (the default) or none"
    )
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert telemetry_config_problem() is None


def test_metrics_and_logs_follow_the_same_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    assert otlp_metric_exporter() is None
    assert otlp_log_exporter() is None
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    assert isinstance(otlp_metric_exporter(), HttpMetricExporter)
    assert isinstance(otlp_log_exporter(), HttpLogExporter)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "grpc")
    monkeypatch.setenv("OTEL_LOGS_EXPORTER", "none")
    assert isinstance(otlp_metric_exporter(), GrpcMetricExporter)
    assert otlp_log_exporter() is None
    assert exports(Signal.TRACES)
    assert not exports(Signal.LOGS)


def test_prometheus_samples_become_otlp_sums_gauges_and_histograms() -> None:
    registry = CollectorRegistry()
    runs = Counter("offload_runs_total", "Runs.", ["task"], registry=registry)
    depth = Gauge("offload_depth", "Depth.", ["queue"], registry=registry)
    run_time = Histogram("offload_run_seconds", "Run time.", ["task"], buckets=(0.1, 1.0), registry=registry)
    runs.labels("offload.echo").inc(3)
    depth.labels("low").set(7)
    for seconds in (0.05, 0.5, 0.7, 5):
        run_time.labels("offload.echo").observe(seconds)

    data = metrics_data(registry, Resource({"service.name": "offload-test"}), start_ns=1)
    (resource_metrics,) = data.resource_metrics
    assert resource_metrics.resource.attributes["service.name"] == "offload-test"
    metrics = {m.name: m.data for m in resource_metrics.scope_metrics[0].metrics}
    assert isinstance(metrics["offload_runs"], Sum)
    assert metrics["offload_runs"].is_monotonic
    assert [(p.attributes, p.value) for p in metrics["offload_runs"].data_points] == [({"task": "offload.echo"}, 3)]
    assert isinstance(metrics["offload_depth"], Gauge_)
    assert [(p.attributes, p.value) for p in metrics["offload_depth"].data_points] == [({"queue": "low"}, 7)]
    histogram = metrics["offload_run_seconds"]
    assert isinstance(histogram, HistogramData)
    (point,) = histogram.data_points
    assert point.attributes == {"task": "offload.echo"}
    assert point.count == 4
    assert point.sum == pytest.approx(6.25)
    assert (list(point.explicit_bounds), list(point.bucket_counts)) == ([0.1, 1.0], [1, 2, 1])
    # The real encoder takes it (min and max unset), as the OTLP exporters will.
    encoded = encode_metrics(data)
    assert encoded.resource_metrics[0].scope_metrics[0].metrics


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
