"""Metrics ports, ServiceMonitor / PodMonitor / PrometheusRule structure, and the Grafana dashboard.

The prometheus-operator kinds have no CRD schema here, so their structure is checked by hand:
the fields the operator requires, selectors that pick the right pods or Service, and ports by
name that exist on those targets. Every metric a dashboard panel or an alert queries must be
one the code registers.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric

from offload_api import metrics as api_metrics
from offload_core.runtime import worker_metrics
from tests.chart.render import (
    CHART_DIR,
    MONITORING_KINDS,
    NAMESPACE,
    Manifest,
    Rendered,
    containers,
    env_of,
    pod_spec,
    render,
    selects,
)

MONITORING_API = "monitoring.coreos.com/v1"
ALL_ON = {"metrics": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}}}
DASHBOARD_FILE = CHART_DIR / "dashboards" / "offload.json"
# Series Prometheus makes itself for every target, not Offload's code.
PROMETHEUS_SERIES = frozenset({"up"})
PROMQL_WORDS = frozenset({"and", "or", "unless", "bool", "offset", "inf", "nan"})
SAMPLE_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


# --- what the code registers ------------------------------------------------------------------


def code_metric_families() -> Iterator[Metric]:
    for module in (worker_metrics, api_metrics):
        for value in vars(module).values():
            if isinstance(value, MetricWrapperBase):
                yield from value.describe()
    yield from worker_metrics.InFlightCollector().collect()
    queues = api_metrics.QueueCollector(redis.Redis(), stale_after=60, cache_seconds=300)
    queues._read_at = time.monotonic()  # the cached (empty) read: no Redis needed for the names
    queues._memory = {"used_memory": 0, "maxmemory": 0}  # as after a read of INFO memory
    yield from queues.collect()


def code_series_names() -> set[str]:
    """The sample names a scrape of the API or a worker can return."""
    return {family.name + suffix for family in code_metric_families() for suffix in SAMPLE_SUFFIXES[family.type]}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, labels and keywords removed)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\$\w+", "", expr)
    names = set(re.findall(r"\b([A-Za-z_:][A-Za-z0-9_:]*)\b(?!\s*\()", expr))
    return names - PROMQL_WORDS


def test_metric_name_parser() -> None:
    expr = 'histogram_quantile(0.95, sum by (le, queue) (rate(offload_x_bucket{queue=~"$queue"}[$__rate_interval])))'
    assert metric_names(expr) == {"offload_x_bucket"}
    assert metric_names("max by (queue) (a) == 0 and max by (queue) (b) > 0") == {"a", "b"}
    assert metric_names("sum(rate(offload_nope_total[5m])) / 2") == {"offload_nope_total"}


def test_code_series_names_are_read_from_the_code() -> None:
    names = code_series_names()
    assert {"offload_jobs_succeeded_total", "offload_job_queue_wait_seconds_bucket", "offload_queue_depth"} <= names
    assert "offload_jobs_succeeded" not in names  # a counter is only queryable with _total


# --- worker and API metrics ports -------------------------------------------------------------


def workers(rendered: Rendered) -> list[Manifest]:
    return [
        d for d in rendered.kind("Deployment") if d["metadata"]["labels"]["app.kubernetes.io/component"] == "worker"
    ]


def container_ports(workload: Manifest) -> dict[str, int]:
    return {port["name"]: port["containerPort"] for c in containers(workload) for port in c.get("ports", [])}


@pytest.mark.parametrize("port", [9808, 9900])
def test_every_worker_serves_metrics_on_a_named_port(port: int) -> None:
    rendered = render({"metrics": {"workerPort": port}})
    assert len(workers(rendered)) == 3
    for deployment in workers(rendered):
        (container,) = pod_spec(deployment)["containers"]
        assert container_ports(deployment) == {"metrics": port}
        env = env_of(container)
        assert env["OFFLOAD_WORKER_METRICS_PORT"]["value"] == str(port)
        assert env["OFFLOAD_WORKER_METRICS_HOST"]["value"] == "0.0.0.0"


def test_api_metrics_are_on_a_port_of_their_own(rendered_defaults: Rendered) -> None:
    api = rendered_defaults.named("Deployment", "offload-api")
    assert container_ports(api) == {"http": 8000, "metrics": 9807}
    env = {item["name"]: item.get("value") for item in api["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert (env["OFFLOAD_API_PORT"], env["OFFLOAD_API_METRICS_PORT"]) == ("8000", "9807")


# --- prometheus-operator objects --------------------------------------------------------------


def test_monitoring_objects_are_off_by_default(rendered_defaults: Rendered) -> None:
    assert not [obj for obj in rendered_defaults.objects if obj["kind"] in MONITORING_KINDS]


def check_metadata(obj: Manifest) -> None:
    assert obj["apiVersion"] == MONITORING_API
    assert obj["metadata"]["name"]
    assert "namespace" not in obj["metadata"]  # the release's namespace, like every other object
    assert isinstance(obj["spec"], dict)


def test_service_monitor_selects_the_api_service_and_its_port() -> None:
    rendered = render(ALL_ON)
    (monitor,) = rendered.kind("ServiceMonitor")
    check_metadata(monitor)
    selected = [s for s in rendered.kind("Service") if selects(monitor["spec"]["selector"], s["metadata"]["labels"])]
    assert [s["metadata"]["name"] for s in selected] == ["offload-api"]
    (service,) = selected
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    (port,) = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
    api = rendered.named("Deployment", "offload-api")
    assert selects({"matchLabels": service["spec"]["selector"]}, api["spec"]["template"]["metadata"]["labels"])
    assert port["targetPort"] in container_ports(api)
    assert endpoint["interval"] == "30s"
    # The alerts and the dashboard select a release's series by this label (namespace comes from
    # the operator).
    assert endpoint["relabelings"] == [{"targetLabel": "release", "replacement": "offload", "action": "replace"}]


def test_one_pod_monitor_per_worker_set_on_its_metrics_port() -> None:
    rendered = render(ALL_ON)
    monitors = rendered.kind("PodMonitor")
    deployments = workers(rendered)
    assert len(monitors) == len(deployments) == 3
    for monitor in monitors:
        check_metadata(monitor)
        selected = [
            d for d in deployments if selects(monitor["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])
        ]
        assert len(selected) == 1, monitor["metadata"]["name"]
        (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
        assert endpoint["port"] in container_ports(selected[0])
        assert endpoint["path"] == "/metrics"
        worker_set, release = endpoint["relabelings"]
        assert worker_set["targetLabel"] == "worker_set"
        assert worker_set["replacement"] == selected[0]["metadata"]["labels"]["offload/worker-set"]
        assert (release["targetLabel"], release["replacement"]) == ("release", "offload")


def test_monitor_settings_and_labels_come_from_values() -> None:
    rendered = render(
        {
            "metrics": {
                "serviceMonitor": {
                    "enabled": True,
                    "interval": "15s",
                    "scrapeTimeout": "5s",
                    "labels": {"release": "kps"},
                }
            }
        }
    )
    for monitor in rendered.kind("ServiceMonitor") + rendered.kind("PodMonitor"):
        assert monitor["metadata"]["labels"]["release"] == "kps"
        endpoints = monitor["spec"].get("endpoints") or monitor["spec"]["podMetricsEndpoints"]
        assert [(e["interval"], e["scrapeTimeout"]) for e in endpoints] == [("15s", "5s")]
    assert not rendered.kind("PrometheusRule")


def alert_rules(rendered: Rendered) -> dict[str, list[dict[str, Any]]]:
    """Alert name -> its rules (one per queue objective or worker set for some alerts)."""
    (rule,) = rendered.kind("PrometheusRule")
    check_metadata(rule)
    alerts: dict[str, list[dict[str, Any]]] = {}
    for group in rule["spec"]["groups"]:
        assert group["name"]
        assert group["rules"]
        for item in group["rules"]:
            assert set(item) <= {"alert", "expr", "for", "labels", "annotations"}, item
            assert item["expr"].strip()
            assert item["labels"]["severity"]
            assert item["annotations"]["summary"]
            assert item["annotations"]["runbook_url"]
            alerts.setdefault(item["alert"], []).append(item)
    return alerts


def test_prometheus_rule_has_the_alerts_with_the_default_thresholds() -> None:
    alerts = alert_rules(render(ALL_ON))
    assert set(alerts) == {
        "OffloadQueueOldestJobTooOld",
        "OffloadQueueBacklogGrowing",
        "OffloadJobFailureRateHigh",
        "OffloadQueueNoConsumers",
        "OffloadDeadLettersRising",
        "OffloadApiErrorRatioHigh",
        "OffloadApiLatencyHigh",
        "OffloadApiKeyThrottled",
        "OffloadRedisUnreachable",
        "OffloadRedisMemoryNearLimit",
        "OffloadRedisMemoryFillingUp",
    }
    sel = '{namespace="offload", release="offload"'
    (throttled,) = alerts["OffloadApiKeyThrottled"]
    assert throttled["expr"] == (
        f"sum by (namespace, release, key_id) (increase(offload_api_requests_throttled_total{sel}}}[2m])) > 0"
    )
    assert (throttled["for"], throttled["labels"]["severity"]) == ("15m", "warning")
    (dead,) = alerts["OffloadDeadLettersRising"]
    assert dead["expr"] == f"max by (namespace, release, queue) (delta(offload_dead_letters{sel}}}[30m])) > 10"
    assert (dead["for"], dead["labels"]["severity"]) == ("5m", "warning")
    (backlog,) = alerts["OffloadQueueBacklogGrowing"]
    assert f"offload_queue_depth{sel}}}) > 100" in backlog["expr"]
    assert "[15m]" in backlog["expr"]
    assert backlog["for"] == "10m"
    (failures,) = alerts["OffloadJobFailureRateHigh"]
    assert "by (namespace, release, queue, task)" in failures["expr"]
    assert "[10m]" in failures["expr"]
    assert failures["expr"].endswith("> 0.05")
    oldest = {rule["labels"]["objective_seconds"]: rule["expr"] for rule in alerts["OffloadQueueOldestJobTooOld"]}
    assert oldest["60"].endswith('queue="high"}) > 60')
    assert oldest["300"].endswith('queue="default"}) > 300')
    assert oldest["3600"].endswith('queue="low"}) > 3600')
    assert oldest["900"].endswith('queue!~"default|high|low"}) > 900')
    # One rule per worker set: sets that are always running must always have consumers.
    idle = {rule["labels"]["worker_set"]: rule for rule in alerts["OffloadQueueNoConsumers"]}
    assert set(idle) == {"default", "low", "high"}
    assert idle["default"]["expr"].endswith('queue=~"default"}) == 0')
    assert idle["low"]["expr"].endswith('queue=~"low"}) > 0')  # may sleep at zero: only while jobs wait
    assert all((rule["for"], rule["labels"]["severity"]) == ("5m", "critical") for rule in idle.values())
    (latency,) = alerts["OffloadApiLatencyHigh"]
    assert latency["expr"].startswith("histogram_quantile(0.99, sum by (namespace, release, le)")
    assert 'route!~".*/events"' in latency["expr"]
    assert latency["expr"].endswith("> 1")
    (errors,) = alerts["OffloadApiErrorRatioHigh"]
    assert 'status=~"5.."' in errors["expr"]
    (memory,) = alerts["OffloadRedisMemoryNearLimit"]
    assert "offload_redis_maxmemory_bytes" in memory["expr"]
    assert memory["expr"].endswith("> 0.9")
    (filling,) = alerts["OffloadRedisMemoryFillingUp"]
    assert f"predict_linear(offload_redis_memory_used_bytes{sel}}}[30m], 3600)" in filling["expr"]
    assert (filling["for"], filling["labels"]["severity"]) == ("10m", "warning")
    for rules in alerts.values():
        for rule in rules:
            assert "by (namespace, release" in rule["expr"]
            assert "{{ $labels.namespace }}/{{ $labels.release }}" in rule["annotations"]["summary"]


def test_alert_thresholds_come_from_values() -> None:
    rules = {
        "labels": {"release": "kps"},
        "alertLabels": {"team": "jobs"},
        "oldestJobAge": {"objectives": {"high": 10}, "otherQueues": 120, "for": "1m", "severity": "page"},
        "backlogGrowing": {"depth": 250, "window": "30m", "for": "20m", "severity": "critical"},
        "failureRateHigh": {"ratio": 0.2, "window": "1h", "for": "15m"},
        "noConsumers": {"for": "10m", "severity": "warning"},
        "deadLettersRising": {"increase": 3, "window": "1h", "for": "0m", "severity": "critical"},
        "apiErrorRatio": {"ratio": 0.01, "window": "10m", "for": "3m"},
        "apiLatency": {"seconds": 0.25, "excludedRoutes": ""},
        "redisMemory": {"ratio": 0.8},
        "redisDown": {"for": "30s"},
    }
    rendered = render({"metrics": {"prometheusRule": {"enabled": True, **rules}}})
    (rule,) = rendered.kind("PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kps"
    alerts = alert_rules(rendered)
    # Maps merge: the objectives not overridden stay.
    oldest = {r["labels"]["objective_seconds"]: r for r in alerts["OffloadQueueOldestJobTooOld"]}
    assert set(oldest) == {"10", "300", "3600", "120"}
    assert all((r["for"], r["labels"]["severity"]) == ("1m", "page") for r in oldest.values())
    (backlog,) = alerts["OffloadQueueBacklogGrowing"]
    assert "> 250" in backlog["expr"]
    assert "[30m]" in backlog["expr"]
    assert (backlog["for"], backlog["labels"]["severity"]) == ("20m", "critical")
    (dead,) = alerts["OffloadDeadLettersRising"]
    assert dead["expr"].endswith("[1h])) > 3")
    assert (dead["for"], dead["labels"]["severity"]) == ("0m", "critical")
    (failures,) = alerts["OffloadJobFailureRateHigh"]
    assert "[1h]" in failures["expr"]
    assert failures["expr"].endswith("> 0.2")
    assert failures["for"] == "15m"
    assert all(r["for"] == "10m" for r in alerts["OffloadQueueNoConsumers"])
    (errors,) = alerts["OffloadApiErrorRatioHigh"]
    assert "[10m]" in errors["expr"]
    assert errors["expr"].endswith("> 0.01")
    assert errors["for"] == "3m"
    (latency,) = alerts["OffloadApiLatencyHigh"]
    assert latency["expr"].endswith("> 0.25")
    assert "route!~" not in latency["expr"]
    assert alerts["OffloadRedisMemoryNearLimit"][0]["expr"].endswith("> 0.8")
    assert alerts["OffloadRedisUnreachable"][0]["for"] == "30s"
    assert all(r["labels"]["team"] == "jobs" for rules in alerts.values() for r in rules)
    assert not rendered.kind("ServiceMonitor")


# --- Grafana dashboard ------------------------------------------------------------------------


def dashboard_config_map(rendered: Rendered) -> Manifest:
    return rendered.named("ConfigMap", "offload-dashboard")


def dashboard_exprs(dashboard: dict[str, Any]) -> dict[str, list[str]]:
    return {panel["title"]: [target["expr"] for target in panel["targets"]] for panel in dashboard["panels"]}


def test_dashboard_config_map_carries_the_file_with_the_sidecar_label(rendered_defaults: Rendered) -> None:
    config_map = dashboard_config_map(rendered_defaults)
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert "namespace" not in config_map["metadata"]
    (content,) = config_map["data"].values()
    assert json.loads(content) == json.loads(DASHBOARD_FILE.read_text())


def test_dashboard_label_namespace_and_switch_come_from_values() -> None:
    dashboard = {
        "namespace": "grafana",
        "labels": {"grafana_dashboard": "offload"},
        "annotations": {"grafana_folder": "Jobs"},
    }
    config_map = dashboard_config_map(render({"metrics": {"grafanaDashboard": dashboard}}))
    assert config_map["metadata"]["namespace"] == "grafana"
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "offload"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "Jobs"}
    off = render({"metrics": {"grafanaDashboard": {"enabled": False}}})
    assert not [c for c in off.kind("ConfigMap") if c["metadata"]["name"] == "offload-dashboard"]
    assert NAMESPACE != "grafana"


def test_dashboard_has_the_required_panels() -> None:
    dashboard = json.loads(DASHBOARD_FILE.read_text())
    assert dashboard["uid"]
    assert dashboard["title"]
    panels = {panel["title"]: panel for panel in dashboard["panels"]}
    exprs = dashboard_exprs(dashboard)
    # What an on-call engineer looks at first, and the metric each panel must read.
    required = {
        "Oldest waiting job": ("offload_queue_oldest_job_age_seconds", "queue"),
        "Throughput per job type": ("offload_jobs_succeeded_total", "task"),
        "Failure ratio per job type": ("offload_jobs_failed_total", "task"),
        "Retry rate per job type": ("offload_jobs_retried_total", "task"),
        "API latency": ("offload_http_request_duration_seconds_bucket", "route"),
        "Redis memory": ("offload_redis_memory_used_bytes", ""),
        "Queue depth": ("offload_queue_depth", "queue"),
        "Workers consuming each queue": ("offload_queue_consumers", "queue"),
    }
    for title, (metric, label) in required.items():
        assert title in panels, title
        assert any(metric in metric_names(expr) for expr in exprs[title]), title
        assert all("by (" in expr and label in expr for expr in exprs[title]), title
    assert "offload_redis_maxmemory_bytes" in " ".join(exprs["Redis memory"])
    assert panels["Redis memory"]["fieldConfig"]["defaults"]["unit"] == "bytes"
    assert panels["Failure ratio per job type"]["fieldConfig"]["defaults"]["unit"] == "percentunit"
    assert any("histogram_quantile(0.99," in expr for expr in exprs["API latency"])
    for title, panel_exprs in exprs.items():
        for expr in panel_exprs:
            if "histogram_quantile" in expr:
                assert re.search(r"sum by \(le\b", expr), title
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert all(panel["datasource"]["uid"] == "${datasource}" for panel in dashboard["panels"])
    # Grafana's 24-column grid: every panel fits, none covers another.
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        covered = {
            (x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not covered & cells, panel["title"]
        cells |= covered
        assert [target["refId"] for target in panel["targets"]] == ["A", "B"][: len(panel["targets"])], panel["title"]


def test_dashboard_filters_every_query_by_namespace_and_release() -> None:
    dashboard = json.loads(DASHBOARD_FILE.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert list(variables) == ["datasource", "namespace", "release", "queue", "task"]
    assert variables["namespace"]["definition"] == "label_values(offload_queue_depth, namespace)"
    assert "$namespace" in variables["release"]["definition"]
    for name in ("queue", "task"):
        assert 'namespace=~"$namespace", release=~"$release"' in variables[name]["definition"]
    for title, panel_exprs in dashboard_exprs(dashboard).items():
        for expr in panel_exprs:
            selectors = re.findall(r"\b(?:offload_\w+|up)\{([^}]*)\}", expr)
            assert selectors, expr
            for selector in selectors:
                assert selector.startswith('namespace=~"$namespace", release=~"$release"'), (title, expr)
            # Aggregations keep namespace and release apart: two releases never add up.
            assert "namespace, release" in expr, (title, expr)


def test_every_queried_metric_exists_in_the_code() -> None:
    known = code_series_names() | PROMETHEUS_SERIES
    dashboard = json.loads(DASHBOARD_FILE.read_text())
    exprs = [expr for panel_exprs in dashboard_exprs(dashboard).values() for expr in panel_exprs]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            (metric,) = re.findall(r"label_values\((\w+)[{,]", variable["definition"])
            exprs.append(metric)
    exprs += [rule["expr"] for rules in alert_rules(render(ALL_ON)).values() for rule in rules]
    assert len(exprs) >= 10
    for expr in exprs:
        names = metric_names(expr)
        assert names, expr
        assert names <= known, f"{sorted(names - known)} in {expr!r} is not a metric of offload_core / offload_api"
