"""Jobs that failed for good: list them, replay one as a new job, delete one."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Response
from starlette.concurrency import run_in_threadpool

from offload_api.auth import PrincipalDep
from offload_api.deps import DeadLettersDep, JobTypesDep, SettingsDep
from offload_api.enqueue import SUBMIT_RESPONSES, JobAccepted, SubmissionDep
from offload_api.errors import InvalidField
from offload_core.contract.api_keys import may_see
from offload_core.contract.timing import StartTime
from offload_core.store.dead_letters import DeadLetter, DeadLetterPage

router = APIRouter(prefix="/dead-letters", tags=["dead letters"])

DeadLetterId = Annotated[
    str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="The failed job's id, as listed by GET /v1/dead-letters.")
]
_UNKNOWN = "No dead letter {}: it never existed, was deleted, or was dropped (OFFLOAD_DEAD_LETTER_TTL_SECONDS, _MAX)."


@router.get("")
def list_dead_letters(
    dead_letters: DeadLettersDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    queue: Annotated[str | None, Query(max_length=63, description="Only this queue's dead letters.")] = None,
    task: Annotated[str | None, Query(max_length=200, description="Only this task's, e.g. offload.echo.")] = None,
    limit: Annotated[int, Query(ge=1, le=500, description="At most this many, newest first.")] = 50,
    cursor: Annotated[int | None, Query(ge=0, le=2**53, description="`next_cursor` of the previous page.")] = None,
) -> DeadLetterPage:
    if queue is not None and queue not in settings.QUEUES:
        raise InvalidField("query.queue", f"no queue {queue!r}; this deployment has {', '.join(settings.QUEUES)}")
    # The key's own dead letters; all of them for a key with the `admin` scope.
    owner = None if principal.is_admin else principal.id
    return dead_letters.page(queue=queue, task=task, limit=limit, cursor=cursor, owner=owner)


@router.get("/{dead_letter_id}", responses={404: {"description": "No such dead letter."}})
def get_dead_letter(dead_letter_id: DeadLetterId, dead_letters: DeadLettersDep, principal: PrincipalDep) -> DeadLetter:
    letter = dead_letters.get(dead_letter_id)
    if letter is None or not may_see(principal, letter.owner):
        raise HTTPException(404, _UNKNOWN.format(dead_letter_id))
    return letter


@router.post(
    "/{dead_letter_id}/replay",
    status_code=202,
    responses={
        **SUBMIT_RESPONSES,
        404: {"description": "No such dead letter."},
        409: {"description": "Its job type is no longer registered, or the Idempotency-Key was reused."},
    },
)
async def replay_dead_letter(
    dead_letter_id: DeadLetterId,
    dead_letters: DeadLettersDep,
    job_types: JobTypesDep,
    submission: SubmissionDep,
    start: StartTime | None = None,
) -> JobAccepted:
    """Enqueue the same task and payload again as a new job; the job's `replay_of` and the dead
    letter's `replayed_as` link the two. An optional body (`run_at` or `delay_seconds`) delays it."""
    letter = await run_in_threadpool(dead_letters.get, dead_letter_id)
    if letter is None or not may_see(submission.owner, letter.owner):
        raise HTTPException(404, _UNKNOWN.format(dead_letter_id))
    job_type = job_types.get(letter.task)
    if job_type is None:
        raise HTTPException(
            409,
            f"Job type {letter.task!r} is no longer registered here, so dead letter {letter.id} cannot be "
            f"replayed; install the package that declares it, or delete the dead letter.",
        )
    # The queue it failed on, unless its job type no longer allows it there.
    queue = letter.queue if letter.queue in job_type.allowed_queues else job_type.queue
    accepted = await submission.enqueue(job_type, letter.payload, queue=queue, replay_of=letter.id, start=start)
    await run_in_threadpool(dead_letters.mark_replayed, letter.id, accepted.id)
    return accepted


@router.delete("/{dead_letter_id}", status_code=204, responses={404: {"description": "No such dead letter."}})
def delete_dead_letter(dead_letter_id: DeadLetterId, dead_letters: DeadLettersDep, principal: PrincipalDep) -> Response:
    letter = dead_letters.get(dead_letter_id)
    if letter is None or not may_see(principal, letter.owner) or not dead_letters.delete(dead_letter_id):
        raise HTTPException(404, _UNKNOWN.format(dead_letter_id))
    return Response(status_code=204)
