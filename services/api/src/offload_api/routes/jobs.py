from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from offload_api.auth import PrincipalDep
from offload_api.auth import find_job as find_visible_job
from offload_api.deps import SettingsDep, StoreDep
from offload_api.enqueue import SUBMIT_RESPONSES, JobAccepted, SubmissionDep
from offload_api.errors import InvalidField
from offload_api.events import EVENT_RESPONSES, LastEventId, job_event_stream
from offload_core.contract import builtin_jobs
from offload_core.contract.api_keys import Principal
from offload_core.contract.payloads import EchoRequest
from offload_core.store.job_index import CURSOR_PATTERN, JobPage, JobQuery, list_jobs
from offload_core.store.jobs import CancelOutcome, Job, JobStatus, JobStore

router = APIRouter(prefix="/jobs", tags=["jobs"])

JobId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="The id returned at submission.")]


@router.post("/echo", status_code=202, responses=SUBMIT_RESPONSES)
async def submit_echo(body: EchoRequest, submission: SubmissionDep) -> JobAccepted:
    """The probe job: sleeps `sleep_ms`, reports progress, fails its first `fail_times` attempts.
    The same as `POST /v1/jobs/offload.echo` with the queue and priority inside the payload."""
    return await submission.enqueue(
        builtin_jobs.echo, body.task_kwargs(), queue=body.queue, priority=body.priority, start=body
    )


@router.get("")
async def list_jobs_route(
    store: StoreDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    job_type: Annotated[str | None, Query(alias="type", max_length=200, description="Only jobs of this type.")] = None,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this status.")] = None,
    queue: Annotated[str | None, Query(max_length=64, description="Only jobs on this queue.")] = None,
    schedule_id: Annotated[
        str | None, Query(max_length=64, description="Only jobs fired by this recurring schedule.")
    ] = None,
    created_after: Annotated[datetime | None, Query(description="Only jobs created after this time.")] = None,
    created_before: Annotated[datetime | None, Query(description="Only jobs created before this time.")] = None,
    limit: Annotated[int, Query(ge=1, le=200, description="At most this many, newest first.")] = 50,
    cursor: Annotated[
        str | None, Query(pattern=CURSOR_PATTERN, description="`next_cursor` of the previous page.")
    ] = None,
) -> JobPage:
    """Jobs newest first, filtered; read from an index kept at submission, never a keyspace scan.
    A page examines a bounded number of jobs, so it may hold fewer than `limit` while
    `next_cursor` is set."""
    for name, moment in (("created_after", created_after), ("created_before", created_before)):
        if moment is not None and moment.tzinfo is None:
            raise InvalidField(f"query.{name}", "give a time zone, e.g. 2026-01-31T12:00:00Z")
    query = JobQuery(
        job_type=job_type,
        status=status,
        queue=queue,
        schedule_id=schedule_id,
        created_after=created_after,
        created_before=created_before,
        limit=limit,
        cursor=cursor,
        # The key's own jobs; all of them for a key with the `admin` scope.
        owner=None if principal.is_admin else principal.id,
    )
    return await run_in_threadpool(list_jobs, store.client, query, ttl_seconds=settings.JOB_TTL_SECONDS)


def find_job(store: JobStore, principal: Principal, job_id: str) -> Job:
    """The job, or 404 when it does not exist or belongs to another key (never 403: someone
    else's record is theirs to know about)."""
    job = find_visible_job(store, principal, job_id)
    if job is None:
        raise HTTPException(404, f"No job {job_id}: it never existed or its record expired.")
    return job


@router.get("/{job_id}", responses={404: {"description": "No such job (or it expired)."}})
def get_job(job_id: JobId, store: StoreDep, principal: PrincipalDep) -> Job:
    return find_job(store, principal, job_id)


@router.get(
    "/{job_id}/events",
    response_class=EventSourceResponse,
    responses={**EVENT_RESPONSES, 404: {"description": "No such job (or it expired)."}},
)
def job_events(
    job_id: JobId,
    store: StoreDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    last_event_id: LastEventId = None,
) -> EventSourceResponse:
    """Server-Sent Events until the job ends: a `progress` event (`{"status", "percent",
    "message"}`, its id the time of that state) whenever one of them changes, then one `end`
    event with the whole job (as `GET /v1/jobs/{id}`). A stream lasts at most
    OFFLOAD_JOB_EVENTS_MAX_SECONDS and ends with a `timeout` event: reconnect with
    `Last-Event-ID` and only a state newer than that event is sent again."""
    return job_event_stream(
        store,
        find_job(store, principal, job_id),
        settings,
        last_event_id=last_event_id,
        end_data=lambda job: job.model_dump_json(),
    )


@router.delete(
    "/{job_id}",
    responses={
        200: {"description": "The job was waiting and will never run."},
        202: {"description": "The job is running and has been asked to stop."},
        404: {"description": "No such job."},
        409: {"description": "The job has already finished."},
    },
)
def cancel_job(job_id: JobId, store: StoreDep, principal: PrincipalDep) -> JSONResponse:
    find_job(store, principal, job_id)  # 404 unless the principal may act on it
    outcome = store.cancel(job_id)
    job = store.get(job_id)
    if outcome is CancelOutcome.MISSING or job is None:
        raise HTTPException(404, f"No job {job_id}: it never existed or its record expired.")
    if outcome is CancelOutcome.FINISHED:
        raise HTTPException(409, f"Job {job_id} has already {job.status.value}; there is nothing to cancel.")
    status = 200 if outcome is CancelOutcome.CANCELLED else 202
    return JSONResponse(status_code=status, content=job.model_dump(mode="json"))
