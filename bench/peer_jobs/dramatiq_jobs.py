"""Dramatiq with its Redis broker and default middleware (retries on, no results stored); a
message is acknowledged after the actor returns. Run by `dramatiq bench.peer_jobs.dramatiq_jobs`."""

from __future__ import annotations

import os
import sys
import time

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

from bench.peer_jobs import FINISHED_KEY, QUEUE

URL = os.environ["BENCH_REDIS_URL"]
dramatiq.set_broker(RedisBroker(url=URL))
_redis = redis.Redis.from_url(URL)


@dramatiq.actor(queue_name=QUEUE)
def noop() -> None:
    _redis.rpush(FINISHED_KEY, time.time())


def publish(n: int) -> None:
    for _ in range(n):
        noop.send()


if __name__ == "__main__":
    publish(int(sys.argv[2]))
