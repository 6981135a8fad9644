"""NetworkPolicies select the right pods and let in only who should get in."""

from __future__ import annotations

import ipaddress
from typing import Any

from tests.chart.render import RELEASE, Manifest, Rendered, default_values, render, selects

INGRESS_ON = {"api": {"ingress": {"enabled": True}}, "flower": {"ingress": {"enabled": True}}}


def pod_labels(rendered: Rendered, component: str) -> list[dict[str, str]]:
    return [
        workload["spec"]["template"]["metadata"]["labels"]
        for workload in rendered.objects
        if workload["kind"] in {"Deployment", "StatefulSet"}
        and workload["metadata"]["labels"]["app.kubernetes.io/component"] == component
    ]


def policies_for(rendered: Rendered, labels: dict[str, str]) -> list[Manifest]:
    return [p for p in rendered.kind("NetworkPolicy") if selects(p["spec"]["podSelector"], labels)]


def allowed_peers(policies: list[Manifest], port: str | None = None) -> list[dict[str, Any]]:
    """The peers the policies admit, to any port or to the named port only."""
    return [
        peer
        for policy in policies
        for rule in policy["spec"].get("ingress", [])
        if port is None or port in [p["port"] for p in rule.get("ports", [])]
        for peer in rule["from"]
    ]


def default_scrapers() -> list[dict[str, Any]]:
    scrapers: list[dict[str, Any]] = default_values()["metrics"]["scrapeFrom"]
    return scrapers


def test_default_deny_covers_every_pod_of_the_release(rendered_defaults: Rendered) -> None:
    deny = rendered_defaults.named("NetworkPolicy", f"{RELEASE}-default-deny")
    assert deny["spec"]["policyTypes"] == ["Ingress"]
    assert deny["spec"]["ingress"] == []
    for workload in rendered_defaults.objects:
        if workload["kind"] in {"Deployment", "StatefulSet"}:
            assert selects(deny["spec"]["podSelector"], workload["spec"]["template"]["metadata"]["labels"])


def test_redis_admits_only_pods_of_this_release(rendered_defaults: Rendered) -> None:
    (redis_labels,) = pod_labels(rendered_defaults, "redis")
    policy = rendered_defaults.named("NetworkPolicy", f"{RELEASE}-redis")
    assert selects(policy["spec"]["podSelector"], redis_labels)
    for component in ("api", "worker", "flower"):
        for labels in pod_labels(rendered_defaults, component):
            assert not selects(policy["spec"]["podSelector"], labels), component
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/instance": RELEASE}}}]
    assert rule["ports"] == [{"port": "redis", "protocol": "TCP"}]
    other_release = {"app.kubernetes.io/instance": "someone-else", "app.kubernetes.io/name": "offload"}
    assert not selects(rule["from"][0]["podSelector"], other_release)


def test_keda_operator_may_read_the_queues(rendered_defaults: Rendered) -> None:
    policy = rendered_defaults.named("NetworkPolicy", f"{RELEASE}-redis-keda")
    (rule,) = policy["spec"]["ingress"]
    (peer,) = rule["from"]
    assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "keda"}
    assert peer["podSelector"]["matchLabels"] == {"app": "keda-operator"}
    names = {p["metadata"]["name"] for p in render({"keda": {"enabled": False}}).kind("NetworkPolicy")}
    assert f"{RELEASE}-redis-keda" not in names


def test_api_flower_and_workers_closed_without_ingress_but_to_the_scrapers(rendered_defaults: Rendered) -> None:
    (flower,) = pod_labels(rendered_defaults, "flower")
    assert allowed_peers(policies_for(rendered_defaults, flower)) == []
    (api,) = pod_labels(rendered_defaults, "api")
    assert allowed_peers(policies_for(rendered_defaults, api)) == default_scrapers()
    for labels in pod_labels(rendered_defaults, "worker"):
        assert allowed_peers(policies_for(rendered_defaults, labels)) == default_scrapers()
        assert allowed_peers(policies_for(rendered_defaults, labels), "metrics") == default_scrapers()


def test_api_and_flower_open_to_the_ingress_controller_when_their_ingress_is_on() -> None:
    rendered = render(INGRESS_ON)
    controller = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}
    (flower,) = pod_labels(rendered, "flower")
    assert allowed_peers(policies_for(rendered, flower)) == [controller]
    (api,) = pod_labels(rendered, "api")
    assert allowed_peers(policies_for(rendered, api)) == [controller, *default_scrapers()]
    for labels in pod_labels(rendered, "worker"):
        assert allowed_peers(policies_for(rendered, labels)) == default_scrapers()


def test_flower_ingress_never_routes_metrics_or_healthcheck() -> None:
    (ingress,) = [i for i in render(INGRESS_ON).kind("Ingress") if "flower" in i["metadata"]["name"]]
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            for private in ("/metrics", "/healthcheck"):
                if path["pathType"] == "Exact":
                    assert path["path"] != private
                else:
                    prefix = path["path"].rstrip("/")
                    assert private != prefix, path
                    assert not private.startswith(prefix + "/"), path


