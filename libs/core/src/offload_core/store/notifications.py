"""Per-target delivery records of a notification: one Redis hash per job, one field per target.

A target's record says whether it was delivered, how often it was tried and how the last
attempt ended. The notifier writes it right after each attempt, before the job's message is
acknowledged, so a redelivered job skips the targets that already have their notification.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal, cast

import redis
from pydantic import BaseModel

from offload_core.store.jobs import KEY_PREFIX, Job


class TargetStatus(StrEnum):
    PENDING = "pending"  # not tried yet
    RETRYING = "retrying"  # tried, failed in a way worth another attempt
    DELIVERED = "delivered"
    FAILED = "failed"  # failed for good


OPEN = frozenset({TargetStatus.PENDING, TargetStatus.RETRYING})


class Outcome(StrEnum):
    """How one delivery attempt to one target ended."""

    DELIVERED = "delivered"
    RETRY = "retry"  # worth another attempt later
    FAILED = "failed"  # no attempt can succeed


@dataclass(frozen=True)
class Attempt:
    outcome: Outcome
    error: str | None = None
    http_status: int | None = None
    smtp_reply: str | None = None
    retry_after: float | None = None  # seconds the receiver asked us to wait


class TargetRecord(BaseModel):
    index: int
    channel: Literal["webhook", "email"]
    address: str  # the webhook URL or the email address
    status: TargetStatus = TargetStatus.PENDING
    attempts: int = 0
    last_error: str | None = None
    http_status: int | None = None  # webhook: the last answer's status
    smtp_reply: str | None = None  # email: the server's last reply
    delivered_at: datetime | None = None
    next_attempt_at: datetime | None = None
    reachable: bool | None = None  # the API's connection check at submission; None: not checked


class Notification(Job):
    """A notification job with the outcome of each of its targets."""

    targets: list[TargetRecord]


def targets_key(job_id: str) -> str:
    return f"{KEY_PREFIX}{job_id}:targets"


def target_address(target: Mapping[str, Any]) -> str:
    return str(target["url"] if target["channel"] == "webhook" else target["address"])


class NotificationTargets:
    def __init__(self, client: redis.Redis, ttl_seconds: int) -> None:
        self.client = client
        self.ttl = ttl_seconds

    def ensure(self, job_id: str, targets: Iterable[Mapping[str, Any]]) -> list[TargetRecord]:
        """Create the pending records that do not exist yet (never overwriting one), and
        return them all in target order."""
        key = targets_key(job_id)
        pipe = self.client.pipeline(transaction=True)
        for index, target in enumerate(targets):
            record = TargetRecord(index=index, channel=target["channel"], address=target_address(target))
            pipe.hsetnx(key, str(index), record.model_dump_json())
        pipe.expire(key, self.ttl)
        pipe.execute()
        return self.all(job_id)

    def all(self, job_id: str) -> list[TargetRecord]:
        fields = cast(dict[str, str], self.client.hgetall(targets_key(job_id)))
        records = [TargetRecord.model_validate_json(value) for value in fields.values()]
        return sorted(records, key=lambda record: record.index)

    def save(self, job_id: str, record: TargetRecord) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(targets_key(job_id), str(record.index), record.model_dump_json())
        pipe.expire(targets_key(job_id), self.ttl)
        pipe.execute()
