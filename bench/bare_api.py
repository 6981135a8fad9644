"""The submit baseline: a bare FastAPI endpoint that validates the same body and answers the
same JSON shape as POST /v1/jobs/echo, but enqueues nothing and checks no key. Served by
uvicorn with the API's server settings (host, one process, log level, keep-alive).

`POST /floor/jobs/echo` is the floor of any Redis-backed submit from Python: the same endpoint
plus one async redis-py LPUSH of a 1 KB message. `POST /stock/jobs/echo` is the hand-written
FastAPI + Celery service: the same endpoint publishing a no-op task with stock Celery
(bench/stock_celery.py) from a sync route, as the Celery tutorial does.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import redis.asyncio as aioredis
import uvicorn
from fastapi import FastAPI, Response
from pydantic import BaseModel, ConfigDict, Field

app = FastAPI(title="bare")
FLOOR_MESSAGE = b"x" * 1024
_floor_redis: aioredis.Redis | None = None


class EchoBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: str = Field(max_length=10_000)
    sleep_ms: int = Field(0, ge=0, le=60_000)
    fail_times: int = Field(0, ge=0, le=20)
    queue: str | None = None
    priority: int | None = Field(None, ge=0, le=9)


def _accepted(job_id: str, body: EchoBody, response: Response) -> dict[str, Any]:
    response.headers["Location"] = f"/v1/jobs/{job_id}"
    return {
        "id": job_id,
        "status": "queued",
        "task": "offload.echo",
        "queue": body.queue or "default",
        "priority": 3 if body.priority is None else body.priority,
        "status_url": f"/v1/jobs/{job_id}",
    }


@app.get("/livez")
async def livez() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/v1/jobs/echo", status_code=202)
async def bare_echo(body: EchoBody, response: Response) -> dict[str, Any]:
    return _accepted(uuid.uuid4().hex, body, response)


@app.post("/floor/jobs/echo", status_code=202)
async def floor_echo(body: EchoBody, response: Response) -> dict[str, Any]:
    global _floor_redis
    if _floor_redis is None:
        _floor_redis = aioredis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
    await _floor_redis.lpush("bench:floor", FLOOR_MESSAGE)
    return _accepted(uuid.uuid4().hex, body, response)


@app.post("/stock/jobs/echo", status_code=202)
def stock_echo(body: EchoBody, response: Response) -> dict[str, Any]:
    from bench.stock_celery import NOOP
    from bench.stock_celery import app as celery  # on BENCH_REDIS_URL

    result = celery.send_task(NOOP)
    return _accepted(str(result.id), body, response)


def main() -> None:
    uvicorn.run(
        "bench.bare_api:app",
        host="127.0.0.1",
        port=int(os.environ["BENCH_PORT"]),
        log_level=os.environ.get("BENCH_LOG_LEVEL", "INFO").lower(),
        proxy_headers=True,
        timeout_keep_alive=5,
        http="h11",
        h11_max_incomplete_event_size=64 * 1024,
    )


if __name__ == "__main__":
    main()
