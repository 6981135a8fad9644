"""The base class of every Offload task: it keeps the job store in step with the run."""

from __future__ import annotations

import logging
import random
import time
from functools import cached_property
from typing import Any

import redis
from celery import Task
from celery.exceptions import Ignore, Reject, SoftTimeLimitExceeded, TimeLimitExceeded
from kombu.exceptions import OperationalError
from opentelemetry import trace
from opentelemetry.trace import Span

from offload_core import telemetry
from offload_core import worker_metrics as metrics
from offload_core.jobs import JobStore, StartOutcome
from offload_core.queue_state import ENQUEUED_AT_HEADER
from offload_core.settings import get_settings
from offload_core.worker_metrics import RunOutcome

logger = logging.getLogger(__name__)


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


def retry_countdown(retries: int, base: float, cap: float) -> float:
    """Exponential backoff with jitter: half the capped delay fixed, half random."""
    delay = min(cap, base * 2.0**retries)
    return delay / 2 + random.uniform(0, delay / 2)


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, PermanentJobError):
        return str(exc)
    if isinstance(exc, SoftTimeLimitExceeded | TimeLimitExceeded):
        settings = get_settings()
        limit = (
            settings.TASK_SOFT_TIME_LIMIT_SECONDS
            if isinstance(exc, SoftTimeLimitExceeded)
            else settings.TASK_TIME_LIMIT_SECONDS
        )
        return f"timed out after {limit} s"
    return f"{type(exc).__name__}: {exc}"


