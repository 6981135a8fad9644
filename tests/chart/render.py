"""Render the Offload chart with the real Helm engine and pick objects out of the result."""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "deploy" / "helm" / "offload"
RELEASE = "offload"
NAMESPACE = "offload"
KEDA_KINDS = frozenset({"ScaledObject", "TriggerAuthentication"})
# prometheus-operator kinds: no CRD schema here, checked for structure in test_monitoring.py.
MONITORING_KINDS = frozenset({"ServiceMonitor", "PodMonitor", "PrometheusRule"})
WORKLOAD_KINDS = frozenset({"Deployment", "StatefulSet"})
WORKER_SET_LABEL = "offload/worker-set"

Manifest = dict[str, Any]


@dataclass(frozen=True)
class Rendered:
    """The objects one render produced, with the template each came from."""

    objects: list[Manifest]
    sources: dict[int, str]

    def kind(self, kind: str) -> list[Manifest]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def named(self, kind: str, name: str) -> Manifest:
        matches = [obj for obj in self.kind(kind) if obj["metadata"]["name"] == name]
        assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
        return matches[0]

    def worker_set(self, kind: str, set_name: str) -> list[Manifest]:
        return [obj for obj in self.kind(kind) if obj["metadata"]["labels"].get(WORKER_SET_LABEL) == set_name]


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Helm's values composition: maps merge, everything else (lists too) is replaced."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_chart(chart_dir: Path = CHART_DIR) -> helm_python.Chart:
    return helm_python.Chart.load(chart_dir)


def render_raw(
    values: dict[str, Any] | None = None, *, chart_dir: Path = CHART_DIR, release: str = RELEASE
) -> dict[str, str]:
    """Template path -> rendered text, offline (``lookup`` finds nothing)."""
    with load_chart(chart_dir) as chart:
        return chart.render(values or {}, name=release, namespace=NAMESPACE, is_install=True)


def parse(manifests: dict[str, str]) -> Rendered:
    objects: list[Manifest] = []
    sources: dict[int, str] = {}
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        for document in yaml.safe_load_all(text):
            if document:
                sources[len(objects)] = path
                objects.append(document)
    return Rendered(objects, sources)


def render(values: dict[str, Any] | None = None, **kwargs: Any) -> Rendered:
    return parse(render_raw(values, **kwargs))


def render_error(values: dict[str, Any], *, chart_dir: Path = CHART_DIR) -> str:
    """The error text Helm gives for values the chart must refuse."""
    with pytest.raises(helm_python.HelmError) as caught:
        render_raw(values, chart_dir=chart_dir)
    return str(caught.value)


def default_values() -> dict[str, Any]:
    with load_chart() as chart:
        return chart.values


def pod_spec(workload: Manifest) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def containers(workload: Manifest, *, init: bool = True) -> Iterator[dict[str, Any]]:
    spec = pod_spec(workload)
    yield from spec["containers"]
    if init:
        yield from spec.get("initContainers", [])


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container.get("env", [])}


def shared_schemas() -> Path:
    """The directory of upstream CRD and skaffold schemas, or skip when it is not configured."""
    location = os.environ.get("OFFLOAD_SHARED_SCHEMAS")
    if not location:
        pytest.skip("OFFLOAD_SHARED_SCHEMAS is not set: the KEDA CRD / skaffold schema check is skipped")
    return Path(location)


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels and matchExpressions) matches the labels."""
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True
