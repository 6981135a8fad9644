"""Emails: accepted here, sent over SMTP by a worker (OFFLOAD_SMTP_*), retried on transient failures."""

from __future__ import annotations

from fastapi import APIRouter

from offload_api.enqueue import SUBMIT_RESPONSES, JobAccepted, SubmissionDep
from offload_core.contract import builtin_jobs
from offload_core.contract.payloads import EmailRequest

router = APIRouter(tags=["emails"])


@router.post("/emails", status_code=202, responses=SUBMIT_RESPONSES)
async def submit_email(
    body: EmailRequest,
    submission: SubmissionDep,
) -> JobAccepted:
    """Send one email to 1 to 50 recipients, multipart/alternative when `html` is given. The job's
    result lists the recipients the server accepted and those it refused, with its replies."""
    return await submission.enqueue(
        builtin_jobs.send_email, body.task_kwargs(), queue=body.queue, priority=body.priority, start=body
    )
