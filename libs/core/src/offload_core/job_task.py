"""The base class of every Offload task: it keeps the job store in step with the run."""

from __future__ import annotations

import logging
import random
from functools import cached_property
from typing import Any

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

from offload_core.jobs import JobStore, StartOutcome
from offload_core.settings import get_settings

logger = logging.getLogger(__name__)


class TransientJobError(Exception):
    """A failure worth retrying with backoff: a timeout, a refused connection, a 4xx reply."""


class JobCancelled(Exception):
    """Raised inside a task that was asked to stop through DELETE /v1/jobs/{id}."""


def retry_countdown(retries: int, base: float, cap: float) -> float:
    """Exponential backoff with jitter: half the capped delay fixed, half random."""
    delay = min(cap, base * 2.0**retries)
    return delay / 2 + random.uniform(0, delay / 2)


def describe_error(exc: BaseException) -> str:
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
        job_id = self.job_id
        queue = (self.request.delivery_info or {}).get("routing_key") or ""
        outcome = self.store.start(job_id, task=self.name, queue=queue, worker=self.request.hostname or "")
        if outcome is not StartOutcome.RUN:
            logger.info("job %s not run: %s", job_id, outcome.value)
            return None
        try:
            # Not super().__call__: that pushes a fresh request and would hide self.request.id.
            result = self.run(*args, **kwargs)
        except JobCancelled:
            self.store.mark_cancelled(job_id)
            logger.info("job %s cancelled while running", job_id)
            return None
        except TransientJobError as exc:
            if self.request.retries >= self.max_retries:
                raise  # on_failure records the final error
            settings = get_settings()
            countdown = retry_countdown(
                self.request.retries, settings.RETRY_BACKOFF_SECONDS, settings.RETRY_BACKOFF_MAX_SECONDS
            )
            self.store.mark_retrying(job_id, describe_error(exc), countdown)
            raise self.retry(exc=exc, countdown=countdown, max_retries=self.max_retries) from exc
        self.store.succeed(job_id, result)
        return result

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        # Also called in the worker's main process when the hard time limit kills a run.
        self.store.fail(task_id, describe_error(exc))

    def report_progress(self, percent: int, message: str = "") -> None:
        self.store.progress(self.job_id, percent, message)

    def raise_if_cancelled(self) -> None:
        """Call between units of work; a cancelled job stops at the next call."""
        if self.store.cancel_requested(self.job_id):
            raise JobCancelled(self.job_id)
