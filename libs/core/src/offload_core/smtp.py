"""Outbound email with the standard library: building a message and sending it over SMTP.

The email job and the notifier's email channel both use this module. ``send`` sorts every
failure into retryable (``TransientJobError``: no connection, a timeout, a dropped
connection, an SMTP 4xx reply) or final (``PermanentJobError``: an SMTP 5xx reply, failed
authentication, a server that lacks what the settings require), with the server's reply in
the message.
"""

from __future__ import annotations

import contextlib
import re
import smtplib
import ssl
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from offload_core.job_errors import PermanentJobError, TransientJobError
from offload_core.settings import Settings

# Bodies are written as quoted-printable or base64 whenever they are not plain short ASCII, and
# headers as RFC 2047 words, so any server takes the message (no 8BITMIME needed). CRLF endings.
SMTP_POLICY = policy.SMTP.clone(cte_type="7bit")

# No maintained OpenTelemetry instrumentation of smtplib exists: send() opens its client span itself.
tracer = trace.get_tracer(__name__)

# Server replies end up in job results and errors: one reply, and one error, stay this short.
REPLY_MAX_CHARS = 500
ERROR_MAX_CHARS = 2_000

_MESSAGE_ID_KEY = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


@dataclass(frozen=True)
class SendReport:
    """What the server said about a message it accepted.

    ``refused`` maps each recipient the server turned down (while accepting others) to its
    reply; the message was sent to ``accepted`` and is not sent again to anyone."""

    message_id: str
    accepted: list[str]
    refused: dict[str, str] = field(default_factory=dict)
    reply: str = ""  # the server's answer to the message's data, e.g. "250 2.0.0 OK queued as 4F2A"

    def as_result(self) -> dict[str, object]:
        return asdict(self)


def message_id_for(key: str, sender: str) -> str:
    """A Message-ID that is the same for every attempt of one job, so a receiver can spot a
    duplicate delivery. Its domain is the sender's (spam filters distrust other domains)."""
    if not _MESSAGE_ID_KEY.fullmatch(key):
        raise ValueError(f"a Message-ID key holds 1 to 128 letters, digits, '.', '_' or '-', got {key!r}")
    _, at, domain = parseaddr(sender)[1].rpartition("@")
    if not at or not re.fullmatch(r"[A-Za-z0-9.-]+", domain):
        domain = "offload"
    return f"<{key}@{domain}>"


def build_message(
    settings: Settings,
    *,
    message_id: str,
    to: Sequence[str],
    subject: str,
    text: str,
    html: str | None = None,
    reply_to: str | None = None,
    date: datetime | None = None,
) -> EmailMessage:
    """A message from EMAIL_FROM: plain text, or multipart/alternative (text, then HTML) when
    ``html`` is given. ``message_id`` is a key that stays the same across the attempts of one
    delivery (the job id); the header becomes ``message_id_for(key, EMAIL_FROM)``.

    Header values with CR or LF are refused by the email package (ValueError), so no caller can
    inject headers."""
    if not to:
        raise ValueError("a message needs at least one recipient")
    message = EmailMessage(policy=SMTP_POLICY)
    message["From"] = settings.EMAIL_FROM
    message["To"] = ", ".join(to)
    message["Subject"] = subject
    message["Date"] = format_datetime(date or datetime.now(UTC))
    message["Message-ID"] = message_id_for(message_id, settings.EMAIL_FROM)
    if reply_to:
        message["Reply-To"] = reply_to
    message.set_content(text)
    if html is not None:
        message.add_alternative(html, subtype="html")
    return message


