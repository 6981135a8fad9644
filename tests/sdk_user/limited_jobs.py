"""A plugin module the integration tests load through OFFLOAD_JOB_MODULES: a job type with a
rate and a concurrency limit across workers, whose runs leave their start and end in Redis, so
tests/integration/test_job_limits.py can check the limits held and no job ran twice."""

from __future__ import annotations

import json
import os
import time
from functools import cache

import redis
from pydantic import BaseModel

from offload_core.sdk import JobContext, job

RUNS_KEY = "tests:limited:runs"


class Hold(BaseModel):
    hold_ms: int = 0


@cache
def _redis() -> redis.Redis:
    return redis.Redis.from_url(os.environ["OFFLOAD_REDIS_URL"], decode_responses=True)


@job("tests.limited", request=Hold, rate_limit=5, concurrency=3)
def limited(ctx: JobContext, req: Hold) -> dict[str, float]:
    """Holds for hold_ms; at most 5 start a second and 3 run at once, across all workers."""
    started = time.time()
    time.sleep(req.hold_ms / 1000)
    ended = time.time()
    run = {"job_id": ctx.job_id, "worker": ctx.worker, "pid": os.getpid(), "started": started, "ended": ended}
    _redis().rpush(RUNS_KEY, json.dumps(run))
    return {"started": started, "ended": ended}


@job("tests.limited_slow", request=Hold, time_limit=1, concurrency=1)
def limited_slow(ctx: JobContext, req: Hold) -> None:
    """Holds for hold_ms, past its 1 s time limit if asked to."""
    time.sleep(req.hold_ms / 1000)
