"""`AsyncOffload`: the client for asyncio code, with the same methods as `Offload` (awaited)."""

from __future__ import annotations

import asyncio
import builtins
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self, TypeVar

import httpx
from pydantic import BaseModel

from offload_client import _calls as calls
from offload_client import errors, models
from offload_client._base import (
    DEFAULT_TIMEOUT,
    EventFollower,
    Settings,
    SseParser,
    filename_from,
    settings_from,
    unreachable,
)
from offload_client.client import _image_bytes

T = TypeVar("T")
Item = TypeVar("Item")
Cursor = TypeVar("Cursor", str, int)


class AsyncOffload:
    """Submit and follow Offload jobs from asyncio code; `Offload`'s methods, awaited.

    ``AsyncOffload()`` reads ``OFFLOAD_URL`` and ``OFFLOAD_API_KEY``; arguments take precedence. Every
    request has a timeout; refused (429, 503) and failed (connection, timeout) requests are retried
    with backoff that honours ``Retry-After``. Use it as an async context manager, or await ``aclose()``."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        retries: int = 3,
        backoff: float = 0.5,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings: Settings = settings_from(url, api_key, timeout, retries, backoff)
        self._http = httpx.AsyncClient(
            base_url=self.settings.url,
            headers=self.settings.headers(),
            timeout=self.settings.timeout,
            transport=transport,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- jobs ------------------------------------------------------------------------------------

    async def submit(
        self,
        job_type: str,
        payload: Mapping[str, Any] | BaseModel,
        *,
        queue: str | None = None,
        priority: int | None = None,
        idempotency_key: str | None = None,
        run_at: datetime | None = None,
        delay_seconds: float | None = None,
    ) -> models.JobAccepted:
        """Submit a job of ``job_type`` (e.g. ``"acme.charge"``). Without ``idempotency_key`` a new
        UUID is sent, so retries of this call never make a second job. With ``run_at`` (aware) or
        ``delay_seconds`` the job is `scheduled` until then."""
        return await self._send(
            calls.submit(job_type, payload, queue, priority, idempotency_key, run_at, delay_seconds)
        )

    async def get(self, job_id: str) -> models.Job:
        return await self._send(calls.get_job(job_id))

    def list_jobs(
        self,
        *,
        job_type: str | None = None,
        status: str | None = None,
        queue: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        page_size: int | None = None,
    ) -> AsyncIterator[models.Job]:
        """Jobs newest first, following the pages' cursors until the last."""

        async def page(cursor: str | None) -> tuple[builtins.list[models.Job], str | None]:
            found = await self._send(
                calls.list_jobs(
                    job_type=job_type,
                    status=status,
                    queue=queue,
                    created_after=created_after,
                    created_before=created_before,
                    limit=page_size,
                    cursor=cursor,
                )
            )
            return found.jobs, found.next_cursor

        return _paginate(page)

    async def cancel(self, job_id: str) -> models.Job:
        """Cancel a job: a waiting one never runs, a running one is asked to stop. Raises
        `Conflict` when it has already ended."""
        return await self._send(calls.cancel(job_id))

    async def wait(self, job_id: str, *, timeout: float | None = 60.0, poll_interval: float = 1.0) -> models.Job:
        """The job once it has ended (succeeded, failed or cancelled: check ``job.status``).
        Raises `WaitTimeout` if it has not ended within ``timeout`` seconds (None: no limit)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        interval = min(0.1, poll_interval)
        while True:
            job = await self.get(job_id)
            if job.finished:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise errors.WaitTimeout(job_id, timeout or 0.0, job.status)
            pause = interval if deadline is None else min(interval, max(0.0, deadline - time.monotonic()))
            await asyncio.sleep(pause)
            interval = min(poll_interval, interval * 2)

    def events(
        self, job_id: str, *, last_event_id: str | None = None, resume: bool = True
    ) -> AsyncIterator[models.JobEvent]:
        """The job's Server-Sent Events: `progress` on each change, then `end` (``event.job``).
        With ``resume`` a stream the server closes early, or a broken connection, is followed
        again from the last event seen."""
        return self._follow(calls.job_events_path(job_id), last_event_id, resume)

    async def job_types(self) -> builtins.list[models.JobType]:
        return await self._send(calls.job_types())

    # -- queues and dead letters -----------------------------------------------------------------

    async def queues(self) -> builtins.list[models.QueueInfo]:
        return await self._send(calls.queues())

    def list_dead_letters(
        self, *, queue: str | None = None, task: str | None = None, page_size: int | None = None
    ) -> AsyncIterator[models.DeadLetter]:
        async def page(cursor: int | None) -> tuple[builtins.list[models.DeadLetter], int | None]:
            found = await self._send(calls.list_dead_letters(queue=queue, task=task, limit=page_size, cursor=cursor))
            return found.dead_letters, found.next_cursor

        return _paginate(page)

    async def get_dead_letter(self, dead_letter_id: str) -> models.DeadLetter:
        return await self._send(calls.get_dead_letter(dead_letter_id))

    async def replay_dead_letter(
        self, dead_letter_id: str, *, idempotency_key: str | None = None
    ) -> models.JobAccepted:
        return await self._send(calls.replay_dead_letter(dead_letter_id, idempotency_key))

    async def delete_dead_letter(self, dead_letter_id: str) -> None:
        await self._send(calls.delete_dead_letter(dead_letter_id))

    # -- recurring schedules ------------------------------------------------------------------

    async def create_schedule(
        self,
        job_type: str,
        payload: Mapping[str, Any] | BaseModel,
        *,
        cron: str | None = None,
        timezone: str | None = None,
        interval_seconds: float | None = None,
        misfire: str | None = None,
        queue: str | None = None,
        priority: int | None = None,
        paused: bool | None = None,
        idempotency_key: str | None = None,
    ) -> models.Schedule:
        """Fire ``job_type`` with ``payload`` on ``cron`` (read in ``timezone``, UTC by default)
        or every ``interval_seconds``; ``misfire`` is ``"skip"`` (default) or ``"run_once"``.
        Without ``idempotency_key`` a new UUID is sent, so retries never make a second schedule."""
        body = calls.schedule_body(
            job_type,
            payload,
            cron=cron,
            timezone=timezone,
            interval_seconds=interval_seconds,
            misfire=misfire,
            queue=queue,
            priority=priority,
            paused=paused,
        )
        return await self._send(calls.create_schedule(body, idempotency_key))

    async def list_schedules(self) -> builtins.list[models.Schedule]:
        return await self._send(calls.list_schedules())

    async def get_schedule(self, schedule_id: str) -> models.Schedule:
        return await self._send(calls.get_schedule(schedule_id))

    async def update_schedule(
        self,
        schedule_id: str,
        *,
        paused: bool | None = None,
        misfire: str | None = None,
        payload: Mapping[str, Any] | BaseModel | None = None,
    ) -> models.Schedule:
        """Pause (``paused=True``) or resume, change the misfire policy or later ticks' payload."""
        change = calls.schedule_change(paused=paused, misfire=misfire, payload=payload)
        return await self._send(calls.update_schedule(schedule_id, change))

    async def delete_schedule(self, schedule_id: str) -> None:
        await self._send(calls.delete_schedule(schedule_id))

    # -- notifications, emails, compute ----------------------------------------------------------

    async def send_notification(
        self,
        message: Mapping[str, Any],
        targets: Sequence[Mapping[str, Any]],
        *,
        priority: int | None = None,
        idempotency_key: str | None = None,
    ) -> models.JobAccepted:
        """``message``: ``{"title", "body", "severity"?, "data"?}``; ``targets``: ``{"channel":
        "webhook", "url"}`` or ``{"channel": "email", "address"}``."""
        body = calls.without_none(message=dict(message), targets=[dict(t) for t in targets], priority=priority)
        return await self._send(calls.send_notification(body, idempotency_key))

    async def get_notification(self, job_id: str) -> models.Notification:
        return await self._send(calls.get_notification(job_id))

    async def send_email(
        self,
        to: Sequence[str],
        subject: str,
        text: str,
        *,
        html: str | None = None,
        reply_to: str | None = None,
        queue: str | None = None,
        priority: int | None = None,
        idempotency_key: str | None = None,
    ) -> models.JobAccepted:
        body = calls.without_none(
            to=list(to), subject=subject, text=text, html=html, reply_to=reply_to, queue=queue, priority=priority
        )
        return await self._send(calls.send_email(body, idempotency_key))

    async def compute(
        self,
        numbers: Sequence[float],
        *,
        percentiles: Sequence[float] | None = None,
        priority: int | None = None,
        idempotency_key: str | None = None,
    ) -> models.JobAccepted:
        body = calls.without_none(
            numbers=list(numbers), percentiles=None if percentiles is None else list(percentiles), priority=priority
        )
        return await self._send(calls.compute(body, idempotency_key))

    # -- reports ---------------------------------------------------------------------------------

    async def submit_report(
        self, spec: Mapping[str, Any] | BaseModel, *, idempotency_key: str | None = None
    ) -> models.ReportAccepted:
        """``spec``: the body of POST /v1/reports (``source_url``, ``source_format``, ``group_by``, ...)."""
        return await self._send(calls.submit_report(spec, idempotency_key))

    async def get_report(self, job_id: str) -> models.Report:
        return await self._send(calls.get_report(job_id))

    def report_events(
        self, job_id: str, *, last_event_id: str | None = None, resume: bool = True
    ) -> AsyncIterator[models.JobEvent]:
        return self._follow(calls.report_events_path(job_id), last_event_id, resume)

    async def download_report(self, job_id: str, destination: str | Path | IO[bytes]) -> Path | None:
        """Write a succeeded report's result to a file (a directory gets the server's file name,
        ``report-<id>.csv``) or an open binary file; the path written, if one. Raises `Conflict`
        while the report has not succeeded."""
        return await self._download(calls.report_download_path(job_id), destination, f"report-{job_id}")

    async def stream_report(self, job_id: str) -> AsyncIterator[bytes]:
        """A succeeded report's result in chunks, for results too large to hold at once."""
        async with self._stream(calls.report_download_path(job_id)) as response:
            async for chunk in response.aiter_bytes():
                yield chunk

    # -- images ----------------------------------------------------------------------------------

    async def upload_image(
        self,
        image: str | Path | bytes | IO[bytes],
        *,
        filename: str | None = None,
        tags: Sequence[str] | None = None,
        idempotency_key: str | None = None,
    ) -> models.Image:
        data, name = _image_bytes(image, filename)
        return await self._send(calls.upload_image(data, name, tags, idempotency_key))

    def search_images(
        self, *, tags: Sequence[str] | None = None, page_size: int | None = None
    ) -> AsyncIterator[models.ImageHit]:
        async def page(cursor: int | None) -> tuple[builtins.list[models.ImageHit], int | None]:
            found = await self._send(calls.search_images(tags, page_size, cursor))
            return found.images, found.next_cursor

        return _paginate(page)

    async def get_image(self, image_id: str) -> models.Image:
        return await self._send(calls.get_image(image_id))

    async def process_image(
        self,
        image_id: str,
        operations: Sequence[Mapping[str, Any] | BaseModel],
        *,
        notify: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> models.PipelineAccepted:
        """Run ``operations`` (e.g. ``[{"op": "thumbnail", "size": 128}]``) on an uploaded image."""
        return await self._send(calls.process_image(image_id, operations, notify, idempotency_key))

    async def delete_image(self, image_id: str) -> None:
        """Delete the image and its result now, freeing the key's blob quota."""
        await self._send(calls.delete_image(image_id))

    async def image_result(
        self, image_id: str, destination: str | Path | IO[bytes] | None = None
    ) -> bytes | Path | None:
        """The processed image: its bytes, or written to ``destination`` (a file, a directory or
        an open binary file). Raises `Conflict` until the pipeline has succeeded."""
        if destination is None:
            async with self._stream(calls.image_result_path(image_id)) as response:
                return await response.aread()
        return await self._download(calls.image_result_path(image_id), destination, f"image-{image_id}")

    # -- audit and health ------------------------------------------------------------------------

    def list_audit(
        self, *, key_id: str | None = None, method: str | None = None, page_size: int | None = None
    ) -> AsyncIterator[models.AuditEntry]:
        async def page(cursor: str | None) -> tuple[builtins.list[models.AuditEntry], str | None]:
            found = await self._send(calls.list_audit(key_id=key_id, method=method, limit=page_size, cursor=cursor))
            return found.entries, found.next_cursor

        return _paginate(page)

    async def live(self) -> bool:
        return await self._send(calls.live())

    async def ready(self) -> bool:
        return await self._send(calls.ready())

    # -- transport -------------------------------------------------------------------------------

    async def _send(self, call: calls.Call[T]) -> T:
        policy = self.settings.retry
        for attempt in range(policy.retries + 1):
            last = attempt == policy.retries
            try:
                response = await self._http.request(
                    call.method,
                    call.path,
                    params=call.params,
                    json=call.json,
                    files=call.files,
                    data=call.data,
                    headers=call.headers,
                )
            except httpx.TransportError as exc:
                if last:
                    raise unreachable(self.settings, exc) from exc
                await asyncio.sleep(policy.delay(attempt))
                continue
            if response.is_success or response.status_code in call.accept:
                return call.parse(response)
            if policy.retryable(response) and not last:
                await asyncio.sleep(policy.delay(attempt, errors.retry_after_seconds(response)))
                continue
            raise errors.error_from_response(response)
        raise AssertionError("unreachable")  # the loop returns or raises

    @asynccontextmanager
    async def _stream(self, path: str) -> AsyncIterator[httpx.Response]:
        """A streamed GET whose error answers raise as `_send`'s do (the retryable ones retried)."""
        policy = self.settings.retry
        for attempt in range(policy.retries + 1):
            last = attempt == policy.retries
            streaming = False
            try:
                async with self._http.stream("GET", path) as response:
                    if response.is_success:
                        streaming = True
                        yield response
                        return
                    await response.aread()
            except httpx.TransportError as exc:
                if streaming or last:
                    raise unreachable(self.settings, exc) from exc
                await asyncio.sleep(policy.delay(attempt))
                continue
            if policy.retryable(response) and not last:
                await asyncio.sleep(policy.delay(attempt, errors.retry_after_seconds(response)))
                continue
            raise errors.error_from_response(response)

    async def _follow(self, path: str, last_event_id: str | None, resume: bool) -> AsyncIterator[models.JobEvent]:
        follower = EventFollower(path, last_event_id, resume, self.settings.retry)
        while not follower.ended:
            try:
                async with self._http.stream(
                    "GET", path, headers=follower.headers(), timeout=self.settings.stream_timeout
                ) as response:
                    if not response.is_success:
                        await response.aread()
                        await asyncio.sleep(follower.refused(response))
                        continue
                    parser = SseParser()
                    async for line in response.aiter_lines():
                        event = parser.feed(line)
                        if event is None:
                            continue
                        deliver, done = follower.on_event(event)
                        if deliver:
                            yield event
                        if done:
                            break
                    else:
                        follower.closed()
            except httpx.TransportError as exc:
                await asyncio.sleep(follower.broken(exc))

    async def _download(self, path: str, destination: str | Path | IO[bytes], fallback_name: str) -> Path | None:
        async with self._stream(path) as response:
            if isinstance(destination, str | Path):
                target = Path(destination)
                if target.is_dir():
                    target = target / filename_from(response, fallback_name)
                with target.open("wb") as file:
                    async for chunk in response.aiter_bytes():
                        file.write(chunk)
                return target
            async for chunk in response.aiter_bytes():
                destination.write(chunk)
            return None


async def _paginate(
    page: Callable[[Cursor | None], Awaitable[tuple[builtins.list[Item], Cursor | None]]],
) -> AsyncIterator[Item]:
    cursor: Cursor | None = None
    while True:
        items, cursor = await page(cursor)
        for item in items:
            yield item
        if cursor is None:
            return
