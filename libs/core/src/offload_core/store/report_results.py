"""A finished report's result (CSV or JSON), for ``GET /v1/reports/{id}/download``, kept for a
limited time: the bytes in the blob store (offload_core.store.blobs), charged to the report's
owner, and a small record of its format and size in Redis, which expires with it."""

from __future__ import annotations

from dataclasses import dataclass

from offload_core.contract.reports import CONTENT_TYPES, OutputFormat
from offload_core.store.blob_ledger import Blobs
from offload_core.store.blobs import Blob, report_blob_key

RESULT_KEY_PREFIX = "offload:report:"


def result_key(job_id: str) -> str:
    return f"{RESULT_KEY_PREFIX}{job_id}:result"


@dataclass(frozen=True)
class StoredResult:
    format: OutputFormat
    size: int

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.format]

    def filename(self, job_id: str) -> str:
        return f"report-{job_id}.{self.format.value}"


def store_result(
    blobs: Blobs, job_id: str, output_format: OutputFormat, body: bytes, ttl_seconds: int, owner: str | None
) -> StoredResult:
    """Store the bytes (QuotaExceeded when the owner has no room for them), then the record."""
    result = StoredResult(output_format, len(body))
    blobs.put(
        report_blob_key(job_id), body, size=len(body), content_type=result.content_type, owner=owner, ttl=ttl_seconds
    )
    blobs.ledger.client.set(result_key(job_id), output_format.value, ex=ttl_seconds)
    return result


def open_result(blobs: Blobs, job_id: str) -> tuple[StoredResult, Blob] | None:
    """The stored result and its bytes to stream, or None once it expired (or never existed)."""
    raw = blobs.ledger.client.get(result_key(job_id))
    if raw is None:
        return None
    blob = blobs.open(report_blob_key(job_id))
    if blob is None:
        return None
    output_format = OutputFormat(raw.decode() if isinstance(raw, bytes) else raw)
    return StoredResult(output_format, blob.info.size), blob
