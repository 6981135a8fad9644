"""Real receivers for delivery tests, running in the test process on loopback: an SMTP server
(aiosmtpd) and an HTTP webhook receiver. Tests script their answers per recipient or path and
read back exactly what arrived."""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from offload_dev.redis_server import free_port


@dataclass
class ReceivedMail:
    sender: str
    recipients: list[str]
    message: EmailMessage


class ScriptedSmtpHandler:
    """Accepts every message unless a reply was scripted for one of its recipients: each
    scripted reply (e.g. "451 4.3.0 try later") answers one DATA command, then the server
    accepts again."""

    def __init__(self) -> None:
        self.received: list[ReceivedMail] = []
        self.attempts: defaultdict[str, int] = defaultdict(int)  # DATA commands seen per recipient
        # The Message-ID of every DATA command per recipient, whatever the reply to it was.
        self.message_ids: defaultdict[str, list[str]] = defaultdict(list)
        self._replies: defaultdict[str, deque[str]] = defaultdict(deque)
        self._lock = threading.Lock()

    def script(self, recipient: str, *replies: str) -> None:
        with self._lock:
            self._replies[recipient.lower()].extend(replies)

    def messages_to(self, recipient: str) -> list[ReceivedMail]:
        with self._lock:
            return [mail for mail in self.received if recipient.lower() in (r.lower() for r in mail.recipients)]

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self._lock:
            recipients = [str(r) for r in envelope.rcpt_tos]
            content = envelope.content if isinstance(envelope.content, bytes) else str(envelope.content).encode()
            message = message_from_bytes(content, policy=policy.default)
            assert isinstance(message, EmailMessage)
            for recipient in recipients:
                self.attempts[recipient.lower()] += 1
                self.message_ids[recipient.lower()].append(str(message["Message-ID"]))
            for recipient in recipients:
                queue = self._replies.get(recipient.lower())
                if queue:
                    return queue.popleft()
            self.received.append(ReceivedMail(str(envelope.mail_from), recipients, message))
        return "250 2.0.0 OK queued"


@contextmanager
def smtp_controller(handler: object, **options: Any) -> Iterator[int]:
    """An aiosmtpd server on 127.0.0.1 for ``handler``; yields its port. aiosmtpd needs the port
    before it binds, and one found free may be taken meanwhile: then another one is tried."""
    for attempt in range(5):
        port = free_port()
        controller = Controller(handler, hostname="127.0.0.1", port=port, **options)
        try:
            controller.start()
            break
        except OSError:
            if attempt == 4:
                raise
    try:
        yield port
    finally:
        controller.stop()


@contextmanager
def smtp_server() -> Iterator[tuple[ScriptedSmtpHandler, int]]:
    handler = ScriptedSmtpHandler()
    with smtp_controller(handler) as port:
        yield handler, port


@dataclass
class ReceivedRequest:
    path: str
    headers: dict[str, str]
    body: bytes
    received_at: float  # time.monotonic() when it arrived


@dataclass
class ScriptedReply:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    delay_seconds: float = 0.0


class WebhookReceiver:
    """An HTTP server on 127.0.0.1 that records every request and answers 200 unless a reply
    was scripted for its path (each scripted reply answers one request, in order)."""

    def __init__(self) -> None:
        self.requests: list[ReceivedRequest] = []
        self._replies: defaultdict[str, deque[ScriptedReply]] = defaultdict(deque)
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with receiver._lock:
                    receiver.requests.append(
                        ReceivedRequest(
                            self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.monotonic()
                        )
                    )
                    queue = receiver._replies.get(self.path)
                    reply = queue.popleft() if queue else ScriptedReply(200)
                if reply.delay_seconds:
                    threading.Event().wait(reply.delay_seconds)
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def script(self, path: str, *replies: ScriptedReply) -> None:
        with self._lock:
            self._replies[path].extend(replies)

    def received(self, path: str) -> list[ReceivedRequest]:
        with self._lock:
            return [request for request in self.requests if request.path == path]

    def start(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
