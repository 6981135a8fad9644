"""The job store: each job's status, progress, result and error in one Redis hash, and the one
writer of a job's status.

The API accepts a job in one script (SUBMIT) that writes its record and pushes its message
together; a chain's records are all created first, then its first message is published.
Workers, the orphan sweep and the in-process queue move a record through its states only
through this store. Transitions that race (a cancel against a worker starting the job) are
Lua scripts (lua/*.lua), so each one is atomic in Redis.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, cast

import redis
import redis.asyncio as aioredis
from kombu.utils import json as kombu_json
from pydantic import BaseModel, Field

from offload_core.runtime.task_message import queue_list, task_message
from offload_core.settings import Settings
from offload_core.store import dead_letters
from offload_core.store.lua_scripts import lua
from offload_core.store.redis_connection import async_client, sync_client
from offload_core.telemetry import trace_redis_client

KEY_PREFIX = "offload:job:"
# Jobs whose message was published and no worker has started yet, scored by the time the message
# was published (a retry: by the time it is due); with each one's arguments (KWARGS_SUFFIX), so
# the orphan sweep (offload_core.runtime.orphans) can publish a job again if Redis lost its message.
WAITING_KEY = "offload:jobs:waiting"
KWARGS_SUFFIX = ":kwargs"
# Every job by creation time (GET /v1/jobs), and the same per job type, so listing reads an
# index instead of scanning the keyspace. Entries outlive their records until a listing meets
# them (it drops them) or they are older than any record can be (trimmed at each listing).
INDEX_KEY = "offload:jobs:index"
TYPE_INDEX_PREFIX = "offload:jobs:index:type:"
# And per owner (the API key that submitted it; "-" for jobs without one), for a key's own listing.
OWNER_INDEX_PREFIX = "offload:jobs:index:owner:"
# Delayed jobs not yet due, scored by their due time; each one's rendered message and the list it
# goes to wait beside its record (MESSAGE_SUFFIX) until PROMOTE publishes it.
SCHEDULED_KEY = "offload:jobs:scheduled"
MESSAGE_SUFFIX = ":message"
HashValue = str | int | float  # what a hash field may be set to


class JobStatus(StrEnum):
    SCHEDULED = "scheduled"  # delayed: published when due
    QUEUED = "queued"
    STARTED = "started"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
# Waiting for a worker to take its message: the first one, or the one a retry published.
AWAITING_DELIVERY = frozenset({JobStatus.QUEUED, JobStatus.RETRYING})


class StartOutcome(StrEnum):
    RUN = "run"  # the caller owns this attempt
    SKIP_CANCELLED = "cancelled"  # cancelled while queued: must never run
    SKIP_FINISHED = "finished"  # a redelivery of a job that already ended
    POISONED = "poisoned"  # its runs were lost too often: the caller fails it instead


class CancelOutcome(StrEnum):
    CANCELLED = "cancelled"  # was waiting; it will not run
    REQUESTED = "requested"  # is running; the task has been asked to stop
    FINISHED = "finished"  # already ended; nothing to cancel
    MISSING = "missing"


class Progress(BaseModel):
    percent: int = Field(ge=0, le=100)
    message: str = ""


class Job(BaseModel):
    id: str
    task: str
    queue: str
    status: JobStatus
    progress: Progress
    result: Any = None
    error: str | None = None
    attempts: int = 0
    worker: str | None = None  # the Celery node that ran (or runs) the latest attempt
    priority: int | None = None  # inside its queue: 0 runs first, 9 last
    replay_of: str | None = None  # the dead letter (the failed job's id) this job replays
    owner: str | None = None  # the id of the API key that submitted it (offload_core.contract.api_keys)
    run_at: datetime | None = None  # a delayed job's due time
    schedule_id: str | None = None  # the recurring schedule whose tick made it (offload_core.store.schedules)
    cancel_requested: bool = False
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime


def job_key(job_id: str) -> str:
    return KEY_PREFIX + job_id


def kwargs_key(job_id: str) -> str:
    return KEY_PREFIX + job_id + KWARGS_SUFFIX


def message_key(job_id: str) -> str:
    return KEY_PREFIX + job_id + MESSAGE_SUFFIX


def type_index_key(task: str) -> str:
    return TYPE_INDEX_PREFIX + task


def owner_index_key(owner: str | None) -> str:
    return OWNER_INDEX_PREFIX + (owner or "-")


_WAITING_FIELDS = ("status", "task", "queue", "priority", "created_at", "next_step", "retries")


@dataclass(frozen=True)
class WaitingJob:
    id: str
    status: str
    task: str
    queue: str
    priority: int | None
    created_at: float
    next_step: str | None  # the chain step published when this one succeeds
    kwargs: dict[str, Any] | None  # None once a worker started it (or it was never kept)
    retries: int = 0  # the retries before the attempt it waits for (Celery's `retries` header)


@dataclass(frozen=True)
class Promotion:
    """One round of PROMOTE: Redis's time, the delayed jobs it published (id, due time) and when
    the next one left is due (None when none is left)."""

    now: float
    published: list[tuple[str, float]]
    next_due: float | None


class RecoveryOutcome(StrEnum):
    REPUBLISH = "republish"  # still waiting (queued or retrying): publish it again (its wait restarts now)
    EXHAUSTED = "exhausted"  # lost too often: fail it instead
    GONE = "gone"  # started, cancelled or forgotten meanwhile: nothing to do


def queued_record(
    job_id: str,
    task: str,
    queue: str,
    now: float,
    *,
    replay_of: str | None = None,
    priority: int | None = None,
    next_step: str | None = None,
    owner: str | None = None,
    run_at: float | None = None,
) -> dict[str, HashValue]:
    """The record of a job that was just accepted and waits for a worker (or, with ``run_at``,
    for its due time)."""
    record: dict[str, HashValue] = {
        "id": job_id,
        "task": task,
        "queue": queue,
        "status": JobStatus.QUEUED if run_at is None else JobStatus.SCHEDULED,
        "progress": 0,
        "attempts": 0,
        "created_at": now,
        "updated_at": now,
    }
    if replay_of:
        record["replay_of"] = replay_of
    if priority is not None:
        record["priority"] = priority
    if next_step:
        record["next_step"] = next_step
    if owner:
        record["owner"] = owner
    if run_at is not None:
        record["run_at"] = run_at
    return record


SUBMIT = lua("submit")
SCHEDULE = lua("schedule")
PROMOTE = lua("promote")


def submit_call(
    job_id: str,
    task: str,
    kwargs: Mapping[str, Any],
    *,
    queue: str,
    priority: int,
    headers: Mapping[str, object],
    origin: str,
    now: float,
    ttl_seconds: int,
    replay_of: str | None = None,
    owner: str | None = None,
    run_at: float | None = None,
) -> tuple[list[str], list[HashValue]]:
    """SUBMIT's keys and arguments for one job (SCHEDULE's for a job due at ``run_at``). Its
    arguments and priority are kept in Redis, so the job can be published again if Redis loses
    its message (offload_core.runtime.orphans)."""
    message = task_message(task, job_id, kwargs, queue=queue, priority=priority, headers=headers, origin=origin)
    record = queued_record(job_id, task, queue, now, replay_of=replay_of, priority=priority, owner=owner, run_at=run_at)
    if run_at is not None:
        # Kept until due, then for the record's TTL like any job's.
        ttl_until_gone = ttl_seconds + max(0, int(run_at - now) + 1)
        schedule_keys = [
            job_key(job_id),
            kwargs_key(job_id),
            message_key(job_id),
            SCHEDULED_KEY,
            INDEX_KEY,
            type_index_key(task),
            owner_index_key(owner),
        ]
        schedule_args: list[HashValue] = [
            now,
            ttl_until_gone,
            job_id,
            kombu_json.dumps(dict(kwargs)),
            message,
            queue_list(queue, priority),
            run_at,
        ]
        return schedule_keys, [*schedule_args, *itertools.chain.from_iterable(record.items())]
    keys = [
        job_key(job_id),
        kwargs_key(job_id),
        WAITING_KEY,
        queue_list(queue, priority),
        INDEX_KEY,
        type_index_key(task),
        owner_index_key(owner),
    ]
    args: list[HashValue] = [now, ttl_seconds, job_id, kombu_json.dumps(dict(kwargs)), message]
    return keys, [*args, *itertools.chain.from_iterable(record.items())]


_START = lua("start")

_CANCEL = lua("cancel")

_SUCCEED = lua("succeed")

_CLAIM_RECOVERY = lua("claim_recovery")

_UPDATE_IF_RUNNING = lua("update_if_running")


def _ts(value: str | None) -> datetime | None:
    return datetime.fromtimestamp(float(value), UTC) if value else None


def decode_job(fields: dict[str, str]) -> Job:
    created = _ts(fields.get("created_at")) or datetime.now(UTC)
    return Job(
        id=fields["id"],
        task=fields.get("task", ""),
        queue=fields.get("queue", ""),
        status=JobStatus(fields.get("status", JobStatus.QUEUED)),
        progress=Progress(percent=int(fields.get("progress", 0)), message=fields.get("progress_message", "")),
        result=json.loads(fields["result"]) if "result" in fields else None,
        error=fields.get("error"),
        attempts=int(fields.get("attempts", 0)),
        priority=int(fields["priority"]) if fields.get("priority") else None,
        worker=fields.get("worker"),
        replay_of=fields.get("replay_of"),
        owner=fields.get("owner"),
        run_at=_ts(fields.get("run_at")),
        schedule_id=fields.get("schedule_id"),
        cancel_requested=fields.get("cancel_requested") == "1",
        created_at=created,
        started_at=_ts(fields.get("started_at")),
        finished_at=_ts(fields.get("finished_at")),
        updated_at=_ts(fields.get("updated_at")) or created,
    )


def _client_options(settings: Settings) -> dict[str, Any]:
    """Every call bounded by the configured timeouts."""
    return {
        "decode_responses": True,
        "socket_connect_timeout": settings.REDIS_CONNECT_TIMEOUT_SECONDS,
        "socket_timeout": settings.REDIS_SOCKET_TIMEOUT_SECONDS,
        "health_check_interval": 30,
    }


def redis_client(settings: Settings) -> redis.Redis:
    """A Redis client whose every call is bounded by the configured timeouts."""
    return trace_redis_client(sync_client(settings, **_client_options(settings)))


def async_redis_client(settings: Settings) -> aioredis.Redis:
    """``redis_client`` for the event loop."""
    return trace_redis_client(async_client(settings, **_client_options(settings)))


class JobStore:
    def __init__(
        self,
        client: redis.Redis,
        ttl_seconds: int,
        *,
        dead_letter_ttl_seconds: int = 14 * 24 * 3600,
        dead_letter_max: int = 10_000,
        max_lost_runs: int = 5,
    ) -> None:
        self.client = client
        self.max_lost_runs = max_lost_runs
        self.ttl = ttl_seconds
        self.dead_letter_ttl = dead_letter_ttl_seconds
        self.dead_letter_max = dead_letter_max
        self._fail_and_record = client.register_script(lua("fail_and_record"))
        self._fail_if = client.register_script(lua("fail_if"))
        self._mark_not_run = client.register_script(lua("mark_not_run"))
        self._start = client.register_script(_START)
        self._cancel = client.register_script(_CANCEL)
        self._update_if_running = client.register_script(_UPDATE_IF_RUNNING)
        self._succeed = client.register_script(_SUCCEED)
        self._claim_recovery = client.register_script(_CLAIM_RECOVERY)
        self._promote = client.register_script(PROMOTE)

    @classmethod
    def from_settings(cls, settings: Settings) -> JobStore:
        return cls(
            redis_client(settings),
            settings.JOB_TTL_SECONDS,
            dead_letter_ttl_seconds=settings.DEAD_LETTER_TTL_SECONDS,
            dead_letter_max=settings.DEAD_LETTER_MAX,
            max_lost_runs=settings.TASK_MAX_LOST_RUNS,
        )

    # --- API side -------------------------------------------------------------------

    def create(
        self,
        job_id: str,
        *,
        task: str,
        queue: str,
        replay_of: str | None = None,
        kwargs: Mapping[str, Any] | None = None,
        priority: int | None = None,
        published_now: bool = True,
        next_step: str | None = None,
        owner: str | None = None,
    ) -> None:
        """Write a queued job's record. With ``kwargs``, what publishing it again takes is kept
        until a worker starts it; ``published_now`` puts it in the waiting set at once (False
        for a chain step after the first, which the worker publishes when the step before it
        succeeds; ``next_step`` names that successor)."""
        now = time.time()
        key = job_key(job_id)
        record: dict[Any, HashValue] = queued_record(
            job_id, task, queue, now, replay_of=replay_of, priority=priority, next_step=next_step, owner=owner
        )
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(key, mapping=record)
        pipe.expire(key, self.ttl)
        pipe.zadd(INDEX_KEY, {job_id: now})
        pipe.zadd(type_index_key(task), {job_id: now})
        pipe.zadd(owner_index_key(owner), {job_id: now})
        if kwargs is not None:
            # kombu's JSON, as in the message: the same types survive the round trip.
            pipe.set(kwargs_key(job_id), kombu_json.dumps(dict(kwargs)), ex=self.ttl)
            if published_now:
                pipe.zadd(WAITING_KEY, {job_id: now})
        pipe.execute()

    def discard(self, job_id: str) -> None:
        """Forget a record whose message never reached the broker."""
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(job_key(job_id), kwargs_key(job_id))
        pipe.zrem(WAITING_KEY, job_id)
        pipe.zrem(INDEX_KEY, job_id)
        pipe.execute()

    def get(self, job_id: str) -> Job | None:
        fields = cast(dict[str, str], self.client.hgetall(job_key(job_id)))
        return decode_job(fields) if fields else None

    def cancel(self, job_id: str) -> CancelOutcome:
        keys = [job_key(job_id), kwargs_key(job_id), WAITING_KEY, SCHEDULED_KEY, message_key(job_id)]
        return CancelOutcome(self._cancel(keys=keys, args=[time.time(), self.ttl, job_id]))

    # --- worker side ----------------------------------------------------------------

    def start(self, job_id: str, *, task: str, queue: str, worker: str) -> StartOutcome:
        keys = [job_key(job_id), kwargs_key(job_id), WAITING_KEY]
        return StartOutcome(
            self._start(
                keys=keys,
                args=[time.time(), self.ttl, task, queue, KEY_PREFIX, worker, job_id, self.max_lost_runs],
            )
        )

    def progress(self, job_id: str, percent: int, message: str = "") -> bool:
        percent = max(0, min(100, int(percent)))
        return bool(
            self._update_if_running(
                keys=[job_key(job_id)],
                args=[time.time(), self.ttl, "progress", percent, "progress_message", message],
            )
        )

    def cancel_requested(self, job_id: str) -> bool:
        return self.client.hget(job_key(job_id), "cancel_requested") == "1"

    def _write(self, key: str, mapping: Mapping[Any, HashValue]) -> None:
        """Set fields and renew the TTL in one transaction."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(key, mapping=mapping)
        pipe.expire(key, self.ttl)
        pipe.execute()

    # --- delayed jobs ---------------------------------------------------------------

    def promote_due(self, most: int) -> Promotion:
        """Publish up to ``most`` delayed jobs that are due (by Redis's clock), oldest due first;
        each one exactly once, whichever and however many processes call this."""
        reply = cast(list[Any], self._promote(keys=[SCHEDULED_KEY, WAITING_KEY], args=[most, KEY_PREFIX, self.ttl]))
        pairs = reply[2:]
        published = [(str(job_id), float(due)) for job_id, due in zip(pairs[0::2], pairs[1::2], strict=True)]
        return Promotion(float(reply[0]), published, float(reply[1]) if reply[1] else None)

    def scheduled_count(self) -> int:
        return self.client.zcard(SCHEDULED_KEY)

    # --- orphan sweep ---------------------------------------------------------------

    def waiting_since(self, *, before: float, after: float | None, limit: int) -> list[tuple[str, float]]:
        """Waiting jobs published before ``before`` (and after ``after``), oldest first."""
        low = "-inf" if after is None else f"({after!r}"
        entries = self.client.zrangebyscore(WAITING_KEY, low, before, start=0, num=limit, withscores=True)
        return [(str(job_id), float(score)) for job_id, score in cast(list[tuple[str, float]], entries)]

    def waiting_jobs(self, job_ids: list[str]) -> dict[str, WaitingJob]:
        """What publishing each job again takes; jobs without a record are left out."""
        pipe = self.client.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hmget(job_key(job_id), *_WAITING_FIELDS)
            pipe.get(kwargs_key(job_id))
        replies = pipe.execute() if job_ids else []
        found = {}
        for job_id, fields, kwargs in zip(job_ids, replies[0::2], replies[1::2], strict=True):
            values = dict(zip(_WAITING_FIELDS, fields, strict=True))
            if values["status"] is None:
                continue
            found[job_id] = WaitingJob(
                id=job_id,
                status=values["status"],
                task=values["task"] or "",
                queue=values["queue"] or "",
                priority=int(values["priority"]) if values["priority"] is not None else None,
                created_at=float(values["created_at"] or 0),
                next_step=values["next_step"],
                kwargs=kombu_json.loads(kwargs) if kwargs is not None else None,
                retries=int(values["retries"] or 0),
            )
        return found

    def forget_waiting(self, job_ids: list[str]) -> None:
        if job_ids:
            self.client.zrem(WAITING_KEY, *job_ids)

    def claim_recovery(self, job_id: str, *, most: int) -> RecoveryOutcome:
        """Take the right to publish a lost job again; its wait restarts, so the next sweeps
        leave it alone for a grace."""
        return RecoveryOutcome(
            self._claim_recovery(keys=[job_key(job_id), WAITING_KEY], args=[time.time(), job_id, most])
        )

    def _finish(self, job_id: str, status: JobStatus, **fields: HashValue) -> None:
        now = time.time()
        mapping: dict[str, HashValue] = {"status": status, "finished_at": now, "updated_at": now, **fields}
        self._write(job_key(job_id), mapping)

    def succeed(self, job_id: str, result: object) -> None:
        # On success an earlier attempt's error no longer describes the job.
        self._succeed(
            keys=[job_key(job_id), kwargs_key(job_id), WAITING_KEY],
            args=[time.time(), self.ttl, json.dumps(result), job_id, KEY_PREFIX],
        )

    def fail(
        self, job_id: str, error: str, *, task: str = "", queue: str = "", payload: Mapping[str, Any] | None = None
    ) -> str:
        """Mark the job failed for good and record its dead letter, in one atomic step.

        Task and queue default to the job's record; returns the queue the job was on."""
        pipe = self.client.pipeline(transaction=True)
        self._fail_and_record(
            client=pipe,
            keys=[
                job_key(job_id),
                dead_letters.dead_letter_key(job_id),
                dead_letters.index_key(),
                dead_letters.INDEXES_KEY,
            ],
            args=[
                time.time(),
                self.ttl,
                error,
                job_id,
                task,
                queue,
                json.dumps(dict(payload or {}), default=str),
                self.dead_letter_ttl,
                self.dead_letter_max,
                dead_letters.INDEX_PREFIX,
                dead_letters.KEY_PREFIX,
                dead_letters.OWNER_INDEX_PREFIX,
            ],
        )
        pipe.zrem(WAITING_KEY, job_id)
        pipe.delete(kwargs_key(job_id))
        queue_of_job = pipe.execute()[0]
        return str(queue_of_job)

    def fail_if(self, job_id: str, error: str, *statuses: JobStatus) -> bool:
        """Fail the job, without a dead letter, if it is in one of ``statuses``, atomically (so a
        job cancelled or finished meanwhile keeps its status); whether it was failed."""
        return bool(self._fail_if(keys=[job_key(job_id)], args=[time.time(), self.ttl, error, *statuses]))

    def mark_not_run(self, job_ids: Sequence[str], error: str) -> None:
        """Close the records of chain steps that will never run, so they do not stay queued for
        ever. They become `cancelled` with ``error``: a late message for them is skipped at start."""
        if job_ids:
            self._mark_not_run(keys=[job_key(j) for j in job_ids], args=[time.time(), self.ttl, error])

    def mark_cancelled(self, job_id: str) -> None:
        self._finish(job_id, JobStatus.CANCELLED, error="cancelled while running")

    def mark_retrying(
        self, job_id: str, error: str, retry_in_seconds: float, *, kwargs: Mapping[str, Any], retries: int
    ) -> None:
        """Record the retry about to be published. Until a worker starts it, the job waits again
        with its arguments, due in ``retry_in_seconds``: the orphan sweep publishes it again (as
        retry number ``retries``) if Redis loses that message."""
        now = time.time()
        mapping: dict[Any, HashValue] = {
            "status": JobStatus.RETRYING,
            "error": error,
            "progress_message": f"retrying in {retry_in_seconds:.1f}s",
            "updated_at": now,
            "retries": retries,
        }
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(job_key(job_id), mapping=mapping)
        pipe.expire(job_key(job_id), self.ttl)
        pipe.set(kwargs_key(job_id), kombu_json.dumps(dict(kwargs)), ex=self.ttl)
        pipe.zadd(WAITING_KEY, {job_id: now + retry_in_seconds})
        pipe.execute()
