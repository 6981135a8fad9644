"""The rendered chart, under several value sets: valid objects, safe pods, one of each per worker set."""

from __future__ import annotations

import re
from typing import Any

import helm_python
import kubernetes_validate  # type: ignore[import-untyped]
import pytest

from tests.chart.render import (
    CHART_DIR,
    KEDA_KINDS,
    MONITORING_KINDS,
    RELEASE,
    WORKLOAD_KINDS,
    Manifest,
    Rendered,
    containers,
    env_of,
    pod_spec,
    render,
)

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest whose schemas
# kubernetes-validate ships, so a new release of it moves the upper bound by itself.
NEWEST_KUBERNETES = ".".join(kubernetes_validate.latest_version().split(".")[:2])
KUBERNETES_VERSIONS = ("1.30", NEWEST_KUBERNETES)
# A URL with a literal password: scheme://[user]:password@ where the password is not a $(VAR).
INLINE_CREDENTIAL = re.compile(r"[a-z]+://[^/@\s]*:(?!\$\()[^@\s]+@")
SECRET_NAME_HINT = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEYS|BASIC_AUTH|AUTH$", re.IGNORECASE)


def workloads(rendered: Rendered) -> list[Manifest]:
    return [obj for obj in rendered.objects if obj["kind"] in WORKLOAD_KINDS]


def worker_set_names(rendered: Rendered) -> list[str]:
    return [d["metadata"]["labels"]["offload/worker-set"] for d in rendered.kind("Deployment") if is_worker(d)]


def is_worker(obj: Manifest) -> bool:
    labels: dict[str, str] = obj["metadata"]["labels"]
    return labels.get("app.kubernetes.io/component") == "worker"


def test_lint_is_clean(value_set: tuple[str, dict[str, Any]]) -> None:
    for kube_version in KUBERNETES_VERSIONS:
        report = helm_python.lint(CHART_DIR, value_set[1], strict=True, kube_version=f"v{kube_version}.0")
        problems = [m for m in report["messages"] if m["severity"] >= 2]
        assert not report["errors"], report
        assert not problems, report


@pytest.mark.parametrize("kube_version", KUBERNETES_VERSIONS)
def test_every_object_validates_strictly(rendered: Rendered, kube_version: str) -> None:
    checked = 0
    for obj in rendered.objects:
        if obj["kind"] in KEDA_KINDS | MONITORING_KINDS:
            continue  # CRDs: see test_keda.py and test_monitoring.py
        try:
            kubernetes_validate.validate(obj, kube_version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} is invalid for {kube_version}: {error.message}")
        checked += 1
    assert checked >= 10


def test_labels_follow_the_conventions(rendered: Rendered) -> None:
    for obj in rendered.objects:
        labels = obj["metadata"]["labels"]
        for key in ("name", "instance", "component", "version", "managed-by"):
            assert f"app.kubernetes.io/{key}" in labels, f"{obj['kind']}/{obj['metadata']['name']} lacks {key}"
        assert len(obj["metadata"]["name"]) <= 63


def test_one_deployment_autoscaler_and_pdb_per_worker_set(
    rendered: Rendered, value_set: tuple[str, dict[str, Any]]
) -> None:
    keda = value_set[1].get("keda", {}).get("enabled", True)
    autoscaler_kind = "ScaledObject" if keda else "HorizontalPodAutoscaler"
    sets = worker_set_names(rendered)
    assert sets
    assert len(sets) == len(set(sets))
    for name in sets:
        deployments = rendered.worker_set("Deployment", name)
        autoscalers = rendered.worker_set(autoscaler_kind, name)
        pdbs = rendered.worker_set("PodDisruptionBudget", name)
        assert len(deployments) == len(autoscalers) == len(pdbs) == 1, name
        deployment_name = deployments[0]["metadata"]["name"]
        assert autoscalers[0]["spec"]["scaleTargetRef"]["name"] == deployment_name
        assert pdbs[0]["spec"]["selector"]["matchLabels"].items() <= (
            deployments[0]["spec"]["template"]["metadata"]["labels"].items()
        )
        assert "replicas" not in deployments[0]["spec"], "the autoscaler owns the replica count"
    other_kind = "HorizontalPodAutoscaler" if keda else "ScaledObject"
    assert not [obj for obj in rendered.kind(other_kind) if is_worker(obj)]
    for hpa in rendered.kind("HorizontalPodAutoscaler"):
        assert hpa["spec"]["minReplicas"] >= 1


