"""Webhook delivery signed per the Standard Webhooks specification (standardwebhooks.com).

Each delivery is an HTTP POST of a JSON body with three headers:
- ``webhook-id``: the same for every attempt of one delivery, so receivers can drop repeats;
- ``webhook-timestamp``: Unix seconds of this attempt;
- ``webhook-signature``: ``v1,<base64 HMAC-SHA256 of "id.timestamp.body">`` for each secret,
  space-separated, so a receiver still on the old secret verifies during a rotation.

Every attempt also carries the W3C ``traceparent`` of the trace the notification was submitted
in, whether or not spans are exported, so a receiver can continue that trace.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx
from opentelemetry import propagate

from offload_core.notifications import Attempt, Outcome
from offload_core.outbound import UnsafeURL
from offload_core.settings import WEBHOOK_SECRET_PREFIX

USER_AGENT = "Offload-Webhooks/1"
# Enough of an error answer to say what went wrong, never the whole body.
ERROR_BODY_BYTES = 300
# 408 Request Timeout, 425 Too Early and 429 Too Many Requests say "later", not "never".
RETRYABLE_4XX = frozenset({408, 425, 429})


def signature_header(message_id: str, timestamp: int, body: bytes, secrets: Sequence[str]) -> str:
    signed = f"{message_id}.{timestamp}.".encode() + body
    signatures = []
    for secret in secrets:
        key = base64.b64decode(secret.removeprefix(WEBHOOK_SECRET_PREFIX))
        digest = hmac.new(key, signed, hashlib.sha256).digest()
        signatures.append("v1," + base64.b64encode(digest).decode())
    return " ".join(signatures)


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds: either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def deliver(client: httpx.Client, url: str, *, message_id: str, body: bytes, secrets: Sequence[str]) -> Attempt:
    """One signed POST. 2xx is delivered; 408, 425, 429 and 5xx, timeouts and connection
    errors are worth retrying; any other answer (other 4xx, 3xx since redirects are not
    followed) and a URL that resolves to a refused address fail for good."""
    if not secrets:
        return Attempt(Outcome.FAILED, "no webhook signing secret configured (OFFLOAD_WEBHOOK_SECRETS)")
    timestamp = int(time.time())
    headers = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(message_id, timestamp, body, secrets),
    }
    propagate.inject(headers)  # traceparent (and tracestate); the HTTP client span replaces it when traced
    try:
        with client.stream("POST", url, content=body, headers=headers) as response:
            status = response.status_code
            excerpt = b""
            if not response.is_success:
                for chunk in response.iter_bytes():
                    excerpt += chunk
                    if len(excerpt) >= ERROR_BODY_BYTES:
                        break
            retry_after = retry_after_seconds(response.headers.get("retry-after"))
    except UnsafeURL as exc:
        return Attempt(Outcome.FAILED, f"refused: {exc}")
    except httpx.TimeoutException as exc:
        return Attempt(Outcome.RETRY, f"timed out ({type(exc).__name__})")
    except httpx.TransportError as exc:
        return Attempt(Outcome.RETRY, f"{type(exc).__name__}: {exc}")
    if 200 <= status < 300:
        return Attempt(Outcome.DELIVERED, http_status=status)
    reason = excerpt[:ERROR_BODY_BYTES].decode("utf-8", "replace").strip()
    error = f"HTTP {status}" + (f": {reason}" if reason else "")
    if status >= 500 or status in RETRYABLE_4XX:
        return Attempt(Outcome.RETRY, error, http_status=status, retry_after=retry_after)
    if 300 <= status < 400:
        error += " (redirects are not followed; use the final URL)"
    return Attempt(Outcome.FAILED, error, http_status=status)


def event_body(notification_id: str, message: dict[str, object], sent_at: datetime | None = None) -> bytes:
    """The JSON a receiver gets, in the {type, timestamp, data} shape Standard Webhooks suggests."""
    sent_at = sent_at or datetime.now(UTC)
    event = {
        "type": "notification",
        "timestamp": sent_at.isoformat().replace("+00:00", "Z"),
        "data": {"id": notification_id, **message},
    }
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()
