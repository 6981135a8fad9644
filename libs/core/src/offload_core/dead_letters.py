"""Dead letters: jobs that failed for good, kept with their payload and last error so they can
be inspected, replayed as new jobs, or deleted.

Each dead letter is a hash named by the failed job's id. Sorted sets index them newest first
(all of them, per queue, per task, per queue and task), scored by failure time in
milliseconds, made unique so a page cursor never splits a tie. The job store writes a dead
letter in the same atomic step that marks the job failed (FAIL_AND_RECORD) and trims every
index there: entries older than the TTL go, then the oldest beyond the maximum.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any, cast

import redis
from pydantic import BaseModel

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


# KEYS[1] job key, KEYS[2] dead-letter key, KEYS[3] the index of all, KEYS[4] INDEXES_KEY.
# ARGV now, job ttl, error, job id, task, queue, payload (JSON), dead-letter ttl, dead-letter
# max, INDEX_PREFIX, KEY_PREFIX, OWNER_INDEX_PREFIX. Task and queue fall back to the job's record when empty (the
# worker's main process, after a hard time limit, has no request). Returns the queue.
FAIL_AND_RECORD = """
local now = tonumber(ARGV[1])
redis.call('HSET', KEYS[1], 'status', 'failed', 'finished_at', ARGV[1], 'updated_at', ARGV[1], 'error', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[2])
local job = redis.call('HMGET', KEYS[1], 'task', 'queue', 'attempts', 'replay_of', 'owner')
local task = ARGV[5] ~= '' and ARGV[5] or (job[1] or '')
local queue = ARGV[6] ~= '' and ARGV[6] or (job[2] or '')
local fields = {'id', ARGV[4], 'task', task, 'queue', queue, 'payload', ARGV[7], 'error', ARGV[3],
                'attempts', job[3] or 0, 'failed_at', ARGV[1]}
if job[4] then
  table.insert(fields, 'replay_of')
  table.insert(fields, job[4])
end
if job[5] then
  table.insert(fields, 'owner')
  table.insert(fields, job[5])
end
redis.call('HSET', KEYS[2], unpack(fields))
redis.call('EXPIRE', KEYS[2], ARGV[8])
local score = math.floor(now * 1000)
local newest = redis.call('ZREVRANGE', KEYS[3], 0, 0, 'WITHSCORES')
if newest[2] and score <= tonumber(newest[2]) then score = tonumber(newest[2]) + 1 end
score = string.format('%.0f', score)
local indexes = {KEYS[3], ARGV[10] .. queue .. ':*', ARGV[10] .. '*:' .. task, ARGV[10] .. queue .. ':' .. task}
if job[5] then table.insert(indexes, ARGV[12] .. job[5]) end
for _, index in ipairs(indexes) do
  redis.call('ZADD', index, score, ARGV[4])
  redis.call('SADD', KEYS[4], index)
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf',
           '(' .. string.format('%.0f', (now - tonumber(ARGV[8])) * 1000))
local excess = redis.call('ZCARD', KEYS[3]) - tonumber(ARGV[9])
if excess > 0 then
  local dropped = redis.call('ZPOPMIN', KEYS[3], excess)
  for i = 1, #dropped, 2 do redis.call('DEL', ARGV[11] .. dropped[i]) end
end
-- The index of all defines what is kept; every other index drops what it no longer holds.
local oldest = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
for _, index in ipairs(redis.call('SMEMBERS', KEYS[4])) do
  redis.call('ZREMRANGEBYSCORE', index, '-inf', '(' .. oldest[2])
  redis.call('EXPIRE', index, ARGV[8])
end
redis.call('EXPIRE', KEYS[4], ARGV[8])
return queue
"""

# KEYS[1] dead-letter key, KEYS[2] INDEXES_KEY; ARGV id. Returns 1 if it existed.
_DELETE = """
local existed = redis.call('DEL', KEYS[1])
for _, index in ipairs(redis.call('SMEMBERS', KEYS[2])) do redis.call('ZREM', index, ARGV[1]) end
return existed
"""

# KEYS[1] dead-letter key; ARGV job id. Never recreates a dead letter deleted meanwhile.
_MARK_REPLAYED = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'replayed_as', ARGV[1])
return 1
"""


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
