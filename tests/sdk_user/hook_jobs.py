"""A plugin module the integration tests load through OFFLOAD_JOB_MODULES: a job whose callbacks
leave a trace in Redis, so tests/integration/test_job_plugins.py can see when they ran."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from functools import cache

import redis
from pydantic import BaseModel

from offload_core.sdk import JobContext, JobEnd, JobTimeLimitExceeded, PermanentJobError, job

ENDS_KEY = "tests:ends:{}"


class Step(BaseModel):
    marker: str
    targets: list[str] = []
    sleep_ms: int = 0
    fail: bool = False


@cache
def _redis() -> redis.Redis:
    return redis.Redis.from_url(os.environ["OFFLOAD_REDIS_URL"], decode_responses=True)


def record_end(end: JobEnd, request: Step) -> None:
    _redis().rpush(ENDS_KEY.format(request.marker), json.dumps(dataclasses.asdict(end)))


def first_target_only(end: JobEnd, request: Step) -> Step:
    return request.model_copy(update={"targets": request.targets[:1]})


@job(
    "tests.hooked",
    request=Step,
    max_retries=0,
    time_limit=2,
    hard_time_limit=5,
    on_end="tests.sdk_user.hook_jobs:record_end",
    dead_letter_payload=first_target_only,
)
def hooked(ctx: JobContext, request: Step) -> dict[str, str]:
    try:
        time.sleep(request.sleep_ms / 1000)
    except JobTimeLimitExceeded as exc:
        raise PermanentJobError(f"stopped at the time limit, {ctx.seconds_left()} s left") from exc
    if request.fail:
        raise PermanentJobError("asked to fail")
    return {"marker": request.marker}
