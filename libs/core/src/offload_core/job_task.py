"""The base class of every Offload task: it keeps the job store in step with the run."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterable
from functools import cached_property
from typing import Any

import redis
from celery import Celery, Task
from celery.exceptions import Reject, SoftTimeLimitExceeded, TimeLimitExceeded
from kombu.exceptions import OperationalError
from opentelemetry import trace
from opentelemetry.trace import Span
from pydantic import TypeAdapter, ValidationError

from offload_core import telemetry
from offload_core import worker_metrics as metrics
from offload_core.job_errors import JobCancelled, PermanentJobError, TransientJobError
from offload_core.jobs import JobStore, StartOutcome
from offload_core.outbound import OutboundPolicy, UnsafeURL
from offload_core.queue_state import ENQUEUED_AT_HEADER
from offload_core.sdk import JobContext, JobType
from offload_core.settings import Settings, get_settings
from offload_core.worker_metrics import RunOutcome

logger = logging.getLogger(__name__)


def retry_countdown(retries: int, base: float, cap: float) -> float:
    """Exponential backoff with jitter: half the capped delay fixed, half random."""
    delay = min(cap, base * 2.0**retries)
    return delay / 2 + random.uniform(0, delay / 2)


def describe_error(exc: BaseException, *, soft_limit: int | None = None, hard_limit: int | None = None) -> str:
    """A job's error as its record shows it; time limits named in seconds (the task's own, if given)."""
    if isinstance(exc, PermanentJobError):
        return str(exc)
    if isinstance(exc, SoftTimeLimitExceeded | TimeLimitExceeded):
        settings = get_settings()
        if isinstance(exc, SoftTimeLimitExceeded):
            return f"timed out after {soft_limit or settings.TASK_SOFT_TIME_LIMIT_SECONDS} s"
        return f"timed out after {hard_limit or settings.TASK_TIME_LIMIT_SECONDS} s"
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
        if start is not StartOutcome.RUN:
            span.set_attribute(telemetry.OUTCOME, f"skipped: {start.value}")
            logger.info("job %s not run: %s", job_id, start.value)
            return None
        return self._attempt(job_id, queue, attempt, span, args, kwargs)

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
            self.store.mark_retrying(job_id, self.describe_error(exc), countdown)
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

    def describe_error(self, exc: BaseException) -> str:
        return describe_error(exc, soft_limit=self.soft_time_limit, hard_limit=self.time_limit)

    def dead_letter_payload(self, task_id: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        """What a replay of this failed job should submit; the original arguments by default."""
        return kwargs

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        # Failed for good: the job store records the dead letter (payload, error, attempts) in
        # the same step. Also called in the worker's main process when the hard time limit
        # kills a run; there is no request there, so the queue comes from the job's record.
        delivered_on = (self.request.delivery_info or {}).get("routing_key") or ""
        payload = self.dead_letter_payload(task_id, kwargs)
        queue = self.store.fail(task_id, self.describe_error(exc), task=self.name, queue=delivered_on, payload=payload)
        metrics.JOBS_FAILED.labels(self.name, queue).inc()

    def report_progress(self, percent: int, message: str = "") -> None:
        self.store.progress(self.job_id, percent, message)

    def raise_if_cancelled(self) -> None:
        """Call between units of work; a cancelled job stops at the next call."""
        if self.store.cancel_requested(self.job_id):
            raise JobCancelled(self.job_id)


class JobTypeTask(JobTask):
    """The Celery task of a job type declared with the SDK (offload_core.sdk): validates the
    message's payload against the type's request model, gives the handler a JobContext, and
    treats any exception but a permanent one as transient, up to the type's retries."""

    job_type: JobType[Any, Any]

    @property
    def max_retries(self) -> int:  # type: ignore[override]
        declared = self.job_type.max_retries
        return get_settings().TASK_MAX_RETRIES if declared is None else declared

    def run(self, *args: Any, **kwargs: Any) -> Any:
        job_type = self.job_type
        if args:
            raise PermanentJobError(
                f"{job_type.name} takes its payload as keyword arguments, not {len(args)} positional"
            )
        try:
            payload = job_type.request.model_validate(kwargs)
        except ValidationError as exc:
            # Checked again here: messages can reach the broker without the API (replays, other clients).
            raise PermanentJobError(f"invalid payload for {job_type.name}: {field_errors(exc)}") from exc
        ctx = self.context()
        try:
            result = job_type.run(ctx, payload)
        except (PermanentJobError, TransientJobError, JobCancelled, SoftTimeLimitExceeded, TimeLimitExceeded):
            raise
        except UnsafeURL as exc:
            # An address the outbound rules refuse stays refused: retrying cannot help.
            raise PermanentJobError(f"outbound request refused: {exc}") from exc
        except Exception as exc:
            # Any other failure is worth another attempt, as Celery users expect of autoretry.
            raise TransientJobError(describe_error(exc)) from exc
        finally:
            ctx.close()
        return result_json(job_type, result)

    def context(self) -> JobContext:
        settings = get_settings()
        soft_limit = self.soft_time_limit or settings.TASK_SOFT_TIME_LIMIT_SECONDS
        return JobContext(
            job_id=self.job_id,
            job_type=self.job_type.name,
            queue=(self.request.delivery_info or {}).get("routing_key") or self.job_type.queue,
            attempt=self.request.retries + 1,
            max_retries=self.max_retries,
            worker=self.request.hostname or "",
            deadline=time.monotonic() + soft_limit if soft_limit else None,
            report_progress=self.report_progress,
            cancel_requested=lambda: self.store.cancel_requested(self.job_id),
            http_client=lambda: OutboundPolicy.from_settings(settings).client(
                connect_timeout=settings.OUTBOUND_CONNECT_TIMEOUT_SECONDS,
                read_timeout=settings.OUTBOUND_READ_TIMEOUT_SECONDS,
            ),
        )


