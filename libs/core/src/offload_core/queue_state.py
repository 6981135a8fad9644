"""What Redis knows about each queue: waiting messages, online consumers, the oldest wait.

Workers announce themselves per queue in a sorted set scored by their last heartbeat, so the
API counts consumers with one cheap command instead of a broadcast that waits for replies.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis

from offload_core.dead_letters import index_key, oldest_kept_score
from offload_core.topology import priority_lists

CONSUMERS_PREFIX = "offload:consumers:"
# Message header the API sets at publish time, read back to age the oldest waiting job.
ENQUEUED_AT_HEADER = "offload_enqueued_at"


def consumers_key(queue: str) -> str:
    return f"{CONSUMERS_PREFIX}{queue}"


@dataclass(frozen=True)
class QueueState:
    name: str
    depth: int
    consumers: int
    oldest_age_seconds: float | None
    dead_letters: int


def announce_consumer(client: redis.Redis, hostname: str, queues: list[str], stale_after: float) -> None:
    now = time.time()
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        pipe.zadd(consumers_key(queue), {hostname: now})
        pipe.zremrangebyscore(consumers_key(queue), "-inf", now - stale_after)
    pipe.execute()


def withdraw_consumer(client: redis.Redis, hostname: str, queues: list[str]) -> None:
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        pipe.zrem(consumers_key(queue), hostname)
    pipe.execute()


def _enqueued_at(raw: str | None) -> float | None:
    if not raw:
        return None
    try:
        value = json.loads(raw).get("headers", {}).get(ENQUEUED_AT_HEADER)
    except (ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, int | float) else None


def read_queue_states(
    client: redis.Redis, queues: Sequence[str], stale_after: float, dead_letter_ttl: float
) -> list[QueueState]:
    """One pipelined round trip for every queue's depth, consumers, oldest message and dead letters."""
    now = time.time()
    kept_since = oldest_kept_score(dead_letter_ttl, now)
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        for name in priority_lists(queue):
            pipe.llen(name)
            pipe.lindex(name, -1)  # kombu pushes on the left and pops on the right
        pipe.zcount(consumers_key(queue), now - stale_after, "+inf")
        pipe.zcount(index_key(queue=queue), kept_since, "+inf")
    replies = pipe.execute()
    states, cursor = [], 0
    for queue in queues:
        lists = len(priority_lists(queue))
        pairs = replies[cursor : cursor + 2 * lists]
        consumers, dead_letters = replies[cursor + 2 * lists : cursor + 2 * lists + 2]
        cursor += 2 * lists + 2
        depth = sum(int(n) for n in pairs[0::2])
        stamps = [t for t in (_enqueued_at(raw) for raw in pairs[1::2]) if t is not None]
        oldest = round(max(0.0, now - min(stamps)), 3) if stamps else None
        states.append(
            QueueState(
                name=str(queue),
                depth=depth,
                consumers=int(consumers),
                oldest_age_seconds=oldest,
                dead_letters=int(dead_letters),
            )
        )
    return states
