"""The exceptions a job raises to say how its attempt ended; part of the job SDK."""

from __future__ import annotations


class TransientJobError(Exception):
    """A failure worth retrying with backoff: a timeout, a refused connection, an SMTP 4xx
    reply, an HTTP 429 or 5xx. ``retry_after`` is the delay the other side asked for, if any."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentJobError(Exception):
    """A failure no retry can fix (an SMTP 5xx reply, an HTTP 4xx): the job fails at once,
    with this message as its error."""


class JobCancelled(Exception):
    """Raised inside a task that was asked to stop through DELETE /v1/jobs/{id}."""
