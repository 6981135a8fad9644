"""Publishing a job: claim its Idempotency-Key, then accept it in one atomic Redis script that
writes its record and pushes its Celery message (the API has no task code). Every route that
submits one job goes through Submission.enqueue(); a chain of jobs through enqueue_chain()."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import redis
import redis.asyncio as aioredis
from celery import Celery
from fastapi import Depends, Request, Response
from opentelemetry import propagate, trace
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from offload_api.auth import request_principal
from offload_api.batching import ScriptBatcher
from offload_api.errors import InvalidField, RedisNearlyFull
from offload_api.idempotency import IdempotencyHeader, IdempotencyKey, idempotency_for, request_fingerprint
from offload_api.metrics import ENQUEUE_SECONDS, JOBS_SUBMITTED
from offload_core import telemetry
from offload_core.contract import builtin_jobs
from offload_core.contract.api_keys import Principal
from offload_core.contract.timing import StartTime
from offload_core.logs import REQUEST_JOB, job_fields
from offload_core.runtime.celery_app import job_signature, send_jobs
from offload_core.sdk import JobType
from offload_core.store.jobs import SCHEDULE, SUBMIT, JobStatus, JobStore, submit_call
from offload_core.store.queue_state import ENQUEUED_AT_HEADER

# How stale Redis's memory reading may be when a job is submitted: one INFO per interval and
# process, whatever the submit rate; a burst past the ratio meanwhile meets Redis's own refusal.
MEMORY_READ_INTERVAL_SECONDS = 1.0
logger = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)


# What every submitting route may answer besides its 202, for the OpenAPI schema.
SUBMIT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "A repeat of an earlier request with the same Idempotency-Key: its job, not enqueued again."},
    409: {
        "description": "The first request with this Idempotency-Key is still in progress; repeat after Retry-After.",
        "headers": {"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "string"}}},
    },
}


# Where a job's status is read, for job types whose status says more than GET /v1/jobs/{id}.
STATUS_PATHS = {builtin_jobs.notify.name: "/v1/notifications", builtin_jobs.report.name: "/v1/reports"}


def status_url(job_type: JobType[Any, Any], job_id: str) -> str:
    return f"{STATUS_PATHS.get(job_type.name, '/v1/jobs')}/{job_id}"


class JobAccepted(BaseModel):
    id: str
    status: JobStatus
    task: str
    queue: str  # one of the deployment's queues (OFFLOAD_QUEUES)
    priority: int
    run_at: datetime | None = None  # a delayed job's due time; it is `scheduled` until then
    status_url: str


def due_time(start: StartTime | None, now: float, max_delay_seconds: int) -> float | None:
    """When a job with this start time is due; None to publish it now (no start time, or one
    already past). Refuses both fields at once and a time further than the longest delay."""
    if start is None:
        return None
    if start.run_at is not None and start.delay_seconds is not None:
        raise InvalidField("body.delay_seconds", "give run_at or delay_seconds, not both")
    if start.delay_seconds is not None:
        delay = start.delay_seconds
        field = "body.delay_seconds"
    elif start.run_at is not None:
        delay = start.run_at.timestamp() - now
        field = "body.run_at"
    else:
        return None
    if delay > max_delay_seconds:
        raise InvalidField(field, f"at most {max_delay_seconds} s from now (OFFLOAD_DELAY_MAX_SECONDS)")
    return now + delay if delay > 0 else None


class JobPublisher:
    """Accepts jobs on the event loop: the record, the kept arguments, the waiting-set entry and
    the Celery message go in together (offload_core.store.jobs.SUBMIT), so a job exists wholly or not
    at all; concurrent submits share round trips (ScriptBatcher); no thread, producer pool or
    exchange lookup is involved."""

    def __init__(
        self,
        client: aioredis.Redis,
        ttl_seconds: int,
        submit_memory_ratio: float = 1.0,
        *,
        max_delay_seconds: int = 30 * 24 * 3600,
    ) -> None:
        self.client = client
        self.ttl = ttl_seconds
        self.submit_memory_ratio = submit_memory_ratio
        self.max_delay_seconds = max_delay_seconds
        self._memory = (0, 0)  # used_memory, maxmemory of the last INFO memory
        self._memory_read_at = -MEMORY_READ_INTERVAL_SECONDS
        self._submit = ScriptBatcher(client, SUBMIT)
        self._schedule = ScriptBatcher(client, SCHEDULE)
        self.origin = f"offload-api-{os.getpid()}@{socket.gethostname()}"  # Celery's `origin` header

    async def ensure_room(self) -> None:
        """Refuses a new job while Redis uses more than OFFLOAD_REDIS_SUBMIT_MEMORY_RATIO of its
        maxmemory: the rest stays for the workers, which must write to start consuming and to
        finish the jobs that free memory (in a full Redis a starting worker cannot consume)."""
        if self.submit_memory_ratio >= 1:
            return
        now = time.monotonic()
        if now - self._memory_read_at >= MEMORY_READ_INTERVAL_SECONDS:
            memory = await self.client.info("memory")
            self._memory = (int(memory.get("used_memory") or 0), int(memory.get("maxmemory") or 0))
            self._memory_read_at = now
        used, maxmemory = self._memory
        if maxmemory and used >= maxmemory * self.submit_memory_ratio:
            raise RedisNearlyFull(used, maxmemory, self.submit_memory_ratio)

    async def publish(
        self,
        accepted: JobAccepted,
        kwargs: dict[str, object],
        *,
        replay_of: str | None,
        owner: str,
        run_at: float | None = None,
    ) -> None:
        """Publish the job now, or with ``run_at`` keep it (message included) until then."""
        job_id, task, queue, priority = accepted.id, accepted.task, accepted.queue, accepted.priority
        job_attributes = {telemetry.JOB_ID: job_id, telemetry.TASK: task, telemetry.QUEUE: str(queue)}
        trace.get_current_span().set_attributes(job_attributes)  # the request's span
        started = time.perf_counter()
        # The worker's run span continues the context this producer span puts in the headers.
        with tracer.start_as_current_span(
            f"apply_async/{task}",
            kind=trace.SpanKind.PRODUCER,
            attributes={**job_attributes, "messaging.message.id": job_id, "messaging.destination": str(queue)},
        ):
            now = time.time()
            # A delayed job enters its queue when due: its queue wait counts from then.
            headers: dict[str, object] = {ENQUEUED_AT_HEADER: now if run_at is None else run_at}
            propagate.inject(headers)
            keys, args = submit_call(
                job_id,
                task,
                kwargs,
                queue=queue,
                priority=priority,
                headers=headers,
                origin=self.origin,
                now=now,
                ttl_seconds=self.ttl,
                replay_of=replay_of,
                owner=owner,
                run_at=run_at,
            )
            await (self._submit if run_at is None else self._schedule)(keys, args)
        ENQUEUE_SECONDS.labels(task, queue).observe(time.perf_counter() - started)
        JOBS_SUBMITTED.labels(task, queue).inc()
        # The request's access line names the job: a line of its own would cost every submit a write.
        REQUEST_JOB.set(job_fields(job_id, task, queue))
        logger.debug("job %s accepted for %s on %s", job_id, task, queue)


@dataclass(frozen=True)
class Submission:
    """What a submitting route needs besides its body: the publisher, who asks (the job's
    owner: only it, and admins, see the job), the request's Idempotency-Key and the response,
    whose Location names the job."""

    publisher: JobPublisher
    owner: Principal
    idempotency: IdempotencyKey | None
    response: Response

    async def enqueue(
        self,
        job_type: JobType[Any, Any],
        kwargs: dict[str, object],
        *,
        queue: str | None = None,
        priority: int | None = None,
        replay_of: str | None = None,
        prepare: Callable[[str], None] | None = None,
        start: StartTime | None = None,
    ) -> JobAccepted:
        """Accept a job of this type and publish it, on its default queue and priority unless the
        request chose others; ``start`` delays it (the request's `run_at` or `delay_seconds`).
        ``prepare(job_id)`` (blocking; run in a thread) writes whatever the job needs besides its
        record, before its message can be taken."""
        queue = queue or job_type.queue
        if queue not in job_type.allowed_queues:
            allowed = ", ".join(sorted(job_type.allowed_queues))
            raise InvalidField("body.queue", f"{job_type.name} may run on {allowed}, not {queue}")
        priority = job_type.priority if priority is None else priority
        run_at = due_time(start, time.time(), self.publisher.max_delay_seconds)
        await self.publisher.ensure_room()
        job_id = uuid.uuid4().hex
        accepted = JobAccepted(
            id=job_id,
            status=JobStatus.QUEUED if run_at is None else JobStatus.SCHEDULED,
            task=job_type.name,
            queue=queue,
            priority=priority,
            run_at=None if run_at is None else datetime.fromtimestamp(run_at, UTC),
            status_url=status_url(job_type, job_id),
        )
        if self.idempotency is not None:
            requested = {}
            if start is not None:
                requested = start.model_dump(include={"run_at", "delay_seconds"}, exclude_none=True)
            fingerprint = request_fingerprint(self.idempotency.route, job_type.name, kwargs, queue, priority, requested)
            earlier = await self.idempotency.claim_async(self.publisher.client, fingerprint, accepted.model_dump_json())
            if earlier is not None:
                return self._answer(JobAccepted.model_validate_json(earlier))
        try:
            if prepare is not None:
                await run_in_threadpool(prepare, job_id)
            await self.publisher.publish(accepted, kwargs, replay_of=replay_of, owner=self.owner.id, run_at=run_at)
            if self.idempotency is not None:
                await self.idempotency.finish_async(self.publisher.client)
        except Exception:
            # Nothing was accepted: free the key for the client's retry. If Redis itself is down
            # the release fails too, and the claim expires with its TTL.
            if self.idempotency is not None:
                with contextlib.suppress(redis.RedisError):
                    await self.idempotency.release_async(self.publisher.client)
            raise
        return self._answer(accepted)

    def _answer(self, accepted: JobAccepted) -> JobAccepted:
        self.response.headers["Location"] = accepted.status_url
        return accepted


async def submission(request: Request, response: Response, idempotency_key: IdempotencyHeader = None) -> Submission:
    # One dependency for everything a submit needs: FastAPI spends tens of microseconds of every
    # request on each dependency it solves.
    return Submission(
        request.app.state.publisher,
        request_principal(request),
        idempotency_for(request, response, idempotency_key),
        response,
    )


SubmissionDep = Annotated[Submission, Depends(submission)]


@contextlib.contextmanager
def _released_unless_published(idempotency: IdempotencyKey | None, store: JobStore) -> Iterator[None]:
    """Nothing was accepted if publishing failed: free the key for the client's retry. If Redis
    itself is down the release fails too, and the claim expires with its TTL."""
    try:
        yield
    except Exception:
        if idempotency is not None:
            with contextlib.suppress(redis.RedisError):
                idempotency.release(store.client)
        raise


@dataclass(frozen=True)
class ChainStep:
    job_type: JobType[Any, Any]
    kwargs: dict[str, object]
    priority: int | None = None  # the type's default when None; each step runs on its type's queue


def enqueue_chain(
    celery: Celery,
    store: JobStore,
    steps: Sequence[ChainStep],
    *,
    owner: Principal,
    idempotency: IdempotencyKey | None = None,
    prepare: Callable[[list[JobAccepted]], None] | None = None,
) -> list[JobAccepted]:
    """Accept a Celery chain: every step a job with its own record, all created before anything
    is published; Celery sends a step once the one before it succeeded. ``prepare(accepted)``
    runs after the records exist and before the chain is published; if it raises, nothing is
    published and the records and the Idempotency-Key are released."""
    accepted = []
    for step in steps:
        job_id = uuid.uuid4().hex
        accepted.append(
            JobAccepted(
                id=job_id,
                status=JobStatus.QUEUED,
                task=step.job_type.name,
                queue=step.job_type.queue,
                priority=step.job_type.priority if step.priority is None else step.priority,
                status_url=status_url(step.job_type, job_id),
            )
        )
    if idempotency is not None:
        chained = " | ".join(step.job_type.name for step in steps)
        payload = {"steps": [step.kwargs for step in steps]}
        fingerprint = request_fingerprint(idempotency.route, chained, payload, "", 0)
        claim = json.dumps([a.model_dump(mode="json") for a in accepted])
        earlier = idempotency.claim(store.client, fingerprint, claim)
        if earlier is not None:
            return [JobAccepted.model_validate(a) for a in json.loads(earlier)]
    with _released_unless_published(idempotency, store):
        _publish_chain(celery, store, accepted, steps, prepare, owner.id)
        if idempotency is not None:
            idempotency.finish(store.client)
    return accepted


def _publish_chain(
    celery: Celery,
    store: JobStore,
    accepted: list[JobAccepted],
    steps: Sequence[ChainStep],
    prepare: Callable[[list[JobAccepted]], None] | None,
    owner: str,
) -> None:
    first = accepted[0]
    job_attributes = {telemetry.JOB_ID: first.id, telemetry.TASK: str(first.task), telemetry.QUEUE: str(first.queue)}
    trace.get_current_span().set_attributes(job_attributes)
    started = time.perf_counter()
    try:
        # Every record first: a step may be taken the moment it is sent. Only the first step's
        # message is published now; each later one joins the waiting set when the step before
        # it succeeds (JobStore.succeed) and the worker publishes it.
        for index, (job, step) in enumerate(zip(accepted, steps, strict=True)):
            store.create(
                job.id,
                task=job.task,
                queue=job.queue,
                kwargs=step.kwargs,
                priority=job.priority,
                published_now=index == 0,
                next_step=accepted[index + 1].id if index + 1 < len(accepted) else None,
                owner=owner,
            )
        if prepare is not None:
            prepare(accepted)
        with tracer.start_as_current_span(
            f"apply_async/{first.task}",
            kind=trace.SpanKind.PRODUCER,
            attributes={**job_attributes, "messaging.message.id": first.id, "messaging.destination": str(first.queue)},
        ):
            headers: dict[str, object] = {ENQUEUED_AT_HEADER: time.time()}
            propagate.inject(headers)
            send_jobs(
                [
                    job_signature(
                        celery,
                        job.task,
                        job_id=job.id,
                        kwargs=step.kwargs,
                        queue=job.queue,
                        priority=job.priority,
                        headers=headers,
                    )
                    for job, step in zip(accepted, steps, strict=True)
                ]
            )
    except Exception:
        with contextlib.suppress(redis.RedisError):
            for job in accepted:
                store.discard(job.id)
        raise
    ENQUEUE_SECONDS.labels(first.task, first.queue).observe(time.perf_counter() - started)
    for job in accepted:
        JOBS_SUBMITTED.labels(job.task, job.queue).inc()
    logger.info(
        "chain %s accepted: %s",
        first.id,
        " | ".join(f"{job.task} {job.id}" for job in accepted),
        extra=job_fields(first.id, first.task, first.queue),
    )
