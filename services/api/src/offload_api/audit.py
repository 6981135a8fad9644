"""The audit trail: who submitted or deleted what, and when.

Every accepted (2xx) `POST` or `DELETE` under `/v1` appends one entry to a Redis stream capped
at about OFFLOAD_AUDIT_MAX_ENTRIES. ``AuditTrail``, a pure ASGI middleware, covers every /v1
route, present and future, without the routes doing anything: it notes the status each audited
request is answered with and the start of its JSON body (where a job's id is) as they are sent,
and once the answer is out queues the entry. One task writes the queue in batches (AuditLog):
the client never waits for it, and a failed write is logged, never turned into an error for a
request that was accepted.

Who is a ``key_id``: the id of the API key (offload_core.contract.api_keys), never the key itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import redis
import redis.asyncio as aioredis
from opentelemetry import trace
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from offload_api.route_templates import RouteTemplates
from offload_core.contract.api_keys import ANONYMOUS_PRINCIPAL

logger = logging.getLogger(__name__)

STREAM_KEY = "offload:audit"
AUDITED_METHODS = frozenset({"POST", "DELETE"})
AUDITED_PREFIX = "/v1/"
# Job answers are small; a larger body is not read for an id (the entry is still written).
MAX_CAPTURED_BODY = 64 * 1024
MAX_PATH_CHARS = 512


@dataclass
class CapturedResponse:
    """What the client was answered, as AuditTrail saw it go out."""

    status: int | None = None
    json_body: bool = False
    body: bytearray = field(default_factory=bytearray)
    body_complete: bool = False

    def job_id(self) -> str | None:
        """The id of the job the answer describes: a JSON object with an `id` and a `task`, which
        is what submissions (the acceptance) and job cancellations (the job) answer."""
        if not (self.json_body and self.body_complete and self.body):
            return None
        try:
            answer = json.loads(self.body)
        except ValueError:
            return None
        if isinstance(answer, dict) and isinstance(answer.get("id"), str) and "task" in answer:
            return str(answer["id"])
        return None


class AuditTrail:
    """Queues the entry of every accepted audited request once its answer has been sent."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.templates = RouteTemplates()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] not in AUDITED_METHODS
            or not scope["path"].startswith(AUDITED_PREFIX)
        ):
            await self.app(scope, receive, send)
            return
        captured = CapturedResponse()

        async def capturing_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                captured.status = message["status"]
                content_type = dict(message.get("headers", [])).get(b"content-type", b"")
                captured.json_body = content_type.split(b";")[0].strip() == b"application/json"
            elif message["type"] == "http.response.body" and captured.json_body:
                chunk = message.get("body", b"")
                if len(captured.body) + len(chunk) <= MAX_CAPTURED_BODY:
                    captured.body += chunk
                    captured.body_complete = not message.get("more_body", False)
                else:
                    captured.json_body = False  # too large to be a job's answer; not kept
                    captured.body.clear()
            await send(message)

        await self.app(scope, receive, capturing_send)
        if captured.status is None or not 200 <= captured.status < 300:
            return  # not accepted: nothing happened worth auditing
        audit_log: AuditLog = scope["app"].state.audit_log
        audit_log.record(self._entry(scope, captured))

    def _entry(self, scope: Scope, captured: CapturedResponse) -> dict[str, str | int | float]:
        path: str = scope["path"]
        principal = scope.get("state", {}).get("principal", ANONYMOUS_PRINCIPAL)
        fields: dict[str, str | int | float] = {
            "at": time.time(),
            "key_id": principal.id,
            "method": scope["method"],
            "route": self.templates.of(scope) or path[:MAX_PATH_CHARS],
            "path": path[:MAX_PATH_CHARS],
            "status": cast(int, captured.status),
        }
        if (trace_id := _trace_id()) is not None:
            fields["trace_id"] = trace_id
        if (job_id := captured.job_id()) is not None:
            fields["job_id"] = job_id
        return fields


class AuditEntry(BaseModel):
    id: str = Field(description="The entry's stream id; pass it as `cursor` to read older entries.")
    at: datetime = Field(description="When the request was handled.")
    key_id: str = Field(description="The id of the API key used (never the key), or `anonymous`.")
    method: str
    route: str = Field(description="The route template, e.g. /v1/jobs/{job_id}.")
    path: str
    status: int = Field(description="The status the request was answered with.")
    job_id: str | None = Field(None, description="The job the answer named, if any.")
    trace_id: str | None = Field(None, description="The request's trace id (W3C), to find its trace and logs.")


class AuditPage(BaseModel):
    entries: list[AuditEntry]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next (older) page; null at the end.")


def _trace_id() -> str | None:
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