def send(settings: Settings, message: EmailMessage, recipients: Sequence[str]) -> SendReport:
    """Send ``message`` to ``recipients`` (the envelope; the To header is not read) from the
    address in its From header, through the server the SMTP_* settings name.

    Returns once the server accepted the message for at least one recipient; raises
    TransientJobError or PermanentJobError otherwise. Every network step is bounded by
    SMTP_TIMEOUT_SECONDS."""
    if not recipients:
        raise ValueError("send needs at least one recipient")
    sender = _envelope_sender(message)
    # Non-ASCII addresses can only travel as UTF-8 (RFC 6531), which the server must offer.
    international = not all(address.isascii() for address in (sender, *recipients))
    data = message.as_bytes(policy=SMTP_POLICY.clone(utf8=international))
    server = f"{settings.SMTP_HOST}:{settings.SMTP_PORT}"
    attributes: dict[str, str | int] = {
        "server.address": settings.SMTP_HOST,
        "server.port": settings.SMTP_PORT,
        "network.protocol.name": "smtp",
        "offload.smtp.recipients": len(recipients),
    }
    with tracer.start_as_current_span("smtp send", kind=SpanKind.CLIENT, attributes=attributes) as span:
        try:
            client = _connect(settings, server)
        except (OSError, smtplib.SMTPException) as exc:
            failure = _failure(exc, f"connecting to the SMTP server {server}", settings)
            span.set_status(Status(StatusCode.ERROR, str(failure)))
            raise failure from exc
        try:
            accepted, refused, reply = _transmit(client, sender, recipients, data, international, server)
        except (OSError, smtplib.SMTPException) as exc:
            failure = _failure(exc, f"sending through the SMTP server {server}", settings)
            span.set_status(Status(StatusCode.ERROR, str(failure)))
            raise failure from exc
        finally:
            _hang_up(client)
        span.set_attribute("offload.smtp.refused", len(refused))
    return SendReport(message_id=str(message["Message-ID"] or ""), accepted=accepted, refused=refused, reply=reply)


def _envelope_sender(message: EmailMessage) -> str:
    header = message["From"]
    addresses: Sequence[Address] = getattr(header, "addresses", None) or ()
    if len(addresses) != 1 or "@" not in addresses[0].addr_spec:
        raise PermanentJobError(f"the From header {str(header)!r} is not one address (OFFLOAD_EMAIL_FROM)")
    return addresses[0].addr_spec


def _connect(settings: Settings, server: str) -> smtplib.SMTP:
    """Connected, greeted, encrypted as SMTP_SECURITY says and logged in when a user is set."""
    timeout = settings.SMTP_TIMEOUT_SECONDS
    client: smtplib.SMTP
    if settings.SMTP_SECURITY == "tls":
        client = smtplib.SMTP_SSL(
            settings.SMTP_HOST, settings.SMTP_PORT, timeout=timeout, context=ssl.create_default_context()
        )
    else:
        client = smtplib.SMTP(settings.SMTP_HOST, settings.SMTP_PORT, timeout=timeout)
    try:
        client.ehlo_or_helo_if_needed()
        if settings.SMTP_SECURITY == "starttls":
            if not client.has_extn("starttls"):
                raise PermanentJobError(
                    f"the SMTP server {server} does not offer STARTTLS; use OFFLOAD_SMTP_SECURITY=tls for a server "
                    "that expects TLS from the first byte (port 465), or none for a local relay only"
                )
            # A default context verifies the certificate and host name; smtplib's own would not.
            client.starttls(context=ssl.create_default_context())
            client.ehlo_or_helo_if_needed()  # the session starts over once encrypted
        if settings.SMTP_USERNAME:
            _login(client, settings, server)
    except BaseException:
        client.close()
        raise
    return client


def _login(client: smtplib.SMTP, settings: Settings, server: str) -> None:
    if settings.SMTP_PASSWORD is None:
        raise PermanentJobError("OFFLOAD_SMTP_USERNAME is set but OFFLOAD_SMTP_PASSWORD is not")
    try:
        client.login(settings.SMTP_USERNAME or "", settings.SMTP_PASSWORD.get_secret_value())
    except smtplib.SMTPAuthenticationError as exc:
        reply = _reply_text(exc.smtp_code, exc.smtp_error)
        if 400 <= exc.smtp_code < 500:
            raise TransientJobError(f"SMTP authentication at {server} failed for now: {reply}") from exc
        raise PermanentJobError(
            f"SMTP authentication as {settings.SMTP_USERNAME!r} at {server} failed: {reply} "
            "(check OFFLOAD_SMTP_USERNAME and OFFLOAD_SMTP_PASSWORD)"
        ) from exc
    except smtplib.SMTPNotSupportedError as exc:
        raise PermanentJobError(
            f"the SMTP server {server} offers no authentication here ({exc}); many offer it only over TLS "
            "(OFFLOAD_SMTP_SECURITY), or unset OFFLOAD_SMTP_USERNAME"
        ) from exc
    except (smtplib.SMTPResponseException, smtplib.SMTPServerDisconnected):
        raise  # another reply, sorted by its code, or a lost connection, retried
    except smtplib.SMTPException as exc:  # "No suitable authentication method found."
        raise PermanentJobError(f"SMTP authentication at {server} impossible: {exc}") from exc


