"""Reports: a CSV or JSON Lines source aggregated by a worker on `low`, with live progress as
Server-Sent Events and the result kept for download."""

from __future__ import annotations

import logging

import anyio.to_thread
from fastapi import APIRouter, HTTPException, Response
from fastapi.responses import StreamingResponse
from sse_starlette import EventSourceResponse

from offload_api.auth import PrincipalDep, find_job
from offload_api.deps import BlobsDep, SettingsDep, StoreDep
from offload_api.enqueue import SUBMIT_RESPONSES, JobAccepted, SubmissionDep
from offload_api.errors import InvalidField
from offload_api.events import EVENT_RESPONSES, LastEventId, job_event_stream
from offload_api.routes.jobs import JobId
from offload_core.contract import builtin_jobs
from offload_core.contract.api_keys import Principal
from offload_core.contract.reports import ReportSubmission
from offload_core.engines.outbound import OutboundPolicy, UnsafeURL
from offload_core.store.jobs import FINISHED, Job, JobStatus, JobStore
from offload_core.store.report_results import open_result

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/reports", tags=["reports"])
PREFIX = "/v1/reports"


class ReportAccepted(JobAccepted):
    events_url: str
    download_url: str


class Report(Job):
    """The report's job (status, progress, and once it succeeded its summary as `result`) and
    where to follow and fetch it."""

    events_url: str
    download_url: str


def _links(job_id: str) -> dict[str, str]:
    return {
        "status_url": f"{PREFIX}/{job_id}",
        "events_url": f"{PREFIX}/{job_id}/events",
        "download_url": f"{PREFIX}/{job_id}/download",
    }


def _report(job: Job) -> Report:
    links = _links(job.id)
    return Report(**job.model_dump(), events_url=links["events_url"], download_url=links["download_url"])


def _find(store: JobStore, principal: Principal, job_id: str) -> Job:
    job = find_job(store, principal, job_id, task=builtin_jobs.report.name)
    if job is None:
        raise HTTPException(404, f"No report {job_id}: it never existed or its record expired.")
    return job


@router.post("", status_code=202, responses=SUBMIT_RESPONSES)
async def submit_report(
    body: ReportSubmission,
    submission: SubmissionDep,
    settings: SettingsDep,
) -> ReportAccepted:
    """Aggregate a CSV (with a header row) or JSON Lines source fetched over HTTP(S): rows that
    pass every filter are grouped by 0 to 5 columns, with count, sum, avg, min and max per group.
    The source is streamed, so its size is bounded by OFFLOAD_REPORT_MAX_SOURCE_BYTES, not by
    memory. Follow `events_url` (Server-Sent Events) or poll `status_url`; fetch the result
    from `download_url` once the report succeeded."""
    try:
        # Resolving the host blocks: in a thread, off the event loop.
        await anyio.to_thread.run_sync(OutboundPolicy.from_settings(settings).check_url, body.source_url)
    except UnsafeURL as exc:
        raise InvalidField("body.source_url", str(exc)) from exc
    accepted = await submission.enqueue(builtin_jobs.report, body.task_kwargs(), priority=body.priority, start=body)
    return ReportAccepted(**{**accepted.model_dump(), **_links(accepted.id)})


@router.get("/{job_id}", responses={404: {"description": "No such report (or it expired)."}})
def get_report(job_id: JobId, store: StoreDep, principal: PrincipalDep) -> Report:
    """Status and progress (`percent` from the bytes read when the source's size is known, and a
    message such as "412,000 rows"); once succeeded, `result` summarises the run: rows read,
    matched and malformed (with the first problems), groups, bytes read, result size and expiry."""
    return _report(_find(store, principal, job_id))


@router.get(
    "/{job_id}/events",
    response_class=EventSourceResponse,
    responses={**EVENT_RESPONSES, 404: {"description": "No such report (or it expired)."}},
)
def report_events(
    job_id: JobId,
    store: StoreDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    last_event_id: LastEventId = None,
) -> EventSourceResponse:
    """Server-Sent Events until the report ends: a `progress` event (`{"status", "percent",
    "message"}`) whenever one of them changes, then one `end` event with the whole report (as
    `GET /v1/reports/{id}`), then the stream closes. A stream lasts at most
    OFFLOAD_JOB_EVENTS_MAX_SECONDS and ends with a `timeout` event; reconnect (with
    `Last-Event-ID`) to continue."""
    return job_event_stream(
        store,
        _find(store, principal, job_id),
        settings,
        last_event_id=last_event_id,
        end_data=lambda job: _report(job).model_dump_json(),
        noun="report",
    )


@router.get(
    "/{job_id}/download",
    response_class=Response,
    responses={
        200: {
            "description": "The result, as an attachment named `report-<id>.csv` or `report-<id>.json`.",
            "content": {"text/csv": {}, "application/json": {}},
        },
        404: {"description": "No such report, or its result expired (OFFLOAD_REPORT_RESULT_TTL_SECONDS)."},
        409: {"description": "The report has not succeeded (yet); the answer says its status."},
    },
)
def download_report(
    job_id: JobId, store: StoreDep, blobs: BlobsDep, settings: SettingsDep, principal: PrincipalDep
) -> Response:
    job = _find(store, principal, job_id)
    if job.status is not JobStatus.SUCCEEDED:
        if job.status in FINISHED:
            raise HTTPException(409, f"Report {job_id} {job.status.value} ({job.error}); it has no result.")
        progress = f"{job.progress.percent}%" + (f", {job.progress.message}" if job.progress.message else "")
        raise HTTPException(
            409,
            f"Report {job_id} is {job.status.value} ({progress}); download it once it succeeded "
            f"(follow {PREFIX}/{job_id}/events).",
        )
    found = open_result(blobs, job_id)
    if found is None:
        raise HTTPException(
            404,
            f"The result of report {job_id} has expired: results are kept "
            f"{settings.REPORT_RESULT_TTL_SECONDS} s after the report ends. Submit the report again.",
        )
    result, blob = found
    # Streamed from the blob store in chunks, never held whole.
    return StreamingResponse(
        iter(blob),
        media_type=result.content_type,
        headers={
            "Content-Disposition": f'attachment; filename="{result.filename(job_id)}"',
            "Content-Length": str(result.size),
        },
    )
