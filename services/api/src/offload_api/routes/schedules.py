"""Recurring schedules: a job type and payload fired on a cron expression (with an IANA time
zone) or a fixed interval by the workers' timekeepers, each tick a normal job with the
schedule's `schedule_id` (offload_core.store.schedules). Owned by the API key that created
them, like jobs: another key's schedule is a 404, an `admin` key sees them all."""

from __future__ import annotations

import json
import math
import uuid
from typing import Annotated, Any
from zoneinfo import ZoneInfoNotFoundError

from cronsim import CronSimError
from fastapi import APIRouter, HTTPException, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from offload_api.auth import PrincipalDep
from offload_api.deps import JobTypesDep, SettingsDep
from offload_api.errors import InvalidField
from offload_api.idempotency import IdempotencyDep, request_fingerprint
from offload_core.contract.api_keys import Principal, may_see
from offload_core.sdk import MAX_PRIORITY, MIN_PRIORITY, JobType
from offload_core.store.schedules import MisfirePolicy, Schedule, ScheduleStore, Timing

router = APIRouter(prefix="/schedules", tags=["schedules"])

ScheduleId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="The id returned at creation.")]
_UNKNOWN = "No schedule {}: it never existed or was deleted."


class ScheduleCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    job_type: str = Field(max_length=200, description="The job type each tick submits (GET /v1/job-types).")
    payload: dict[str, Any] = Field(description="The job's payload, validated against the type's request schema.")
    queue: str | None = Field(None, max_length=64, description="One of the type's queues; its default when omitted.")
    priority: int | None = Field(None, ge=MIN_PRIORITY, le=MAX_PRIORITY, description="0 runs first, 9 last.")
    cron: str | None = Field(
        None, max_length=200, description="A cron expression (5 fields, e.g. `*/15 9-17 * * MON-FRI`)."
    )
    timezone: str = Field("UTC", max_length=64, description="The IANA time zone the cron expression is read in.")
    interval_seconds: float | None = Field(
        None, ge=1, le=366 * 24 * 3600, description="Fire every this many seconds instead of a cron expression."
    )
    misfire: MisfirePolicy = Field(
        MisfirePolicy.SKIP,
        description="Ticks missed while no timekeeper ran: `skip` them, or `run_once` (one job for all of them).",
    )
    paused: bool = False


class ScheduleChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    paused: bool | None = Field(None, description="true pauses; false resumes from the next tick after now.")
    misfire: MisfirePolicy | None = None
    payload: dict[str, Any] | None = Field(None, description="The payload of later ticks, validated again.")


class ScheduleList(BaseModel):
    schedules: list[Schedule]


def _store(request: Request, settings: SettingsDep) -> ScheduleStore:
    return ScheduleStore(
        request.app.state.store.client,
        settings.JOB_TTL_SECONDS,
        misfire_grace_seconds=settings.SCHEDULE_MISFIRE_GRACE_SECONDS,
    )


def _checked_payload(job_type: JobType[Any, Any], payload: dict[str, Any]) -> dict[str, Any]:
    try:
        model = job_type.request.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in ("body", "payload", *first["loc"]))
        raise InvalidField(where, f"{first['msg']} ({job_type.name}'s request schema)") from exc
    checked: dict[str, Any] = model.model_dump(mode="json")
    return checked


def _check_timing(body: ScheduleCreate) -> None:
    if (body.cron is None) == (body.interval_seconds is None):
        raise InvalidField("body.cron", "give a cron expression or interval_seconds (one of them)")
    if body.interval_seconds is not None and not math.isfinite(body.interval_seconds):
        raise InvalidField("body.interval_seconds", "must be a finite number of seconds")
    try:
        Timing(cron=body.cron, timezone=body.timezone, interval_seconds=body.interval_seconds, anchor=0.0)
    except ZoneInfoNotFoundError as exc:
        raise InvalidField("body.timezone", f"not an IANA time zone: {body.timezone!r} (e.g. Europe/Riga)") from exc
    except (ValueError, KeyError) as exc:  # ZoneInfo refuses names such as "../x" with ValueError
        raise InvalidField("body.timezone", f"not an IANA time zone: {body.timezone!r} (e.g. Europe/Riga)") from exc
    except CronSimError as exc:
        raise InvalidField("body.cron", f"not a cron expression this accepts: {exc}") from exc
    except StopIteration as exc:
        raise InvalidField("body.cron", "this expression never fires") from exc


def _find(store: ScheduleStore, principal: Principal, schedule_id: str) -> Schedule:
    schedule = store.get(schedule_id)
    if schedule is None or not may_see(principal, schedule.owner):
        raise HTTPException(404, _UNKNOWN.format(schedule_id))
    return schedule