def field_errors(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'payload'}: {e['msg']}" for e in exc.errors())


def result_json(job_type: JobType[Any, Any], result: Any) -> Any:
    """The handler's return value as the JSON the job store keeps, checked against the declared
    result type when there is one (a mismatch is the handler's bug: permanent)."""
    if job_type.result is None:
        return TypeAdapter(Any).dump_python(result, mode="json")
    adapter = TypeAdapter(job_type.result)
    try:
        return adapter.dump_python(adapter.validate_python(result, from_attributes=True), mode="json")
    except ValidationError as exc:
        raise PermanentJobError(f"{job_type.name} returned an invalid result: {field_errors(exc)}") from exc


def register_job_types(app: Celery, job_types: Iterable[JobType[Any, Any]], settings: Settings) -> None:
    """Register one Celery task per job type, named after it, with its retries and time limits."""
    for job_type in job_types:
        soft, hard = job_time_limits(job_type, settings)
        task_class = type(
            f"JobTask[{job_type.name}]",
            (JobTypeTask,),
            {
                "job_type": job_type,
                "name": job_type.name,
                "soft_time_limit": soft,
                "time_limit": hard,
                "__module__": __name__,
            },
        )
        app.register_task(task_class())


def job_time_limits(job_type: JobType[Any, Any], settings: Settings) -> tuple[int, int]:
    """(soft, hard) seconds for one attempt: the declared limit is the soft one (the handler gets
    SoftTimeLimitExceeded and the job fails as timed out); a tenth later, between 2 and 30 s, the
    process is killed. The settings' limits for a job that declares none."""
    if job_type.time_limit is None:
        return settings.TASK_SOFT_TIME_LIMIT_SECONDS, settings.TASK_TIME_LIMIT_SECONDS
    return job_type.time_limit, job_type.time_limit + min(30, max(2, job_type.time_limit // 10))
