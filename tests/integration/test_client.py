"""The Python client (offload_client) against the real stack: every kind of operation it offers,
sync and async, its typed answers and its exceptions."""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from PIL import Image as PILImage
from pydantic import BaseModel

from offload_client import (
    OPERATIONS,
    AsyncOffload,
    Conflict,
    Image,
    JobStatus,
    NotFound,
    Offload,
    Unauthorized,
    ValidationFailed,
    WaitTimeout,
)
from offload_dev.polling import wait_for
from tests.support import API_KEY, SALES_CSV, Stack, served


class Echo(BaseModel):
    message: str
    sleep_ms: int = 0
    fail_times: int = 0


class EchoResult(BaseModel):
    message: str
    attempts: int


@pytest.fixture
def offload(stack: Stack) -> Iterator[Offload]:
    with Offload(stack.api.extra["url"], API_KEY, timeout=15) as client:
        yield client


def test_submit_a_model_then_wait_for_the_typed_result(offload: Offload) -> None:
    accepted = offload.submit("offload.echo", Echo(message="typed"), queue="low", priority=6)

    assert (accepted.task, accepted.queue, accepted.priority) == ("offload.echo", "low", 6)
    assert accepted.status_url == f"/v1/jobs/{accepted.id}"
    assert accepted.replayed is False
    job = offload.wait(accepted.id, timeout=30)
    assert job.status == JobStatus.SUCCEEDED
    assert job.succeeded
    assert job.finished
    assert job.result["message"] == "typed"
    assert job.result_as(EchoResult).message == "typed"
    assert offload.get(accepted.id).finished_at == job.finished_at


def test_a_repeated_idempotency_key_returns_the_first_job(offload: Offload) -> None:
    first = offload.submit("offload.echo", {"message": "once"}, idempotency_key="client-test-once")
    again = offload.submit("offload.echo", {"message": "once"}, idempotency_key="client-test-once")

    assert again.id == first.id
    assert again.replayed is True
    with pytest.raises(ValidationFailed):  # the same key for another request: 422, as the IETF draft says
        offload.submit("offload.echo", {"message": "other"}, idempotency_key="client-test-once")


def test_errors_are_exceptions_by_kind(stack: Stack, offload: Offload) -> None:
    with pytest.raises(NotFound) as missing:
        offload.get("no-such-job")
    assert "no-such-job" in missing.value.detail
    with pytest.raises(NotFound, match=r"offload\.echo"):  # an unknown type names the known ones
        offload.submit("acme.nothing", {})
    with pytest.raises(ValidationFailed) as invalid:
        offload.submit("offload.echo", {"message": "x", "sleep_ms": -1}, priority=3)
    assert [e.field for e in invalid.value.errors] == ["body.payload.sleep_ms"]
    with Offload(stack.api.extra["url"], "wrong-key-0123456789") as stranger, pytest.raises(Unauthorized):
        stranger.queues()


def test_wait_gives_up_after_its_timeout_and_cancel_stops_the_job(offload: Offload) -> None:
    accepted = offload.submit("offload.echo", {"message": "slow", "sleep_ms": 20_000})

    with pytest.raises(WaitTimeout) as timed_out:
        offload.wait(accepted.id, timeout=0.5)
    assert timed_out.value.job_id == accepted.id
    offload.cancel(accepted.id)
    assert offload.wait(accepted.id, timeout=30).status == JobStatus.CANCELLED
    with pytest.raises(Conflict):
        offload.cancel(accepted.id)


def test_list_jobs_follows_the_cursor_through_every_page(offload: Offload) -> None:
    since = datetime.now(UTC)
    ids = [offload.submit("offload.echo", {"message": f"page {n}"}, queue="low").id for n in range(5)]

    listed = [job.id for job in offload.list_jobs(job_type="offload.echo", created_after=since, page_size=2)]

    assert listed == list(reversed(ids))


def test_events_follow_a_job_to_its_end_and_resume_from_the_last_seen(offload: Offload) -> None:
    accepted = offload.submit("offload.echo", {"message": "events", "sleep_ms": 1500})

    events = list(offload.events(accepted.id))

    *progress, end = events
    assert end.event == "end"
    assert end.job is not None
    assert end.job.result["message"] == "events"
    assert {e.event for e in progress} == {"progress"}
    assert len({e.percent for e in progress}) >= 3, progress
    again = list(offload.events(accepted.id, last_event_id=end.id))
    assert [e.event for e in again] == ["end"]  # nothing newer than what was seen


