"""The running API answers errors the way its /openapi.json says: every 4xx/5xx documented on
the operation that gives it, with the error model's body; and request headers too many or too
large are refused with 431 without harming the process."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import jsonschema  # type: ignore[import-untyped]
import pytest

from offload_dev.processes import Service
from offload_dev.redis_server import RedisServer
from tests.support import API_KEY, cluster

MAX_BODY = 1048576  # OFFLOAD_API_MAX_BODY_BYTES' default
Api = tuple[RedisServer, Service, httpx.Client]


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """Redis and the API only: no answer here needs a worker."""
    with cluster(tmp_path_factory.mktemp("openapi")) as own:
        service = own.start_api()
        yield own.server, service, own.client


@pytest.fixture(scope="module")
def openapi(api: Api) -> dict[str, Any]:
    response = api[2].get("/openapi.json")
    assert response.status_code == 200
    schema: dict[str, Any] = response.json()
    return schema


def _conforms(openapi: dict[str, Any], method: str, path: str, response: httpx.Response) -> None:
    """The answer's status is documented for the operation, and its body matches that schema."""
    documented = openapi["paths"][path][method.lower()]["responses"]
    status = str(response.status_code)
    assert status in documented, f"{method} {path} answered {status}, documented: {sorted(documented)}"
    assert response.headers["content-type"] == "application/json"
    schema = documented[status]["content"]["application/json"]["schema"]
    # The components travel along so the schema's $refs resolve.
    jsonschema.validate(response.json(), {**schema, "components": openapi["components"]})


