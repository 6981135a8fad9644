"""The chart follows the one declaration of queues and worker sets: its defaults are the Python
defaults (offload_core.contract.topology, the settings), and a set added through values alone brings its
queue everywhere (OFFLOAD_QUEUES of every component, its own Deployment, autoscaler and PDB)."""

from __future__ import annotations

import json
import re
from typing import Any

from offload_core.contract.api_keys import RequestRate
from offload_core.contract.topology import (
    DEFAULT_WORKER_SETS,
    NOTIFIER_QUEUES,
    QUEUE_NAME,
    RESERVED_QUEUE_NAMES,
    WORKER_QUEUES,
    priority_lists,
)
from offload_core.settings import JobTypeLimits, Settings
from tests.chart.conftest import VALUE_SETS
from tests.chart.render import CHART_DIR, Manifest, Rendered, default_values, env_of, pod_spec, render


def merged_sets(values: dict[str, Any]) -> list[dict[str, Any]]:
    defaults = values["workers"]["defaults"]
    return [{**defaults, **entry} for entry in values["workers"]["sets"]]


def offload_queues(rendered: Rendered) -> list[str]:
    (config,) = [c for c in rendered.kind("ConfigMap") if c["metadata"]["name"].endswith("-config")]
    queues: str = config["data"]["OFFLOAD_QUEUES"]
    return queues.split(",")


def settings_of(rendered: Rendered, workload: Manifest) -> Settings:
    """The Settings a workload's container would read: its ConfigMap's variables, then its own."""
    (container,) = pod_spec(workload)["containers"]
    environment: dict[str, str] = {}
    chart_configs = {config["metadata"]["name"]: config for config in rendered.kind("ConfigMap")}
    for source in container.get("envFrom", []):
        name = source.get("configMapRef", {}).get("name")
        if name in chart_configs:  # extraEnvFrom sources live outside the chart
            environment.update(chart_configs[name]["data"])
    environment.update({name: item["value"] for name, item in env_of(container).items() if "value" in item})
    fields = {key.removeprefix("OFFLOAD_"): value for key, value in environment.items() if key.startswith("OFFLOAD_")}
    fields.pop("REDIS_URL", None)  # composed from a Secret in the pod
    fields.pop("REDIS_TLS_CA_FILE", None)  # a file the pod mounts from a Secret
    return Settings(API_KEYS=["k" * 16], **fields)  # type: ignore[arg-type]


def test_the_default_sets_are_the_python_default_sets() -> None:
    chart_sets = [(s["name"], tuple(s["queues"]), s["image"]) for s in merged_sets(default_values())]
    assert chart_sets == [(s.name, tuple(s.queues), s.image) for s in DEFAULT_WORKER_SETS]


def test_the_default_queues_are_the_settings_default(rendered_defaults: Rendered) -> None:
    assert offload_queues(rendered_defaults) == Settings(API_KEYS=["k" * 16]).QUEUES


def test_rendered_deployments_consume_what_the_values_say(rendered_defaults: Rendered) -> None:
    for worker_set in merged_sets(default_values()):
        (deployment,) = rendered_defaults.worker_set("Deployment", worker_set["name"])
        (container,) = pod_spec(deployment)["containers"]
        queues = env_of(container)["OFFLOAD_WORKER_QUEUES"]["value"].split(",")
        assert queues == worker_set["queues"]
        image = container["image"].split("/")[-1].split(":")[0].split("@")[0]
        assert image == ("offload-notifier" if worker_set["image"] == "notifier" else "offload-worker")
        if "high" in queues:
            assert worker_set["minReplicas"] >= 1


def test_the_guards_know_the_built_in_queues_and_their_images() -> None:
    check_config = (CHART_DIR / "templates" / "_checkConfig.tpl").read_text()
    (declared,) = re.findall(r'toJson \(dict "worker" \(list ([^)]*)\) "notifier" \(list ([^)]*)\)\)', check_config)
    worker, notifier = ([item.strip('"') for item in group.split()] for group in declared)
    assert (tuple(worker), tuple(notifier)) == (WORKER_QUEUES, NOTIFIER_QUEUES)


def test_schema_and_guards_take_the_queue_names_the_settings_take() -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    item = schema["definitions"]["workerSetFields"]["properties"]["queues"]["items"]
    assert item["pattern"] == QUEUE_NAME.pattern
    assert set(item["not"]["enum"]) == RESERVED_QUEUE_NAMES
    check_config = (CHART_DIR / "templates" / "_checkConfig.tpl").read_text()
    assert f'regexMatch "{QUEUE_NAME.pattern}"' in check_config
    assert "(list " + " ".join(f'"{name}"' for name in sorted(RESERVED_QUEUE_NAMES)) + ")" in check_config