def test_metrics_ports_open_only_to_the_configured_scrapers() -> None:
    scrapers = [{"namespaceSelector": {"matchLabels": {"team": "observability"}}, "podSelector": {}}]
    rendered = render({"metrics": {"scrapeFrom": scrapers}})
    for labels in pod_labels(rendered, "worker"):
        policies = policies_for(rendered, labels)
        assert allowed_peers(policies, "metrics") == scrapers
        assert allowed_peers(policies) == scrapers  # nothing else reaches a worker
    (api,) = pod_labels(rendered, "api")
    assert allowed_peers(policies_for(rendered, api), "metrics") == scrapers
    assert not [peer for peer in allowed_peers(policies_for(rendered, api), "http") if peer in scrapers]
    (redis,) = pod_labels(rendered, "redis")
    assert not [peer for peer in allowed_peers(policies_for(rendered, redis)) if peer in scrapers]
    (flower,) = pod_labels(rendered, "flower")
    assert allowed_peers(policies_for(rendered, flower)) == []


def test_no_scrapers_no_metrics_policies() -> None:
    rendered = render({"metrics": {"scrapeFrom": []}})
    assert not [p for p in rendered.kind("NetworkPolicy") if "metrics" in p["metadata"]["name"]]
    for component in ("api", "worker"):
        for labels in pod_labels(rendered, component):
            assert allowed_peers(policies_for(rendered, labels)) == [], component


def test_no_ingress_routes_a_metrics_port() -> None:
    rendered = render(INGRESS_ON)
    services = {service["metadata"]["name"]: service for service in rendered.kind("Service")}
    for ingress in rendered.kind("Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                wanted = backend["port"]
                (port,) = [
                    p
                    for p in services[backend["name"]]["spec"]["ports"]
                    if p["name"] == wanted.get("name") or p["port"] == wanted.get("number")
                ]
                assert port["targetPort"] != "metrics", ingress["metadata"]["name"]
    # The API's Ingress routes `/` to the Service's http port, which reaches the container's http
    # port; /metrics is served on the container's `metrics` port, which only the ServiceMonitor uses.
    (api_ingress,) = [i for i in rendered.kind("Ingress") if i["metadata"]["name"] == f"{RELEASE}-api"]
    routed = [
        (path["path"], path["pathType"], path["backend"]["service"]["name"], path["backend"]["service"]["port"])
        for rule in api_ingress["spec"]["rules"]
        for path in rule["http"]["paths"]
    ]
    assert routed == [("/", "Prefix", f"{RELEASE}-api", {"name": "http"})]
    api_service = services[f"{RELEASE}-api"]
    (http,) = [p for p in api_service["spec"]["ports"] if p["name"] == "http"]
    api = rendered.named("Deployment", f"{RELEASE}-api")
    (container,) = api["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert http["targetPort"] == "http"
    assert str(ports["http"]) == env["OFFLOAD_API_PORT"]
    assert str(ports["metrics"]) == env["OFFLOAD_API_METRICS_PORT"] != env["OFFLOAD_API_PORT"]
    # Worker pods, which serve only metrics, have no Service an Ingress could route to.
    for service in rendered.kind("Service"):
        assert service["spec"]["selector"].get("app.kubernetes.io/component") != "worker"


def egress_rules(rendered: Rendered, labels: dict[str, str]) -> list[dict[str, Any]]:
    return [
        rule
        for policy in policies_for(rendered, labels)
        if "Egress" in policy["spec"]["policyTypes"]
        for rule in policy["spec"].get("egress", [])
    ]


def reachable(rules: list[dict[str, Any]], address: str) -> bool:
    """Whether an ipBlock of the rules admits this address (any port)."""
    ip = ipaddress.ip_address(address)
    for rule in rules:
        for peer in rule.get("to", []):
            block = peer.get("ipBlock")
            inside = bool(block) and ip in ipaddress.ip_network(block["cidr"])
            if inside and not any(ip in ipaddress.ip_network(cidr) for cidr in block.get("except", [])):
                return True
    return False


def test_pods_that_make_outbound_requests_reach_dns_redis_and_the_public_internet_only() -> None:
    rendered = render()
    for component in ("api", "worker"):
        for labels in pod_labels(rendered, component):
            rules = egress_rules(rendered, labels)
            assert rules, f"no egress policy selects the {component} pods"
            dns = [rule for rule in rules if "to" not in rule]
            assert dns
            assert {(p["port"], p["protocol"]) for p in dns[0]["ports"]} == {(53, "UDP"), (53, "TCP")}
            redis_peers = [peer for rule in rules for peer in rule.get("to", []) if "podSelector" in peer]
            (redis_labels,) = pod_labels(rendered, "redis")
            assert any(selects(peer["podSelector"], redis_labels) for peer in redis_peers)
            for public in ("93.184.216.34", "2606:2800:220:1::"):
                assert reachable(rules, public), public
            for private in ("10.1.2.3", "172.20.0.1", "192.168.1.1", "169.254.169.254", "127.0.0.1", "100.64.0.1"):
                assert not reachable(rules, private), private
            for private in ("fd00:ec2::254", "fe80::1", "::1"):
                assert not reachable(rules, private), private
    # Flower and Redis make no outbound requests to users' addresses: no egress policy for them.
    for component in ("flower", "redis"):
        for labels in pod_labels(rendered, component):
            assert not egress_rules(rendered, labels)


def test_configured_peers_are_reachable_and_egress_can_be_turned_off() -> None:
    relay = {"ipBlock": {"cidr": "10.0.5.25/32"}}
    rendered = render({"networkPolicy": {"egress": {"extraTo": [relay]}}})
    (labels, *_) = pod_labels(rendered, "worker")
    rules = egress_rules(rendered, labels)
    assert reachable(rules, "10.0.5.25")
    assert not reachable(rules, "10.0.5.26")
    off = render({"networkPolicy": {"egress": {"enabled": False}}})
    assert not [p for p in off.kind("NetworkPolicy") if "Egress" in p["spec"]["policyTypes"]]
