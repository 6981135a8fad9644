"""arq with its defaults (results kept for an hour, up to 10 jobs at once per worker, a 0.5 s
poll of the queue's sorted set). Run by `arq bench.peer_jobs.arq_jobs.WorkerSettings`."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any, ClassVar

from arq import create_pool
from arq.connections import RedisSettings

from bench.peer_jobs import FINISHED_KEY, QUEUE

URL = os.environ["BENCH_REDIS_URL"]


async def noop(ctx: dict[str, Any]) -> None:
    await ctx["redis"].rpush(FINISHED_KEY, time.time())


class WorkerSettings:
    functions: ClassVar[list[Any]] = [noop]
    redis_settings = RedisSettings.from_dsn(URL)
    queue_name = QUEUE


async def _publish(n: int) -> None:
    pool = await create_pool(RedisSettings.from_dsn(URL), default_queue_name=QUEUE)
    for _ in range(n):
        await pool.enqueue_job("noop")
    await pool.aclose()


def publish(n: int) -> None:
    asyncio.run(_publish(n))


if __name__ == "__main__":
    publish(int(sys.argv[2]))