@router.post("", status_code=201, responses={404: {"description": "No such job type."}})
def create_schedule(
    body: ScheduleCreate,
    request: Request,
    settings: SettingsDep,
    job_types: JobTypesDep,
    principal: PrincipalDep,
    response: Response,
    idempotency: IdempotencyDep,
) -> Schedule:
    """Fire `job_type` with `payload` on a cron expression (in `timezone`) or every
    `interval_seconds`; the answer shows the next fire times. Each tick is a normal job with this
    schedule's `schedule_id`, fired exactly once however many workers run. With an
    `Idempotency-Key`, a repeat answers 200 with the schedule the first request made."""
    job_type = job_types.get(body.job_type)
    if job_type is None:
        raise InvalidField("body.job_type", f"no job type {body.job_type!r}; known: {', '.join(sorted(job_types))}")
    queue = body.queue or job_type.queue
    if queue not in job_type.allowed_queues:
        raise InvalidField("body.queue", f"{job_type.name} may run on {', '.join(sorted(job_type.allowed_queues))}")
    payload = _checked_payload(job_type, body.payload)
    _check_timing(body)
    priority = job_type.priority if body.priority is None else body.priority
    store = _store(request, settings)
    schedule_id = uuid.uuid4().hex
    if idempotency is not None:
        # A retried create (a lost answer, a 503) must not make a second schedule firing twice.
        fingerprint = request_fingerprint(
            idempotency.route, job_type.name, body.model_dump(mode="json"), queue, priority
        )
        earlier = idempotency.claim(store.client, fingerprint, json.dumps({"id": schedule_id}))
        if earlier is not None:
            first = store.get(json.loads(earlier)["id"])
            if first is None or not may_see(principal, first.owner):
                raise HTTPException(404, "The schedule this Idempotency-Key created has been deleted since.")
            response.headers["Location"] = f"/v1/schedules/{first.id}"
            return first
    try:
        schedule = store.create(
            job_type=job_type.name,
            payload=payload,
            queue=queue,
            priority=priority,
            cron=body.cron,
            timezone=body.timezone,
            interval_seconds=body.interval_seconds,
            misfire=body.misfire,
            paused=body.paused,
            owner=principal.id,
            schedule_id=schedule_id,
        )
    except BaseException:
        if idempotency is not None:
            idempotency.release(store.client)
        raise
    if idempotency is not None:
        idempotency.finish(store.client)
    response.headers["Location"] = f"/v1/schedules/{schedule.id}"
    return schedule


@router.get("")
def list_schedules(request: Request, settings: SettingsDep, principal: PrincipalDep) -> ScheduleList:
    """The key's own schedules (every schedule for an `admin` key), newest first."""
    schedules = _store(request, settings).all()
    return ScheduleList(schedules=[s for s in schedules if may_see(principal, s.owner)])


@router.get("/{schedule_id}", responses={404: {"description": "No such schedule."}})
def get_schedule(schedule_id: ScheduleId, request: Request, settings: SettingsDep, principal: PrincipalDep) -> Schedule:
    return _find(_store(request, settings), principal, schedule_id)


@router.patch("/{schedule_id}", responses={404: {"description": "No such schedule."}})
async def change_schedule(
    schedule_id: ScheduleId,
    body: ScheduleChange,
    request: Request,
    settings: SettingsDep,
    job_types: JobTypesDep,
    principal: PrincipalDep,
) -> Schedule:
    """Pause or resume (`paused`), change the misfire policy or the payload of later ticks. A
    resumed schedule fires from its next tick after now: the paused time is not a misfire."""
    store = _store(request, settings)
    schedule = await run_in_threadpool(_find, store, principal, schedule_id)
    payload = body.payload
    if payload is not None:
        job_type = job_types.get(schedule.job_type)
        if job_type is None:
            raise HTTPException(409, f"Job type {schedule.job_type!r} is no longer registered here.")
        payload = _checked_payload(job_type, payload)
    changed = await run_in_threadpool(
        lambda: store.update(schedule_id, paused=body.paused, misfire=body.misfire, payload=payload)
    )
    if changed is None:
        raise HTTPException(404, _UNKNOWN.format(schedule_id))
    return changed


@router.delete("/{schedule_id}", status_code=204, responses={404: {"description": "No such schedule."}})
def delete_schedule(
    schedule_id: ScheduleId, request: Request, settings: SettingsDep, principal: PrincipalDep
) -> Response:
    """No tick fires after this; jobs it already fired are left as they are."""
    store = _store(request, settings)
    _find(store, principal, schedule_id)
    if not store.delete(schedule_id):
        raise HTTPException(404, _UNKNOWN.format(schedule_id))
    return Response(status_code=204)
