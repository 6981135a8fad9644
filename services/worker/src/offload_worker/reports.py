"""The report job: stream a CSV or JSON Lines source over HTTP(S), aggregate it as it arrives,
and keep the result in the blob store for download. Memory stays flat however large the source is."""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import cache

import httpx

from offload_core.contract.reports import ReportRequest
from offload_core.engines.outbound import OutboundPolicy, UnsafeURL
from offload_core.sdk import JobContext, JobTimeLimitExceeded, PermanentJobError, TransientJobError
from offload_core.settings import get_settings
from offload_core.store.blob_ledger import Blobs, QuotaExceeded
from offload_core.store.jobs import JobStore
from offload_core.store.report_results import store_result
from offload_worker.report_engine import ReportEngine, ReportError, ReportLimits

logger = logging.getLogger(__name__)

# Progress is written, and a cancel looked for, at most this often: never per row.
PROGRESS_INTERVAL_SECONDS = 0.5
# Answers worth another attempt later; any other 4xx will not change by retrying.
RETRYABLE_STATUSES = frozenset({408, 425, 429})


@cache
def _store() -> JobStore:
    """One Redis client per process, made on first use (after the pool process was forked)."""
    return JobStore.from_settings(get_settings())


@cache
def _blobs() -> Blobs:
    return Blobs.from_settings(get_settings(), _store().client)


def run_report(ctx: JobContext, request: ReportRequest) -> dict[str, object]:
    """Returns the report's summary: rows read, matched and malformed (with the first problems),
    groups, bytes read, the result's format and size, and until when it can be downloaded."""
    settings = get_settings()
    engine = ReportEngine(request, ReportLimits.from_settings(settings))
    started = time.monotonic()
    try:
        bytes_read = _fetch_and_aggregate(ctx, request, engine)
        body = engine.render()
    except ReportError as exc:
        raise PermanentJobError(str(exc)) from exc
    except JobTimeLimitExceeded as exc:
        soft, _ = settings.report_time_limits
        raise PermanentJobError(
            f"timed out after {soft} s with {engine.rows_read:,} rows read; a report may run "
            f"{soft} s (OFFLOAD_REPORT_SOFT_TIME_LIMIT_SECONDS, else OFFLOAD_TASK_SOFT_TIME_LIMIT_SECONDS)"
        ) from exc
    job = _store().get(ctx.job_id)
    try:
        store_result(
            _blobs(),
            ctx.job_id,
            request.output_format,
            body,
            settings.REPORT_RESULT_TTL_SECONDS,
            owner=job.owner if job is not None else None,
        )
    except QuotaExceeded as exc:
        raise PermanentJobError(f"the result cannot be kept: {exc}") from exc
    elapsed = time.monotonic() - started
    ctx.progress(100, f"{engine.rows_read:,} rows, done in {elapsed:.1f} s")
    logger.info(
        "job %s: report over %d rows, %d groups, in %.1f s", ctx.job_id, engine.rows_read, engine.groups, elapsed
    )
    expires_at = datetime.now(UTC) + timedelta(seconds=settings.REPORT_RESULT_TTL_SECONDS)
    return {
        **engine.summary(),
        "bytes_read": bytes_read,
        "output_format": request.output_format.value,
        "result_bytes": len(body),
        "download_url": f"/v1/reports/{ctx.job_id}/download",
        "expires_at": expires_at.isoformat(),
        "seconds": round(elapsed, 3),
    }


def _fetch_and_aggregate(ctx: JobContext, request: ReportRequest, engine: ReportEngine) -> int:
    """Streams the source into the engine; returns the bytes read. Transport failures and 5xx
    are retried (the report starts over); other answers and unsafe addresses are final."""
    settings = get_settings()
    policy = OutboundPolicy.from_settings(settings)
    client = policy.client(
        connect_timeout=settings.REPORT_FETCH_CONNECT_TIMEOUT_SECONDS,
        read_timeout=settings.REPORT_FETCH_READ_TIMEOUT_SECONDS,
    )
    accept = "text/csv, text/plain;q=0.5" if request.source_format == "csv" else "application/jsonl, text/plain;q=0.5"
    try:
        with client, client.stream("GET", request.source_url, headers={"Accept": accept}) as response:
            _check_answer(response)
            chunks = _SourceChunks(ctx, response, engine, settings.REPORT_MAX_SOURCE_BYTES)
            engine.consume(chunks)
            return chunks.received
    except UnsafeURL as exc:
        raise PermanentJobError(f"the source URL is refused: {exc}") from exc
    except httpx.DecodingError as exc:
        raise PermanentJobError(f"the source's compressed body could not be decoded: {exc}") from exc
    except (httpx.TimeoutException, httpx.TransportError) as exc:
        what = "timed out" if isinstance(exc, httpx.TimeoutException) else "failed"
        raise TransientJobError(f"fetching the source {what}: {type(exc).__name__}: {exc}") from exc


def _check_answer(response: httpx.Response) -> None:
    status = response.status_code
    answer = f"the source answered HTTP {status} {response.reason_phrase}".rstrip()
    if status == 200:
        return
    if status >= 500 or status in RETRYABLE_STATUSES:
        raise TransientJobError(answer, retry_after=_retry_after(response.headers.get("Retry-After")))
    if 300 <= status < 400:
        location = response.headers.get("Location", "")
        raise PermanentJobError(f"{answer} (a redirect to {location!r}); redirects are not followed, give that URL")
    raise PermanentJobError(f"{answer}; expected 200 with the data")


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


class _SourceChunks:
    """The response body as byte chunks, counting them against the source size limit and, at a
    bounded rate, writing progress and stopping when the job was cancelled."""

    def __init__(self, ctx: JobContext, response: httpx.Response, engine: ReportEngine, max_bytes: int) -> None:
        self.ctx = ctx
        self.response = response
        self.engine = engine
        self.max_bytes = max_bytes
        self.received = 0  # after decompression: what the limit is about
        length = response.headers.get("Content-Length")
        # Content-Length counts the bytes on the wire, so progress compares it with those.
        self.total = int(length) if length and length.isdigit() else None
        if self.total is not None and self.total > max_bytes:
            raise ReportError(self._too_large(f"is {self.total:,} bytes (its Content-Length), more than"))

    def _too_large(self, size: str) -> str:
        return (
            f"the source {size} the {self.max_bytes:,} bytes a report may read "
            "(OFFLOAD_REPORT_MAX_SOURCE_BYTES); filter it at the source or split it"
        )

    def __iter__(self) -> Iterator[bytes]:
        next_tick = time.monotonic() + PROGRESS_INTERVAL_SECONDS
        for chunk in self.response.iter_bytes():
            self.received += len(chunk)
            if self.received > self.max_bytes:
                raise ReportError(self._too_large("is larger than"))
            yield chunk
            if time.monotonic() >= next_tick:
                self.tick()
                next_tick = time.monotonic() + PROGRESS_INTERVAL_SECONDS

    def tick(self) -> None:
        self.ctx.check_cancelled()
        rows = f"{self.engine.rows_read:,} rows"
        downloaded = self.response.num_bytes_downloaded
        if self.total:
            # 99 at most: the last step (rendering, storing) is still ahead.
            percent = min(99, downloaded * 100 // self.total)
            self.ctx.progress(percent, f"{rows} ({_megabytes(downloaded)} of {_megabytes(self.total)})")
        else:
            # Without a Content-Length nobody knows how far along this is.
            self.ctx.progress(0, f"{rows} ({_megabytes(downloaded)} read, size unknown)")


def _megabytes(count: int) -> str:
    return f"{count / 1_000_000:,.1f} MB"
