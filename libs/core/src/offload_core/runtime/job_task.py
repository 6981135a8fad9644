"""The Celery task that runs a declared job type and keeps the job store in step with the run."""

from __future__ import annotations

import contextlib
import functools
import logging
import random
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import replace
from functools import cached_property
from typing import Any, Literal, cast

import redis
from celery import Celery, Task, current_task
from celery.exceptions import Ignore, Reject, SoftTimeLimitExceeded, TimeLimitExceeded
from kombu.exceptions import OperationalError
from opentelemetry import trace
from opentelemetry.trace import Span
from pydantic import TypeAdapter, ValidationError

from offload_core import telemetry
from offload_core.contract.job_errors import JobCancelled, PermanentJobError, TransientJobError
from offload_core.contract.registry import celery_time_limits, is_limited, job_time_limits
from offload_core.engines.outbound import OutboundPolicy, UnsafeURL
from offload_core.runtime import worker_metrics as metrics
from offload_core.runtime.worker_metrics import RunOutcome
from offload_core.sdk import JobContext, JobEnd, JobType
from offload_core.settings import Settings, get_settings
from offload_core.store.jobs import JobStatus, JobStore, StartOutcome
from offload_core.store.queue_state import ENQUEUED_AT_HEADER
from offload_core.store.rate_limits import JobTypeLimiter

logger = logging.getLogger(__name__)

EndStatus = Literal["succeeded", "failed", "cancelled"]
ENDED: frozenset[str] = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


# A slot's lease outlasts the longest run by this much.
LEASE_GRACE_SECONDS = 10
# A wait for a slot shorter than this is the round trip itself, not a throttled job.
THROTTLED_AFTER_SECONDS = 0.005


def retry_countdown(retries: int, base: float, cap: float) -> float:
    """Exponential backoff with jitter: half the capped delay fixed, half random."""
    delay = min(cap, base * 2.0**retries)
    return delay / 2 + random.uniform(0, delay / 2)