def _transmit(
    client: smtplib.SMTP, sender: str, recipients: Sequence[str], data: bytes, international: bool, server: str
) -> tuple[list[str], dict[str, str], str]:
    """MAIL, RCPT for each recipient, DATA, keeping each reply (smtplib's sendmail drops the
    final one, which often carries the server's queue id)."""
    options: list[str] = []
    if client.has_extn("size"):
        options.append(f"SIZE={len(data)}")  # an oversized message is refused before it is sent
    if international:
        if not client.has_extn("smtputf8"):
            raise PermanentJobError(
                f"an address is not ASCII, and the SMTP server {server} does not offer SMTPUTF8 to carry it"
            )
        options.append("SMTPUTF8")
        if client.has_extn("8bitmime"):
            options.append("BODY=8BITMIME")
    code, reply = client.mail(sender, options)
    if code != 250:
        raise _reply_failure(code, reply, f"answer to MAIL FROM from {server}")
    accepted: list[str] = []
    refused: dict[str, tuple[int, bytes]] = {}
    for recipient in recipients:
        code, reply = client.rcpt(recipient)
        if code in (250, 251):
            accepted.append(recipient)
        else:
            refused[recipient] = (code, reply)
    if not accepted:
        raise _all_refused(refused, server)
    code, reply = client.data(data)
    if code != 250:
        raise _reply_failure(code, reply, f"answer to DATA from {server}")
    return accepted, {r: _reply_text(c, m) for r, (c, m) in refused.items()}, _reply_text(code, reply)


def _hang_up(client: smtplib.SMTP) -> None:
    # QUIT without waiting for the answer: once the data is accepted, the caller must record
    # success at once (a crash in between sends the message again), and no answer to QUIT
    # changes the outcome.
    with contextlib.suppress(OSError, smtplib.SMTPException):
        client.putcmd("quit")
    with contextlib.suppress(OSError):
        client.close()


def _reply_text(code: int, reply: bytes | str) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    text = f"{code} {' '.join(text.split())}".strip()
    return text if len(text) <= REPLY_MAX_CHARS else text[: REPLY_MAX_CHARS - 1] + "…"


def _bounded(message: str) -> str:
    return message if len(message) <= ERROR_MAX_CHARS else message[: ERROR_MAX_CHARS - 1] + "…"


def _reply_failure(code: int, reply: bytes | str, context: str) -> Exception:
    """A reply other than success: 5xx is final, anything else (4xx) is worth a retry."""
    message = f"SMTP {_reply_text(code, reply)} ({context})"
    if code >= 500:
        return PermanentJobError(message)
    return TransientJobError(message)


def _all_refused(refused: dict[str, tuple[int, bytes]], server: str) -> Exception:
    replies = "; ".join(f"{recipient}: {_reply_text(code, reply)}" for recipient, (code, reply) in refused.items())
    message = _bounded(f"SMTP server {server} refused every recipient: {replies}")
    if all(code >= 500 for code, _ in refused.values()):
        return PermanentJobError(message)
    return TransientJobError(message)  # a 4xx recipient may be accepted next time


def _failure(exc: BaseException, doing: str, settings: Settings) -> Exception:
    """The job error for an exception raised by smtplib or the network."""
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return PermanentJobError(f"{doing}: {exc}")
    if isinstance(exc, smtplib.SMTPResponseException):  # a bad greeting, HELO or DATA reply
        return _reply_failure(exc.smtp_code, exc.smtp_error, doing)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return PermanentJobError(
            f"{doing}: its TLS certificate is not trusted ({exc.verify_message}); check OFFLOAD_SMTP_HOST"
        )
    if isinstance(exc, TimeoutError):
        return TransientJobError(f"{doing}: no answer within {settings.SMTP_TIMEOUT_SECONDS:g} s")
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return TransientJobError(f"{doing}: the connection was lost ({exc})")
    return TransientJobError(f"{doing}: {type(exc).__name__}: {exc}")
