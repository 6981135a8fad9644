"""Server-Sent Events of one job's status and progress until it ends (GET /v1/jobs/{id}/events,
GET /v1/reports/{id}/events).

Each event carries the job's state at that moment, with the time of that state as its id. A
client that reconnects with `Last-Event-ID` is sent the current state only if it changed since:
a stream of snapshots needs no replay of the states in between.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

import anyio
import anyio.to_thread
import redis
from fastapi import Header
from sse_starlette import EventSourceResponse, ServerSentEvent

from offload_core.settings import Settings
from offload_core.store.jobs import FINISHED, Job, JobStore

logger = logging.getLogger(__name__)

# A client that stops reading gets its stream closed after this long, instead of holding it.
SEND_TIMEOUT_SECONDS = 10.0

EVENT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Server-Sent Events: `progress` on every change, then one `end` (or `timeout`, "
        "`gone`, `error`).",
        "content": {"text/event-stream": {}},
    },
}


def state_id(job: Job) -> str:
    """The event id of a job's state: when it last changed."""
    return f"{job.updated_at.timestamp():.6f}"


# The request header a reconnecting client sends (browsers' EventSource does it by itself).
LastEventId = Annotated[
    str | None, Header(max_length=64, description="Resume after this event: only a newer state is sent.")
]


def job_event_stream(
    store: JobStore,
    first: Job,
    settings: Settings,
    *,
    last_event_id: str | None,
    end_data: Callable[[Job], str],
    noun: str = "job",
) -> EventSourceResponse:
    """The response that streams ``first``'s job (OFFLOAD_JOB_EVENTS_*); ``end_data`` renders the
    final `end` event."""
    poll_seconds, max_seconds = settings.JOB_EVENTS_POLL_SECONDS, settings.JOB_EVENTS_MAX_SECONDS
    stream = _events(store, first, poll_seconds, max_seconds, last_event_id, end_data, noun)
    return EventSourceResponse(stream, send_timeout=SEND_TIMEOUT_SECONDS)


async def _events(
    store: JobStore,
    first: Job,
    poll_seconds: float,
    max_seconds: float,
    last_event_id: str | None,
    end_data: Callable[[Job], str],
    noun: str,
) -> AsyncIterator[ServerSentEvent]:
    job_id = first.id
    deadline = time.monotonic() + max_seconds
    sent = 0
    seen = last_event_id
    job: Job | None = first
    how = f"the {noun} ended"
    try:
        while True:
            if job is None:
                how = f"the {noun}'s record expired"
                yield ServerSentEvent(event="gone", data=json.dumps({"detail": f"No {noun} {job_id} any more."}))
                return
            current = state_id(job)
            if current != seen:
                seen = current
                sent += 1
                data = {"status": job.status.value, "percent": job.progress.percent, "message": job.progress.message}
                yield ServerSentEvent(event="progress", id=current, data=json.dumps(data))
            if job.status in FINISHED:
                yield ServerSentEvent(event="end", id=current, data=end_data(job))
                return
            if time.monotonic() >= deadline:
                how = "the stream reached its time limit"
                detail = f"The stream ended after {max_seconds:g} s; reconnect to follow the {noun} further."
                yield ServerSentEvent(event="timeout", data=json.dumps({"detail": detail}))
                return
            await anyio.sleep(poll_seconds)
            try:
                # The job store's client is synchronous: read it on a worker thread.
                job = await anyio.to_thread.run_sync(store.get, job_id)
            except redis.RedisError as exc:
                how = "Redis failed"
                logger.warning("%s %s events: Redis unavailable (%s)", noun, job_id, exc)
                detail = "Redis is unavailable; reconnect later."
                yield ServerSentEvent(event="error", data=json.dumps({"detail": detail}))
                return
    except anyio.get_cancelled_exc_class():
        how = "the client went away"
        raise
    finally:
        logger.info("%s %s events: stream closed after %d progress events (%s)", noun, job_id, sent, how)
