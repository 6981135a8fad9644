from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Response
from fastapi.responses import JSONResponse

from offload_api.auth import PrincipalDep, find_job
from offload_api.deps import StoreDep
from offload_api.enqueue import SUBMIT_RESPONSES, JobAccepted, PublisherDep, enqueue
from offload_api.idempotency import IdempotencyDep
from offload_core.jobs import CancelOutcome, Job
from offload_core.payloads import EchoRequest
from offload_core.topology import TaskName

router = APIRouter(prefix="/jobs", tags=["jobs"])

JobId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="The id returned at submission.")]


@router.post("/echo", status_code=202, responses=SUBMIT_RESPONSES)
async def submit_echo(
    body: EchoRequest, publisher: PublisherDep, idempotency: IdempotencyDep, response: Response, principal: PrincipalDep
) -> JobAccepted:
    """The probe job: sleeps `sleep_ms`, reports progress, fails its first `fail_times` attempts."""
    accepted = await enqueue(
        publisher,
        TaskName.ECHO,
        body.task_kwargs(),
        owner=principal,
        queue=body.queue,
        priority=body.priority,
        idempotency=idempotency,
    )
    response.headers["Location"] = accepted.status_url
    return accepted


@router.get("/{job_id}", responses={404: {"description": "No such job (or it expired)."}})
def get_job(job_id: JobId, store: StoreDep, principal: PrincipalDep) -> Job:
    job = find_job(store, principal, job_id)
    if job is None:
        raise HTTPException(404, f"No job {job_id}: it never existed or its record expired.")
    return job


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
    if find_job(store, principal, job_id) is None:
        raise HTTPException(404, f"No job {job_id}: it never existed or its record expired.")
    outcome = store.cancel(job_id)
    job = store.get(job_id)
    if outcome is CancelOutcome.MISSING or job is None:
        raise HTTPException(404, f"No job {job_id}: it never existed or its record expired.")
    if outcome is CancelOutcome.FINISHED:
        raise HTTPException(409, f"Job {job_id} has already {job.status.value}; there is nothing to cancel.")
    status = 200 if outcome is CancelOutcome.CANCELLED else 202
    return JSONResponse(status_code=status, content=job.model_dump(mode="json"))
