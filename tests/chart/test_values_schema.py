"""values.schema.json refuses typos and wrong types; values.yaml and the README document every key."""

from __future__ import annotations

import json
import re
from typing import Any

import helm_python
import pytest
import yaml

from offload_dev import chart_values_table
from tests.chart.render import CHART_DIR, load_chart, render_error


def test_default_values_pass_the_schema() -> None:
    with load_chart() as chart:
        chart.validate_schema(yaml.safe_load((CHART_DIR / "values.yaml").read_text()))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"api": {"prot": 8080}}, "additional properties 'prot' not allowed"),
        ({"workers": {"defaults": {"concurency": 4}}}, "additional properties 'concurency' not allowed"),
        ({"workers": {"sets": [{"name": "x", "queues": ["low"], "minReplica": 1}]}}, "'minReplica' not allowed"),
        ({"redis": {"persistence": {"enabled": True}}}, "additional properties 'enabled' not allowed"),
        ({"api": {"port": "8000"}}, "got string, want integer"),
        ({"keda": {"enabled": "yes"}}, "got string, want boolean"),
        ({"workers": {"defaults": {"pool": "gevent"}}}, "value must be one of 'prefork', 'threads', 'solo'"),
        ({"workers": {"sets": [{"name": "x", "image": "api", "queues": ["low"]}]}}, "value must be one of"),
        ({"metrics": {"serviceMonitor": {"enable": True}}}, "additional properties 'enable' not allowed"),
        ({"metrics": {"serviceMonitor": {"interval": "30 seconds"}}}, "does not match pattern"),
        ({"metrics": {"prometheusRule": {"failureRateHigh": {"ratio": 5}}}}, "maximum"),
        ({"metrics": {"workerPort": 0}}, "minimum"),
        ({"delivery": {"smtp": {"security": "ssl"}}}, "value must be one of 'starttls', 'tls', 'none'"),
        ({"delivery": {"smtp": {"password": "hunter2"}}}, "additional properties 'password' not allowed"),
        ({"delivery": {"smtp": {"port": 0}}}, "minimum"),
        ({"delivery": {"outbound": {"allowedHosts": "10.0.0.0/8"}}}, "got string, want array"),
        ({"delivery": {"outbound": {"allowedHosts": ["a.example,b.example"]}}}, "does not match pattern"),
        # The services refuse to start with http/json; the chart refuses it at install time.
        ({"otel": {"protocol": "http/json"}}, "value must be one of '', 'grpc', 'http/protobuf'"),
        ({"otel": {"headers": {"authorization": "Bearer x"}}}, "additional properties 'authorization' not allowed"),
        ({"metrics": {"prometheusRule": {"oldestJobAge": {"objectives": {"hihg": 30}}}}}, "'hihg' not allowed"),
    ],
)
def test_schema_refuses(values: dict[str, Any], message: str) -> None:
    with load_chart() as chart, pytest.raises(helm_python.HelmValuesError) as caught:
        chart.validate_schema(values)
    assert message in str(caught.value)
    assert message in render_error(values)


def test_every_object_level_forbids_unknown_keys() -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    free_form = {
        "annotations",
        "commonLabels",
        "nodeSelector",
        "matchLabels",
        "operatorPodLabels",
        "labels",
        "alertLabels",
        "podAnnotations",
        "podLabels",
        # Other charts' keys share `global` with ours when Offload is a subchart.
        "global",
        # Kubernetes types passed through as they are (affinity terms, volumes, valueFrom):
        # kubernetes-validate checks them strictly in the chart tests, the API server at install.
        "kubernetesObject",
    }

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and path.rsplit("/", 1)[-1] not in free_form:
                assert node.get("additionalProperties") is False, path
            for key, value in node.items():
                walk(value, f"{path}/{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{path}/{index}")

    walk(schema, "")


def value_paths(values: dict[str, Any], prefix: str = "") -> list[str]:
    paths = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        paths.append(path)
        if isinstance(value, dict) and value:
            paths.extend(value_paths(value, f"{path}."))
    return paths


def test_every_value_is_commented_and_documented() -> None:
    lines = (CHART_DIR / "values.yaml").read_text().splitlines()
    list_indent = -1  # keys inside list items (worker sets, paths, peers) are examples, not settings
    for index, line in enumerate(lines):
        indent = len(line) - len(line.lstrip())
        if line.lstrip().startswith("- "):
            list_indent = indent if list_indent < 0 else min(list_indent, indent)
            continue
        if list_indent >= 0 and indent > list_indent and not line.lstrip().startswith("#"):
            continue
        if re.match(r"^\s*[A-Za-z][\w-]*:", line):
            list_indent = -1
            assert lines[index - 1].strip().startswith("#"), f"values.yaml line {index + 1} has no comment: {line}"
    readme = (CHART_DIR / "README.md").read_text()
    values = yaml.safe_load("\n".join(lines))
    for path in value_paths(values):
        assert f"`{path}`" in readme, f"README.md does not document {path}"


def test_the_readme_values_table_is_the_one_values_yaml_gives() -> None:
    readme = (CHART_DIR / "README.md").read_text()
    table = chart_values_table.values_table((CHART_DIR / "values.yaml").read_text())
    assert chart_values_table.readme_with_table(readme, table) == readme, (
        "the values table of deploy/helm/offload/README.md is stale: run `make k8s` and commit the result"
    )
