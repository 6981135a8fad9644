"""Dead letters: jobs that failed for good, kept with their payload and last error so they can
be inspected, replayed as new jobs, or deleted.

Each dead letter is a hash named by the failed job's id. Sorted sets index them newest first
(all of them, per queue, per task, per queue and task), scored by failure time in
milliseconds, made unique so a page cursor never splits a tie. The job store writes a dead
letter in the same atomic step that marks the job failed (lua/fail_and_record.lua) and trims every
index there: entries older than the TTL go, then the oldest beyond the maximum.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any, cast

import redis
from pydantic import BaseModel

from offload_core.store.lua_scripts import lua

KEY_PREFIX = "offload:dead-letter:"
INDEX_PREFIX = "offload:dead-letters:index:"
# One index per owner (the id of the API key that submitted the failed job), for its own listing.
OWNER_INDEX_PREFIX = "offload:dead-letters:by-owner:"
# Every index key ever written, so trims and deletes reach them all without a SCAN.
INDEXES_KEY = "offload:dead-letters:indexes"
ANY = "*"


def dead_letter_key(dead_letter_id: str) -> str:
    return KEY_PREFIX + dead_letter_id


def index_key(queue: str | None = None, task: str | None = None) -> str:
    return f"{INDEX_PREFIX}{queue or ANY}:{task or ANY}"


def owner_index_key(owner: str) -> str:
    return OWNER_INDEX_PREFIX + owner


def oldest_kept_score(ttl_seconds: float, now: float | None = None) -> int:
    """The lowest score still within the TTL (scores are failure times in milliseconds)."""
    return int(((time.time() if now is None else now) - ttl_seconds) * 1000)


_DELETE = lua("dead_letter_delete")

_MARK_REPLAYED = lua("dead_letter_mark_replayed")


class DeadLetter(BaseModel):
    id: str  # the failed job's id: GET /v1/jobs/{id} shows it while its record lasts
    task: str
    queue: str
    payload: dict[str, Any]  # the task's keyword arguments, as submitted
    error: str
    attempts: int
    failed_at: datetime
    replay_of: str | None = None  # the dead letter this job was itself a replay of
    replayed_as: str | None = None  # the latest job that replayed this one
    owner: str | None = None  # the id of the API key that submitted the failed job


class DeadLetterPage(BaseModel):
    dead_letters: list[DeadLetter]
    next_cursor: int | None  # pass as `cursor` for the next (older) page; null on the last


def decode_dead_letter(fields: dict[str, str]) -> DeadLetter:
    return DeadLetter(
        id=fields["id"],
        task=fields.get("task", ""),
        queue=fields.get("queue", ""),
        payload=json.loads(fields.get("payload") or "{}"),
        error=fields.get("error", ""),
        attempts=int(fields.get("attempts", 0)),
        failed_at=datetime.fromtimestamp(float(fields.get("failed_at", 0)), UTC),
        replay_of=fields.get("replay_of"),
        replayed_as=fields.get("replayed_as"),
        owner=fields.get("owner"),
    )


class DeadLetters:
    """Reading, deleting and linking dead letters; the job store writes them (JobStore.fail)."""

    def __init__(self, client: redis.Redis, ttl_seconds: int) -> None:
        self.client = client
        self.ttl = ttl_seconds
        self._delete = client.register_script(_DELETE)
        self._mark_replayed = client.register_script(_MARK_REPLAYED)

    def get(self, dead_letter_id: str) -> DeadLetter | None:
        fields = cast(dict[str, str], self.client.hgetall(dead_letter_key(dead_letter_id)))
        return decode_dead_letter(fields) if fields else None

    def page(
        self,
        *,
        queue: str | None = None,
        task: str | None = None,
        limit: int = 50,
        cursor: int | None = None,
        owner: str | None = None,
    ) -> DeadLetterPage:
        """Newest first; `cursor` is the `next_cursor` of the page before. With ``owner``, only that
        owner's: read from its own index, the queue and task filters applied to what was read, so
        a page may hold fewer than ``limit`` and still have a next one."""
        newest = "+inf" if cursor is None else f"({cursor}"
        index = owner_index_key(owner) if owner is not None else index_key(queue, task)
        entries = cast(
            list[tuple[str, float]],
            self.client.zrevrangebyscore(
                index, newest, oldest_kept_score(self.ttl), start=0, num=limit, withscores=True
            ),
        )
        pipe = self.client.pipeline(transaction=False)
        for dead_letter_id, _ in entries:
            pipe.hgetall(dead_letter_key(dead_letter_id))
        records = pipe.execute() if entries else []
        # A record can vanish between the two reads (trimmed, deleted, expired): skip it.
        letters = [decode_dead_letter(fields) for fields in records if fields]
        if owner is not None:
            letters = [d for d in letters if queue in (None, d.queue) and task in (None, d.task)]
        next_cursor = int(entries[-1][1]) if len(entries) == limit else None
        return DeadLetterPage(dead_letters=letters, next_cursor=next_cursor)

    def delete(self, dead_letter_id: str) -> bool:
        return bool(self._delete(keys=[dead_letter_key(dead_letter_id), INDEXES_KEY], args=[dead_letter_id]))

    def mark_replayed(self, dead_letter_id: str, job_id: str) -> bool:
        return bool(self._mark_replayed(keys=[dead_letter_key(dead_letter_id)], args=[job_id]))
