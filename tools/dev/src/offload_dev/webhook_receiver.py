"""A local webhook receiver for `make run`: accepts POST on any path of 127.0.0.1, checks the
Standard Webhooks signature and prints each delivery.

    python -m offload_dev.webhook_receiver --port 8025 --secrets whsec_...

Answers 204 to a delivery signed with one of the secrets (several, comma-separated, as during a
rotation) and 401, saying why, to any other. Without --secrets it reads OFFLOAD_WEBHOOK_SECRETS,
the variable the services sign with, which also keeps the secret out of the process list.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from dataclasses import dataclass
from datetime import datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from offload_core.settings import webhook_secret_problem

# Bounds: a delivery's body, how much of it is printed, and how long a slow client may take.
MAX_BODY_BYTES = 1024 * 1024
# An oversized body up to this size is read and dropped, so the client gets its 413 rather than
# a connection reset; beyond it the connection is simply closed.
MAX_DISCARDED_BYTES = 16 * 1024 * 1024
PRINTED_BODY_CHARS = 4000
SOCKET_TIMEOUT_SECONDS = 10


@dataclass(frozen=True)
class Verification:
    valid: bool
    detail: str  # which secret matched, or why none did


def verify(webhooks: list[Webhook], body: bytes, headers: dict[str, str]) -> Verification:
    """Valid when the signature header holds a signature by any of the secrets."""
    reasons: list[str] = []
    for number, webhook in enumerate(webhooks, start=1):
        try:
            webhook.verify(body, headers, json_parse=False)
        except WebhookVerificationError as exc:
            reasons.append(str(exc))
        except UnicodeDecodeError:
            reasons.append("the body is not UTF-8")
        except ValueError:  # the library's parsing of the header: an entry without a comma, bad base64
            reasons.append("malformed webhook-signature header: expected 'v1,<base64>' entries separated by spaces")
        else:
            which = f"secret {number} of {len(webhooks)}" if len(webhooks) > 1 else "the secret"
            return Verification(True, f"signed with {which}")
    # One reason is enough: for the other secrets it differs at most in which one did not match.
    return Verification(False, reasons[0] if reasons else "no secret configured")


def _printable_body(body: bytes) -> str:
    try:
        text = json.dumps(json.loads(body), indent=2, ensure_ascii=False)
    except ValueError:
        text = "(not JSON) " + body.decode("utf-8", "replace")
    if len(text) > PRINTED_BODY_CHARS:
        text = text[:PRINTED_BODY_CHARS] + f"\n... {len(text) - PRINTED_BODY_CHARS} more characters"
    return text


class WebhookServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, secrets: list[str], host: str = "127.0.0.1") -> None:
        self.webhooks = [Webhook(secret) for secret in secrets]
        self.count = 0
        self.print_lock = threading.Lock()
        super().__init__((host, port), _Handler)

    def report(self, path: str, headers: dict[str, str], result: Verification, status: int, body: bytes) -> None:
        with self.print_lock:
            self.count += 1
            block = "\n".join(
                [
                    f"-- webhook #{self.count} received {datetime.now():%H:%M:%S} --",
                    f"POST {path}",
                    f"id:        {headers.get('webhook-id', '(no webhook-id header)')}",
                    f"signature: {'verified' if result.valid else 'INVALID'} ({result.detail})",
                    f"answer:    {status} {HTTPStatus(status).phrase}",
                    _printable_body(body),
                ]
            )
            print(block, flush=True)


class _Handler(BaseHTTPRequestHandler):
    server: WebhookServer
    timeout = SOCKET_TIMEOUT_SECONDS
    server_version = "offload-webhook-receiver"

    def do_POST(self) -> None:
        length_header = self.headers.get("Content-Length")
        if length_header is None or not length_header.isdigit():
            self._answer(HTTPStatus.LENGTH_REQUIRED, "send the body with a Content-Length header")
            return
        length = int(length_header)
        if length > MAX_BODY_BYTES:
            self._discard(length)
            self._answer(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the body may be at most {MAX_BODY_BYTES} bytes")
            return
        body = self.rfile.read(length)
        headers = {name.lower(): value for name, value in self.headers.items()}
        result = verify(self.server.webhooks, body, headers)
        status = HTTPStatus.NO_CONTENT if result.valid else HTTPStatus.UNAUTHORIZED
        self.server.report(self.path, headers, result, status, body)
        self._answer(status, None if result.valid else f"webhook signature not verified: {result.detail}")

    def _discard(self, length: int) -> None:
        if length > MAX_DISCARDED_BYTES:
            return
        while length > 0:
            chunk = self.rfile.read(min(length, 64 * 1024))
            if not chunk:
                return
            length -= len(chunk)

    def _not_post(self) -> None:
        self._answer(HTTPStatus.METHOD_NOT_ALLOWED, "this receiver takes webhook deliveries: POST only")

    do_GET = do_PUT = do_PATCH = do_DELETE = _not_post

    def _answer(self, status: HTTPStatus, message: str | None) -> None:
        payload = json.dumps({"detail": message}).encode() if message else b""
        self.send_response(status)
        if status == HTTPStatus.METHOD_NOT_ALLOWED:
            self.send_header("Allow", "POST")
        if payload:
            self.send_header("Content-Type", "application/json")
        if status != HTTPStatus.NO_CONTENT:
            self.send_header("Content-Length", str(len(payload)))
        # An unread oversized body would be taken for the next request: close instead.
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # report() prints one block per delivery; the access log would repeat it


def parse_secrets(value: str) -> list[str]:
    secrets = [secret.strip() for secret in value.split(",") if secret.strip()]
    if not secrets:
        raise argparse.ArgumentTypeError("name at least one secret (whsec_...)")
    for secret in secrets:
        if (problem := webhook_secret_problem(secret)) is not None:
            raise argparse.ArgumentTypeError(problem)
    return secrets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m offload_dev.webhook_receiver",
        description="Verify and print every webhook POSTed to 127.0.0.1:PORT.",
    )
    parser.add_argument("--port", type=int, required=True, help="TCP port on 127.0.0.1")
    parser.add_argument(
        "--secrets",
        type=parse_secrets,
        default=os.environ.get("OFFLOAD_WEBHOOK_SECRETS"),
        help="comma-separated whsec_... secrets (default: $OFFLOAD_WEBHOOK_SECRETS)",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.port <= 65535:
        parser.error(f"--port must be between 1 and 65535, not {args.port}")
    if not args.secrets:
        parser.error("give --secrets whsec_... or set OFFLOAD_WEBHOOK_SECRETS")
    try:
        server = WebhookServer(args.port, args.secrets)
    except OSError as exc:
        print(f"webhook receiver: cannot listen on 127.0.0.1:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1

    def stop(signum: int, frame: FrameType | None) -> None:
        # shutdown() waits for serve_forever() to return, so it cannot run on this thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"webhook receiver listening on http://127.0.0.1:{args.port}/ (any path)", flush=True)
    with server:
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
