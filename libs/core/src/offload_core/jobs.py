"""The job store: each job's status, progress, result and error in one Redis hash.

The API creates a record before it publishes and reads it afterwards; tasks move it through
its states. Transitions that race (a cancel against a worker starting the job) are Lua
scripts, so each one is atomic in Redis.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, cast

import redis
from pydantic import BaseModel, Field

from offload_core import dead_letters
from offload_core.settings import Settings

KEY_PREFIX = "offload:job:"
HashValue = str | int | float  # what a hash field may be set to


class JobStatus(StrEnum):
    QUEUED = "queued"
    STARTED = "started"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


class StartOutcome(StrEnum):
    RUN = "run"  # the caller owns this attempt
    SKIP_CANCELLED = "cancelled"  # cancelled while queued: must never run
    SKIP_FINISHED = "finished"  # a redelivery of a job that already ended


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
    replay_of: str | None = None  # the dead letter (the failed job's id) this job replays
    cancel_requested: bool = False
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime


def job_key(job_id: str) -> str:
    return KEY_PREFIX + job_id


# KEYS[1] job key; ARGV now, ttl, task, queue, key prefix, worker. Creates the record if a message arrived
# without one (sent by another client, or its record expired).
_START = """
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'cancelled' then return 'cancelled' end
if status == 'succeeded' or status == 'failed' then return 'finished' end
if redis.call('HGET', KEYS[1], 'cancel_requested') == '1' then
  -- asked to stop during an earlier attempt: do not start another one
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[1], 'updated_at', ARGV[1])
  return 'cancelled'