def test_worker_grace_period_exceeds_soft_shutdown(rendered: Rendered) -> None:
    for deployment in filter(is_worker, rendered.kind("Deployment")):
        spec = pod_spec(deployment)
        (container,) = spec["containers"]
        soft = float(env_of(container)["OFFLOAD_WORKER_SOFT_SHUTDOWN_TIMEOUT_SECONDS"]["value"])
        pre_stop = float(container["lifecycle"]["preStop"]["exec"]["command"][-1])
        assert spec["terminationGracePeriodSeconds"] > soft + pre_stop, deployment["metadata"]["name"]


def test_pods_and_containers_are_locked_down(rendered: Rendered) -> None:
    for workload in workloads(rendered):
        spec = pod_spec(workload)
        name = workload["metadata"]["name"]
        pod_security = spec["securityContext"]
        assert pod_security["runAsNonRoot"] is True, name
        assert pod_security["seccompProfile"]["type"] == "RuntimeDefault", name
        assert "fsGroup" in pod_security, name
        if workload["kind"] == "Deployment":
            assert (pod_security["runAsUser"], pod_security["runAsGroup"]) == (10001, 10001), name
        assert spec["automountServiceAccountToken"] is False, name
        assert spec["serviceAccountName"], name
        mounts_tmp = False
        for container in containers(workload):
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["capabilities"]["drop"] == ["ALL"], name
            resources = container["resources"]
            for section in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources[section]), f"{name}/{container['name']} {section}"
            mounts_tmp = mounts_tmp or any(m["mountPath"] == "/tmp" for m in container.get("volumeMounts", []))
        assert mounts_tmp, f"{name} has no writable /tmp"
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert "emptyDir" in volumes["tmp"], name


def test_long_running_containers_have_probes_and_never_celery_inspect(rendered: Rendered) -> None:
    for workload in workloads(rendered):
        for container in containers(workload, init=False):
            where = f"{workload['metadata']['name']}/{container['name']}"
            assert "livenessProbe" in container, where
            assert "readinessProbe" in container, where
            for probe_name in ("livenessProbe", "readinessProbe", "startupProbe"):
                command = " ".join(container.get(probe_name, {}).get("exec", {}).get("command", []))
                assert "inspect" not in command, f"{where} {probe_name}"
                assert "celery" not in command, f"{where} {probe_name}"