def test_every_component_reads_the_same_queues_and_every_worker_consumes_some_of_them(rendered: Rendered) -> None:
    queues = offload_queues(rendered)
    readers = 0
    for workload in rendered.kind("Deployment"):
        if not any("configMapRef" in s for s in pod_spec(workload)["containers"][0].get("envFrom", [])):
            continue  # Flower: Celery's own dashboard reads no Offload setting
        settings = settings_of(rendered, workload)  # refuses a set's queue missing from OFFLOAD_QUEUES
        assert queues == settings.QUEUES
        readers += 1
    assert readers >= 2  # the API and at least one worker set


OWN = VALUE_SETS["own-queues"]


def test_a_set_added_through_values_brings_its_queues_everywhere() -> None:
    rendered = render(OWN)
    assert offload_queues(rendered) == ["high", "default", "low", "acme-urgent", "acme", "acme_bulk"]
    (api,) = [d for d in rendered.kind("Deployment") if d["metadata"]["labels"]["app.kubernetes.io/component"] == "api"]
    assert "acme" in settings_of(rendered, api).QUEUES  # the API accepts and counts its jobs

    (deployment,) = rendered.worker_set("Deployment", "acme")
    (container,) = pod_spec(deployment)["containers"]
    assert container["name"] == "worker"
    assert container["image"].startswith("offload-worker:")
    acme_settings = settings_of(rendered, deployment)
    assert acme_settings.WORKER_QUEUES == ["acme", "acme_bulk"]
    assert acme_settings.WORKER_PREFETCH_MULTIPLIER == 4  # from workers.defaults
    (notifier,) = rendered.worker_set("Deployment", "high")
    assert settings_of(rendered, notifier).consumed_queues(NOTIFIER_QUEUES) == ["high", "acme-urgent"]

    (pdb,) = rendered.worker_set("PodDisruptionBudget", "acme")
    assert pdb["spec"]["selector"]["matchLabels"]["offload/worker-set"] == "acme"
    assert pdb["spec"]["maxUnavailable"] == 1

    (scaled_object,) = rendered.worker_set("ScaledObject", "acme")
    spec = scaled_object["spec"]
    assert spec["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (0, 5)
    triggers = spec["triggers"]
    assert [t["metadata"]["listName"] for t in triggers] == priority_lists("acme") + priority_lists("acme_bulk")
    assert [t["name"] for t in triggers] == [f"{q}_p{step}" for q in ("acme", "acme_bulk") for step in (0, 3, 6, 9)]
    assert all(t["metadata"]["listLength"] == "5" for t in triggers)
    assert spec["advanced"]["scalingModifiers"]["formula"] == " + ".join(t["name"] for t in triggers)

    # The notifier's own queue: a hyphen, which the scaling formula would read as a minus.
    (high,) = rendered.worker_set("ScaledObject", "high")
    high_triggers = high["spec"]["triggers"]
    assert [t["metadata"]["listName"] for t in high_triggers] == priority_lists("high") + priority_lists("acme-urgent")
    assert [t["name"] for t in high_triggers][4:] == [f"acme_urgent_p{step}" for step in (0, 3, 6, 9)]
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", t["name"]) for t in high_triggers)

    (hpa_rendered,) = render({**OWN, "keda": {"enabled": False}}).worker_set("HorizontalPodAutoscaler", "acme")
    assert hpa_rendered["spec"]["minReplicas"] == 1


def test_rate_limits_reach_the_settings_of_the_api_and_the_workers() -> None:
    rendered = render(
        {
            "config": {
                "apiRateLimit": "100/60",
                "apiKeyRateLimits": {"shop": "5/1", "batch": "off"},
                "jobLimits": {"offload.echo": {"rate_limit": 10, "concurrency": 4}},
                "jobLimitMaxWaitSeconds": 15,
            }
        }
    )
    components = {"api", "worker"}
    workloads = [
        d for d in rendered.kind("Deployment") if d["metadata"]["labels"]["app.kubernetes.io/component"] in components
    ]
    assert len(workloads) >= 2
    for workload in workloads:
        settings = settings_of(rendered, workload)
        assert settings.api_rate_limit == RequestRate(100, 60)
        assert settings.api_key_rate_limits() == {"shop": RequestRate(5, 1), "batch": None}
        assert {"offload.echo": JobTypeLimits(rate_limit=10, concurrency=4)} == settings.JOB_LIMITS
        assert settings.JOB_LIMIT_MAX_WAIT_SECONDS == 15
