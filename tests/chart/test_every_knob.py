"""Every OFFLOAD_* setting can be set from the chart's values, and a values file that sets every
knob the chart offers renders objects that validate strictly, for the oldest and the newest
Kubernetes the chart supports, and that the services accept as their settings."""

from __future__ import annotations

import copy
import shutil
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from pydantic import SecretStr

from offload_core.settings import Settings
from tests.chart.render import (
    CHART_DIR,
    KEDA_KINDS,
    MONITORING_KINDS,
    WORKLOAD_KINDS,
    Manifest,
    Rendered,
    containers,
    env_of,
    parse,
    pod_spec,
    render,
    render_raw,
)
from tests.chart.test_keda import crd_validator
from tests.chart.test_manifests import KUBERNETES_VERSIONS

# Settings no value sets, each for a reason. A new setting is either reachable from values or
# listed here with its reason; otherwise test_every_setting_is_reachable_from_values fails.
NOT_IN_VALUES: dict[str, str] = {
    "API_METRICS_HOST": "the API binds 0.0.0.0 in a pod; the metrics port is fenced by NetworkPolicy, not by address",
    "WORKER_NAME": "Celery's default node name holds the host name, which is the pod name: unique per pod",
    "REDIS_TLS_CERT_REQS": "the chart always verifies Redis's certificate (required); none is for a test Redis only",
}
# Settings the chart sets itself, from what it knows rather than from one value of their own.
SET_BY_THE_CHART: dict[str, str] = {
    "REDIS_URL": "the bundled Redis, or externalRedis (host, port, database, tls, passwordSecret / urlSecret)",
    "API_KEYS": "the API key Secret (generated, or api.auth.existingSecret)",
    "API_HOST": "0.0.0.0: every interface of the pod",
    "QUEUES": "every queue of workers.sets",
    "WORKER_QUEUES": "workers.sets[].queues of the set",
    "WORKER_STATE_DIR": "the emptyDir the probes read",
    "WORKER_METRICS_HOST": "0.0.0.0: every interface of the pod",
    "SMTP_PASSWORD": "the Secret delivery.smtp.existingSecret",
    "REDIS_SENTINEL_PASSWORD": "the Secret externalRedis.sentinel.passwordSecret",
    "WEBHOOK_SECRETS": "the webhook Secret (generated, or delivery.webhooks.existingSecret)",
}

