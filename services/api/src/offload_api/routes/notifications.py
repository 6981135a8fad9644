"""Critical notifications: fanned out by the notifier to webhooks and email addresses."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import APIRouter, HTTPException, Request
from starlette.concurrency import run_in_threadpool

from offload_api.auth import PrincipalDep, find_job
from offload_api.deps import SettingsDep, StoreDep
from offload_api.enqueue import SUBMIT_RESPONSES, JobAccepted, SubmissionDep
from offload_api.errors import InvalidField
from offload_api.reachability import Reachability, start_checks
from offload_api.routes.jobs import JobId
from offload_core.contract import builtin_jobs
from offload_core.contract.payloads import EmailTarget, NotificationRequest, WebhookTarget
from offload_core.engines.outbound import OutboundPolicy, UnsafeURL
from offload_core.store.notifications import Notification, NotificationTargets

router = APIRouter(prefix="/notifications", tags=["notifications"])


def check_webhook_targets(policy: OutboundPolicy, targets: Sequence[WebhookTarget | EmailTarget], field: str) -> None:
    """422 naming the first webhook target whose URL the outbound rules refuse."""
    for index, target in enumerate(targets):
        if isinstance(target, WebhookTarget):
            try:
                policy.check_url(str(target.url))
            except UnsafeURL as exc:
                raise InvalidField(f"{field}.{index}.url", str(exc)) from exc


@router.post("", status_code=202, responses=SUBMIT_RESPONSES)
async def submit_notification(
    body: NotificationRequest,
    submission: SubmissionDep,
    store: StoreDep,
    settings: SettingsDep,
    request: Request,
) -> JobAccepted:
    """Deliver a message to 1 to 20 targets (webhooks signed per Standard Webhooks, emails), on
    the `high` queue. Each target is delivered and retried on its own; `GET
    /v1/notifications/{id}` shows how each one went."""
    # Resolving the hosts blocks: in a thread, off the event loop.
    await run_in_threadpool(check_webhook_targets, OutboundPolicy.from_settings(settings), body.targets, "body.targets")
    kwargs = body.task_kwargs()

    def record_pending_targets(job_id: str) -> None:
        # So the status lists every target before the notifier takes the job.
        NotificationTargets(store.client, settings.JOB_TTL_SECONDS).ensure(
            job_id, body.model_dump(mode="json")["targets"]
        )

    accepted = await submission.enqueue(
        builtin_jobs.notify, kwargs, priority=body.priority, prepare=record_pending_targets, start=body
    )
    start_checks(request, settings, accepted.id, body.targets)  # each target's `reachable`, in the background
    return accepted


@router.get("/{job_id}", responses={404: {"description": "No such notification (or it expired)."}})
def get_notification(job_id: JobId, store: StoreDep, settings: SettingsDep, principal: PrincipalDep) -> Notification:
    job = find_job(store, principal, job_id, task=builtin_jobs.notify.name)
    if job is None:
        raise HTTPException(404, f"No notification {job_id}: it never existed or its record expired.")
    targets = NotificationTargets(store.client, settings.JOB_TTL_SECONDS).all(job_id)
    targets = Reachability(store.client, settings.JOB_TTL_SECONDS).merge(job_id, targets)
    return Notification(**job.model_dump(), targets=targets)