end
if not status then
  redis.call('HSET', KEYS[1], 'id', string.sub(KEYS[1], #ARGV[5] + 1), 'task', ARGV[3],
             'queue', ARGV[4], 'created_at', ARGV[1], 'progress', 0, 'attempts', 0)
end
if not redis.call('HGET', KEYS[1], 'started_at') then
  redis.call('HSET', KEYS[1], 'started_at', ARGV[1])
end
redis.call('HSET', KEYS[1], 'status', 'started', 'updated_at', ARGV[1], 'worker', ARGV[6])
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 'run'
"""

# KEYS[1] job key; ARGV now, ttl.
_CANCEL = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
if status == 'queued' or status == 'retrying' then
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[1], 'updated_at', ARGV[1],
             'error', 'cancelled before it ran')
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  return 'cancelled'
end
if status == 'started' then
  redis.call('HSET', KEYS[1], 'cancel_requested', 1, 'updated_at', ARGV[1])
  return 'requested'
end
return 'finished'
"""

# KEYS[1] job key; ARGV now, ttl, then field/value pairs. Writes only while the job is
# running, so a late progress update cannot revive a job that ended or was cancelled.
_UPDATE_IF_RUNNING = """
if redis.call('HGET', KEYS[1], 'status') ~= 'started' then return 0 end
redis.call('HSET', KEYS[1], 'updated_at', ARGV[1], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""


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
        worker=fields.get("worker"),
        replay_of=fields.get("replay_of"),
        cancel_requested=fields.get("cancel_requested") == "1",
        created_at=created,
        started_at=_ts(fields.get("started_at")),
        finished_at=_ts(fields.get("finished_at")),
        updated_at=_ts(fields.get("updated_at")) or created,
    )


def redis_client(settings: Settings) -> redis.Redis:
    """A Redis client whose every call is bounded by the configured timeouts."""
    return redis.Redis.from_url(
        settings.redis_url,
        decode_responses=True,
        socket_connect_timeout=settings.REDIS_CONNECT_TIMEOUT_SECONDS,
        socket_timeout=settings.REDIS_SOCKET_TIMEOUT_SECONDS,
        health_check_interval=30,
    )


class JobStore:
    def __init__(
        self,
        client: redis.Redis,
        ttl_seconds: int,
        *,
        dead_letter_ttl_seconds: int = 14 * 24 * 3600,
        dead_letter_max: int = 10_000,
    ) -> None:
        self.client = client
        self.ttl = ttl_seconds
        self.dead_letter_ttl = dead_letter_ttl_seconds
        self.dead_letter_max = dead_letter_max
        self._fail_and_record = client.register_script(dead_letters.FAIL_AND_RECORD)
        self._start = client.register_script(_START)
        self._cancel = client.register_script(_CANCEL)
        self._update_if_running = client.register_script(_UPDATE_IF_RUNNING)

    @classmethod
    def from_settings(cls, settings: Settings) -> JobStore:
        return cls(
            redis_client(settings),
            settings.JOB_TTL_SECONDS,
            dead_letter_ttl_seconds=settings.DEAD_LETTER_TTL_SECONDS,
            dead_letter_max=settings.DEAD_LETTER_MAX,
        )

    # --- API side -------------------------------------------------------------------

    def create(self, job_id: str, *, task: str, queue: str, replay_of: str | None = None) -> None:
        now = time.time()
        key = job_key(job_id)
        record: dict[str, HashValue] = {
            "id": job_id,
            "task": task,
            "queue": queue,
            "status": JobStatus.QUEUED,
            "progress": 0,
            "attempts": 0,
            "created_at": now,
            "updated_at": now,
        }
        if replay_of:
            record["replay_of"] = replay_of
        self._write(key, record)

    def discard(self, job_id: str) -> None:
        """Forget a record whose message never reached the broker."""
        self.client.delete(job_key(job_id))

    def get(self, job_id: str) -> Job | None:
        fields = cast(dict[str, str], self.client.hgetall(job_key(job_id)))
        return decode_job(fields) if fields else None

    def cancel(self, job_id: str) -> CancelOutcome:
        return CancelOutcome(self._cancel(keys=[job_key(job_id)], args=[time.time(), self.ttl]))

    # --- worker side ----------------------------------------------------------------

    def start(self, job_id: str, *, task: str, queue: str, worker: str) -> StartOutcome:
        key = job_key(job_id)
        return StartOutcome(self._start(keys=[key], args=[time.time(), self.ttl, task, queue, KEY_PREFIX, worker]))

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

    def _write(self, key: str, mapping: Mapping[Any, HashValue], *, delete: tuple[str, ...] = ()) -> None:
        """Set fields and renew the TTL in one transaction."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(key, mapping=mapping)
        if delete:
            pipe.hdel(key, *delete)
        pipe.expire(key, self.ttl)
        pipe.execute()

    def _finish(self, job_id: str, status: JobStatus, *, clear_error: bool = False, **fields: HashValue) -> None:
        now = time.time()
        mapping: dict[str, HashValue] = {"status": status, "finished_at": now, "updated_at": now, **fields}
        # On success an earlier attempt's error no longer describes the job.
        self._write(job_key(job_id), mapping, delete=("error",) if clear_error else ())

    def succeed(self, job_id: str, result: object) -> None:
        self._finish(job_id, JobStatus.SUCCEEDED, clear_error=True, result=json.dumps(result), progress=100)

    def fail(
        self, job_id: str, error: str, *, task: str = "", queue: str = "", payload: Mapping[str, Any] | None = None
    ) -> str:
        """Mark the job failed for good and record its dead letter, in one atomic step.

        Task and queue default to the job's record; returns the queue the job was on."""
        queue_of_job = self._fail_and_record(
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
            ],
        )
        return str(queue_of_job)

    def mark_cancelled(self, job_id: str) -> None:
        self._finish(job_id, JobStatus.CANCELLED, error="cancelled while running")

    def mark_retrying(self, job_id: str, error: str, retry_in_seconds: float) -> None:
        mapping: dict[str, HashValue] = {
            "status": JobStatus.RETRYING,
            "error": error,
            "progress_message": f"retrying in {retry_in_seconds:.1f}s",
            "updated_at": time.time(),
        }
        self._write(job_key(job_id), mapping)
