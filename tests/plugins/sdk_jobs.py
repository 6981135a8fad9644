"""Job types written as a user would, loaded by the workers through OFFLOAD_JOB_MODULES in
tests/integration/test_sdk.py: each exercises one promise of offload_core.sdk."""

from __future__ import annotations

import asyncio
import time

from pydantic import BaseModel, Field

from offload_core.sdk import JobContext, PermanentJobError, job


class Numbers(BaseModel):
    numbers: list[int] = Field(min_length=1, max_length=1000)


class Total(BaseModel):
    total: int
    steps: int


@job("sdk.async_sum", request=Numbers, result=Total)
async def async_sum(ctx: JobContext, request: Numbers) -> Total:
    """Adds the numbers in steps, reporting progress after each one, on the event loop."""
    total = 0
    for index, number in enumerate(request.numbers, start=1):
        await asyncio.sleep(0.01)
        total += number
        ctx.progress(index * 100 // len(request.numbers), f"{index} of {len(request.numbers)}")
    ctx.logger.info("summed %d numbers", len(request.numbers))
    return Total(total=total, steps=len(request.numbers))


class Flaky(BaseModel):
    failures: int = Field(ge=0, le=10)


@job("sdk.flaky", request=Flaky, max_retries=2)
def flaky(ctx: JobContext, request: Flaky) -> dict[str, int]:
    """Raises a plain exception on its first attempts: any exception is worth a retry."""
    if ctx.attempt <= request.failures:
        raise ConnectionError(f"attempt {ctx.attempt} failed")
    return {"attempt": ctx.attempt}


class Empty(BaseModel):
    pass


@job("sdk.permanent", request=Empty)
def permanent(ctx: JobContext, request: Empty) -> None:
    raise PermanentJobError("the partner refused this order for good")


@job("sdk.bad_result", request=Empty, result=Total)
def bad_result(ctx: JobContext, request: Empty) -> Total:
    return {"total": "not a number"}  # type: ignore[return-value]  # the bug this job has on purpose


class Fetch(BaseModel):
    url: str


@job("sdk.fetch", request=Fetch)
def fetch(ctx: JobContext, request: Fetch) -> dict[str, int]:
    return {"status": ctx.http.get(request.url).status_code}


class Sleep(BaseModel):
    seconds: float = Field(ge=0, le=60)


@job("sdk.slow", request=Sleep, time_limit=1)
def slow(ctx: JobContext, request: Sleep) -> dict[str, float]:
    """Sleeps past its 1 s time limit."""
    assert ctx.deadline is not None
    time.sleep(request.seconds)
    return {"slept": request.seconds}
