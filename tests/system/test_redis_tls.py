"""The API and a worker against a Redis that speaks TLS only, with certificates made here and the
CA bundle mounted into the containers as the chart mounts it from a Secret."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
import trustme

from offload_dev.polling import wait_for
from tests.system.harness import Topology, host_port, publish_on_loopback, report

TLS_DIR = "/etc/offload/redis-tls"
SENTINEL_MASTER = "offload"

Report = Callable[[str, object], None]


def make_certificates(directory: Path, names: list[str]) -> Path:
    """A CA made for this run (ca.crt) and a server certificate for ``names`` (server.crt,
    server.key), readable by the containers' users: a throwaway key may be world-readable."""
    ca = trustme.CA()
    server = ca.issue_cert(*names)
    directory.mkdir(parents=True)
    ca.cert_pem.write_to_path(str(directory / "ca.crt"))
    server.cert_chain_pems[0].write_to_path(str(directory / "server.crt"))
    server.private_key_pem.write_to_path(str(directory / "server.key"))
    directory.chmod(0o755)
    for path in directory.iterdir():
        path.chmod(0o644)
    return directory


def start_tls_redis(topo: Topology) -> int:
    """A TLS-only Redis (no plain port) with the network alias `redis`; returns its host port."""
    container = topo._container(topo.images["redis"], "redis", {}, read_only=False).with_command(
        "redis-server --protected-mode no --port 0 --tls-port 6379 "
        f"--tls-cert-file {TLS_DIR}/server.crt --tls-key-file {TLS_DIR}/server.key "
        f"--tls-ca-cert-file {TLS_DIR}/ca.crt --tls-auth-clients no --maxmemory-policy noeviction"
    )
    publish_on_loopback(container, 6379)
    topo.redis = topo._enter(container)
    return host_port(container, 6379)


def start_tls_sentinel(topo: Topology) -> None:
    """One sentinel that speaks TLS only and watches the TLS Redis by its name (so that the name
    it hands to clients is the one in the certificate)."""
    config = (
        f"port 0\\ntls-port 26379\\ntls-cert-file {TLS_DIR}/server.crt\\ntls-key-file {TLS_DIR}/server.key\\n"
        f"tls-ca-cert-file {TLS_DIR}/ca.crt\\ntls-auth-clients no\\ntls-replication yes\\nprotected-mode no\\n"
        "sentinel resolve-hostnames yes\\nsentinel announce-hostnames yes\\n"
        f"sentinel monitor {SENTINEL_MASTER} redis 6379 1\\n"
    )
    command = f"sh -c 'printf \"{config}\" > /tmp/sentinel.conf && exec redis-server /tmp/sentinel.conf --sentinel'"
    sentinel = topo._enter(topo._container(topo.images["redis"], "sentinel", {}, read_only=False).with_command(command))
    cli = ["redis-cli", "--tls", "--cacert", f"{TLS_DIR}/ca.crt", "-h", "sentinel", "-p", "26379"]

    def watching() -> bool:
        code, out = sentinel.get_wrapped_container().exec_run(
            [*cli, "sentinel", "get-master-addr-by-name", SENTINEL_MASTER]
        )
        return bool(code == 0 and out.decode().split()[:1] == ["redis"])

    wait_for(watching, 60, "the TLS sentinel to watch the TLS Redis", interval=0.2)


@pytest.mark.parametrize("through", ["url", "sentinel"])
def test_the_stack_runs_a_job_over_verified_tls_and_a_client_without_the_ca_is_refused(
    topo: Topology, tmp_path: Path, record_property: Report, through: str
) -> None:
    """The whole stack over TLS: straight to the URL's Redis, or to the primary a TLS sentinel
    names (OFFLOAD_REDIS_SENTINEL_TLS)."""
    certificates = make_certificates(tmp_path / "tls", ["redis", "sentinel", "localhost", "127.0.0.1"])
    topo.mounts[TLS_DIR] = str(certificates)
    port = start_tls_redis(topo)

    trusting = redis.Redis.from_url(
        f"rediss://localhost:{port}/0", ssl_ca_certs=str(certificates / "ca.crt"), ssl_cert_reqs="required"
    )

    def answers() -> bool:
        try:
            return bool(trusting.ping())
        except redis.ConnectionError:
            return False

    wait_for(answers, 60, "the TLS Redis to answer PING", interval=0.2)

    # What the chart renders for an external Redis with TLS and a CA Secret.
    env = {"OFFLOAD_REDIS_URL": "rediss://redis:6379/0", "OFFLOAD_REDIS_TLS_CA_FILE": f"{TLS_DIR}/ca.crt"}
    if through == "sentinel":
        start_tls_sentinel(topo)
        env |= {
            "OFFLOAD_REDIS_URL": "rediss://unused:6379/0",
            "OFFLOAD_REDIS_SENTINELS": "sentinel:26379",
            "OFFLOAD_REDIS_SENTINEL_MASTER": SENTINEL_MASTER,
            "OFFLOAD_REDIS_SENTINEL_TLS": "true",
        }
    topo.start_api(env)
    worker = topo.start_worker("worker", env=env)
    topo.wait_ready()

    [job_id] = topo.submit([{"sleep_ms": 10}])
    record = topo.wait_terminal([job_id], timeout=60)[job_id]
    # The job's error and the worker's last lines, so that a failure here says what the run met.
    assert record.status == "succeeded", (record.error, "\n".join(topo.logs(worker).splitlines()[-40:]))
    assert record.worker == f"worker@{worker}"
    assert trusting.exists(f"offload:job:{job_id}")

    # Verification is on: the system's CAs do not know this CA, so a client without it is
    # refused, as is a plain connection to the TLS port.
    untrusting = redis.Redis.from_url(f"rediss://localhost:{port}/0", ssl_cert_reqs="required")
    with pytest.raises(redis.ConnectionError) as refused:
        untrusting.ping()
    assert isinstance(refused.value.__cause__ or refused.value.__context__, ssl.SSLError) or "certificate" in str(
        refused.value
    ), refused.value
    plain = redis.Redis(port=port, socket_timeout=3)
    with pytest.raises(redis.ConnectionError):
        plain.ping()
    report(
        record_property,
        f"redis_tls_{through}",
        {"job": record.status, "untrusting_client": str(refused.value)[:120]},
    )