class AuditLog:
    """Appends entries to the stream from one task, many per round trip: under load, the
    entries of concurrent requests share a pipeline instead of a write each.

    At most ``buffer_max`` entries wait; beyond that (Redis down for long) new entries are
    dropped and counted in a warning, so memory stays bounded. ``close`` writes what waits."""

    BATCH_MAX = 500

    def __init__(self, client: aioredis.Redis, max_entries: int, buffer_max: int = 10_000) -> None:
        self.client = client
        self.max_entries = max_entries
        self._pending: asyncio.Queue[dict[str, str | int | float]] = asyncio.Queue(buffer_max)
        self._writer: asyncio.Task[None] | None = None
        self._dropped = 0

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write_forever(), name="audit-log")

    def record(self, fields: dict[str, str | int | float]) -> None:
        """Queue an entry; it is written within a round trip or so."""
        try:
            self._pending.put_nowait(fields)
        except asyncio.QueueFull:
            self._dropped += 1
            if self._dropped == 1 or self._dropped % 1000 == 0:
                logger.warning("audit buffer full: %d entries dropped (is Redis reachable?)", self._dropped)

    async def _write_forever(self) -> None:
        while True:
            batch = [await self._pending.get()]
            while len(batch) < self.BATCH_MAX and not self._pending.empty():
                batch.append(self._pending.get_nowait())
            await self._write(batch)

    async def _write(self, batch: list[dict[str, str | int | float]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for fields in batch:
            # "~": Redis trims whole nodes, so the cap costs next to nothing (and is approximate).
            pipe.xadd(STREAM_KEY, cast(Any, fields), maxlen=self.max_entries, approximate=True)
        try:
            outcomes = await pipe.execute(raise_on_error=False)
        except redis.RedisError as exc:
            outcomes = [exc] * len(batch)
        for fields, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, Exception):
                logger.warning(
                    "audit entry not written for %s %s (status %s, job %s): %s",
                    fields["method"],
                    fields["path"],
                    fields["status"],
                    fields.get("job_id", "-"),
                    outcome,
                )

    async def close(self, timeout: float) -> None:
        """Write the entries still waiting (within ``timeout``), then stop."""
        if self._writer is None:
            return
        self._writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer
        batch: list[dict[str, str | int | float]] = []
        while not self._pending.empty():
            batch.append(self._pending.get_nowait())
        if batch:
            try:
                async with asyncio.timeout(timeout):
                    for start in range(0, len(batch), self.BATCH_MAX):
                        await self._write(batch[start : start + self.BATCH_MAX])
            except TimeoutError:
                logger.warning("audit entries not all written at shutdown: gave up after %.0f s", timeout)


def _decode(stream_id: str, fields: dict[str, str]) -> AuditEntry:
    return AuditEntry(
        id=stream_id,
        at=datetime.fromtimestamp(float(fields["at"]), UTC),
        key_id=fields.get("key_id", ANONYMOUS_PRINCIPAL.id),
        method=fields.get("method", ""),
        route=fields.get("route", ""),
        path=fields.get("path", ""),
        status=int(fields.get("status", 0)),
        job_id=fields.get("job_id"),
        trace_id=fields.get("trace_id"),
    )


# A filtered page reads at most this many entries, so a filter that matches little cannot make
# one request walk the whole stream; the page then ends early with a cursor to go on.
MAX_SCANNED_PER_PAGE = 10_000
_FILTERED_BATCH = 500


def read_page(
    client: redis.Redis,
    *,
    limit: int,
    cursor: str | None = None,
    key_id: str | None = None,
    method: str | None = None,
) -> AuditPage:
    """Entries newest first, older than ``cursor`` (a stream id) when given."""
    filtered = key_id is not None or method is not None
    batch_size = _FILTERED_BATCH if filtered else limit
    upper = "+" if cursor is None else _id_before(cursor)
    if upper is None:
        return AuditPage(entries=[], next_cursor=None)  # nothing is older than 0-0
    entries: list[AuditEntry] = []
    scanned = 0
    last_seen: str | None = None
    while scanned < MAX_SCANNED_PER_PAGE:
        batch = cast(list[tuple[str, dict[str, str]]], client.xrevrange(STREAM_KEY, upper, "-", count=batch_size))
        for stream_id, fields in batch:
            scanned += 1
            last_seen = stream_id
            if (key_id is None or fields.get("key_id") == key_id) and (
                method is None or fields.get("method") == method
            ):
                entries.append(_decode(stream_id, fields))
                if len(entries) == limit:
                    return AuditPage(entries=entries, next_cursor=stream_id)
        if len(batch) < batch_size:
            return AuditPage(entries=entries, next_cursor=None)  # the oldest entry was read
        upper = _id_before(batch[-1][0])
        if upper is None:
            return AuditPage(entries=entries, next_cursor=None)
    return AuditPage(entries=entries, next_cursor=last_seen)


MAX_ID_PART = 2**64 - 1  # each half of a stream id is an unsigned 64-bit number


def parse_stream_id(text: str) -> tuple[int, int] | None:
    """(milliseconds, sequence) of a stream id such as 1795618531588-0, or None if it is not one."""
    milliseconds, _, sequence = text.partition("-")
    if not (milliseconds.isdigit() and sequence.isdigit()):
        return None
    parts = int(milliseconds), int(sequence)
    return parts if max(parts) <= MAX_ID_PART else None


def _id_before(stream_id: str) -> str | None:
    """The greatest id below ``stream_id`` (an inclusive bound, so any Redis version takes it),
    or None below 0-0."""
    parsed = parse_stream_id(stream_id)
    if parsed is None:
        raise ValueError(f"not a stream id: {stream_id!r}")
    milliseconds, sequence = parsed
    if sequence > 0:
        return f"{milliseconds}-{sequence - 1}"
    if milliseconds > 0:
        return f"{milliseconds - 1}-{MAX_ID_PART}"
    return None
