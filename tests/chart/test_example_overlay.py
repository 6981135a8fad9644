"""The example plugin's values overlay (examples/acme-jobs/values-acme.yaml) on the real chart:
it keeps Offload's own worker sets, adds one for the plugin's queue, and every object it renders
validates strictly."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from tests.chart.render import (
    CHART_DIR,
    KEDA_KINDS,
    MONITORING_KINDS,
    Rendered,
    containers,
    default_values,
    env_of,
    render,
)
from tests.chart.test_keda import crd_validator
from tests.chart.test_manifests import KUBERNETES_VERSIONS

OVERLAY = Path(__file__).resolve().parents[2] / "examples" / "acme-jobs" / "values-acme.yaml"


def overlay() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load(OVERLAY.read_text())
    return values


@cache
def rendered() -> Rendered:
    return render(overlay())


def rendered_set(result: Rendered) -> list[dict[str, Any]]:
    return result.worker_set("Deployment", "acme")


def test_the_overlay_repeats_the_charts_own_worker_sets() -> None:
    # Helm replaces the sets list as a whole: without them Offload's own queues would go unconsumed.
    own = [s for s in overlay()["workers"]["sets"] if s["name"] != "acme"]

    assert own == default_values()["workers"]["sets"]


def test_the_overlay_passes_the_values_schema_and_lint() -> None:
    for kube_version in KUBERNETES_VERSIONS:
        report = helm_python.lint(CHART_DIR, overlay(), strict=True, kube_version=f"v{kube_version}.0")
        assert not report["errors"], report
        assert not [m for m in report["messages"] if m["severity"] >= 2], report


def test_the_acme_set_consumes_its_queue_on_the_plugin_image() -> None:
    (deployment,) = rendered_set(rendered())

    (worker,) = [c for c in containers(deployment, init=False)]
    assert worker["image"] == "acme-offload-worker:1.0.0"
    assert env_of(worker)["OFFLOAD_WORKER_QUEUES"]["value"] == "acme"
    assert len(rendered().worker_set("ScaledObject", "acme")) == 1


def test_the_api_runs_the_plugin_image_and_every_component_knows_the_queue() -> None:
    deployments = rendered().kind("Deployment")
    (api,) = [d for d in deployments if d["metadata"]["labels"]["app.kubernetes.io/component"] == "api"]
    assert {c["image"] for c in containers(api, init=False)} == {"acme-offload-api:1.0.0"}
    (config,) = [c for c in rendered().kind("ConfigMap") if "OFFLOAD_QUEUES" in c.get("data", {})]
    assert config["data"]["OFFLOAD_QUEUES"].split(",") == ["high", "default", "low", "acme"]


@pytest.mark.parametrize("kube_version", KUBERNETES_VERSIONS)
def test_every_object_of_the_overlay_validates_strictly(kube_version: str) -> None:
    for obj in rendered().objects:
        if obj["kind"] in MONITORING_KINDS:
            continue
        if obj["kind"] in KEDA_KINDS:
            errors = sorted(crd_validator(obj["kind"]).iter_errors(obj), key=str)
            assert not errors, f"{obj['kind']}/{obj['metadata']['name']}: {[e.message for e in errors]}"
            continue
        try:
            kubernetes_validate.validate(obj, kube_version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} is invalid for {kube_version}: {error.message}")