def test_submit_a_delayed_job_sync_and_async(offload: Offload, stack: Stack) -> None:
    run_at = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
    at = offload.submit("offload.echo", {"message": "at"}, run_at=run_at)
    assert at.status == JobStatus.SCHEDULED
    assert at.run_at == run_at
    assert offload.get(at.id).status == JobStatus.SCHEDULED

    async def submit_later() -> str:
        async with AsyncOffload(stack.api.extra["url"], API_KEY) as client:
            later = await client.submit("offload.echo", {"message": "later"}, delay_seconds=1)
            assert later.status == "scheduled"
            assert later.run_at is not None
            return later.id

    later_id = asyncio.run(submit_later())
    for job_id in (at.id, later_id):
        job = offload.wait(job_id, timeout=30)
        assert job.succeeded, job
        assert job.run_at is not None
        assert job.started_at is not None
        assert job.started_at >= job.run_at
    with pytest.raises(ValidationFailed, match="run_at"):
        offload.submit("offload.echo", {"message": "x"}, run_at=datetime(2030, 1, 1))  # no time zone


def test_schedules_are_created_paused_listed_and_deleted(offload: Offload) -> None:
    schedule = offload.create_schedule(
        "offload.echo", Echo(message="nightly"), cron="0 3 * * *", timezone="Europe/Riga"
    )
    assert schedule.job_type == "offload.echo"
    assert len(schedule.next_fire_times) == 3
    assert schedule.id in [s.id for s in offload.list_schedules()]
    paused = offload.update_schedule(schedule.id, paused=True, misfire="run_once")
    assert paused.paused
    assert paused.misfire == "run_once"
    assert paused.next_fire_times == []
    assert offload.get_schedule(schedule.id).paused
    with pytest.raises(ValidationFailed, match="timezone"):
        offload.create_schedule("offload.echo", {"message": "x"}, cron="0 3 * * *", timezone="Nowhere/Else")
    offload.delete_schedule(schedule.id)
    with pytest.raises(NotFound):
        offload.get_schedule(schedule.id)


def test_the_async_client_has_the_same_operations(stack: Stack) -> None:
    async def scenario() -> tuple[str, list[str], str]:
        async with AsyncOffload(stack.api.extra["url"], API_KEY) as offload:
            accepted = await offload.submit("offload.echo", {"message": "async", "sleep_ms": 600})
            kinds = [event.event async for event in offload.events(accepted.id)]
            job = await offload.wait(accepted.id, timeout=30)
            listed = [j.id async for j in offload.list_jobs(job_type="offload.echo", page_size=50)]
            assert accepted.id in listed
            return job.status, kinds, (await offload.queues())[0].name

    status, kinds, first_queue = asyncio.run(scenario())

    assert status == "succeeded"
    assert kinds[-1] == "end"
    assert first_queue
    sync_methods = {name for name in dir(Offload) if not name.startswith("_")} - {"close"}
    async_methods = {name for name in dir(AsyncOffload) if not name.startswith("_")} - {"aclose"}
    assert sync_methods == async_methods
    assert set(OPERATIONS.values()) <= sync_methods


def test_queues_job_types_and_dead_letters(offload: Offload) -> None:
    assert {q.name for q in offload.queues()} >= {"high", "default", "low"}
    echo = next(t for t in offload.job_types() if t.name == "offload.echo")
    assert echo.consumed
    assert echo.request_schema["required"] == ["message"]

    accepted = offload.submit("offload.echo", {"message": "doomed", "fail_times": 20})
    assert offload.wait(accepted.id, timeout=30).status == JobStatus.FAILED
    letter = wait_for(
        lambda: next((d for d in offload.list_dead_letters(task="offload.echo") if d.id == accepted.id), None),
        10,
        "the dead letter",
    )
    assert letter.payload["message"] == "doomed"
    assert offload.get_dead_letter(accepted.id).attempts == letter.attempts
    replayed = offload.replay_dead_letter(accepted.id)
    assert replayed.id != accepted.id
    offload.delete_dead_letter(accepted.id)
    with pytest.raises(NotFound):
        offload.get_dead_letter(accepted.id)


