"""KEDA objects: valid against the upstream CRDs, and every priority list of every queue counted."""

from __future__ import annotations

from functools import cache
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml

from offload_core.contract.topology import priority_lists
from tests.chart.render import Manifest, Rendered, env_of, pod_spec, render, shared_schemas


def strict(schema: Any) -> Any:
    """Refuse unknown fields wherever the CRD lists the known ones (as `kubectl --validate=strict`)."""
    if isinstance(schema, dict):
        schema = {key: strict(value) for key, value in schema.items()}
        if (
            schema.get("type") == "object"
            and "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    return schema


@cache
def crd_validator(kind: str) -> jsonschema.Draft7Validator:
    filename = {
        "ScaledObject": "keda.sh_scaledobjects.yaml",
        "TriggerAuthentication": "keda.sh_triggerauthentications.yaml",
    }
    crd = yaml.safe_load((shared_schemas() / "keda" / filename[kind]).read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    return jsonschema.Draft7Validator(strict(version["schema"]["openAPIV3Schema"]))


def keda_objects(rendered: Rendered) -> list[Manifest]:
    return rendered.kind("ScaledObject") + rendered.kind("TriggerAuthentication")


def test_keda_objects_match_the_crds(rendered: Rendered) -> None:
    objects = keda_objects(rendered)
    if not objects:
        pytest.skip("this value set renders no KEDA objects")
    for obj in objects:
        assert obj["apiVersion"] == "keda.sh/v1alpha1"
        errors = sorted(crd_validator(obj["kind"]).iter_errors(obj), key=str)
        assert not errors, f"{obj['kind']}/{obj['metadata']['name']}: {[e.message for e in errors]}"


def test_crd_check_refuses_an_unknown_field() -> None:
    (scaled_object, *_) = render().kind("ScaledObject")
    scaled_object["spec"]["cooldownPeriodd"] = 30
    assert list(crd_validator("ScaledObject").iter_errors(scaled_object))


def test_triggers_sum_every_priority_list_of_every_queue(rendered: Rendered) -> None:
    auth_names = {obj["metadata"]["name"] for obj in rendered.kind("TriggerAuthentication")}
    for scaled_object in rendered.kind("ScaledObject"):
        set_name = scaled_object["metadata"]["labels"]["offload/worker-set"]
        (deployment,) = rendered.worker_set("Deployment", set_name)
        queues = env_of(pod_spec(deployment)["containers"][0])["OFFLOAD_WORKER_QUEUES"]["value"].split(",")
        expected_lists = [name for queue in queues for name in priority_lists(queue)]
        triggers = scaled_object["spec"]["triggers"]
        (kind,) = {trigger["type"] for trigger in triggers}
        assert kind in {"redis", "redis-sentinel"}
        assert sorted(t["metadata"]["listName"] for t in triggers) == sorted(expected_lists), set_name
        names = [trigger["name"] for trigger in triggers]
        assert len(set(names)) == len(names)
        modifiers = scaled_object["spec"]["advanced"]["scalingModifiers"]
        terms = [term.strip() for term in modifiers["formula"].split("+")]
        assert sorted(terms) == sorted(names), f"{set_name}: the formula must sum every trigger"
        assert modifiers["target"] == triggers[0]["metadata"]["listLength"]
        for trigger in triggers:
            reference = trigger.get("authenticationRef")
            if reference:
                assert reference["name"] in auth_names


def test_priority_list_names_carry_the_kombu_separator() -> None:
    (scaled_object,) = render().worker_set("ScaledObject", "low")
    lists = {t["metadata"]["listName"] for t in scaled_object["spec"]["triggers"]}
    assert lists == {"low", "low\x06\x163", "low\x06\x166", "low\x06\x169"}


def test_low_may_sleep_and_high_never_does() -> None:
    rendered = render()
    (low,) = rendered.worker_set("ScaledObject", "low")
    (high,) = rendered.worker_set("ScaledObject", "high")
    assert low["spec"]["minReplicaCount"] == 0
    assert high["spec"]["minReplicaCount"] >= 1
    for scaled_object in rendered.kind("ScaledObject"):
        set_name = scaled_object["metadata"]["labels"]["offload/worker-set"]
        (deployment,) = rendered.worker_set("Deployment", set_name)
        grace = pod_spec(deployment)["terminationGracePeriodSeconds"]
        assert scaled_object["spec"]["cooldownPeriod"] > grace


def test_trigger_authentication_reads_the_redis_password_secret() -> None:
    rendered = render()
    (auth,) = rendered.kind("TriggerAuthentication")
    (reference,) = auth["spec"]["secretTargetRef"]
    (secret,) = [s for s in rendered.kind("Secret") if s["metadata"]["name"] == reference["name"]]
    assert reference["parameter"] == "password"
    assert reference["key"] in secret["data"]


def test_keda_values_are_inherited_and_overridden() -> None:
    values: dict[str, Any] = {
        "workers": {
            "sets": [
                {"name": "default", "queues": ["default", "low"], "keda": {"listLength": 40}},
                {"name": "high", "image": "notifier", "queues": ["high"]},
            ]
        }
    }
    (scaled_object,) = render(values).worker_set("ScaledObject", "default")
    assert scaled_object["spec"]["advanced"]["scalingModifiers"]["target"] == "40"
    assert scaled_object["spec"]["cooldownPeriod"] == 300  # from workers.defaults.keda
    assert len(scaled_object["spec"]["triggers"]) == 8


def test_a_sentinel_set_scales_through_the_redis_sentinel_scaler_with_tls_and_its_ca() -> None:
    from tests.chart.conftest import VALUE_SETS

    rendered = render(VALUE_SETS["external-sentinel"])
    (auth,) = rendered.kind("TriggerAuthentication")
    references = {ref["parameter"]: ref for ref in auth["spec"]["secretTargetRef"]}
    assert set(references) == {"password", "sentinelPassword", "tls", "ca"}
    assert (references["ca"]["name"], references["ca"]["key"]) == ("redis-ca", "ca.crt")
    assert (references["sentinelPassword"]["name"], references["sentinelPassword"]["key"]) == (
        "sentinel-auth",
        "password",
    )
    # KEDA takes "tls: enable" from a Secret only: the chart renders that one.
    (tls_secret,) = [s for s in rendered.kind("Secret") if s["metadata"]["name"] == references["tls"]["name"]]
    assert tls_secret["data"][references["tls"]["key"]] == "ZW5hYmxl"  # "enable"
    for scaled_object in rendered.kind("ScaledObject"):
        for trigger in scaled_object["spec"]["triggers"]:
            assert trigger["type"] == "redis-sentinel"
            assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
            metadata = trigger["metadata"]
            assert metadata["addresses"] == "sentinel-0.redis:26379,sentinel-1.redis:26379,sentinel-2.redis:26379"
            assert metadata["sentinelMaster"] == "offload"
            assert "enableTLS" not in metadata  # set once, in the TriggerAuthentication


def test_an_external_redis_with_tls_and_no_password_still_gets_a_trigger_authentication() -> None:
    values = {"redis": {"enabled": False}, "externalRedis": {"enabled": True, "host": "r.example", "tls": True}}
    rendered = render(values)
    (auth,) = rendered.kind("TriggerAuthentication")
    assert [ref["parameter"] for ref in auth["spec"]["secretTargetRef"]] == ["tls"]
    for scaled_object in rendered.kind("ScaledObject"):
        assert all(t["type"] == "redis" and "authenticationRef" in t for t in scaled_object["spec"]["triggers"])