CHART_VERSION = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())["version"]
POD_FIELDS: dict[str, Any] = {
    "podAnnotations": {"example.com/owner": "jobs-team"},
    "podLabels": {"example.com/cost-centre": "jobs", "app.kubernetes.io/name": "ignored-clash"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "jobs", "effect": "NoSchedule"}],
    "affinity": {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}
                ]
            }
        }
    },
    "topologySpreadConstraints": [
        {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway"}
    ],
    "priorityClassName": "offload-high",
    "extraEnv": [
        {"name": "TZ", "value": "UTC"},
        {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
    ],
    "extraEnvFrom": [{"configMapRef": {"name": "site-settings", "optional": True}}, {"secretRef": {"name": "site"}}],
    "extraVolumes": [{"name": "ca-bundle", "configMap": {"name": "ca-bundle"}}],
    "extraVolumeMounts": [{"name": "ca-bundle", "mountPath": "/etc/ssl/site", "readOnly": True}],
    "nodeSelector": {"kubernetes.io/os": "linux"},
}
BEHAVIOR = {
    "scaleDown": {"stabilizationWindowSeconds": 600, "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}]},
    "scaleUp": {"selectPolicy": "Max", "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}]},
}

# Every value the chart offers, each away from its default where it has one.
EVERY_KNOB: dict[str, Any] = {
    "global": {
        "imageRegistry": "mirror.example.com/offload",
        "imagePullSecrets": ["mirror"],
        "labels": {"team": "jobs"},
    },
    "imagePullSecrets": ["registry-credentials"],
    "config": {
        "environment": "development",
        "logLevel": "DEBUG",
        "logFormat": "text",
        "visibilityTimeoutSeconds": 1900,
        "unackedRestoreIntervalSeconds": 7,
        "unackedRestoreThrottle": 2,
        "taskSoftTimeLimitSeconds": 250,
        "taskTimeLimitSeconds": 310,
        "taskMaxRetries": 6,
        "taskMaxLostRuns": 4,
        "retryBackoffSeconds": 2,
        "retryBackoffMaxSeconds": 90,
        "jobTtlSeconds": 3600,
        "resultExpiresSeconds": 7200,
        "idempotencyTtlSeconds": 7200,
        "queueMetricsCacheSeconds": 10,
        "jobModules": ["acme_jobs.tasks"],
        "apiRateLimit": "600/60",
        "apiKeyRateLimits": {"shop": "100/60", "batch": "off"},
        "jobLimits": {"acme.sync": {"rate_limit": 10, "concurrency": 4}},
        "jobLimitMaxWaitSeconds": 20,
        "redis": {"connectTimeoutSeconds": 3, "socketTimeoutSeconds": 7, "submitMemoryRatio": 0.9},
        "broker": {"publishMaxRetries": 3, "connectTimeoutSeconds": 3, "socketTimeoutSeconds": 12, "poolLimit": 50},
        "orphanSweep": {"intervalSeconds": 45, "graceSeconds": 90},
        "deadLetters": {"max": 5000, "ttlSeconds": 86400},
        "jobEvents": {"pollSeconds": 1, "maxSeconds": 900},
        "images": {"maxBytes": 10485760, "maxPixels": 20000000, "maxResultBytes": 33554432, "ttlSeconds": 3600},
        "reports": {
            "maxSourceBytes": 536870912,
            "maxRows": 1000000,
            "maxGroups": 5000,
            "maxResultBytes": 1048576,
            "maxGroupKeyBytes": 512,
            "maxMalformedShare": 0.05,
            "malformedMinRows": 500,
            "resultTtlSeconds": 3600,
            "fetchConnectTimeoutSeconds": 3,
            "fetchReadTimeoutSeconds": 20,
            "softTimeLimitSeconds": 1500,
            "timeLimitSeconds": 1800,
        },
    },
    "delivery": {
        "smtp": {
            "host": "smtp.example.com",
            "port": 465,
            "security": "tls",
            "from": "Jobs <jobs@example.com>",
            "username": "mailer",
            "existingSecret": "mail",
            "timeoutSeconds": 20,
        },
        "webhooks": {"connectTimeoutSeconds": 3, "timeoutSeconds": 15},
        "outbound": {"allowedHosts": ["10.1.0.0/16"], "connectTimeoutSeconds": 4, "readTimeoutSeconds": 25},
    },
    "api": {
        "port": 8080,
        "maxBodyBytes": 2097152,
        "maxConnections": 500,
        "auditMaxEntries": 50000,
        "trackedTasksMax": 50,
        "shutdownTasksTimeoutSeconds": 8,
        "compute": {"queueMax": 50, "workers": 3, "maxNumbers": 50000},
        "autoscaling": {"behavior": BEHAVIOR},
        **POD_FIELDS,
    },
    "workers": {
        "heartbeatIntervalSeconds": 3,
        "defaults": {
            "concurrency": 3,
            "pool": "threads",
            "prefetchMultiplier": 2,
            "sendEvents": False,
            "softShutdownTimeoutSeconds": 20,
            "keda": {"fallback": {"failureThreshold": 3, "replicas": 2}, "cooldownPeriod": 1800},
            "hpa": {"behavior": BEHAVIOR},
            **POD_FIELDS,
        },
        "sets": [
            {"name": "default", "queues": ["default"], "podLabels": {"example.com/set": "default"}},
            {"name": "low", "queues": ["low"], "minReplicas": 0, "prefetchMultiplier": 1},
            {"name": "high", "image": "notifier", "queues": ["high"], "prefetchMultiplier": 1, "tolerations": []},
        ],
    },
    "blobStore": {"filesystem": {"path": "/data/blobs", "existingClaim": "jobs-blobs"}},
    "timekeeper": {
        "enabled": False,
        "pollSeconds": 0.5,
        "batch": 200,
        "delayMaxSeconds": 604800,
        "scheduleMisfireGraceSeconds": 10,
    },
    "flower": POD_FIELDS,
    "redis": {
        "maxmemory": "600mb",
        "exporter": {"enabled": True, "image": {"tag": "v1.67.0"}},
        **POD_FIELDS,
    },
    "metrics": {
        "apiPort": 9817,
        "workerPort": 9818,
        "serviceMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
    },
}


# An external Sentinel set over TLS with a CA bundle from a Secret (also a value set of conftest).
EXTERNAL_SENTINEL_REDIS: dict[str, Any] = {
    "enabled": True,
    "tls": True,
    "passwordSecret": {"name": "shared-redis", "key": "password"},
    "tlsCaSecret": {"name": "redis-ca", "key": "ca.crt"},
    "sentinel": {
        "enabled": True,
        "addresses": ["sentinel-0.redis:26379", "sentinel-1.redis:26379", "sentinel-2.redis:26379"],
        "masterName": "offload",
        "passwordSecret": {"name": "sentinel-auth", "key": "password"},
        "tls": True,
    },
}
# The knobs EVERY_KNOB cannot hold at once with the bundled Redis and the filesystem blob store:
# an external Redis behind TLS sentinels, with a CA from a Secret, and S3 for blobs.
EXTERNAL_KNOBS: dict[str, Any] = {
    **EVERY_KNOB,
    "redis": {"enabled": False},
    "externalRedis": EXTERNAL_SENTINEL_REDIS,
    "blobStore": {
        "backend": "s3",
        "quotaBytes": 2147483648,
        "quotaOverrides": [{"keyId": "reports-bot", "bytes": 10737418240}],
        "sweepIntervalSeconds": 30,
        "s3": {
            "bucket": "jobs-blobs",
            "prefix": "jobs",
            "endpointUrl": "https://s3.example.com",
            "region": "eu-west-1",
            "pathStyle": True,
            "existingSecret": "s3",
            "connectTimeoutSeconds": 3,
            "readTimeoutSeconds": 20,
        },
    },
}


@cache
def rendered_sets() -> tuple[Rendered, ...]:
    return render(copy.deepcopy(EVERY_KNOB)), render(copy.deepcopy(EXTERNAL_KNOBS))


def rendered() -> Rendered:
    return rendered_sets()[0]


def workloads(values: Rendered | None = None) -> list[Manifest]:
    return [obj for obj in (values or rendered()).objects if obj["kind"] in WORKLOAD_KINDS]


def settings_env(values: Rendered, container: dict[str, Any]) -> dict[str, str]:
    """What the container's OFFLOAD_* variables are: its ConfigMap, then its own plain values."""
    (config,) = [c for c in values.kind("ConfigMap") if c["metadata"]["name"].endswith("-config")]
    env = dict(config["data"]) if container.get("envFrom") else {}
    env.update({name: item["value"] for name, item in env_of(container).items() if "value" in item})
    return {name: value for name, value in env.items() if name.startswith("OFFLOAD_")}


def app_containers() -> list[tuple[Rendered, dict[str, Any]]]:
    """The API, worker and notifier containers of both value sets, each with its set."""
    return [
        (values, container)
        for values in rendered_sets()
        for workload in workloads(values)
        for container in containers(workload)
        if container["name"] in {"api", "worker", "notifier"}
    ]


def reachable_settings() -> set[str]:
    names: set[str] = set()
    for values, container in app_containers():
        names |= {name.removeprefix("OFFLOAD_") for name in settings_env(values, container)}
        names |= {name.removeprefix("OFFLOAD_") for name in env_of(container) if name.startswith("OFFLOAD_")}
    return names


def test_every_setting_is_reachable_from_values() -> None:
    fields = set(Settings.model_fields)
    unreachable = fields - reachable_settings() - set(NOT_IN_VALUES)
    assert not unreachable, (
        f"settings no chart value sets: {sorted(unreachable)}; add a value for each (values.yaml, "
        "values.schema.json, a template) or list it in NOT_IN_VALUES with the reason"
    )
    assert not set(NOT_IN_VALUES) - fields, "NOT_IN_VALUES names a setting that no longer exists"
    assert not set(NOT_IN_VALUES) & reachable_settings(), "a setting in NOT_IN_VALUES is set after all"


def parsed_settings(values: Rendered, container: dict[str, Any]) -> Settings:
    env = settings_env(values, container)
    # Secrets come from Secrets the test does not have; any well-formed value stands in.
    env["OFFLOAD_REDIS_URL"] = "redis://:password@redis:6379/0"
    if "OFFLOAD_REDIS_TLS_CA_FILE" in env:  # a file mounted from a Secret: any existing file stands in
        env["OFFLOAD_REDIS_TLS_CA_FILE"] = __file__
    return Settings.model_validate({name.removeprefix("OFFLOAD_"): value for name, value in env.items()})


def test_every_value_reaches_the_settings_the_services_read() -> None:
    """Each knob, set away from its default, arrives as that setting in some container."""
    defaults = Settings.model_validate({})
    changed: set[str] = set()
    for values, container in app_containers():
        settings = parsed_settings(values, container)  # raises if the services would refuse the values
        for name in Settings.model_fields:
            value, default = getattr(settings, name), getattr(defaults, name)
            if isinstance(value, SecretStr):
                continue
            if value != default:
                changed.add(name)
    untested = set(Settings.model_fields) - changed - set(NOT_IN_VALUES) - set(SET_BY_THE_CHART)
    assert not untested, f"EVERY_KNOB leaves these at their defaults: {sorted(untested)}"


@pytest.mark.parametrize("value_set", [0, 1], ids=["every-knob", "external-knobs"])
@pytest.mark.parametrize("kube_version", KUBERNETES_VERSIONS)
def test_every_knob_renders_objects_that_validate_strictly(kube_version: str, value_set: int) -> None:
    for obj in rendered_sets()[value_set].objects:
        if obj["kind"] in KEDA_KINDS | MONITORING_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, kube_version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} is invalid for {kube_version}: {error.message}")


def test_every_knob_scaled_objects_match_the_keda_crd() -> None:
    validator = crd_validator("ScaledObject")
    objects = rendered().kind("ScaledObject")
    assert len(objects) == 3
    for obj in objects:
        errors = [error.message for error in validator.iter_errors(obj)]
        assert not errors, (obj["metadata"]["name"], errors)
        assert obj["spec"]["fallback"] == {"failureThreshold": 3, "replicas": 2}
        assert obj["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == BEHAVIOR


def test_every_component_gets_its_pod_fields() -> None:
    for workload in workloads():
        spec = pod_spec(workload)
        name = workload["metadata"]["name"]
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert labels["example.com/cost-centre"] == "jobs", name
        assert labels["app.kubernetes.io/name"] == "offload", name  # the chart's own label wins
        assert labels["team"] == "jobs", name  # global.labels
        assert workload["spec"]["template"]["metadata"]["annotations"]["example.com/owner"] == "jobs-team"
        assert spec["priorityClassName"] == "offload-high", name
        assert spec["affinity"] == POD_FIELDS["affinity"], name
        assert spec["nodeSelector"] == POD_FIELDS["nodeSelector"], name
        assert spec["imagePullSecrets"] == [{"name": "mirror"}, {"name": "registry-credentials"}], name
        (spread,) = spec["topologySpreadConstraints"]
        assert spread["labelSelector"]["matchLabels"] == workload["spec"]["selector"]["matchLabels"], name
        assert {"name": "ca-bundle", "configMap": {"name": "ca-bundle"}} in spec["volumes"], name
        main = spec["containers"][0]
        assert main["image"].startswith("mirror.example.com/offload/"), name
        assert env_of(main)["TZ"] == {"name": "TZ", "value": "UTC"}, name
        assert {"secretRef": {"name": "site"}} in main["envFrom"], name
        assert POD_FIELDS["extraVolumeMounts"][0] in main["volumeMounts"], name
        expected = [] if name.endswith("worker-high") else POD_FIELDS["tolerations"]
        assert spec.get("tolerations", []) == expected, name  # a set's own list replaces the default
    (default_set,) = rendered().worker_set("Deployment", "default")
    assert default_set["spec"]["template"]["metadata"]["labels"]["example.com/set"] == "default"


def test_the_redis_exporter_runs_beside_redis_and_is_scraped() -> None:
    (redis,) = rendered().kind("StatefulSet")
    exporter = next(c for c in pod_spec(redis)["containers"] if c["name"] == "redis-exporter")
    assert exporter["image"] == "mirror.example.com/offload/oliver006/redis_exporter:v1.67.0"
    assert env_of(exporter)["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "offload-redis"
    monitors = [m for m in rendered().kind("PodMonitor") if m["metadata"]["name"].endswith("-redis")]
    assert len(monitors) == 1
    assert monitors[0]["spec"]["podMetricsEndpoints"][0]["port"] == "redis-metrics"
    args = pod_spec(redis)["containers"][0]["args"][0]
    assert "--maxmemory '600mb'" in args


def test_the_chart_works_as_a_subchart(tmp_path: Path) -> None:
    """A parent chart's `global` (with keys of other charts) reaches the chart, and its own
    values under `offload` too."""
    parent = tmp_path / "platform"
    (parent / "charts").mkdir(parents=True)
    shutil.copytree(CHART_DIR, parent / "charts" / "offload")
    (parent / "Chart.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v2",
                "name": "platform",
                "version": "1.0.0",
                "dependencies": [{"name": "offload", "version": CHART_VERSION}],
            }
        )
    )
    (parent / "values.yaml").write_text("{}\n")
    values = {
        "global": {
            "imageRegistry": "mirror.example.com",
            "imagePullSecrets": ["mirror"],
            "labels": {"platform": "jobs"},
            "storageClass": "fast",  # another subchart's key
        },
        "offload": {"keda": {"enabled": False}},
    }
    objects = parse(render_raw(values, chart_dir=parent)).objects
    deployments = [obj for obj in objects if obj["kind"] == "Deployment"]
    assert deployments
    for deployment in deployments:
        spec = pod_spec(deployment)
        assert spec["containers"][0]["image"].startswith("mirror.example.com/"), deployment["metadata"]["name"]
        assert spec["imagePullSecrets"] == [{"name": "mirror"}]
        assert deployment["metadata"]["labels"]["platform"] == "jobs"
    assert not [obj for obj in objects if obj["kind"] == "ScaledObject"]
