"""What the sync and async clients share: configuration, the retry policy, reading answers and
following an event stream. Neither does any I/O here."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any

import httpx

from offload_client import errors
from offload_client.models import JobEvent

URL_VARIABLE = "OFFLOAD_URL"
KEY_VARIABLE = "OFFLOAD_API_KEY"
USER_AGENT = "offload-client/0.1.0"
DEFAULT_TIMEOUT = 10.0
# An event stream is quiet between changes; the API sends a keep-alive comment every 15 s.
STREAM_READ_TIMEOUT = 60.0
RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})


@dataclass(frozen=True)
class Settings:
    url: str
    api_key: str | None
    timeout: httpx.Timeout
    retry: RetryPolicy

    def headers(self) -> dict[str, str]:
        headers = {"User-Agent": USER_AGENT}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    @property
    def stream_timeout(self) -> httpx.Timeout:
        return httpx.Timeout(
            connect=self.timeout.connect, read=STREAM_READ_TIMEOUT, write=self.timeout.write, pool=self.timeout.pool
        )


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of refused (429, 503, 502, 504) and failed (connection, timeout) requests. Safe for
    submissions because each carries an Idempotency-Key: a repeat returns the first job."""

    retries: int = 3
    backoff: float = 0.5  # first delay; doubles each time, with jitter
    max_delay: float = 30.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        backoff: float = self.backoff * 2**attempt * random.uniform(0.5, 1.0)
        # The server's Retry-After is a floor: it knows when it will take work again.
        return min(self.max_delay, max(backoff, retry_after or 0.0))

    def retryable(self, response: httpx.Response) -> bool:
        return response.status_code in RETRYABLE_STATUSES


def settings_from(
    url: str | None,
    api_key: str | None,
    timeout: float | httpx.Timeout,
    retries: int,
    backoff: float,
) -> Settings:
    url = url or os.environ.get(URL_VARIABLE)
    if not url:
        raise errors.ConfigurationError(
            f"Where is Offload? Pass url=... or set {URL_VARIABLE} (e.g. http://127.0.0.1:8000 for `make run`)."
        )
    if api_key is None:
        api_key = os.environ.get(KEY_VARIABLE) or None
    if retries < 0:
        raise errors.ConfigurationError(f"retries must be 0 or more, not {retries}")
    return Settings(
        url=url.rstrip("/"),
        api_key=api_key,
        timeout=timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout),
        retry=RetryPolicy(retries=retries, backoff=backoff),
    )


def unreachable(settings: Settings, exc: Exception) -> errors.TransportError:
    return errors.TransportError(
        f"Offload at {settings.url} did not answer ({type(exc).__name__}: {exc}) "
        f"after {settings.retry.retries + 1} attempts; is it running? ({URL_VARIABLE})"
    )


class SseParser:
    """Server-Sent Events from lines: one `JobEvent` per blank-line-terminated block with data."""

    def __init__(self) -> None:
        self._fields: dict[str, str] = {}
        self._data: list[str] = []

    def feed(self, line: str) -> JobEvent | None:
        if line.startswith(":"):
            return None  # a comment: the server's keep-alive
        if line:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                self._data.append(value)
            else:
                self._fields[name] = value
            return None
        if not self._data:
            self._fields = {}
            return None
        raw = "\n".join(self._data)
        event = JobEvent(event=self._fields.get("event", "message"), id=self._fields.get("id"), data=_json(raw))
        self._fields, self._data = {}, []
        return event


def _json(raw: str) -> dict[str, Any]:
    import json

    try:
        value = json.loads(raw)
    except ValueError:
        return {"raw": raw}
    return value if isinstance(value, dict) else {"value": value}


class EventFollower:
    """Follows one job's event stream across reconnections: after a `timeout` event or a broken
    connection it connects again with `Last-Event-ID`, so only newer states come."""

    def __init__(self, path: str, last_event_id: str | None, resume: bool, retry: RetryPolicy) -> None:
        self.path = path
        self.last_event_id = last_event_id
        self.resume = resume
        self.retry = retry
        self.failures = 0
        self.ended = False

    def headers(self) -> dict[str, str]:
        return {"Last-Event-ID": self.last_event_id} if self.last_event_id else {}

    def on_event(self, event: JobEvent) -> tuple[bool, bool]:
        """(whether the caller sees the event, whether this connection is done with)."""
        self.failures = 0
        if event.id:
            self.last_event_id = event.id
        if event.event == "gone":
            self.ended = True
            raise errors.NotFound(404, str(event.data.get("detail", "The job expired.")), "not_found")
        if event.event in ("timeout", "error"):
            if self.resume:
                return False, True  # the server closed this stream early: connect again
            self.ended = True
            return True, True
        if event.event == "end":
            self.ended = True
            return True, True
        return True, False

    def closed(self) -> None:
        """The connection ended without an `end` event."""
        if not self.resume:
            self.ended = True

    def broken(self, exc: Exception) -> float:
        """After a failed connection: how long to wait before the next one, or raise."""
        self.failures += 1
        if not self.resume or self.failures > self.retry.retries:
            raise errors.TransportError(f"The event stream {self.path} broke: {type(exc).__name__}: {exc}") from exc
        return self.retry.delay(self.failures - 1)

    def refused(self, response: httpx.Response) -> float:
        """After an error answer: how long to wait before trying again, or raise its error."""
        error = errors.error_from_response(response)
        self.failures += 1
        if not isinstance(error, errors.RetryableError) or self.failures > self.retry.retries:
            raise error
        return self.retry.delay(self.failures - 1, error.retry_after)


def filename_from(response: httpx.Response, fallback: str) -> str:
    """The attachment's name from Content-Disposition, without any directory part."""
    disposition = response.headers.get("Content-Disposition", "")
    for part in disposition.split(";"):
        name, _, value = part.strip().partition("=")
        if name.lower() == "filename" and value:
            return os.path.basename(value.strip('"')) or fallback
    return fallback
