"""Celery as lean as it runs with Offload's delivery guarantee: acknowledged after the task
returns (acks late, redelivered if the worker dies), no result stored, no events, prefork.
The same Celery, kombu, redis-py and hiredis versions as Offload's, so the gap between this row
and Offload's is what Offload does per job (job record, start/finish scripts, progress,
cancellation, orphan recovery, metrics, trace context) and the rest is Celery's own cost. Run by
`celery -A bench.peer_jobs.celery_jobs worker`."""

from __future__ import annotations

import os
import sys
import time

import redis
from celery import Celery

from bench.peer_jobs import FINISHED_KEY, QUEUE

URL = os.environ["BENCH_REDIS_URL"]
app = Celery("floor", broker=URL)
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    task_ignore_result=True,
    task_default_queue=QUEUE,
    worker_send_task_events=False,
)
_redis: redis.Redis | None = None


@app.task(name="bench.floor_noop")
def noop() -> None:
    global _redis
    if _redis is None:  # one client per pool process, made after the fork
        _redis = redis.Redis.from_url(URL)
    _redis.rpush(FINISHED_KEY, time.time())


def publish(n: int) -> None:
    with app.producer_or_acquire() as producer:
        for _ in range(n):
            noop.apply_async(producer=producer)


if __name__ == "__main__":
    publish(int(sys.argv[2]))