class JobTask(Task[Any, Any]):
    """Runs a task as one attempt of a job: skips cancelled and finished jobs, records
    progress, retries transient failures with backoff, and records the outcome."""

    acks_late = True
    reject_on_worker_lost = True

    @cached_property
    def store(self) -> JobStore:
        return JobStore.from_settings(get_settings())

    @property
    def job_id(self) -> str:
        """The job's id is the Celery task id the API chose at submission."""
        return str(self.request.id)

    @property
    def max_retries(self) -> int:  # type: ignore[override]
        return get_settings().TASK_MAX_RETRIES

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.request.called_directly:
            return super().__call__(*args, **kwargs)
        try:
            return self._run_job(args, kwargs)
        except (redis.RedisError, OperationalError) as exc:
            # Redis is away: the outcome cannot be recorded (nor a retry published), so the
            # message must not be acknowledged. Requeued, or restored after the visibility timeout
            # if Redis cannot take it back now, the job runs again once Redis returns.
            logger.warning("job %s handed back: Redis unavailable (%s)", self.job_id, exc)
            raise Reject(exc, requeue=True) from exc

    def _run_job(self, args: Any, kwargs: Any) -> Any:
        job_id = self.job_id
        queue = (self.request.delivery_info or {}).get("routing_key") or ""
        attempt = self.request.retries + 1
        span = trace.get_current_span()  # the run span the Celery instrumentation opened
        span.set_attributes({telemetry.JOB_ID: job_id, telemetry.TASK: self.name, telemetry.QUEUE: queue})
        span.set_attribute(telemetry.ATTEMPT, attempt)
        start = self.store.start(job_id, task=self.name, queue=queue, worker=self.request.hostname or "")
        if start is StartOutcome.POISONED:
            self._fail_poisoned(job_id, queue, kwargs)
            span.set_attribute(telemetry.OUTCOME, "failed: runs lost")
            # Acknowledged without a result: a chain does not go on past a failed step.
            raise Ignore()
        if start is not StartOutcome.RUN:
            span.set_attribute(telemetry.OUTCOME, f"skipped: {start.value}")
            logger.info("job %s not run: %s", job_id, start.value)
            return None
        return self._attempt(job_id, queue, attempt, span, args, kwargs)

    def _fail_poisoned(self, job_id: str, queue: str, kwargs: Any) -> None:
        lost = self.store.max_lost_runs
        error = (
            f"its run was lost {lost} times without an outcome (the worker process was killed, ran out of "
            "memory or crashed, or the worker shut down first); not delivered again (OFFLOAD_TASK_MAX_LOST_RUNS)"
        )
        logger.error("job %s (%s) failed: %s", job_id, self.name, error)
        payload = self.dead_letter_payload(job_id, dict(kwargs))
        failed_on = self.store.fail(job_id, error, task=self.name, queue=queue, payload=payload)
        metrics.JOBS_FAILED.labels(self.name, failed_on).inc()

    def _attempt(self, job_id: str, queue: str, attempt: int, span: Span, args: Any, kwargs: Any) -> Any:
        metrics.JOBS_STARTED.labels(self.name, queue).inc()
        enqueued_at = getattr(self.request, ENQUEUED_AT_HEADER, None)
        if attempt == 1 and isinstance(enqueued_at, int | float):
            metrics.QUEUE_WAIT_SECONDS.labels(self.name, queue).observe(max(0.0, time.time() - enqueued_at))
        outcome = RunOutcome.FAILED  # unless a branch below ends otherwise
        started = time.perf_counter()
        try:
            # Not super().__call__: that pushes a fresh request and would hide self.request.id.
            result = self.run(*args, **kwargs)
            self.store.succeed(job_id, result)
            outcome = RunOutcome.SUCCEEDED
            return result
        except JobCancelled:
            self.store.mark_cancelled(job_id)
            outcome = RunOutcome.CANCELLED
            logger.info("job %s cancelled while running", job_id)
            return None
        except TransientJobError as exc:
            if self.request.retries >= self.max_retries:
                raise  # on_failure records the final error
            countdown = self.retry_delay(exc)
            self.store.mark_retrying(
                job_id, describe_error(exc), countdown, kwargs=kwargs, retries=self.request.retries + 1
            )
            outcome = RunOutcome.RETRIED
            raise self.retry(exc=exc, countdown=countdown, max_retries=self.max_retries) from exc
        finally:
            metrics.RUN_SECONDS.labels(self.name, queue).observe(time.perf_counter() - started)
            if outcome in metrics.OUTCOME_COUNTERS:  # failures are counted by on_failure
                metrics.OUTCOME_COUNTERS[outcome].labels(self.name, queue).inc()
            span.set_attribute(telemetry.OUTCOME, outcome.value)

    def retry_delay(self, exc: TransientJobError) -> float:
        """Seconds until the next attempt: exponential backoff, or the other side's Retry-After
        if longer, within the cap the visibility timeout allows."""
        settings = get_settings()
        countdown = retry_countdown(
            self.request.retries, settings.RETRY_BACKOFF_SECONDS, settings.RETRY_BACKOFF_MAX_SECONDS
        )
        if exc.retry_after is not None:
            countdown = max(countdown, exc.retry_after)
        return min(countdown, settings.RETRY_BACKOFF_MAX_SECONDS)

    def dead_letter_payload(self, task_id: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        """What a replay of this failed job should submit; the original arguments by default."""
        return kwargs

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        # Failed for good: the job store records the dead letter (payload, error, attempts) in
        # the same step. Also called in the worker's main process when the hard time limit
        # kills a run; there is no request there, so the queue comes from the job's record.
        delivered_on = (self.request.delivery_info or {}).get("routing_key") or ""
        payload = self.dead_letter_payload(task_id, kwargs)
        queue = self.store.fail(task_id, describe_error(exc), task=self.name, queue=delivered_on, payload=payload)
        metrics.JOBS_FAILED.labels(self.name, queue).inc()

    def report_progress(self, percent: int, message: str = "") -> None:
        self.store.progress(self.job_id, percent, message)

    def raise_if_cancelled(self) -> None:
        """Call between units of work; a cancelled job stops at the next call."""
        if self.store.cancel_requested(self.job_id):
            raise JobCancelled(self.job_id)
