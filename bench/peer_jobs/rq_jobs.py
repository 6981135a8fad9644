"""RQ 2 with its defaults (results and the job hash kept, the job moved through RQ's
registries); run with `rq worker` (forks a work horse per job) or `--worker-class
rq.SimpleWorker` (runs jobs in the worker process)."""

from __future__ import annotations

import os
import sys
import time

import redis
from rq import Queue

from bench.peer_jobs import FINISHED_KEY, QUEUE

URL = os.environ["BENCH_REDIS_URL"]
_redis: redis.Redis | None = None


def noop() -> None:
    global _redis
    if _redis is None:  # one client per process; the forking worker's horses inherit none
        _redis = redis.Redis.from_url(URL)
    _redis.rpush(FINISHED_KEY, time.time())


def publish(n: int) -> None:
    queue = Queue(QUEUE, connection=redis.Redis.from_url(URL))
    for start in range(0, n, 500):
        # By its import path: run as a script, this module is __main__ to RQ.
        queue.enqueue_many([Queue.prepare_data(f"{__spec__.name}.noop") for _ in range(min(500, n - start))])


if __name__ == "__main__":
    publish(int(sys.argv[2]))