def test_emails_and_notifications_are_delivered(stack: Stack, offload: Offload) -> None:
    email = offload.send_email(["client@example.com"], "From the client", "Sent with offload_client.")
    assert offload.wait(email.id, timeout=30).succeeded
    assert stack.smtp.messages_to("client@example.com")

    path = "/hooks/client-test"
    accepted = offload.send_notification(
        {"title": "Client", "body": "A notification from the client."},
        [{"channel": "webhook", "url": stack.webhooks.url(path)}],
    )
    assert offload.wait(accepted.id, timeout=30).succeeded
    notification = offload.get_notification(accepted.id)
    assert [(t.channel, t.status, t.http_status) for t in notification.targets] == [("webhook", "delivered", 200)]


@pytest.fixture
def csv_source() -> Iterator[str]:
    with served(SALES_CSV) as url:
        yield url


def test_a_report_is_followed_then_downloaded_to_a_file_and_streamed(
    offload: Offload, csv_source: str, tmp_path: Path
) -> None:
    spec = {"source_url": csv_source, "source_format": "csv", "group_by": ["city"]}
    accepted = offload.submit_report({**spec, "metrics": [{"op": "sum", "column": "qty"}]})
    assert accepted.download_url == f"/v1/reports/{accepted.id}/download"

    events = list(offload.report_events(accepted.id))

    assert (events[-1].event, events[-1].status) == ("end", "succeeded"), events[-1]
    assert offload.get_report(accepted.id).status == "succeeded"
    written = offload.download_report(accepted.id, tmp_path)
    assert written == tmp_path / f"report-{accepted.id}.csv"
    assert written.read_text().splitlines()[1:] == ["Lima,5", "Oslo,7"]
    assert b"".join(offload.stream_report(accepted.id)) == written.read_bytes()


def test_an_image_is_uploaded_processed_and_fetched(offload: Offload, tmp_path: Path) -> None:
    original = io.BytesIO()
    PILImage.new("RGB", (64, 48), "orange").save(original, "PNG")

    image = offload.upload_image(original.getvalue(), filename="orange.png", tags=["client"])
    assert (image.format, image.width, image.height, image.tags) == ("png", 64, 48, ["client"])
    accepted = offload.process_image(image.id, [{"op": "thumbnail", "size": 16}])
    assert accepted.image_id == image.id

    def ended() -> Image | None:
        current = offload.get_image(image.id)
        return current if current.pipeline and current.pipeline["status"] in {"succeeded", "failed"} else None

    done = wait_for(ended, 30, "the pipeline to end")
    assert done.pipeline is not None
    assert done.pipeline["status"] == "succeeded", done.pipeline
    result = offload.image_result(image.id)
    assert isinstance(result, bytes)
    assert PILImage.open(io.BytesIO(result)).size == (16, 12)
    assert any(hit.id == image.id for hit in offload.search_images(tags=["client"]))
    offload.delete_image(image.id)
    assert all(hit.id != image.id for hit in offload.search_images(tags=["client"]))
    with pytest.raises(NotFound):
        offload.get_image(image.id)


def test_compute_audit_and_health(offload: Offload) -> None:
    accepted = offload.compute([1, 2, 3, 4], percentiles=[50])
    assert offload.wait(accepted.id, timeout=30).result["median"] == 2.5
    entries = [entry for _, entry in zip(range(20), offload.list_audit(method="POST"), strict=False)]
    assert any(entry.job_id == accepted.id for entry in entries)
    assert offload.live()
    assert offload.ready()


def test_every_operation_of_the_api_has_a_client_method(offload: Offload, stack: Stack) -> None:
    """A new route without client support fails here: add it to offload_client._calls.OPERATIONS."""
    schema = offload._http.get("/openapi.json").json()
    job_types = {t.name for t in offload.job_types()}
    uncovered = []
    for path, operations in schema["paths"].items():
        for method in operations:
            key = (method.upper(), path)
            typed_submit = method == "post" and (m := re.fullmatch(r"/v1/jobs/(.+)", path)) and m[1] in job_types
            if key not in OPERATIONS and not typed_submit:
                uncovered.append(key)
    assert uncovered == []
    described = {(method.upper(), path) for path, ops in schema["paths"].items() for method in ops}
    generic = {("POST", "/v1/jobs/{job_type}")}
    assert set(OPERATIONS) - generic <= described, "OPERATIONS names an operation the API no longer has"
