"""A finished report's result (CSV or JSON), kept in Redis under its own key for a limited time,
for ``GET /v1/reports/{id}/download``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import redis

from offload_core.contract.reports import CONTENT_TYPES, OutputFormat

RESULT_KEY_PREFIX = "offload:report:"


def result_key(job_id: str) -> str:
    return f"{RESULT_KEY_PREFIX}{job_id}:result"


@dataclass(frozen=True)
class StoredResult:
    format: OutputFormat
    body: bytes

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.format]

    def filename(self, job_id: str) -> str:
        return f"report-{job_id}.{self.format.value}"


def store_result(client: redis.Redis, job_id: str, result: StoredResult, ttl_seconds: int) -> None:
    pipe = client.pipeline(transaction=True)
    pipe.hset(result_key(job_id), mapping={"format": result.format.value, "body": result.body})
    pipe.expire(result_key(job_id), ttl_seconds)
    pipe.execute()


def load_result(client: redis.Redis, job_id: str) -> StoredResult | None:
    """The stored result, or None once it expired (or never existed). ``client`` decodes answers
    (the job store's does); a result is UTF-8 text, CSV or JSON."""
    fields = cast(dict[str, str], client.hgetall(result_key(job_id)))
    if "body" not in fields:
        return None
    return StoredResult(OutputFormat(fields["format"]), fields["body"].encode())