def test_every_operation_documents_its_errors_with_the_error_model(openapi: dict[str, Any]) -> None:
    assert "HTTPValidationError" not in json.dumps(openapi)
    v1_operations = 0
    for path, operations in openapi["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            for status, response in responses.items():
                if status.startswith(("4", "5")):
                    assert response["content"]["application/json"]["schema"] == {
                        "$ref": "#/components/schemas/ErrorBody"
                    }, (method, path, status)
            if path.startswith("/v1/"):
                v1_operations += 1
                assert {"400", "401", "413", "431", "503"} <= set(responses), (method, path, sorted(responses))
                if operation.get("parameters") or operation.get("requestBody"):
                    assert "422" in responses, (method, path)
    assert v1_operations >= 8  # jobs, queues, dead letters and whatever was added since


def test_every_v1_operation_and_only_those_ask_for_the_api_key(openapi: dict[str, Any]) -> None:
    # Declared on the schema (offload_api.auth.document_api_key), not by a dependency per route:
    # generated clients send the key because of it.
    assert openapi["components"]["securitySchemes"] == {
        "HTTPBearer": {"type": "http", "scheme": "bearer", "description": "An API key from OFFLOAD_API_KEYS."}
    }
    for path, operations in openapi["paths"].items():
        for method, operation in operations.items():
            expected: list[dict[str, list[str]]] | None = [{"HTTPBearer": []}] if path.startswith("/v1/") else None
            assert operation.get("security") == expected, (method, path)


def test_error_answers_match_the_schema(api: Api, openapi: dict[str, Any]) -> None:
    _, service, client = api
    url: str = service.extra["url"]
    echo = "/v1/jobs/echo"
    json_body = {"Content-Type": "application/json"}
    wrong_key = {"Authorization": "Bearer not-a-valid-key"}
    cases: list[tuple[str, str, httpx.Response, int]] = [
        ("POST", echo, httpx.post(f"{url}{echo}", json={"message": "x"}, timeout=15), 401),
        (
            "GET",
            "/v1/queues",
            httpx.get(f"{url}/v1/queues", headers=wrong_key, timeout=15),
            401,
        ),
        ("GET", "/v1/jobs/{job_id}", client.get("/v1/jobs/no-such-job"), 404),
        ("DELETE", "/v1/dead-letters/{dead_letter_id}", client.delete("/v1/dead-letters/no-such-letter"), 404),
        ("POST", echo, client.post(echo, json={"message": 1, "bogus": True}), 422),
        ("POST", echo, client.post(echo, json={"message": "x"}, headers={"Idempotency-Key": "k" * 256}), 422),
        ("GET", "/v1/dead-letters", client.get("/v1/dead-letters", params={"limit": 0}), 422),
        ("POST", echo, client.post(echo, content=b'{"message": "\xff\xfe"}', headers=json_body), 400),
        ("POST", echo, client.post(echo, content=b"x" * (MAX_BODY + 1), headers=json_body), 413),
        ("POST", echo, client.post(echo, json={"message": "x"}, headers={"X-Big": "a" * 40_000}), 431),
    ]
    client.post(echo, json={"message": "first"}, headers={"Idempotency-Key": "reused-key"})
    reused = client.post(echo, json={"message": "second"}, headers={"Idempotency-Key": "reused-key"})
    cases.append(("POST", echo, reused, 422))
    for method, path, response, expected in cases:
        assert response.status_code == expected, (method, path, response.text)
        _conforms(openapi, method, path, response)
    invalid = cases[4][2].json()
    assert {e["field"] for e in invalid["errors"]} == {"body.message", "body.bogus"}
    assert "UTF-8" in cases[7][2].json()["detail"]  # says what to send instead


def test_redis_unavailable_answer_matches_the_schema(api: Api, openapi: dict[str, Any]) -> None:
    server, _, client = api
    server.stop()
    try:
        response = client.get("/v1/jobs/some-job")
        assert response.status_code == 503
        assert response.headers["retry-after"] == "5"
        _conforms(openapi, "GET", "/v1/jobs/{job_id}", response)
    finally:
        server.start()


def _raw_status(url: str, head: bytes, timeout: float = 30) -> int | str:
    """Sends a request head over one connection: the status answered, or how the connection ended."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        try:
            sock.sendall(head)
            answer = sock.recv(65536)
        except OSError as exc:  # the server may close before reading all of a huge head
            return type(exc).__name__
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else "closed"


def _peak_rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))


def test_oversized_request_headers_are_refused_with_431(api: Api) -> None:
    _, service, client = api
    url: str = service.extra["url"]
    host = urlsplit(url).netloc.encode()

    def request(headers: bytes) -> bytes:
        return b"GET /livez HTTP/1.1\r\nHost: " + host + b"\r\n" + headers + b"Connection: close\r\n\r\n"

    big = b"X-Big: " + b"a" * (256 * 1024) + b"\r\n"
    many = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 10) for i in range(200))
    within = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(90))  # 90 headers, ~10 KiB
    # Past the parser's 64 KiB cap h11 refuses the head while reading it (400); below it the
    # app's limit answers 431.
    assert _raw_status(url, request(big)) in {400, "closed", "ConnectionResetError", "BrokenPipeError"}
    assert _raw_status(url, request(many)) == 431
    assert _raw_status(url, request(within)) == 200
    refused = httpx.get(f"{url}/livez", headers={"X-Big": "a" * 40_000}, timeout=15)
    assert refused.status_code == 431
    assert refused.json()["code"] == "request_header_fields_too_large"
    assert "at most 100 headers and 32768 bytes" in refused.json()["detail"]
    assert refused.headers["connection"] == "close"
    # 32 MiB of one header, and of URL: refused once the parser has read 64 KiB of it, so the
    # process's peak memory does not grow with what was sent.
    peak = _peak_rss_kib(service.process.pid)
    huge = b"X-Huge: " + b"a" * (32 * 1024 * 1024) + b"\r\n"
    assert _raw_status(url, request(huge)) in {400, "closed", "ConnectionResetError", "BrokenPipeError"}
    long_url = b"GET /livez?" + b"a" * (32 * 1024 * 1024) + b" HTTP/1.1\r\nHost: " + host + b"\r\n\r\n"
    assert _raw_status(url, long_url) in {400, "closed", "ConnectionResetError", "BrokenPipeError"}
    assert _peak_rss_kib(service.process.pid) - peak < 16 * 1024
    assert service.alive()
    assert client.get("/livez").status_code == 200
    assert httpx.get(f"{url}/v1/queues", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=15).status_code == 200


def test_the_header_limits_are_exactly_100_headers_and_32_kib(api: Api) -> None:
    """Counted as the limit counts them: every header the request carries, names included, each
    as "name: value\\r\\n" on the wire."""
    _, service, _ = api
    url: str = service.extra["url"]
    host = urlsplit(url).netloc.encode()

    def request(headers: list[tuple[bytes, bytes]]) -> bytes:
        lines = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
        return b"GET /livez HTTP/1.1\r\n" + lines + b"\r\n"

    def fixed() -> list[tuple[bytes, bytes]]:
        return [(b"Host", host), (b"Connection", b"close")]

    def with_count(count: int) -> list[tuple[bytes, bytes]]:
        return fixed() + [(b"X-H%d" % i, b"v") for i in range(count - len(fixed()))]

    def with_size(size: int) -> list[tuple[bytes, bytes]]:
        used = sum(len(name) + len(value) + 4 for name, value in fixed())
        padding = size - used - len(b"X-Pad") - 4
        return [*fixed(), (b"X-Pad", b"a" * padding)]

    assert len(with_count(100)) == 100
    assert sum(len(n) + len(v) + 4 for n, v in with_size(32 * 1024)) == 32 * 1024
    assert _raw_status(url, request(with_count(100))) == 200
    assert _raw_status(url, request(with_count(101))) == 431
    assert _raw_status(url, request(with_size(32 * 1024))) == 200
    assert _raw_status(url, request(with_size(32 * 1024 + 1))) == 431


def test_metrics_are_served_on_their_own_port_not_the_apis(api: Api) -> None:
    _, service, client = api
    # Whatever routes the API's port (an Ingress with `/` as a Prefix) cannot reach /metrics.
    assert client.get("/metrics").status_code == 404
    assert httpx.get(f"{service.extra['url']}/metrics", timeout=15).status_code == 404
    scraped = httpx.get(service.extra["metrics_url"], timeout=15)
    assert scraped.status_code == 200
    assert "offload_queue_depth" in scraped.text
    assert "offload_http_requests_total" in scraped.text
