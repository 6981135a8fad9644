"""A local SMTP sink for `make run`: accepts every message on 127.0.0.1 and prints it, so the
emails Offload sends show up in the terminal instead of anybody's inbox.

    python -m offload_dev.mail_sink --port 1025

Plain SMTP only (no TLS, no AUTH): point OFFLOAD_SMTP_HOST/PORT at it with
OFFLOAD_SMTP_SECURITY=none. Messages are kept in memory only, the last few of them.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from functools import partial

from aiosmtpd.smtp import SMTP, Envelope, Session

# Bounds: one message's size, how much of it is printed, and how many are remembered.
MAX_MESSAGE_BYTES = 10 * 1024 * 1024
PRINTED_LINES = 8
PRINTED_LINE_CHARS = 200
KEPT_MESSAGES = 100
# A client that goes quiet this long mid-conversation is dropped.
COMMAND_TIMEOUT_SECONDS = 30


@dataclass(frozen=True)
class SunkMail:
    received_at: datetime
    sender: str
    recipients: tuple[str, ...]
    subject: str
    text: str


def _text_of(message: EmailMessage) -> str:
    """The plain-text part, or the HTML one when there is no plain text."""
    body = message.get_body(preferencelist=("plain", "html"))
    if body is None:
        return ""
    try:
        content = body.get_content()
    except (LookupError, ValueError):  # an unknown charset or a broken encoding
        return "(the text part could not be decoded)"
    text = content if isinstance(content, str) else ""
    return text if body.get_content_subtype() == "plain" else f"(HTML only)\n{text}"


def format_mail(number: int, mail: SunkMail) -> str:
    """One log block: who, to whom, the subject and the first lines of the text."""
    lines = mail.text.strip().splitlines()
    shown = [f"  | {line[:PRINTED_LINE_CHARS]}".rstrip() for line in lines[:PRINTED_LINES]]
    if len(lines) > PRINTED_LINES:
        shown.append(f"  | ... {len(lines) - PRINTED_LINES} more lines")
    return "\n".join(
        [
            f"-- mail #{number} received {mail.received_at:%H:%M:%S} --",
            f"From:    {mail.sender}",
            f"To:      {', '.join(mail.recipients)}",
            f"Subject: {mail.subject}",
            *(shown or ["  (no text)"]),
        ]
    )


class PrintingHandler:
    """aiosmtpd handler: accepts every message, prints it and keeps the last KEPT_MESSAGES."""

    def __init__(self, kept: int = KEPT_MESSAGES) -> None:
        self.received: deque[SunkMail] = deque(maxlen=kept)
        self.count = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        message = message_from_bytes(content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        mail = SunkMail(
            received_at=datetime.now(),
            sender=str(message.get("From") or envelope.mail_from or "(none)"),
            recipients=tuple(str(recipient) for recipient in envelope.rcpt_tos),
            subject=str(message.get("Subject") or "(no subject)"),
            text=_text_of(message),
        )
        self.received.append(mail)
        self.count += 1
        print(format_mail(self.count, mail), flush=True)
        return "250 2.0.0 OK: printed by the Offload mail sink"


async def serve(port: int, host: str = "127.0.0.1") -> None:
    handler = PrintingHandler()
    loop = asyncio.get_running_loop()
    factory = partial(
        SMTP,
        handler,
        data_size_limit=MAX_MESSAGE_BYTES,
        hostname="offload-mail-sink",
        timeout=COMMAND_TIMEOUT_SECONDS,
    )
    server = await loop.create_server(factory, host=host, port=port)
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    print(f"mail sink listening on smtp://{host}:{port} (no TLS; messages are printed here)", flush=True)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m offload_dev.mail_sink", description="Print every email sent to 127.0.0.1:PORT."
    )
    parser.add_argument("--port", type=int, required=True, help="TCP port on 127.0.0.1")
    args = parser.parse_args(argv)
    if not 1 <= args.port <= 65535:
        parser.error(f"--port must be between 1 and 65535, not {args.port}")
    try:
        asyncio.run(serve(args.port))
    except OSError as exc:
        print(f"mail sink: cannot listen on 127.0.0.1:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
