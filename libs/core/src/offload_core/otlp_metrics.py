"""Prometheus metrics over OTLP too: the registry a process serves at /metrics is read every
OTEL_METRIC_EXPORT_INTERVAL milliseconds (default 60000) and sent as OTLP metrics, so both paths
carry the same names and labels. Counters become monotonic cumulative sums (named without
`_total`, which an OpenTelemetry Collector's Prometheus exporter adds back), gauges stay
gauges, histograms keep their buckets.

The export runs on a thread of the process that serves /metrics (the API; a worker's main
process, which sums its pool processes' counts): a forked pool process has no copy of the
thread, so nothing is sent twice.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any, cast

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from offload_core.telemetry import otlp_metric_exporter, service_resource

logger = logging.getLogger(__name__)

SCOPE = InstrumentationScope("offload_core.otlp_metrics")
DEFAULT_INTERVAL_MS = 60_000


def _attributes(sample: Sample, *, without: str = "") -> dict[str, str]:
    return {name: value for name, value in sample.labels.items() if name != without}


def _key(labels: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


def _histogram_points(samples: Sequence[Sample], name: str, start_ns: int, now_ns: int) -> Iterator[HistogramDataPoint]:
    buckets: defaultdict[tuple[tuple[str, str], ...], list[tuple[float, float]]] = defaultdict(list)
    sums: dict[tuple[tuple[str, str], ...], float] = {}
    counts: dict[tuple[tuple[str, str], ...], float] = {}
    for sample in samples:
        if sample.name == f"{name}_bucket":
            buckets[_key(_attributes(sample, without="le"))].append((float(sample.labels["le"]), sample.value))
        elif sample.name == f"{name}_sum":
            sums[_key(_attributes(sample))] = sample.value
        elif sample.name == f"{name}_count":
            counts[_key(_attributes(sample))] = sample.value
    for key, cumulative in buckets.items():
        cumulative.sort()
        # Prometheus buckets count everything up to their bound; OTLP's count their own slice.
        counts_up_to = [count for _, count in cumulative]
        per_bucket = [int(now - before) for now, before in zip(counts_up_to, [0.0, *counts_up_to], strict=False)]
        yield HistogramDataPoint(
            attributes=dict(key),
            start_time_unix_nano=start_ns,
            time_unix_nano=now_ns,
            count=int(counts.get(key, cumulative[-1][1])),
            sum=sums.get(key, 0.0),
            bucket_counts=per_bucket,
            explicit_bounds=[bound for bound, _ in cumulative if not math.isinf(bound)],
            # Prometheus keeps no minimum or maximum; unset in the OTLP message.
            min=cast(float, None),
            max=cast(float, None),
        )


def metrics_data(registry: Collector, resource: Resource, start_ns: int) -> MetricsData:
    """One OTLP snapshot of everything the registry reports now."""
    now_ns = time.time_ns()
    metrics: list[Metric] = []
    for family in registry.collect():
        data: Any
        if family.type == "counter":
            points = [
                NumberDataPoint(_attributes(s), start_ns, now_ns, s.value)
                for s in family.samples
                if s.name == f"{family.name}_total"
            ]
            data = Sum(points, AggregationTemporality.CUMULATIVE, is_monotonic=True)
        elif family.type == "gauge":
            data = Gauge([NumberDataPoint(_attributes(s), start_ns, now_ns, s.value) for s in family.samples])
        elif family.type == "histogram":
            data = Histogram(
                list(_histogram_points(family.samples, family.name, start_ns, now_ns)),
                AggregationTemporality.CUMULATIVE,
            )
        else:
            continue  # Offload registers no summaries or info metrics
        metrics.append(Metric(family.name, family.documentation, family.unit or None, data))
    return MetricsData([ResourceMetrics(resource, [ScopeMetrics(SCOPE, metrics, "")], "")])


class OtlpMetricsPusher:
    """Sends the registry's metrics every interval until stopped, and once more when stopped."""

    def __init__(
        self, registry: Collector, exporter: MetricExporter, resource: Resource, interval_seconds: float
    ) -> None:
        self.registry = registry
        self.exporter = exporter
        self.resource = resource
        self.interval_seconds = interval_seconds
        self.started_ns = time.time_ns()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="otlp-metrics", daemon=True)

    def start(self) -> OtlpMetricsPusher:
        self._thread.start()
        return self

    def export_once(self) -> bool:
        try:
            result = self.exporter.export(metrics_data(self.registry, self.resource, self.started_ns))
        except Exception:
            logger.exception("OTLP metrics export failed")
            return False
        return result is MetricExportResult.SUCCESS

    def _run(self) -> None:
        while not self._stop.wait(self.interval_seconds):
            self.export_once()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval_seconds + 10)
        self.export_once()
        self.exporter.shutdown()


def export_interval_seconds() -> float:
    raw = os.environ.get("OTEL_METRIC_EXPORT_INTERVAL", "").strip()
    try:
        milliseconds = float(raw) if raw else DEFAULT_INTERVAL_MS
    except ValueError:
        milliseconds = DEFAULT_INTERVAL_MS
    return max(milliseconds, 100.0) / 1000


def start_metrics_export(registry: Collector, service: str, queues: Sequence[str] = ()) -> OtlpMetricsPusher | None:
    """Push the registry's metrics over OTLP when the OTEL_* variables ask for it; else None."""
    exporter = otlp_metric_exporter()
    if exporter is None:
        return None
    pusher = OtlpMetricsPusher(registry, exporter, service_resource(service, queues), export_interval_seconds())
    logger.debug("metrics exported over OTLP every %.1f s", pusher.interval_seconds)
    return pusher.start()
