"""A job module written as a user would, against the public SDK only: tests/unit/test_job_sdk.py
runs `mypy --strict` on it, so the SDK's typing is part of what the tests prove."""

from __future__ import annotations

import asyncio

from pydantic import BaseModel

from offload_core.sdk import (
    JobContext,
    JobEnd,
    JobTimeLimitExceeded,
    JobType,
    PermanentJobError,
    TransientJobError,
    declare_job,
    job,
)


class ResizeRequest(BaseModel):
    url: str
    width: int


class ResizeResult(BaseModel):
    bytes: int


class FanOutRequest(BaseModel):
    targets: list[str]


def forget_delivered(end: JobEnd, request: FanOutRequest) -> FanOutRequest:
    return request.model_copy(update={"targets": request.targets[:1]})


def log_end(end: JobEnd, request: ResizeRequest) -> None:
    print(end.job_id, end.status, end.error, request.url)


@job(
    "acme.resize",
    queue="low",
    request=ResizeRequest,
    result=ResizeResult,
    max_retries=5,
    time_limit=300,
    hard_time_limit=330,
    on_end=log_end,
)
def resize(ctx: JobContext, request: ResizeRequest) -> ResizeResult:
    """Resize one image."""
    ctx.progress(10, "fetching")
    ctx.check_cancelled()
    try:
        answer = ctx.http.get(request.url)
    except JobTimeLimitExceeded as exc:
        raise PermanentJobError("too slow") from exc
    if answer.status_code >= 500:
        raise TransientJobError(f"HTTP {answer.status_code}", retry_after=ctx.seconds_left())
    ctx.logger.info("resized to %d on attempt %d", request.width, ctx.attempt)
    return ResizeResult(bytes=len(answer.content))


@job("acme.fan-out", request=FanOutRequest, retry_backoff=False, dead_letter_payload=forget_delivered)
async def fan_out(ctx: JobContext, request: FanOutRequest) -> dict[str, int]:
    await asyncio.sleep(0)
    return {"targets": len(request.targets), "attempt": ctx.attempt}


# Declared apart from its handler, so the API never imports the handler's module.
by_reference: JobType[ResizeRequest, ResizeResult] = declare_job(
    "acme.resize-later",
    request=ResizeRequest,
    result=ResizeResult,
    handler="acme_workers.resize:resize",
    on_end="acme_workers.resize:log_end",
)
