"""Every API operation the clients make, as data: the request to send and how to read its answer.

`Offload` and `AsyncOffload` only send these (`_send`), so both clients make exactly the same
requests; `OPERATIONS` says which client method covers which operation of the API."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from offload_client import models

T = TypeVar("T")

IDEMPOTENCY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"

# (method, path template as in /openapi.json) → the client method that makes that request. Every
# per-type `POST /v1/jobs/{name}` operation is `submit` too; tests compare this with the live schema.
OPERATIONS: dict[tuple[str, str], str] = {
    ("GET", "/livez"): "live",
    ("GET", "/readyz"): "ready",
    ("POST", "/v1/jobs/{job_type}"): "submit",
    ("POST", "/v1/jobs/echo"): "submit",  # the older spelling of POST /v1/jobs/offload.echo
    ("GET", "/v1/jobs"): "list_jobs",
    ("GET", "/v1/jobs/{job_id}"): "get",
    ("DELETE", "/v1/jobs/{job_id}"): "cancel",
    ("GET", "/v1/jobs/{job_id}/events"): "events",
    ("GET", "/v1/job-types"): "job_types",
    ("GET", "/v1/queues"): "queues",
    ("GET", "/v1/dead-letters"): "list_dead_letters",
    ("GET", "/v1/dead-letters/{dead_letter_id}"): "get_dead_letter",
    ("DELETE", "/v1/dead-letters/{dead_letter_id}"): "delete_dead_letter",
    ("POST", "/v1/dead-letters/{dead_letter_id}/replay"): "replay_dead_letter",
    ("POST", "/v1/emails"): "send_email",
    ("POST", "/v1/notifications"): "send_notification",
    ("GET", "/v1/notifications/{job_id}"): "get_notification",
    ("POST", "/v1/images"): "upload_image",
    ("GET", "/v1/images"): "search_images",
    ("GET", "/v1/images/{image_id}"): "get_image",
    ("GET", "/v1/images/{image_id}/result"): "image_result",
    ("POST", "/v1/images/{image_id}/process"): "process_image",
    ("DELETE", "/v1/images/{image_id}"): "delete_image",
    ("GET", "/v1/audit"): "list_audit",
    ("POST", "/v1/compute"): "compute",
    ("POST", "/v1/reports"): "submit_report",
    ("GET", "/v1/reports/{job_id}"): "get_report",
    ("GET", "/v1/reports/{job_id}/events"): "report_events",
    ("GET", "/v1/reports/{job_id}/download"): "download_report",
    ("POST", "/v1/schedules"): "create_schedule",
    ("GET", "/v1/schedules"): "list_schedules",
    ("GET", "/v1/schedules/{schedule_id}"): "get_schedule",
    ("PATCH", "/v1/schedules/{schedule_id}"): "update_schedule",
    ("DELETE", "/v1/schedules/{schedule_id}"): "delete_schedule",
}

Params = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Call(Generic[T]):
    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: Params = ()
    json: Any = None
    files: Any = None
    data: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    # Answers that are not errors although not 2xx (e.g. /readyz's 503 means "not ready").
    accept: frozenset[int] = frozenset()


def _model(model: type[BaseModel]) -> Callable[[httpx.Response], Any]:
    def parse(response: httpx.Response) -> Any:
        return model.model_validate_json(response.content)

    return parse


def _accepted(model: type[models.JobAccepted]) -> Callable[[httpx.Response], Any]:
    def parse(response: httpx.Response) -> Any:
        accepted = model.model_validate_json(response.content)
        accepted.replayed = response.headers.get(REPLAYED_HEADER, "").lower() == "true"
        return accepted

    return parse


def _nothing(_: httpx.Response) -> None:
    return None


def _idempotent(key: str | None) -> dict[str, str]:
    """Every submission carries a key, so a retried request never makes a second job."""
    return {IDEMPOTENCY_HEADER: key or str(uuid.uuid4())}


def _plain(value: Mapping[str, Any] | BaseModel) -> Any:
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else dict(value)


def _query(**values: str | int | datetime | Sequence[str] | None) -> Params:
    params: list[tuple[str, str]] = []
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, datetime):
            params.append((name, value.isoformat()))
        elif isinstance(value, list | tuple):
            params.extend((name, str(item)) for item in value)
        else:
            params.append((name, str(value)))
    return tuple(params)


def _segment(value: str) -> str:
    """An id as one path segment, so an odd id can never reach another route."""
    return quote(value, safe="")


def submit(
    job_type: str,
    payload: Mapping[str, Any] | BaseModel,
    queue: str | None,
    priority: int | None,
    idempotency_key: str | None,
    run_at: datetime | None = None,
    delay_seconds: float | None = None,
) -> Call[models.JobAccepted]:
    body: dict[str, Any] = {"payload": _plain(payload)}
    if queue is not None:
        body["queue"] = queue
    if priority is not None:
        body["priority"] = priority
    if run_at is not None:
        body["run_at"] = run_at.isoformat()  # a naive time is refused by the API (422 naming run_at)
    if delay_seconds is not None:
        body["delay_seconds"] = delay_seconds
    return Call(
        "POST",
        f"/v1/jobs/{_segment(job_type)}",
        _accepted(models.JobAccepted),
        json=body,
        headers=_idempotent(idempotency_key),
    )


def get_job(job_id: str) -> Call[models.Job]:
    return Call("GET", f"/v1/jobs/{_segment(job_id)}", _model(models.Job))


def list_jobs(
    *,
    job_type: str | None,
    status: str | None,
    queue: str | None,
    created_after: datetime | None,
    created_before: datetime | None,
    limit: int | None,
    cursor: str | None,
) -> Call[models.JobPage]:
    params = _query(
        type=job_type,
        status=status,
        queue=queue,
        created_after=created_after,
        created_before=created_before,
        limit=limit,
        cursor=cursor,
    )
    return Call("GET", "/v1/jobs", _model(models.JobPage), params=params)


def cancel(job_id: str) -> Call[models.Job]:
    return Call("DELETE", f"/v1/jobs/{_segment(job_id)}", _model(models.Job))


def job_events_path(job_id: str) -> str:
    return f"/v1/jobs/{_segment(job_id)}/events"


def report_events_path(job_id: str) -> str:
    return f"/v1/reports/{_segment(job_id)}/events"


def job_types() -> Call[list[models.JobType]]:
    def parse(response: httpx.Response) -> list[models.JobType]:
        return [models.JobType.model_validate(t) for t in response.json()["job_types"]]

    return Call("GET", "/v1/job-types", parse)


def queues() -> Call[list[models.QueueInfo]]:
    def parse(response: httpx.Response) -> list[models.QueueInfo]:
        return [models.QueueInfo.model_validate(q) for q in response.json()["queues"]]

    return Call("GET", "/v1/queues", parse)


def list_dead_letters(
    *, queue: str | None, task: str | None, limit: int | None, cursor: int | None
) -> Call[models.DeadLetterPage]:
    params = _query(queue=queue, task=task, limit=limit, cursor=cursor)
    return Call("GET", "/v1/dead-letters", _model(models.DeadLetterPage), params=params)


def get_dead_letter(dead_letter_id: str) -> Call[models.DeadLetter]:
    return Call("GET", f"/v1/dead-letters/{_segment(dead_letter_id)}", _model(models.DeadLetter))


def replay_dead_letter(dead_letter_id: str, idempotency_key: str | None) -> Call[models.JobAccepted]:
    return Call(
        "POST",
        f"/v1/dead-letters/{_segment(dead_letter_id)}/replay",
        _accepted(models.JobAccepted),
        headers=_idempotent(idempotency_key),
    )


def delete_dead_letter(dead_letter_id: str) -> Call[None]:
    return Call("DELETE", f"/v1/dead-letters/{_segment(dead_letter_id)}", _nothing)


def create_schedule(body: dict[str, Any], idempotency_key: str | None) -> Call[models.Schedule]:
    return Call("POST", "/v1/schedules", _model(models.Schedule), json=body, headers=_idempotent(idempotency_key))


def list_schedules() -> Call[list[models.Schedule]]:
    def parse(response: httpx.Response) -> list[models.Schedule]:
        return [models.Schedule.model_validate(s) for s in response.json()["schedules"]]

    return Call("GET", "/v1/schedules", parse)


def get_schedule(schedule_id: str) -> Call[models.Schedule]:
    return Call("GET", f"/v1/schedules/{_segment(schedule_id)}", _model(models.Schedule))


def update_schedule(schedule_id: str, body: dict[str, Any]) -> Call[models.Schedule]:
    return Call("PATCH", f"/v1/schedules/{_segment(schedule_id)}", _model(models.Schedule), json=body)


def delete_schedule(schedule_id: str) -> Call[None]:
    return Call("DELETE", f"/v1/schedules/{_segment(schedule_id)}", _nothing)


def schedule_body(
    job_type: str,
    payload: Mapping[str, Any] | BaseModel,
    *,
    cron: str | None,
    timezone: str | None,
    interval_seconds: float | None,
    misfire: str | None,
    queue: str | None,
    priority: int | None,
    paused: bool | None,
) -> dict[str, Any]:
    options = {
        "cron": cron,
        "timezone": timezone,
        "interval_seconds": interval_seconds,
        "misfire": misfire,
        "queue": queue,
        "priority": priority,
        "paused": paused,
    }
    return {
        "job_type": job_type,
        "payload": _plain(payload),
        **{name: value for name, value in options.items() if value is not None},
    }


def schedule_change(
    *, paused: bool | None, misfire: str | None, payload: Mapping[str, Any] | BaseModel | None
) -> dict[str, Any]:
    change: dict[str, Any] = {"paused": paused, "misfire": misfire}
    if payload is not None:
        change["payload"] = _plain(payload)
    return {name: value for name, value in change.items() if value is not None}


def send_email(body: dict[str, Any], idempotency_key: str | None) -> Call[models.JobAccepted]:
    return Call("POST", "/v1/emails", _accepted(models.JobAccepted), json=body, headers=_idempotent(idempotency_key))


def send_notification(body: dict[str, Any], idempotency_key: str | None) -> Call[models.JobAccepted]:
    return Call(
        "POST", "/v1/notifications", _accepted(models.JobAccepted), json=body, headers=_idempotent(idempotency_key)
    )


def get_notification(job_id: str) -> Call[models.Notification]:
    return Call("GET", f"/v1/notifications/{_segment(job_id)}", _model(models.Notification))


def upload_image(
    data: bytes, filename: str, tags: Sequence[str] | None, idempotency_key: str | None
) -> Call[models.Image]:
    return Call(
        "POST",
        "/v1/images",
        _model(models.Image),
        files={"file": (filename, data)},
        data={"tags": list(tags)} if tags else None,
        headers=_idempotent(idempotency_key),
    )


def search_images(tags: Sequence[str] | None, limit: int | None, cursor: int | None) -> Call[models.ImagePage]:
    params = _query(tag=list(tags) if tags else None, limit=limit, cursor=cursor)
    return Call("GET", "/v1/images", _model(models.ImagePage), params=params)


def get_image(image_id: str) -> Call[models.Image]:
    return Call("GET", f"/v1/images/{_segment(image_id)}", _model(models.Image))


def delete_image(image_id: str) -> Call[None]:
    return Call("DELETE", f"/v1/images/{_segment(image_id)}", _nothing)


def image_result_path(image_id: str) -> str:
    return f"/v1/images/{_segment(image_id)}/result"


def process_image(
    image_id: str,
    operations: Sequence[Mapping[str, Any] | BaseModel],
    notify: Mapping[str, Any] | None,
    idempotency_key: str | None,
) -> Call[models.PipelineAccepted]:
    body: dict[str, Any] = {"operations": [_plain(op) for op in operations]}
    if notify is not None:
        body["notify"] = dict(notify)

    def parse(response: httpx.Response) -> models.PipelineAccepted:
        accepted = models.PipelineAccepted.model_validate_json(response.content)
        accepted.replayed = response.headers.get(REPLAYED_HEADER, "").lower() == "true"
        return accepted

    return Call(
        "POST",
        f"/v1/images/{_segment(image_id)}/process",
        parse,
        json=body,
        headers=_idempotent(idempotency_key),
    )


def list_audit(
    *, key_id: str | None, method: str | None, limit: int | None, cursor: str | None
) -> Call[models.AuditPage]:
    params = _query(key_id=key_id, method=method, limit=limit, cursor=cursor)
    return Call("GET", "/v1/audit", _model(models.AuditPage), params=params)


def compute(body: dict[str, Any], idempotency_key: str | None) -> Call[models.JobAccepted]:
    return Call("POST", "/v1/compute", _accepted(models.JobAccepted), json=body, headers=_idempotent(idempotency_key))


def submit_report(spec: Mapping[str, Any] | BaseModel, idempotency_key: str | None) -> Call[models.ReportAccepted]:
    return Call(
        "POST",
        "/v1/reports",
        _accepted(models.ReportAccepted),
        json=_plain(spec),
        headers=_idempotent(idempotency_key),
    )


def get_report(job_id: str) -> Call[models.Report]:
    return Call("GET", f"/v1/reports/{_segment(job_id)}", _model(models.Report))


def report_download_path(job_id: str) -> str:
    return f"/v1/reports/{_segment(job_id)}/download"


def live() -> Call[bool]:
    return Call("GET", "/livez", lambda response: response.is_success)


def ready() -> Call[bool]:
    return Call("GET", "/readyz", lambda response: response.is_success, accept=frozenset({503}))


def without_none(**values: Any) -> dict[str, Any]:
    """A JSON body without the options left out, so the API's defaults apply."""
    return {name: value for name, value in values.items() if value is not None}
