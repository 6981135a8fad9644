"""The delivery client against real servers on loopback: it connects only to addresses it vetted
itself at connect time, never follows redirects, ignores proxy variables, and still verifies TLS
certificates for the URL's host name. Names under .test never exist in real DNS, so a request to
one that arrives proves the client connected to the address its resolver vetted."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import trustme

from offload_core.engines.outbound import OutboundPolicy, Resolver, UnsafeURL, system_resolve
from offload_dev.redis_server import free_port
from tests.receivers import ScriptedReply, WebhookReceiver


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver().start()
    try:
        yield server
    finally:
        server.stop()


def client_for(policy: OutboundPolicy, **kwargs: Any) -> httpx.Client:
    return policy.client(connect_timeout=2.0, read_timeout=2.0, **kwargs)


def resolver(answers: dict[str, Sequence[str]]) -> Resolver:
    def resolve(host: str, port: int) -> Sequence[str]:
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return answers[host]

    return resolve


def test_loopback_is_refused_at_submit_and_at_connect_time(receiver: WebhookReceiver) -> None:
    policy = OutboundPolicy([])
    url = receiver.url("/hook")
    with pytest.raises(UnsafeURL, match=r"127\.0\.0\.1 is a loopback address"):
        policy.check_url(url)
    with client_for(policy) as client, pytest.raises(UnsafeURL, match="OFFLOAD_OUTBOUND_ALLOWED_HOSTS"):
        client.post(url, content=b"{}")
    with client_for(policy) as client, pytest.raises(UnsafeURL), client.stream("POST", url, content=b"{}"):
        pass
    assert receiver.requests == []


@pytest.mark.parametrize(
    "path",
    [
        "http://2130706433:{port}/hook",
        "http://0x7f.1:{port}/hook",
        "http://127.1:{port}/hook",
        "http://[::1]:{port}/hook",
    ],
)
def test_odd_spellings_of_loopback_are_refused_at_connect_time(receiver: WebhookReceiver, path: str) -> None:
    with client_for(OutboundPolicy([])) as client, pytest.raises(UnsafeURL, match="loopback"):
        client.post(path.format(port=receiver.port), content=b"{}")
    assert receiver.requests == []


@pytest.mark.parametrize("entry", ["127.0.0.1", "127.0.0.0/8"])
def test_an_allow_listed_address_is_delivered_to(receiver: WebhookReceiver, entry: str) -> None:
    policy = OutboundPolicy([entry])
    url = receiver.url("/hook")
    policy.check_url(url)
    with client_for(policy) as client:
        response = client.post(url, content=b'{"n":1}')
    assert response.status_code == 200
    assert [r.body for r in receiver.received("/hook")] == [b'{"n":1}']


def test_localhost_is_refused_by_name_unless_listed(receiver: WebhookReceiver) -> None:
    url = f"http://localhost:{receiver.port}/hook"
    with client_for(OutboundPolicy([])) as client, pytest.raises(UnsafeURL, match="localhost resolves to"):
        client.post(url, content=b"{}")
    assert receiver.requests == []
    with client_for(OutboundPolicy(["localhost"])) as client:
        assert client.post(url, content=b"{}").status_code == 200
    assert receiver.received("/hook")[0].headers["host"] == f"localhost:{receiver.port}"


def test_redirects_come_back_as_responses(receiver: WebhookReceiver) -> None:
    receiver.script("/hook", ScriptedReply(302, {"Location": receiver.url("/elsewhere")}))
    with client_for(OutboundPolicy(["127.0.0.1"])) as client:
        response = client.post(receiver.url("/hook"), content=b"{}")
    assert response.status_code == 302
    assert response.headers["location"] == receiver.url("/elsewhere")
    assert len(receiver.received("/hook")) == 1
    assert receiver.received("/elsewhere") == []


def test_a_dns_answer_that_turns_private_after_submit_is_refused(receiver: WebhookReceiver) -> None:
    answers = iter([["93.184.215.14"], ["127.0.0.1"]])
    policy = OutboundPolicy([], resolve=lambda host, port: next(answers))
    url = f"http://rebind.test:{receiver.port}/hook"
    policy.check_url(url)  # public at submit time
    with client_for(policy) as client, pytest.raises(UnsafeURL, match=r"rebind\.test resolves to 127\.0\.0\.1"):
        client.post(url, content=b"{}")
    assert receiver.requests == []


def test_the_client_connects_to_the_address_it_vetted(receiver: WebhookReceiver) -> None:
    # 127.0.0.2 is loopback too, but nothing listens there: the client moves on to the next address.
    policy = OutboundPolicy(["127.0.0.0/8"], resolve=resolver({"hooks.test": ["127.0.0.2", "127.0.0.1"]}))
    with client_for(policy) as client:
        response = client.post(f"http://hooks.test:{receiver.port}/hook", content=b"{}")
    assert response.status_code == 200
    assert receiver.received("/hook")[0].headers["host"] == f"hooks.test:{receiver.port}"


def test_connection_failures_are_transport_errors_naming_the_host() -> None:
    closed_port = free_port()
    policy = OutboundPolicy(["127.0.0.1"], resolve=resolver({"down.test": ["127.0.0.1"]}))
    with client_for(policy) as client, pytest.raises(httpx.ConnectError, match=r"down\.test \(127\.0\.0\.1\)"):
        client.post(f"http://down.test:{closed_port}/hook", content=b"{}")
    with client_for(policy) as client, pytest.raises(httpx.ConnectError, match=r"gone\.test does not resolve"):
        client.post("http://gone.test/hook", content=b"{}")


def test_proxy_variables_are_ignored(receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = WebhookReceiver().start()
    try:
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{proxy.port}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        with client_for(OutboundPolicy(["127.0.0.1"])) as client:
            assert client.post(receiver.url("/hook"), content=b"{}").status_code == 200
        assert len(receiver.received("/hook")) == 1
        assert proxy.requests == []
    finally:
        proxy.stop()


def test_a_silent_server_is_a_read_timeout_within_the_bound() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # the kernel completes the handshake; nobody ever answers
        port = silent.getsockname()[1]
        policy = OutboundPolicy(["127.0.0.1"])
        started = time.monotonic()
        with policy.client(connect_timeout=1.0, read_timeout=0.3) as client, pytest.raises(httpx.ReadTimeout):
            client.post(f"http://127.0.0.1:{port}/hook", content=b"{}")
        assert time.monotonic() - started < 10  # the 0.3 s read timeout, not a hang


class TLSServer:
    """HTTPS on 127.0.0.1 with a certificate for one name; records the SNI names it was asked for."""

    def __init__(self, ca: trustme.CA, certificate_name: str) -> None:
        self.sni_names: list[str | None] = []
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(certificate_name).configure_cert(context)
        context.sni_callback = lambda sock, name, ctx: self.sni_names.append(name)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = self.headers.get("Host", "").encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def trusting(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.mark.parametrize(
    ("host", "allowed", "resolve"),
    [
        # Vetted by address: the name exists only for this client's resolver.
        ("hooks.test", ["127.0.0.1"], resolver({"hooks.test": ["127.0.0.1"]})),
        # Exempt by name, resolved by the system.
        ("localhost", ["localhost"], system_resolve),
    ],
)
def test_tls_verifies_the_host_name_while_connecting_to_the_vetted_address(
    ca: trustme.CA, host: str, allowed: list[str], resolve: Resolver
) -> None:
    server = TLSServer(ca, host)
    try:
        policy = OutboundPolicy(allowed, resolve=resolve)
        with client_for(policy, verify=trusting(ca)) as client:
            response = client.get(f"https://{host}:{server.port}/")
        assert response.status_code == 200
        assert response.text == f"{host}:{server.port}"
        assert server.sni_names == [host]
    finally:
        server.stop()


def test_tls_refuses_a_certificate_for_another_name(ca: trustme.CA) -> None:
    server = TLSServer(ca, "other.test")
    try:
        policy = OutboundPolicy(["127.0.0.1"], resolve=resolver({"hooks.test": ["127.0.0.1"]}))
        with (
            client_for(policy, verify=trusting(ca)) as client,
            pytest.raises(httpx.ConnectError, match="certificate verify failed"),
        ):
            client.get(f"https://hooks.test:{server.port}/")
    finally:
        server.stop()


def test_tls_trusts_public_cas_only_by_default(ca: trustme.CA) -> None:
    server = TLSServer(ca, "localhost")
    try:
        with (
            client_for(OutboundPolicy(["localhost"])) as client,
            pytest.raises(httpx.ConnectError, match="certificate verify failed"),
        ):
            client.get(f"https://localhost:{server.port}/")
    finally:
        server.stop()
