"""What can go wrong talking to Offload, as exceptions a caller can catch by kind.

Every answer the API refuses becomes an `ApiError` subclass carrying the status, the API's
`detail` (what happened and what to do) and its stable `code`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx


class OffloadError(Exception):
    """Anything this client raises."""


class ConfigurationError(OffloadError):
    """No URL to talk to, or another setting that cannot work."""


class TransportError(OffloadError):
    """The API could not be reached (after the retries), or the connection broke."""


class WaitTimeout(OffloadError, TimeoutError):
    """`wait` gave up before the job ended; the job goes on."""

    def __init__(self, job_id: str, timeout: float, status: str) -> None:
        super().__init__(f"Job {job_id} is still {status} after {timeout:g} s; it goes on (wait again or cancel it).")
        self.job_id = job_id
        self.status = status


@dataclass(frozen=True)
class FieldError:
    field: str  # where, e.g. body.payload.amount or query.limit
    message: str


class ApiError(OffloadError):
    """The API answered with an error status."""

    def __init__(self, status_code: int, detail: str, code: str, response: httpx.Response | None = None) -> None:
        super().__init__(f"{status_code} {code}: {detail}")
        self.status_code = status_code
        self.detail = detail
        self.code = code
        self.response = response


class BadRequest(ApiError):
    """400, 413, 415, 431: a request the API could not take as sent."""


class Unauthorized(ApiError):
    """401 (no or a wrong API key) or 403."""


class NotFound(ApiError):
    """404: no such job, type, dead letter, image or report (or it expired)."""


class Conflict(ApiError):
    """409: the job already ended, an Idempotency-Key reused for another request, a result not ready."""


class ValidationFailed(ApiError):
    """422: the request named fields the API refuses; `errors` says which and why."""

    def __init__(
        self, status_code: int, detail: str, code: str, errors: list[FieldError], response: httpx.Response | None
    ) -> None:
        super().__init__(status_code, detail, code, response)
        self.errors = errors


class RetryableError(ApiError):
    """The API asked to come back later; `retry_after` is its hint in seconds, if it gave one."""

    def __init__(
        self, status_code: int, detail: str, code: str, retry_after: float | None, response: httpx.Response | None
    ) -> None:
        super().__init__(status_code, detail, code, response)
        self.retry_after = retry_after


class RateLimited(RetryableError):
    """429: the API key is over its rate limit (code ``rate_limited``), or a queue of the API is
    full. ``rate_limit_policy`` and ``rate_limit`` are the answer's RateLimit-Policy and RateLimit
    fields as sent (e.g. ``"default";q=60000;w=60`` and ``"default";r=0;t=12``), or None."""

    def __init__(
        self, status_code: int, detail: str, code: str, retry_after: float | None, response: httpx.Response | None
    ) -> None:
        super().__init__(status_code, detail, code, retry_after, response)
        headers = response.headers if response is not None else httpx.Headers()
        self.rate_limit_policy: str | None = headers.get("RateLimit-Policy")
        self.rate_limit: str | None = headers.get("RateLimit")


class Unavailable(RetryableError):
    """503 (Redis unavailable, shutting down), 502 or 504."""


class ServerError(ApiError):
    """500 and other server failures."""


def retry_after_seconds(response: httpx.Response) -> float | None:
    """The Retry-After header in seconds (the API sends seconds; a date is not honoured)."""
    value = response.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def error_from_response(response: httpx.Response) -> ApiError:
    """The exception for an error answer, from the API's JSON error body when there is one."""
    status = response.status_code
    body: dict[str, Any] = {}
    try:
        parsed = response.json()
        if isinstance(parsed, dict):
            body = parsed
    except ValueError:
        pass
    detail = str(body.get("detail") or response.text or response.reason_phrase)
    code = str(body.get("code") or "error")
    if status == 422:
        errors = [
            FieldError(str(e.get("field", "")), str(e.get("message", "")))
            for e in body.get("errors") or []
            if isinstance(e, dict)
        ]
        return ValidationFailed(status, detail, code, errors, response)
    if status == 429:
        return RateLimited(status, detail, code, retry_after_seconds(response), response)
    if status in (502, 503, 504):
        return Unavailable(status, detail, code, retry_after_seconds(response), response)
    kinds: dict[int, type[ApiError]] = {401: Unauthorized, 403: Unauthorized, 404: NotFound, 409: Conflict}
    if status in kinds:
        return kinds[status](status, detail, code, response)
    if 400 <= status < 500:
        return BadRequest(status, detail, code, response)
    return ServerError(status, detail, code, response)
