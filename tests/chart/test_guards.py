"""Render-time guards (templates/_checkConfig.tpl): values that would break at run time are refused."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.chart.render import CHART_DIR, env_of, pod_spec, render, render_error


def sets(*changes: dict[str, Any], extra: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The default worker sets with per-set changes (matched by name), plus extra sets."""
    defaults: list[dict[str, Any]] = [
        {"name": "default", "queues": ["default"]},
        {"name": "low", "queues": ["low"], "minReplicas": 0},
        {"name": "high", "image": "notifier", "queues": ["high"], "minReplicas": 1},
    ]
    by_name = {change["name"]: change for change in changes}
    merged = [{**entry, **by_name.get(entry["name"], {})} for entry in defaults]
    return {"workers": {"sets": merged + (extra or [])}}


@pytest.fixture(scope="module")
def chart_without_schema(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The chart minus values.schema.json, to reach guards the schema already covers."""
    copy = tmp_path_factory.mktemp("chart") / "offload"
    shutil.copytree(CHART_DIR, copy)
    (copy / "values.schema.json").unlink()
    return copy


GUARDS: dict[str, tuple[dict[str, Any], list[str]]] = {
    "grace-period": (
        sets({"name": "low", "softShutdownTimeoutSeconds": 55, "terminationGracePeriodSeconds": 60}),
        ["workers.sets[low]: terminationGracePeriodSeconds (60) must exceed softShutdownTimeoutSeconds (55)"],
    ),
    "cooldown": (
        sets({"name": "default", "keda": {"cooldownPeriod": 45}}),
        ["workers.sets[default]: keda.cooldownPeriod (45) must exceed terminationGracePeriodSeconds (60)"],
    ),
    "high-min-replicas": (
        sets({"name": "high", "minReplicas": 0}),
        ['workers.sets[high]: consumes "high" and must keep minReplicas >= 1'],
    ),
    "duplicate-names": (
        sets(extra=[{"name": "low", "queues": ["low"]}]),
        ['the set name "low" appears more than once'],
    ),
    "notifier-runs-worker-jobs": (
        sets({"name": "high", "queues": ["high", "default"]}),
        [
            'workers.sets[high]: queue "default" runs Offload\'s built-in jobs of the worker image, whose code '
            "the notifier image lacks; move it to a set with image: worker."
        ],
    ),
    "high-on-worker-image": (
        sets({"name": "default", "queues": ["default", "high"]}),
        ['workers.sets[default]: queue "high" runs Offload\'s built-in jobs of the notifier image'],
    ),
    "built-in-queue-without-consumer": (
        {"workers": {"sets": [{"name": "high", "image": "notifier", "queues": ["high"]}]}},
        [
            'no set consumes the built-in queue "default"; Offload\'s own jobs on it would wait forever. Add it to '
            "the queues of a set with image: worker.",
            'no set consumes the built-in queue "low"',
        ],
    ),
    "own-queue-replaces-a-built-in-one": (
        sets({"name": "low", "queues": ["acme"]}),
        ['no set consumes the built-in queue "low"'],
    ),
    "trigger-names-clash": (
        sets(extra=[{"name": "acme", "queues": ["acme-bulk", "acme_bulk"]}]),
        ['workers.sets[acme]: queues "acme-bulk" and "acme_bulk" differ only in "-" and "_"'],
    ),
    "min-above-max": (
        sets({"name": "default", "minReplicas": 4, "maxReplicas": 2}),
        ["workers.sets[default]: minReplicas (4) is above maxReplicas (2)"],
    ),
    "visibility-timeout": (
        {"config": {"visibilityTimeoutSeconds": 300}},
        ["config: visibilityTimeoutSeconds (300) must exceed taskTimeLimitSeconds + retryBackoffMaxSeconds (360)"],
    ),
    "soft-time-limit": (
        {"config": {"taskSoftTimeLimitSeconds": 300}},
        ["config: taskSoftTimeLimitSeconds (300) must be below taskTimeLimitSeconds (300)"],
    ),
    "two-redis": (
        {"externalRedis": {"enabled": True, "host": "redis.example"}},
        ["redis.enabled and externalRedis.enabled are both true"],
    ),
    "no-redis": ({"redis": {"enabled": False}}, ["neither redis.enabled nor externalRedis.enabled is true"]),
    "external-redis-keda-without-host": (
        {"redis": {"enabled": False}, "externalRedis": {"enabled": True, "urlSecret": {"name": "r"}}},
        ["keda.enabled needs externalRedis.host"],
    ),
    "sentinel-with-bundled-redis": (
        {"externalRedis": {"sentinel": {"enabled": True, "addresses": ["s:26379"]}}},
        ["externalRedis.sentinel: the sentinels watch an external Redis, but redis.enabled runs the bundled one"],
    ),
    "sentinel-without-addresses": (
        {"redis": {"enabled": False}, "externalRedis": {"enabled": True, "sentinel": {"enabled": True}}},
        ["list every sentinel as host:port in externalRedis.sentinel.addresses"],
    ),
    "sentinel-tls-differs-for-keda": (
        {
            "redis": {"enabled": False},
            "externalRedis": {"enabled": True, "tls": True, "sentinel": {"enabled": True, "addresses": ["s:26379"]}},
        },
        ["KEDA's redis-sentinel scaler uses one TLS setting for both"],
    ),
    "ca-without-tls": (
        {
            "redis": {"enabled": False},
            "externalRedis": {"enabled": True, "host": "r.example", "tlsCaSecret": {"name": "redis-ca"}},
        },
        ["externalRedis.tlsCaSecret: a CA bundle is set but neither externalRedis.tls nor externalRedis.sentinel.tls"],
    ),
    "flower-root-prefix": (
        {"flower": {"ingress": {"enabled": True, "paths": [{"path": "/", "pathType": "Prefix"}]}}},
        ['flower.ingress.paths: "/" (Prefix) would route /metrics or /healthcheck'],
    ),
    "flower-metrics": (
        {"flower": {"ingress": {"enabled": True, "paths": [{"path": "/metrics", "pathType": "Exact"}]}}},
        ['flower.ingress.paths: "/metrics" (Exact) would route /metrics or /healthcheck'],
    ),
    "cooldown-shorter-than-a-task": (
        sets({"name": "low", "keda": {"cooldownPeriod": 200}}),
        [
            "workers.sets[low]: keda.cooldownPeriod (200) is shorter than the longest task time limit of the set "
            "(300 s, config.taskTimeLimitSeconds); with minReplicas 0 KEDA would scale the set to zero while a job "
            "still runs and cut it off. Raise keda.cooldownPeriod to at least 300, or keep minReplicas >= 1."
        ],
    ),
    "cooldown-shorter-than-a-report": (
        {"config": {"visibilityTimeoutSeconds": 1000, "reports": {"timeLimitSeconds": 900}}},
        [
            "workers.sets[low]: keda.cooldownPeriod (300) is shorter than the longest task time limit of the set "
            "(900 s, config.reports.timeLimitSeconds)"
        ],
    ),
    "keda-fallback-above-max": (
        sets({"name": "default", "keda": {"fallback": {"failureThreshold": 3, "replicas": 9}}}),
        ["workers.sets[default]: keda.fallback.replicas (9) is above maxReplicas (5)."],
    ),
    "redis-maxmemory-underivable": (
        {"redis": {"resources": {"limits": {"memory": None}}}},
        ["redis: maxmemory is empty and resources.limits.memory is not set"],
    ),
    "report-soft-limit": (
        {"config": {"reports": {"softTimeLimitSeconds": 300}}},
        ["config.reports: the report soft time limit (300) must be below its hard limit (300)"],
    ),
    "report-visibility": (
        {"config": {"reports": {"timeLimitSeconds": 400}}},
        ["config: visibilityTimeoutSeconds (420) must exceed reports.timeLimitSeconds + retryBackoffMaxSeconds (460)"],
    ),
    "orphan-grace": (
        {"config": {"broker": {"socketTimeoutSeconds": 30}}},
        ["config.orphanSweep: graceSeconds (60) must exceed the longest publish, 96 s"],
    ),
    "api-grace": (
        {"api": {"preStopSleepSeconds": 40}},
        ["api: terminationGracePeriodSeconds (35) must exceed preStopSleepSeconds (40)"],
    ),
    "blob-filesystem-unshared": (
        {"blobStore": {"filesystem": {"persistence": {"enabled": False}}}},
        ["blobStore: the filesystem backend needs a volume every API and worker pod shares"],
    ),
    "blob-s3-without-bucket": (
        {"blobStore": {"backend": "s3"}},
        ["blobStore: backend s3 needs blobStore.s3.bucket"],
    ),
}


@pytest.mark.parametrize("guard", sorted(GUARDS))
def test_guard_refuses_with_its_message(guard: str) -> None:
    values, messages = GUARDS[guard]
    error = render_error(values)
    assert "OFFLOAD CONFIGURATION ERRORS" in error
    for message in messages:
        assert message in error


def test_guards_accept_the_fixed_values() -> None:
    render(sets({"name": "low", "softShutdownTimeoutSeconds": 55, "terminationGracePeriodSeconds": 70}))
    render({"keda": {"enabled": False}, **sets({"name": "default", "keda": {"cooldownPeriod": 45}})})
    render(sets(extra=[{"name": "acme", "queues": ["acme-bulk", "acme_fast"]}]))
    # A set that never sleeps at zero keeps running jobs whatever its cooldown; KEDA off has none.
    render(sets({"name": "low", "minReplicas": 1, "keda": {"cooldownPeriod": 200}}))
    render({"keda": {"enabled": False}, **sets({"name": "low", "keda": {"cooldownPeriod": 200}})})
    # The report's limit counts only where reports run (low), and a long enough cooldown passes.
    render(
        {
            "config": {"visibilityTimeoutSeconds": 1000, "reports": {"timeLimitSeconds": 900}},
            **sets({"name": "low", "keda": {"cooldownPeriod": 900}}),
        }
    )
    render({"redis": {"maxmemory": "2gb", "resources": {"limits": {"memory": None}}}})


def test_a_notifier_set_may_consume_queues_of_its_own() -> None:
    rendered = render(sets({"name": "high", "queues": ["high", "acme-urgent"]}))
    (notifier,) = rendered.worker_set("Deployment", "high")
    assert env_of(pod_spec(notifier)["containers"][0])["OFFLOAD_WORKER_QUEUES"]["value"] == "high,acme-urgent"


# Guards the schema already enforces: the schema refuses first; without it the guard still does.
SCHEMA_BACKED: dict[str, tuple[dict[str, Any], str, str]] = {
    "invalid-queue-name": (
        sets({"name": "low", "queues": ["low", "Bulk"]}),
        "does not match pattern",
        'workers.sets[low]: "Bulk" is not a valid queue name',
    ),
    "queue-name-with-a-dot": (
        sets(extra=[{"name": "acme", "queues": ["acme.jobs"]}]),
        "does not match pattern",
        'workers.sets[acme]: "acme.jobs" is not a valid queue name',
    ),
    "reserved-queue-name": (
        sets(extra=[{"name": "acme", "queues": ["unacked"]}]),
        "'not' failed",
        'workers.sets[acme]: queue name "unacked" is reserved',
    ),
    "in-process-queue-name": (
        sets(extra=[{"name": "acme", "queues": ["in-process"]}]),
        "'not' failed",
        'workers.sets[acme]: queue name "in-process" is reserved',
    ),
    "queue-listed-twice": (
        sets(extra=[{"name": "acme", "queues": ["acme", "acme"]}]),
        "items at 0 and 1 are equal",
        'workers.sets[acme]: lists queue "acme" twice',
    ),
    "empty-queues": (
        sets({"name": "low", "queues": []}),
        "minItems",
        "workers.sets[low]: queues is empty",
    ),
}


@pytest.mark.parametrize("case", sorted(SCHEMA_BACKED))
def test_schema_and_guard_both_refuse(case: str, chart_without_schema: Path) -> None:
    values, schema_message, guard_message = SCHEMA_BACKED[case]
    schema_error = render_error(values)
    assert "schema" in schema_error
    assert schema_message in schema_error.replace("\n", " ")
    assert guard_message in render_error(values, chart_dir=chart_without_schema)
