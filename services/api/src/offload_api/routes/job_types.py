"""Job types: what this deployment runs (GET /v1/job-types) and one typed submit operation per
type (POST /v1/jobs/{type}), made from the SDK declarations when the app is created, so /docs
shows every job a deployment runs with its own request schema."""

# Not `from __future__ import annotations`: FastAPI reads the submit routes' annotations, which
# name models made at run time.

import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, HTTPException, Path
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, create_model

from offload_api.deps import JobTypesDep, SettingsDep, StoreDep
from offload_api.enqueue import SUBMIT_RESPONSES, JobAccepted, SubmissionDep
from offload_core.contract.registry import JobTypes, job_time_limits
from offload_core.contract.timing import StartTime
from offload_core.sdk import MAX_PRIORITY, MIN_PRIORITY, JobType
from offload_core.settings import Settings
from offload_core.store.queue_state import read_queue_states

router = APIRouter(tags=["job types"])


class JobTypeView(BaseModel):
    name: str
    queue: str = Field(description="Where a job goes when the request names no queue.")
    queues: list[str] = Field(description="Every queue a request may choose.")
    priority: int = Field(description="Default priority inside the queue: 0 runs first, 9 last.")
    max_retries: int = Field(description="Transient failures are retried this often, with backoff.")
    time_limit_seconds: int = Field(description="An attempt is stopped (and fails) after this long.")
    rate_limit: float | None = Field(
        description="At most this many jobs of the type start a second, across all workers; null: no limit."
    )
    concurrency: int | None = Field(
        description="At most this many jobs of the type run at once, across all workers; null: no limit."
    )
    description: str
    request_schema: dict[str, Any] = Field(description="JSON Schema of `payload` in POST /v1/jobs/{type}.")
    result_schema: dict[str, Any] | None = Field(description="JSON Schema of the job's `result`, if declared.")
    consumed: bool = Field(description="Whether a worker online consumes one of its queues now.")
    submit_url: str


class JobTypesView(BaseModel):
    job_types: list[JobTypeView]


def describe(job_type: JobType[Any, Any], settings: Settings, consumers: dict[str, int]) -> JobTypeView:
    soft, _ = job_time_limits(job_type, settings)
    return JobTypeView(
        name=job_type.name,
        queue=job_type.queue,
        queues=sorted(job_type.allowed_queues),
        priority=job_type.priority,
        max_retries=settings.TASK_MAX_RETRIES if job_type.max_retries is None else job_type.max_retries,
        time_limit_seconds=soft,
        rate_limit=job_type.rate_limit,
        concurrency=job_type.concurrency,
        description=job_type.description,
        request_schema=job_type.request.model_json_schema(),
        result_schema=_schema_of(job_type.result),
        consumed=any(consumers.get(queue, 0) > 0 for queue in job_type.allowed_queues),
        submit_url=f"/v1/jobs/{job_type.name}",
    )


def _schema_of(result: type | None) -> dict[str, Any] | None:
    return None if result is None else TypeAdapter(result).json_schema()


@router.get("/job-types")
def list_job_types(job_types: JobTypesDep, store: StoreDep, settings: SettingsDep) -> JobTypesView:
    """Every job type this deployment accepts: built-ins and those of installed plugins."""
    queues = sorted({queue for job_type in job_types.values() for queue in job_type.allowed_queues})
    states = read_queue_states(
        store.client,
        queues,
        stale_after=3 * settings.WORKER_HEARTBEAT_INTERVAL_SECONDS,
        dead_letter_ttl=settings.DEAD_LETTER_TTL_SECONDS,
    )
    consumers = {state.name: state.consumers for state in states}
    return JobTypesView(job_types=[describe(t, settings, consumers) for t in sorted(job_types.values(), key=_name)])


def _name(job_type: JobType[Any, Any]) -> str:
    return job_type.name


def submission_model(job_type: JobType[Any, Any]) -> type[BaseModel]:
    """The body of POST /v1/jobs/{type}: the type's payload with the queue, priority and start
    time (`run_at` or `delay_seconds`) beside it."""
    allowed = tuple(sorted(job_type.allowed_queues))
    start_fields: dict[str, Any] = {name: (field.annotation, field) for name, field in StartTime.model_fields.items()}
    model: type[BaseModel] = create_model(
        "Submit" + "".join(part.title() for part in re.split(r"[^A-Za-z0-9]+", job_type.name)),
        __config__=ConfigDict(extra="forbid"),
        __doc__=f"A {job_type.name} job: its payload and, optionally, where and how urgently it runs.",
        payload=(job_type.request, Field(description=f"The {job_type.name} job's input.")),
        queue=(  # type: ignore[arg-type]
            Literal[allowed] | None,
            Field(None, description=f"One of {', '.join(allowed)}; {job_type.queue} when omitted."),
        ),
        priority=(
            int | None,
            Field(
                None,
                ge=MIN_PRIORITY,
                le=MAX_PRIORITY,
                description=f"0 runs first, 9 last; {job_type.priority} when omitted.",
            ),
        ),
        **start_fields,
    )
    return model


def _examples(job_type: JobType[Any, Any]) -> list[dict[str, Any]] | None:
    payloads = job_type.request.model_json_schema().get("examples")
    return [{"payload": payload} for payload in payloads] if isinstance(payloads, list) and payloads else None


def add_submit_routes(target: APIRouter, job_types: JobTypes) -> None:
    """One POST /v1/jobs/{type} operation per job type, then a catch-all that names the known types."""
    for job_type in sorted(job_types.values(), key=_name):
        _add_submit_route(target, job_type)

    known = ", ".join(sorted(job_types))

    @target.post(
        "/jobs/{job_type}",
        status_code=202,
        responses={404: {"description": "No such job type."}},
        include_in_schema=False,
    )
    async def submit_unknown(job_type: Annotated[str, Path(max_length=200)]) -> None:
        raise HTTPException(404, f"No job type {job_type!r}. Known job types: {known} (GET /v1/job-types).")


def _add_submit_route(target: APIRouter, job_type: JobType[Any, Any]) -> None:
    body_model = submission_model(job_type)
    examples = _examples(job_type)

    async def submit(
        body: Annotated[body_model, Body(examples=examples)],  # type: ignore[valid-type]
        submission: SubmissionDep,
    ) -> JobAccepted:
        return await submission.enqueue(
            job_type,
            body.payload.model_dump(mode="json"),  # type: ignore[attr-defined]
            queue=body.queue,  # type: ignore[attr-defined]
            priority=body.priority,  # type: ignore[attr-defined]
            start=StartTime(run_at=body.run_at, delay_seconds=body.delay_seconds),  # type: ignore[attr-defined]
        )

    target.add_api_route(
        f"/jobs/{job_type.name}",
        submit,
        methods=["POST"],
        status_code=202,
        responses=SUBMIT_RESPONSES,
        summary=f"Submit a {job_type.name} job",
        description=job_type.description or None,
        operation_id="submit_" + re.sub(r"[^A-Za-z0-9]+", "_", job_type.name),
        tags=["jobs"],
    )
