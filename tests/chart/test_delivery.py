"""Email and webhook delivery settings: which Deployments get them, from where, and the generated
webhook signing secret."""

from __future__ import annotations

import base64
import time
from typing import Any

import pytest
import standardwebhooks

from offload_core.engines.webhooks import signature_header
from offload_core.settings import Settings, webhook_secret_problem
from tests.chart.conftest import VALUE_SETS
from tests.chart.render import RELEASE, Manifest, Rendered, env_of, pod_spec, render, render_error
from tests.system.harness import API_ENV, worker_env

SMTP_VARIABLES = {
    "OFFLOAD_SMTP_HOST",
    "OFFLOAD_SMTP_PORT",
    "OFFLOAD_SMTP_SECURITY",
    "OFFLOAD_SMTP_USERNAME",
    "OFFLOAD_SMTP_PASSWORD",
    "OFFLOAD_EMAIL_FROM",
}
WEBHOOK_VARIABLE = "OFFLOAD_WEBHOOK_SECRETS"
ALLOW_LIST_VARIABLE = "OFFLOAD_OUTBOUND_ALLOWED_HOSTS"
DELIVERY_VARIABLES = SMTP_VARIABLES | {WEBHOOK_VARIABLE, ALLOW_LIST_VARIABLE}
# Only ever from a Secret.
SECRET_VARIABLES = {"OFFLOAD_SMTP_PASSWORD", WEBHOOK_VARIABLE}
WORKER_SETS = ("default", "low", "high")


def container_env(deployment: Manifest) -> dict[str, dict[str, Any]]:
    (container,) = pod_spec(deployment)["containers"]
    return env_of(container)


def worker_envs(rendered: Rendered) -> dict[str, dict[str, dict[str, Any]]]:
    envs = {}
    for name in WORKER_SETS:
        (deployment,) = rendered.worker_set("Deployment", name)
        envs[name] = container_env(deployment)
    return envs


def secret_ref(item: dict[str, Any]) -> tuple[str, str]:
    assert "value" not in item, f"{item['name']} must come from a Secret, not an inline value"
    reference = item["valueFrom"]["secretKeyRef"]
    return reference["name"], reference["key"]


@pytest.fixture(scope="module")
def rendered_delivery() -> Rendered:
    return render(VALUE_SETS["delivery"])


def test_every_worker_set_gets_smtp_webhooks_and_the_allow_list(rendered_delivery: Rendered) -> None:
    for name, env in worker_envs(rendered_delivery).items():
        assert set(env) >= DELIVERY_VARIABLES, name
        assert env["OFFLOAD_SMTP_HOST"]["value"] == "smtp.example.com"
        assert env["OFFLOAD_SMTP_PORT"]["value"] == "465"
        assert env["OFFLOAD_SMTP_SECURITY"]["value"] == "tls"
        assert env["OFFLOAD_SMTP_USERNAME"]["value"] == "offload-mailer"
        assert env["OFFLOAD_EMAIL_FROM"]["value"] == "Offload <jobs@example.com>"
        assert env[ALLOW_LIST_VARIABLE]["value"] == "10.20.0.0/16,hooks.internal.example"
        assert secret_ref(env["OFFLOAD_SMTP_PASSWORD"]) == ("mail-credentials", "password")
        assert secret_ref(env[WEBHOOK_VARIABLE]) == ("signing", "secrets")


def test_the_api_gets_the_allow_list_only_and_flower_nothing(rendered_delivery: Rendered) -> None:
    api = container_env(rendered_delivery.named("Deployment", f"{RELEASE}-api"))
    assert api[ALLOW_LIST_VARIABLE]["value"] == "10.20.0.0/16,hooks.internal.example"
    assert not (DELIVERY_VARIABLES - {ALLOW_LIST_VARIABLE}) & set(api)
    flower = container_env(rendered_delivery.named("Deployment", f"{RELEASE}-flower"))
    assert not DELIVERY_VARIABLES & set(flower)
    for config_map in rendered_delivery.kind("ConfigMap"):
        assert not DELIVERY_VARIABLES & set(config_map.get("data", {})), config_map["metadata"]["name"]


def test_defaults_sign_with_the_generated_secret_and_set_no_smtp_host_or_login(rendered_defaults: Rendered) -> None:
    for name, env in worker_envs(rendered_defaults).items():
        assert secret_ref(env[WEBHOOK_VARIABLE]) == (f"{RELEASE}-webhooks", "webhook-secrets"), name
        assert not {"OFFLOAD_SMTP_HOST", "OFFLOAD_SMTP_USERNAME", "OFFLOAD_SMTP_PASSWORD"} & set(env), name
        assert env["OFFLOAD_SMTP_SECURITY"]["value"] == "starttls"
        assert env[ALLOW_LIST_VARIABLE]["value"] == ""
    api = container_env(rendered_defaults.named("Deployment", f"{RELEASE}-api"))
    assert api[ALLOW_LIST_VARIABLE]["value"] == ""


def test_secret_variables_never_carry_a_value_under_any_value_set(rendered: Rendered) -> None:
    for deployment in rendered.kind("Deployment"):
        for name, item in container_env(deployment).items():
            if name in SECRET_VARIABLES:
                secret_ref(item)


