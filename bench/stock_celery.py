"""The stock Celery baseline: a default-configured app (only the broker and result backend
set, to the benchmark's Redis) with one no-op task. Nothing else is tuned on purpose: this is
what a user gets from the Celery tutorial. Run by bench.harness.Stack.start_stock_worker as
`celery -A bench.stock_celery worker --pool=prefork --concurrency=2`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from celery import Celery
from celery.signals import worker_ready

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
NOOP = "bench.noop"


def make_app(redis_url: str) -> Celery:
    """A default Celery app on `redis_url` with the no-op task; producers use their own."""
    celery = Celery("stock", broker=redis_url, backend=redis_url)

    @celery.task(name=NOOP)
    def noop() -> None:
        return None

    return celery


app = make_app(REDIS_URL)


@worker_ready.connect
def _ready(**_: Any) -> None:
    # Tells the harness the worker consumes; not on the per-task path.
    path = os.environ.get("BENCH_READY_FILE")
    if path:
        Path(path).write_text("ready")