def test_probes_are_the_documented_ones(rendered: Rendered) -> None:
    for deployment in rendered.kind("Deployment"):
        (container,) = pod_spec(deployment)["containers"]
        component = deployment["metadata"]["labels"]["app.kubernetes.io/component"]
        if component == "api":
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
            assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
            assert container["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
            env = env_of(container)
            assert env["OFFLOAD_API_HOST"]["value"] == "0.0.0.0"
        elif component == "worker":
            assert container["readinessProbe"]["exec"]["command"] == ["test", "-f", "/tmp/offload/ready"]
            liveness = container["livenessProbe"]["exec"]["command"][-1]
            assert "/tmp/offload/heartbeat" in liveness
            assert "stat -c %Y" in liveness
            assert env_of(container)["OFFLOAD_WORKER_STATE_DIR"]["value"] == "/tmp/offload"
        elif component == "flower":
            assert container["livenessProbe"]["httpGet"]["path"] == "/healthcheck"
            assert container["command"][:6] == [
                "python",
                "-m",
                "celery",
                "-A",
                "offload_core.runtime.flower_app",
                "flower",
            ]


def test_otel_environment(rendered: Rendered, value_set: tuple[str, dict[str, Any]]) -> None:
    endpoint = value_set[1].get("otel", {}).get("endpoint")
    headers_secret = value_set[1].get("otel", {}).get("headers", {}).get("existingSecret")
    for deployment in rendered.kind("Deployment"):
        component = deployment["metadata"]["labels"]["app.kubernetes.io/component"]
        if component == "flower":
            continue
        env = env_of(pod_spec(deployment)["containers"][0])
        image = pod_spec(deployment)["containers"][0]["image"]
        expected = "offload-notifier" if "notifier" in image else "offload-worker"
        if component == "api":
            expected = "offload-api"
        assert env["OTEL_SERVICE_NAME"]["value"] == expected
        attributes = env["OTEL_RESOURCE_ATTRIBUTES"]["value"]
        assert "k8s.pod.name=$(POD_NAME)" in attributes
        assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
        if component == "worker":
            set_name = deployment["metadata"]["labels"]["offload/worker-set"]
            assert f"offload.worker_set={set_name}" in attributes
        if endpoint:
            assert env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"] == endpoint
        else:
            assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in env
        # Credentials for the collector come from a Secret, never from values in clear.
        if headers_secret:
            reference = env["OTEL_EXPORTER_OTLP_HEADERS"]["valueFrom"]["secretKeyRef"]
            assert reference == {"name": headers_secret, "key": "otlp-headers"}
        else:
            assert "OTEL_EXPORTER_OTLP_HEADERS" not in env


def test_pod_templates_roll_on_config_and_secret_changes(rendered: Rendered) -> None:
    for deployment in rendered.kind("Deployment"):
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert {"checksum/config", "checksum/secrets"} <= set(annotations)


def test_config_change_changes_the_checksum() -> None:
    from tests.chart.render import render

    before = render().named("Deployment", "offload-api")
    after = render({"config": {"logLevel": "DEBUG"}}).named("Deployment", "offload-api")
    key = "checksum/config"
    assert (
        before["spec"]["template"]["metadata"]["annotations"][key]
        != after["spec"]["template"]["metadata"]["annotations"][key]
    )


def contains_inline_credential(value: str) -> bool:
    return bool(INLINE_CREDENTIAL.search(value))


def test_inline_credential_detector() -> None:
    assert contains_inline_credential("redis://:hunter2hunter2@redis:6379/0")
    assert contains_inline_credential("rediss://user:pw@redis:6379/0")
    assert not contains_inline_credential("redis://:$(REDIS_PASSWORD)@redis:6379/0")
    assert not contains_inline_credential("redis://redis:6379/0")


def test_no_secret_is_inline_in_an_environment_variable(rendered: Rendered) -> None:
    secret_values = {
        value for secret in rendered.kind("Secret") for value in (secret.get("data") or {}).values() if value
    }
    for workload in workloads(rendered):
        for container in containers(workload):
            for item in container.get("env", []):
                where = f"{workload['metadata']['name']}/{container['name']} {item['name']}"
                if "value" not in item:
                    continue
                value = str(item["value"])
                assert not SECRET_NAME_HINT.search(item["name"]), f"{where} must come from a Secret"
                assert not contains_inline_credential(value), where
                assert value not in secret_values, where
    for config_map in rendered.kind("ConfigMap"):
        for key, value in config_map["data"].items():
            assert not SECRET_NAME_HINT.search(key), key
            assert not contains_inline_credential(value), key


def test_secrets_come_from_secret_key_refs(rendered: Rendered, value_set: tuple[str, dict[str, Any]]) -> None:
    values = value_set[1]
    secret_names = {secret["metadata"]["name"] for secret in rendered.kind("Secret")}
    expected_external = {
        values.get(component, {}).get("auth", {}).get("existingSecret") for component in ("api", "flower", "redis")
    }
    delivery = values.get("delivery", {})
    expected_external |= {delivery.get(part, {}).get("existingSecret") for part in ("smtp", "webhooks")}
    external = values.get("externalRedis", {})
    expected_external |= {external.get("passwordSecret", {}).get("name"), external.get("urlSecret", {}).get("name")}
    expected_external.add(external.get("sentinel", {}).get("passwordSecret", {}).get("name"))
    expected_external.add(values.get("otel", {}).get("headers", {}).get("existingSecret"))
    for deployment in rendered.kind("Deployment"):
        env = env_of(pod_spec(deployment)["containers"][0])
        url = env["OFFLOAD_REDIS_URL"]
        if "value" in url:
            assert url["value"].startswith(("redis://", "rediss://"))
        for item in env.values():
            reference = item.get("valueFrom", {}).get("secretKeyRef")
            if reference:
                assert reference["name"] in secret_names | expected_external, reference
    api = rendered.named("Deployment", f"{RELEASE}-api")
    assert "secretKeyRef" in env_of(pod_spec(api)["containers"][0])["OFFLOAD_API_KEYS"]["valueFrom"]


def test_image_references_take_a_digest_over_a_tag() -> None:
    from tests.chart.render import render

    default = render().named("Deployment", f"{RELEASE}-api")
    assert pod_spec(default)["containers"][0]["image"] == "offload-api:0.1.0"
    digest = "sha256:" + "b" * 64
    pinned = render({"images": {"registry": "registry.example.com/team/", "api": {"tag": "9.9.9", "digest": digest}}})
    image = pod_spec(pinned.named("Deployment", f"{RELEASE}-api"))["containers"][0]["image"]
    assert image == f"registry.example.com/team/offload-api@{digest}"


def test_long_release_names_are_truncated_to_63_characters() -> None:
    from tests.chart.render import render

    release = "a-very-long-release-name-that-fills-the-helm-limit-x"
    rendered = render(release=release)
    for obj in rendered.objects:
        assert len(obj["metadata"]["name"]) <= 63, obj["metadata"]["name"]
        assert not obj["metadata"]["name"].endswith("-")
    names = [obj["metadata"]["name"] for obj in rendered.kind("Deployment")]
    assert len(names) == len(set(names))


def test_redis_keeps_every_message(rendered_defaults: Rendered) -> None:
    (statefulset,) = rendered_defaults.kind("StatefulSet")
    (container,) = pod_spec(statefulset)["containers"]
    (script,) = container["args"]
    assert container["command"] == ["sh", "-c"]
    start, config, end = script.strip().split("\n")
    arguments = start.split()
    assert arguments[:3] == ["exec", "redis-server", "-"]
    assert arguments[arguments.index("--appendonly") + 1] == "yes"
    assert arguments[arguments.index("--maxmemory-policy") + 1] == "noeviction"
    # The password comes from the environment into Redis's standard input, not its arguments.
    assert (arguments[-1], config, end) == ("<<EOF", 'requirepass "$REDIS_PASSWORD"', "EOF")
    assert "requirepass" not in start
    assert "$(REDIS_PASSWORD)" not in script
    assert "REDIS_PASSWORD" in env_of(container)
    assert container["image"] == "redis:7.2"
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert {"name": "data", "mountPath": "/data"} in container["volumeMounts"]
    assert claim["metadata"]["name"] == "data"


def test_external_redis_renders_no_redis_objects() -> None:
    from tests.chart.conftest import VALUE_SETS
    from tests.chart.render import render

    for name in ("external-redis", "external-redis-url"):
        rendered = render(VALUE_SETS[name])
        components = {obj["metadata"]["labels"]["app.kubernetes.io/component"] for obj in rendered.objects}
        assert "redis" not in components, name
        assert not rendered.kind("StatefulSet"), name
        assert all("redis" not in p["metadata"]["name"] for p in rendered.kind("NetworkPolicy")), name


def test_generated_secrets_are_random_and_present_without_existing_secrets(rendered_defaults: Rendered) -> None:
    import base64

    secrets = {secret["metadata"]["name"]: secret["data"] for secret in rendered_defaults.kind("Secret")}
    assert set(secrets) == {f"{RELEASE}-api-keys", f"{RELEASE}-flower", f"{RELEASE}-redis", f"{RELEASE}-webhooks"}
    api_key = base64.b64decode(secrets[f"{RELEASE}-api-keys"]["api-keys"]).decode()
    assert len(api_key) >= 16
    user, _, password = base64.b64decode(secrets[f"{RELEASE}-flower"]["basic-auth"]).decode().partition(":")
    assert user == "admin"
    assert len(password) >= 16
    assert len(base64.b64decode(secrets[f"{RELEASE}-redis"]["redis-password"])) >= 16
    # test_delivery.py checks it is a valid Standard Webhooks secret.
    assert base64.b64decode(secrets[f"{RELEASE}-webhooks"]["webhook-secrets"]).startswith(b"whsec_")


def test_task_events_can_be_turned_off_per_worker_set() -> None:
    sets = [
        {"name": "default", "image": "worker", "queues": ["default"], "sendEvents": False},
        {"name": "low", "image": "worker", "queues": ["low"]},
        {"name": "high", "image": "notifier", "queues": ["high"]},
    ]
    rendered = render({"workers": {"sets": sets}})
    events: dict[str, str] = {}
    for name in ("default", "low", "high"):
        (deployment,) = rendered.worker_set("Deployment", name)
        (container,) = pod_spec(deployment)["containers"]
        events[name] = env_of(container)["OFFLOAD_WORKER_SEND_EVENTS"]["value"]
    assert events == {"default": "false", "low": "true", "high": "true"}


@pytest.mark.parametrize(
    ("redis", "maxmemory"),
    [
        ({}, str(1024**3 * 80 // 100)),  # the default: 80 % of the 1Gi limit
        ({"resources": {"limits": {"memory": "512Mi"}}}, str(512 * 1024**2 * 80 // 100)),
        ({"resources": {"limits": {"memory": "2G"}}, "maxmemoryPercentOfLimit": 75}, "1500000000"),
        ({"resources": {"limits": {"memory": "1.5Gi"}}}, str(int(1.5 * 1024**3) * 80 // 100)),
        ({"resources": {"limits": {"memory": "1073741824"}}}, str(1024**3 * 80 // 100)),
        ({"maxmemory": "300mb"}, "300mb"),
        ({"maxmemory": "0"}, "0"),
    ],
)
def test_redis_maxmemory_comes_from_its_memory_limit_unless_set(redis: dict[str, Any], maxmemory: str) -> None:
    """A full Redis refuses writes (noeviction) instead of growing until the kernel kills it."""
    (statefulset,) = render({"redis": redis}).kind("StatefulSet")
    arguments = pod_spec(statefulset)["containers"][0]["args"][0].split()
    assert arguments[arguments.index("--maxmemory") + 1] == f"'{maxmemory}'"
    assert arguments[arguments.index("--maxmemory-policy") + 1] == "noeviction"