def generated_webhook_secret(rendered: Rendered) -> str:
    data = rendered.named("Secret", f"{RELEASE}-webhooks")["data"]
    value: str = base64.b64decode(data["webhook-secrets"], validate=True).decode()
    return value


def test_the_generated_webhook_secret_is_a_valid_standard_webhooks_secret(rendered_defaults: Rendered) -> None:
    secret = generated_webhook_secret(rendered_defaults)
    assert secret.startswith("whsec_")
    key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    assert len(key) == 32
    assert webhook_secret_problem(secret) is None
    assert [s.get_secret_value() for s in Settings(WEBHOOK_SECRETS=secret).WEBHOOK_SECRETS] == [secret]
    # A fresh render (no live Secret to keep) draws a new one.
    assert generated_webhook_secret(render()) != secret


def test_a_rotation_value_verifies_with_the_old_and_the_new_secret(rendered_defaults: Rendered) -> None:
    old, new = generated_webhook_secret(rendered_defaults), generated_webhook_secret(render())
    secrets = [s.get_secret_value() for s in Settings(WEBHOOK_SECRETS=f"{new},{old}").WEBHOOK_SECRETS]
    body, message_id, timestamp = b'{"title": "disk full"}', "msg_rotation", int(time.time())
    headers = {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(message_id, timestamp, body, secrets),
    }
    for receiver_secret in (old, new):
        standardwebhooks.Webhook(receiver_secret).verify(body, headers)


def test_an_existing_webhook_secret_is_used_and_none_generated(rendered_delivery: Rendered) -> None:
    assert not [s for s in rendered_delivery.kind("Secret") if s["metadata"]["name"] == f"{RELEASE}-webhooks"]


def test_a_new_webhook_secret_rolls_the_pods() -> None:
    """With every other credential in an existing Secret, only the generated webhook secret differs
    between two renders: the pod templates' checksum/secrets must follow it."""
    others_existing = {
        component: {"auth": {"existingSecret": f"own-{component}"}} for component in ("api", "flower", "redis")
    }

    def checksum() -> str:
        deployment = render(others_existing).named("Deployment", f"{RELEASE}-worker-high")
        value: str = deployment["spec"]["template"]["metadata"]["annotations"]["checksum/secrets"]
        return value

    assert checksum() != checksum()


@pytest.mark.parametrize(
    ("smtp", "message"),
    [
        (
            {"username": "mailer"},
            'delivery.smtp: username "mailer" needs a password from a Secret',
        ),
        (
            {"existingSecret": "mail-credentials"},
            'delivery.smtp: existingSecret "mail-credentials" is set but username is empty',
        ),
        ({"port": 465}, "delivery.smtp: port 465 speaks TLS from the first byte; set security: tls"),
        ({"port": 587, "security": "tls"}, "delivery.smtp: port 587 expects starttls"),
    ],
)
def test_smtp_guards_refuse_with_their_message(smtp: dict[str, Any], message: str) -> None:
    error = render_error({"delivery": {"smtp": smtp}})
    assert "OFFLOAD CONFIGURATION ERRORS" in error
    assert message in error


def test_a_login_with_its_secret_and_a_relay_without_tls_render() -> None:
    login = render({"delivery": {"smtp": {"username": "mailer", "existingSecret": "mail-credentials"}}})
    (deployment,) = login.worker_set("Deployment", "default")
    assert secret_ref(container_env(deployment)["OFFLOAD_SMTP_PASSWORD"]) == ("mail-credentials", "smtp-password")
    relay = render({"delivery": {"smtp": {"host": "postfix.mail.svc", "port": 25, "security": "none"}}})
    (deployment,) = relay.worker_set("Deployment", "high")
    assert container_env(deployment)["OFFLOAD_SMTP_SECURITY"]["value"] == "none"


def test_egress_lets_workers_reach_smtp_and_webhooks_on_any_public_port(rendered: Rendered) -> None:
    """Workers reach SMTP (25/587/465) and webhook receivers (any port) on public addresses: the
    egress policies limit where, never which port (tests/chart/test_networkpolicies.py)."""
    public = [
        rule
        for policy in rendered.kind("NetworkPolicy")
        if "Egress" in policy["spec"]["policyTypes"]
        for rule in policy["spec"]["egress"]
        if any(peer.get("ipBlock", {}).get("cidr") == "0.0.0.0/0" for peer in rule.get("to", []))
    ]
    assert public
    assert all("ports" not in rule for rule in public)


def test_the_system_harness_mirrors_the_charts_delivery_environment(rendered_defaults: Rendered) -> None:
    def literal(env: dict[str, dict[str, Any]]) -> dict[str, str]:
        return {name: item["value"] for name, item in env.items() if name in DELIVERY_VARIABLES and "value" in item}

    (worker,) = rendered_defaults.worker_set("Deployment", "default")
    chart_worker = container_env(worker)
    harness_worker = worker_env("default", 2)
    assert {k: v for k, v in harness_worker.items() if k in DELIVERY_VARIABLES and k not in SECRET_VARIABLES} == (
        literal(chart_worker)
    )
    assert {k for k in harness_worker if k in SECRET_VARIABLES} == {k for k in chart_worker if k in SECRET_VARIABLES}
    api = container_env(rendered_defaults.named("Deployment", f"{RELEASE}-api"))
    assert {k: v for k, v in API_ENV.items() if k in DELIVERY_VARIABLES} == literal(api)