class JobTypeTask(Task[Any, Any]):
    """The Celery task of a job type declared with the SDK (offload_core.sdk), one attempt of a
    job per run: skips cancelled and finished jobs, validates the payload against the type's
    request model, gives the handler a JobContext, records progress, retries any exception but
    a permanent one with backoff up to the type's retries, records the outcome, and calls the
    type's callbacks (on_end, dead_letter_payload)."""

    acks_late = True
    reject_on_worker_lost = True
    job_type: JobType[Any, Any]  # set by register_job_types, as are name and the time limits
    # The handler's own (soft, hard) limits; Celery's are longer by the wait of a limited type.
    handler_time_limits: tuple[int, int] = (0, 0)

    @cached_property
    def store(self) -> JobStore:
        return JobStore.from_settings(get_settings())

    @property
    def job_id(self) -> str:
        """The job's id is the Celery task id the API chose at submission."""
        return str(self.request.id)

    @property
    def max_retries(self) -> int:  # type: ignore[override]
        declared = self.job_type.max_retries
        return get_settings().TASK_MAX_RETRIES if declared is None else declared

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.request.called_directly:
            return super().__call__(*args, **kwargs)
        try:
            result = self._run_job(args, kwargs)
        except (redis.RedisError, OperationalError) as exc:
            # Redis is away: the outcome cannot be recorded (nor a retry published), so the
            # message must not be acknowledged. Requeued, or restored after the visibility timeout
            # if Redis cannot take it back now, the job runs again once Redis returns.
            logger.warning("job %s handed back: Redis unavailable (%s)", self.job_id, exc)
            raise Reject(exc, requeue=True) from exc
        if self.job_type.on_end is not None:
            self._ended_without_failure(kwargs)
        return result

    def _ended_without_failure(self, kwargs: dict[str, Any]) -> None:
        """on_end after a run that returned: the job succeeded, was cancelled (while queued or
        running), or this was a redelivery of a job that had ended. Failures reach on_end
        through on_failure."""
        try:
            job = self.store.get(self.job_id)
        except redis.RedisError as exc:
            # Handed back like any run Redis was away for: the redelivery finds the job ended,
            # skips it and calls on_end then (the next chain step is sent then, too).
            logger.warning("job %s handed back before on_end: Redis unavailable (%s)", self.job_id, exc)
            raise Reject(exc, requeue=True) from exc
        status = job.status.value if job is not None else JobStatus.CANCELLED.value
        if status in ENDED:
            error = job.error if job is not None else "its record expired"
            self._on_end(JobEnd(self.job_id, self.name, self._queue(), cast(EndStatus, status), error), kwargs)

    def _queue(self) -> str:
        return (self.request.delivery_info or {}).get("routing_key") or ""

    @cached_property
    def limiter(self) -> JobTypeLimiter | None:
        """The type's limits across all workers, or None without any."""
        if not is_limited(self.job_type):
            return None
        settings = get_settings()
        _, hard = celery_time_limits(self.job_type, settings)
        return JobTypeLimiter(
            self.store.client,
            self.name,
            rate_limit=self.job_type.rate_limit,
            concurrency=self.job_type.concurrency,
            # Longer than a run can last with its wait: a killed worker's slot frees by then.
            lease_seconds=hard + LEASE_GRACE_SECONDS,
            block_seconds=max(0.1, settings.REDIS_SOCKET_TIMEOUT_SECONDS * 0.8),
        )

    def _run_job(self, args: Any, kwargs: Any) -> Any:
        limiter = self.limiter
        if limiter is None:
            return self._start_and_run(args, kwargs)
        if not self._wait_for_limits(limiter):
            # Waited the longest it may: back on its queue (the back of it; kombu requeues there),
            # acknowledged by nobody, the job still queued. A worker takes it again later.
            metrics.JOBS_HANDED_BACK.labels(self.name).inc()
            logger.info("job %s handed back: its type's limits left no start within the longest wait", self.job_id)
            raise Reject("over its job type's limits", requeue=True)
        try:
            return self._start_and_run(args, kwargs)
        finally:
            if limiter.concurrency is not None:
                self._release_slot(limiter)

    def _release_slot(self, limiter: JobTypeLimiter) -> None:
        """Free the job's running slot. The run's outcome is recorded (or its retry published)
        by now and must stand: if Redis is away, the slot's lease frees it instead."""
        try:
            limiter.release_slot(self.job_id)
        except redis.RedisError as exc:
            logger.warning("job %s: running slot not released, its lease will free it: Redis: %s", self.job_id, exc)

    def _wait_for_limits(self, limiter: JobTypeLimiter) -> bool:
        """Wait, without polling, until the type's limits let this job start: a running slot first
        (blocking until one is released, or a dead holder's lease ends), then its reserved place
        among the starts (sleeping exactly until it). False if that would take longer than
        OFFLOAD_JOB_LIMIT_MAX_WAIT_SECONDS; then the job holds nothing."""
        began = time.monotonic()
        deadline = began + get_settings().JOB_LIMIT_MAX_WAIT_SECONDS
        if limiter.concurrency is not None and not limiter.acquire_slot(self.job_id, deadline):
            return False
        if limiter.concurrency is not None and time.monotonic() - began > THROTTLED_AFTER_SECONDS:
            metrics.JOBS_THROTTLED.labels(self.name, "concurrency").inc()
        if limiter.rate_limit is not None:
            start = limiter.reserve_start(max(0.0, deadline - time.monotonic()))
            if not start.admitted:
                if limiter.concurrency is not None:
                    limiter.release_slot(self.job_id)
                return False
            if start.wait_seconds > 0:
                metrics.JOBS_THROTTLED.labels(self.name, "rate").inc()
                time.sleep(start.wait_seconds)
        metrics.LIMIT_WAIT_SECONDS.labels(self.name).observe(time.monotonic() - began)
        return True

    def _start_and_run(self, args: Any, kwargs: Any) -> Any:
        job_id = self.job_id
        queue = self._queue()
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
        end = JobEnd(job_id, self.name, queue, "failed", error)
        payload = self._dead_letter_payload(end, dict(kwargs))
        failed_on = self.store.fail(job_id, error, task=self.name, queue=queue, payload=payload)
        metrics.JOBS_FAILED.labels(self.name, failed_on).inc()
        if self.job_type.on_end is not None:
            self._on_end(replace(end, queue=failed_on), dict(kwargs))

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
                job_id, self.describe_error(exc), countdown, kwargs=kwargs, retries=self.request.retries + 1
            )
            outcome = RunOutcome.RETRIED
            raise self.retry(exc=exc, countdown=countdown, max_retries=self.max_retries) from exc
        finally:
            metrics.RUN_SECONDS.labels(self.name, queue).observe(time.perf_counter() - started)
            if outcome in metrics.OUTCOME_COUNTERS:  # failures are counted by on_failure
                metrics.OUTCOME_COUNTERS[outcome].labels(self.name, queue).inc()
            span.set_attribute(telemetry.OUTCOME, outcome.value)

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
            with self._own_soft_time_limit():
                result = job_type.run(ctx, payload)
        except (PermanentJobError, TransientJobError, JobCancelled, SoftTimeLimitExceeded, TimeLimitExceeded):
            raise
        except UnsafeURL as exc:
            # An address the outbound rules refuse stays refused: retrying cannot help.
            raise PermanentJobError(f"outbound request refused: {exc}") from exc
        except Exception as exc:
            # Any other failure is worth another attempt, as Celery users expect of autoretry.
            raise TransientJobError(self.describe_error(exc)) from exc
        finally:
            ctx.close()
        return result_json(job_type, result)

    @contextlib.contextmanager
    def _own_soft_time_limit(self) -> Iterator[None]:
        """For a limited type, raise the soft time limit in the handler its declared time after it
        started: Celery's clock started when the worker took the message, before the wait, and is
        longer by the longest wait. A timer of the process (SIGALRM), so in the main thread only
        (prefork and solo pools); under the threads pool Celery's longer limit is the bound."""
        soft = self.handler_time_limits[0]
        if self.limiter is None or not soft or threading.current_thread() is not threading.main_thread():
            yield
            return

        def expire(signum: int, frame: object) -> None:
            raise SoftTimeLimitExceeded(f"soft time limit ({soft} s) exceeded")

        previous = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, soft)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

    def context(self) -> JobContext:
        settings = get_settings()
        soft_limit = self.handler_time_limits[0] or self.soft_time_limit or settings.TASK_SOFT_TIME_LIMIT_SECONDS
        return JobContext(
            job_id=self.job_id,
            job_type=self.job_type.name,
            queue=self._queue() or self.job_type.queue,
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

    def report_progress(self, percent: int, message: str = "") -> None:
        self.store.progress(self.job_id, percent, message)

    def describe_error(self, exc: BaseException) -> str:
        """The error a job's record and dead letter show."""
        if isinstance(exc, PermanentJobError):
            return str(exc)
        settings = get_settings()
        if isinstance(exc, SoftTimeLimitExceeded):
            soft = self.handler_time_limits[0] or self.soft_time_limit or settings.TASK_SOFT_TIME_LIMIT_SECONDS
            return f"timed out after {soft} s"
        if isinstance(exc, TimeLimitExceeded):
            hard = self.handler_time_limits[1] or self.time_limit or settings.TASK_TIME_LIMIT_SECONDS
            return f"timed out after {hard} s (its process was killed at the hard time limit)"
        return f"{type(exc).__name__}: {exc}"

    def retry_delay(self, exc: TransientJobError) -> float:
        """Seconds until the next attempt: exponential backoff, or the other side's Retry-After
        if longer (exactly the Retry-After with retry_backoff=False), within the cap the
        visibility timeout allows."""
        settings = get_settings()
        if not self.job_type.retry_backoff:
            return min(exc.retry_after or 0.0, settings.RETRY_BACKOFF_MAX_SECONDS)
        countdown = retry_countdown(
            self.request.retries, settings.RETRY_BACKOFF_SECONDS, settings.RETRY_BACKOFF_MAX_SECONDS
        )
        if exc.retry_after is not None:
            countdown = max(countdown, exc.retry_after)
        return min(countdown, settings.RETRY_BACKOFF_MAX_SECONDS)

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        # Failed for good: the job store records the dead letter (payload, error, attempts) in
        # the same step. Also called in the worker's main process when the hard time limit
        # kills a run; there is no request there, so the queue comes from the job's record.
        error = self.describe_error(exc)
        end = JobEnd(task_id, self.name, self._queue(), "failed", error)
        payload = self._dead_letter_payload(end, kwargs)
        queue = self.store.fail(task_id, error, task=self.name, queue=end.queue, payload=payload)
        metrics.JOBS_FAILED.labels(self.name, queue).inc()
        if self.job_type.on_end is not None:
            self._on_end(replace(end, queue=queue), kwargs)

    def _dead_letter_payload(self, end: JobEnd, kwargs: dict[str, Any]) -> dict[str, Any]:
        """What a replay of the failed job should submit: the type's dead_letter_payload of the
        request, the original arguments by default (and when the callback cannot say)."""
        if self.job_type.dead_letter_payload is None:
            return kwargs
        try:
            callback = self.job_type.dead_letter_callback()
            request = self.job_type.request.model_validate(kwargs)
            assert callback is not None
            replacement = callback(end, request)
            payload: dict[str, Any] = self.job_type.request.model_validate(replacement).model_dump(mode="json")
            return payload
        except Exception:
            logger.exception(
                "job %s: dead_letter_payload failed; the dead letter keeps the original payload", end.job_id
            )
            return kwargs

    def _on_end(self, end: JobEnd, kwargs: dict[str, Any]) -> None:
        try:
            callback = self.job_type.on_end_callback()
            assert callback is not None
            callback(end, self.job_type.request.model_validate(kwargs))
        except Exception:
            # The job's own outcome is recorded already; a callback cannot change it.
            logger.exception("job %s: on_end failed after the job %s", end.job_id, end.status)


def field_errors(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'payload'}: {e['msg']}" for e in exc.errors())


_ANY: TypeAdapter[Any] = TypeAdapter(Any)


@functools.lru_cache(maxsize=1024)
def _cached_adapter(result_type: Any) -> TypeAdapter[Any]:
    return TypeAdapter(result_type)


def _result_adapter(result_type: Any) -> TypeAdapter[Any]:
    # Building an adapter costs more than most jobs' whole run: once per declared type.
    try:
        return _cached_adapter(result_type)
    except TypeError:  # an unhashable type expression
        return TypeAdapter(result_type)


def result_json(job_type: JobType[Any, Any], result: Any) -> Any:
    """The handler's return value as the JSON the job store keeps, checked against the declared
    result type when there is one (a mismatch is the handler's bug: permanent)."""
    if job_type.result is None:
        return _ANY.dump_python(result, mode="json")
    adapter = _result_adapter(job_type.result)
    try:
        return adapter.dump_python(adapter.validate_python(result, from_attributes=True), mode="json")
    except ValidationError as exc:
        raise PermanentJobError(f"{job_type.name} returned an invalid result: {field_errors(exc)}") from exc


def stamp_chain_step(headers: dict[str, Any] | None = None, **_: Any) -> None:
    """before_task_publish in a worker: what a running job publishes, but for its retries, is a
    chain's next step, whose queue wait starts now, not when the API published the chain. (The
    orphan sweep publishes outside any job, keeping the job's first acceptance time.)"""
    if headers is not None and current_task and not headers.get("retries"):
        headers[ENQUEUED_AT_HEADER] = time.time()


def register_job_types(app: Celery, job_types: Iterable[JobType[Any, Any]], settings: Settings) -> None:
    """Register one Celery task per job type, named after it, with its retries and time limits."""
    for job_type in job_types:
        soft, hard = celery_time_limits(job_type, settings)
        task_class = type(
            f"JobTask[{job_type.name}]",
            (JobTypeTask,),
            {
                "job_type": job_type,
                "name": job_type.name,
                "soft_time_limit": soft,
                "time_limit": hard,
                "handler_time_limits": job_time_limits(job_type, settings),
                "__module__": __name__,
            },
        )
        app.register_task(task_class())
