"""skaffold.yaml: valid for its schema version, and building the images the chart deploys."""

from __future__ import annotations

import json
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import yaml

from tests.chart.render import REPO_ROOT, default_values, shared_schemas


def skaffold() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load((REPO_ROOT / "skaffold.yaml").read_text())
    return config


def test_skaffold_yaml_matches_the_v4beta14_schema() -> None:
    schema = json.loads((shared_schemas() / "skaffold" / "v4beta14.json").read_text())
    config = skaffold()
    assert config["apiVersion"] == "skaffold/v4beta14"
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(config), key=str)
    assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors]


def test_artifacts_are_the_chart_images() -> None:
    config = skaffold()
    artifacts = {artifact["image"]: artifact for artifact in config["build"]["artifacts"]}
    images = default_values()["images"]
    assert set(artifacts) == {images[key]["repository"] for key in ("api", "worker", "notifier")}
    for key in ("api", "worker", "notifier"):
        artifact = artifacts[images[key]["repository"]]
        assert artifact["context"] == "."
        assert artifact["docker"]["dockerfile"] == f"services/{key}/Dockerfile"
    assert config["build"]["tagPolicy"] == {"gitCommit": {}}


def test_release_wires_every_built_image_into_the_values() -> None:
    config = skaffold()
    (release,) = config["deploy"]["helm"]["releases"]
    assert release["chartPath"] == "deploy/helm/offload"
    values = default_values()
    templates = release["setValueTemplates"]
    for key in ("api", "worker", "notifier"):
        variable = values["images"][key]["repository"].replace("-", "_")
        assert templates[f"images.{key}.repository"] == f"{{{{.IMAGE_REPO_{variable}}}}}"
        assert templates[f"images.{key}.tag"] == f"{{{{.IMAGE_TAG_{variable}}}}}"
    for path in templates:
        node: Any = values
        for part in path.split("."):
            assert part in node, f"setValueTemplates names {path}, which the chart does not have"
            node = node[part]


def test_profiles_build_locally_and_forward_the_api_and_flower() -> None:
    config = skaffold()
    profiles = {profile["name"]: profile for profile in config["profiles"]}
    assert {"kind", "minikube"} <= set(profiles)
    for profile in profiles.values():
        assert profile["build"]["local"]["push"] is False
    forwarded = {(f["resourceName"], f["port"]) for f in config["portForward"]}
    assert forwarded == {("offload-api", 8000), ("offload-flower", 5555)}
