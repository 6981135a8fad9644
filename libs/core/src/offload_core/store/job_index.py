"""Listing jobs newest first, with filters, from the creation-time indexes the job store keeps.

A page reads at most SCAN_BUDGET index entries, so a filter that matches rarely answers quickly
with fewer items and a cursor to go on from, instead of walking the whole index in one request.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime
from typing import cast

import redis
from pydantic import BaseModel, Field

from offload_core.store.jobs import INDEX_KEY, Job, JobStatus, decode_job, job_key, owner_index_key, type_index_key

# Index entries one page may examine, whatever its filters.
SCAN_BUDGET = 2_000
# "<score>:<job id>" of the last entry a page examined.
CURSOR_PATTERN = r"^\d{1,12}(\.\d{1,9})?:[A-Za-z0-9_-]{1,64}$"
_CURSOR = re.compile(CURSOR_PATTERN)


class JobPage(BaseModel):
    jobs: list[Job]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next (older) page; null once the index holds no older job. "
        "A page may hold fewer than `limit` jobs (even none) while `next_cursor` is set: follow it."
    )


@dataclass(frozen=True)
class JobQuery:
    job_type: str | None = None
    status: JobStatus | None = None
    queue: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    limit: int = 50
    cursor: str | None = None
    owner: str | None = None  # only this API key's jobs; all when None (an admin's listing)
    schedule_id: str | None = None  # only the jobs this recurring schedule fired

    def matches(self, job: Job) -> bool:
        return (
            (self.owner is None or job.owner == self.owner)
            and (self.job_type is None or job.task == self.job_type)
            and (self.status is None or job.status is self.status)
            and (self.queue is None or job.queue == self.queue)
            and (self.schedule_id is None or job.schedule_id == self.schedule_id)
        )


def parse_cursor(cursor: str) -> tuple[float, str]:
    if not _CURSOR.match(cursor):
        raise ValueError("not a cursor this API returned; pass `next_cursor` from the previous page as it is")
    score, _, job_id = cursor.partition(":")
    return float(score), job_id


def list_jobs(client: redis.Redis, query: JobQuery, *, ttl_seconds: int) -> JobPage:
    """One page of jobs, newest first. Index entries whose record expired are dropped on the way."""
    if query.owner is not None:
        index = owner_index_key(query.owner)  # a key's own jobs, the other filters applied as read
    else:
        index = type_index_key(query.job_type) if query.job_type else INDEX_KEY
    newest = f"{query.created_before.timestamp()!r}" if query.created_before else "+inf"
    oldest = f"{query.created_after.timestamp()!r}" if query.created_after else "-inf"
    after: tuple[float, str] | None = None
    if query.cursor:
        after = parse_cursor(query.cursor)
        newest = min(newest, repr(after[0]), key=lambda bound: float(bound))
    jobs: list[Job] = []
    examined = 0
    last: tuple[float, str] | None = None
    offset = 0
    while len(jobs) < query.limit and examined < SCAN_BUDGET:
        batch_size = min(max(2 * query.limit, 50), SCAN_BUDGET - examined)
        entries = cast(
            list[tuple[str, float]],
            client.zrevrangebyscore(index, newest, oldest, start=offset, num=batch_size, withscores=True),
        )
        if not entries:
            return JobPage(jobs=jobs, next_cursor=None)
        offset += len(entries)
        if after is not None:
            # Entries with the cursor's own score come in reverse id order: skip those already seen.
            entries = [(i, s) for i, s in entries if s < after[0] or i < after[1]]
        pipe = client.pipeline(transaction=False)
        for job_id, _ in entries:
            pipe.hgetall(job_key(job_id))
        records = cast(list[dict[str, str]], pipe.execute())
        expired = []
        for (job_id, score), fields in zip(entries, records, strict=True):
            examined += 1
            last = (score, job_id)
            if not fields:
                expired.append(job_id)
                continue
            job = decode_job(fields)
            if query.matches(job):
                jobs.append(job)
                if len(jobs) == query.limit:
                    break
        if expired:
            client.zrem(index, *expired)
            if index != INDEX_KEY:
                client.zrem(INDEX_KEY, *expired)
            offset -= len(expired)  # the removed entries no longer count towards the offset
    _trim(client, index, ttl_seconds)
    next_cursor = f"{last[0]!r}:{last[1]}" if last is not None else None
    return JobPage(jobs=jobs, next_cursor=next_cursor)


def _trim(client: redis.Redis, index: str, ttl_seconds: int) -> None:
    """Entries older than any record can be: a record lives TTL after its last change, and no job
    changes long after its creation, so twice the TTL is safely past every record."""
    client.zremrangebyscore(index, "-inf", time.time() - 2 * ttl_seconds)
