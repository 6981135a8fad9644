"""Statistics over posted numbers, computed inside the API (offload_api.compute)."""

from __future__ import annotations

import contextlib
import time
import uuid
from array import array
from functools import partial
from typing import Annotated, Any, Literal

import redis
from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from offload_api.auth import PrincipalDep
from offload_api.compute import COMPUTE_TASK, IN_PROCESS_QUEUE, Computation, ComputeQueue, Refusal
from offload_api.deps import SettingsDep, StoreDep
from offload_api.enqueue import SUBMIT_RESPONSES
from offload_api.errors import InvalidField, error_body
from offload_api.idempotency import IdempotencyDep, request_fingerprint
from offload_api.metrics import JOBS_SUBMITTED
from offload_core.contract.topology import MAX_PRIORITY, MIN_PRIORITY
from offload_core.store.jobs import JobStatus

router = APIRouter(tags=["compute"])

MAX_PERCENTILES = 20
FiniteNumber = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Percent = Annotated[float, Field(strict=True, ge=0, le=100)]


class ComputeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    numbers: list[FiniteNumber] = Field(
        min_length=1, description="1 to OFFLOAD_COMPUTE_MAX_NUMBERS (default 100,000) finite numbers."
    )
    percentiles: list[Percent] = Field(
        default=[50, 90, 95, 99], max_length=MAX_PERCENTILES, description="Up to 20 percents, each 0 to 100."
    )
    priority: int = Field(3, ge=MIN_PRIORITY, le=MAX_PRIORITY, description="0 runs first, 9 last.")


class ComputeAccepted(BaseModel):
    id: str
    status: JobStatus
    task: Literal["offload.compute"]
    queue: Literal["in-process"]
    priority: int
    status_url: str


def _compute_queue(request: Request) -> ComputeQueue:
    queue: ComputeQueue = request.app.state.compute
    return queue


def _refused(refusal: Refusal, queue: ComputeQueue) -> JSONResponse:
    if refusal is Refusal.FULL:
        retry_after = queue.retry_after_seconds()
        detail = (
            f"The in-process compute queue is full ({queue.max_waiting} computations waiting, "
            f"OFFLOAD_COMPUTE_QUEUE_MAX); retry in {retry_after} s."
        )
        return JSONResponse(
            status_code=429, content=error_body(detail, "queue_full"), headers={"Retry-After": str(retry_after)}
        )
    detail = "This API process is shutting down and takes no more computations; retry (another one will answer)."
    return JSONResponse(status_code=503, content=error_body(detail, "shutting_down"), headers={"Retry-After": "1"})


@router.post(
    "/compute",
    status_code=202,
    response_model=ComputeAccepted,
    responses={
        **SUBMIT_RESPONSES,
        429: {
            "description": "The queue is full; retry after `Retry-After` seconds.",
            "headers": {"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "string"}}},
        },
    },
)
async def submit_compute(
    body: ComputeRequest,
    request: Request,
    response: Response,
    store: StoreDep,
    settings: SettingsDep,
    idempotency: IdempotencyDep,
    principal: PrincipalDep,
) -> Any:
    """Count, mean, median, sample standard deviation, min, max and percentiles (linear
    interpolation) of the numbers, computed by a process pool inside the API. The result is the
    job's `result` at `GET /v1/jobs/{id}`: `{"count", "mean", "median", "stdev" (null for one
    number), "min", "max", "percentiles": {"50": ..., ...}}`. Not durable: see the README."""
    if len(body.numbers) > settings.COMPUTE_MAX_NUMBERS:
        raise InvalidField(
            "body.numbers",
            f"at most {settings.COMPUTE_MAX_NUMBERS} numbers (OFFLOAD_COMPUTE_MAX_NUMBERS), got {len(body.numbers)}; "
            "split them into several computations",
        )
    queue = _compute_queue(request)
    if (refusal := queue.reserve()) is not None:
        return _refused(refusal, queue)
    job_id = uuid.uuid4().hex
    accepted = ComputeAccepted(
        id=job_id,
        status=JobStatus.QUEUED,
        task=COMPUTE_TASK,
        queue=IN_PROCESS_QUEUE,
        priority=body.priority,
        status_url=f"/v1/jobs/{job_id}",
    )
    try:
        if idempotency is not None:
            payload = body.model_dump(include={"numbers", "percentiles"})
            fingerprint = await run_in_threadpool(  # hashes up to a megabyte: off the event loop
                request_fingerprint, idempotency.route, COMPUTE_TASK, payload, IN_PROCESS_QUEUE, body.priority
            )
            earlier = await run_in_threadpool(idempotency.claim, store.client, fingerprint, accepted.model_dump_json())
            if earlier is not None:
                queue.release()
                return ComputeAccepted.model_validate_json(earlier)
        try:
            await run_in_threadpool(
                partial(store.create, job_id, task=COMPUTE_TASK, queue=IN_PROCESS_QUEUE, owner=principal.id)
            )
            if idempotency is not None:
                await run_in_threadpool(idempotency.finish, store.client)
        except redis.RedisError:
            if idempotency is not None:
                with contextlib.suppress(redis.RedisError):
                    await run_in_threadpool(idempotency.release, store.client)
            raise
    except BaseException:
        queue.release()
        raise
    queue.put(Computation(job_id, array("d", body.numbers), body.percentiles, body.priority, time.time()))
    JOBS_SUBMITTED.labels(COMPUTE_TASK, IN_PROCESS_QUEUE).inc()
    response.headers["Location"] = accepted.status_url
    return accepted
