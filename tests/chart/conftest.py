from __future__ import annotations

from typing import Any

import pytest

from tests.chart.render import Rendered, render
from tests.chart.test_every_knob import EVERY_KNOB, EXTERNAL_SENTINEL_REDIS

# The value sets every structural check runs under.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "keda-off": {"keda": {"enabled": False}},
    "external-redis": {
        "redis": {"enabled": False},
        "externalRedis": {
            "enabled": True,
            "host": "redis.data.svc",
            "tls": True,
            "passwordSecret": {"name": "shared-redis", "key": "password"},
        },
    },
    # An external Sentinel set over TLS with a CA bundle from a Secret.
    "external-sentinel": {"redis": {"enabled": False}, "externalRedis": EXTERNAL_SENTINEL_REDIS},
    "external-redis-url": {
        "redis": {"enabled": False},
        "keda": {"enabled": False},
        "externalRedis": {"enabled": True, "urlSecret": {"name": "shared-redis", "key": "url"}},
    },
    "ingress": {
        "api": {"ingress": {"enabled": True, "className": "nginx", "tls": {"enabled": True}}},
        "flower": {"ingress": {"enabled": True, "className": "nginx"}},
        "otel": {
            "endpoint": "http://otel-collector.observability:4318",
            "protocol": "http/protobuf",
            "headers": {"existingSecret": "otlp-credentials"},
        },
    },
    "custom-set": {
        "workers": {
            "sets": [
                {
                    "name": "bulk",
                    "queues": ["default", "low"],
                    "concurrency": 8,
                    "pool": "threads",
                    "minReplicas": 0,
                    "maxReplicas": 12,
                    "softShutdownTimeoutSeconds": 100,
                    "terminationGracePeriodSeconds": 130,
                    "keda": {"listLength": 50},
                    "resources": {"limits": {"cpu": "2", "memory": "2Gi"}},
                },
                {"name": "critical", "image": "notifier", "queues": ["high"], "minReplicas": 2},
            ]
        }
    },
    # A queue of the deployment's own, added through values only: a set of its own, and one more
    # queue on the notifier's set (tests/chart/test_topology.py checks what it renders).
    "own-queues": {
        "workers": {
            "sets": [
                {"name": "default", "queues": ["default"]},
                {"name": "low", "queues": ["low"], "minReplicas": 0, "prefetchMultiplier": 1},
                {"name": "high", "image": "notifier", "queues": ["high", "acme-urgent"], "prefetchMultiplier": 1},
                {"name": "acme", "queues": ["acme", "acme_bulk"], "minReplicas": 0, "keda": {"listLength": 5}},
            ]
        }
    },
    # Every value the chart offers set at once (global, pod fields, exporter, every setting).
    "every-knob": EVERY_KNOB,
    "monitoring": {
        "redis": {"exporter": {"enabled": True}},
        "metrics": {
            "workerPort": 9900,
            "scrapeFrom": [
                {
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "observability"}},
                    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
                }
            ],
            "serviceMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "kube-prometheus-stack"}},
            "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
            "grafanaDashboard": {"namespace": "grafana", "annotations": {"grafana_folder": "Offload"}},
        },
    },
    "delivery": {
        "delivery": {
            "smtp": {
                "host": "smtp.example.com",
                "port": 465,
                "security": "tls",
                "username": "offload-mailer",
                "from": "Offload <jobs@example.com>",
                "existingSecret": "mail-credentials",
                "existingSecretKey": "password",
            },
            "webhooks": {"existingSecret": "signing", "existingSecretKey": "secrets"},
            "outbound": {"allowedHosts": ["10.20.0.0/16", "hooks.internal.example"]},
        }
    },
    "existing-secrets": {
        "api": {"auth": {"existingSecret": "offload-api-keys"}},
        "flower": {"auth": {"existingSecret": "offload-flower"}},
        "redis": {"auth": {"existingSecret": "offload-redis"}},
        "images": {"registry": "registry.example.com/team", "api": {"digest": "sha256:" + "a" * 64}},
    },
}


@pytest.fixture(scope="session", params=sorted(VALUE_SETS))
def value_set(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    name: str = request.param
    return name, VALUE_SETS[name]


@pytest.fixture(scope="session")
def rendered(value_set: tuple[str, dict[str, Any]]) -> Rendered:
    return render(value_set[1])


@pytest.fixture(scope="session")
def rendered_defaults() -> Rendered:
    return render()
