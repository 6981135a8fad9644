"""The echo probe: the smallest real job, registered by the worker and the notifier alike,
so tests and benchmarks can exercise queueing, progress, retries and shutdown on any queue."""

from __future__ import annotations

import time
from typing import Any

from celery import shared_task

from offload_core.job_task import JobTask, TransientJobError
from offload_core.topology import TaskName

# How often a sleeping echo reports progress and looks for a cancel request.
TICK_SECONDS = 0.25


@shared_task(bind=True, base=JobTask, name=TaskName.ECHO.value)
def echo(self: JobTask, message: str, sleep_ms: int = 0, fail_times: int = 0) -> dict[str, Any]:
    attempt = self.request.retries + 1
    total = sleep_ms / 1000
    deadline = time.monotonic() + total
    while (remaining := deadline - time.monotonic()) > 0:
        time.sleep(min(TICK_SECONDS, remaining))
        self.raise_if_cancelled()
        slept = total - max(0.0, deadline - time.monotonic())
        self.report_progress(int(99 * slept / total), f"slept {slept:.2f} of {total:.2f} s")
    if attempt <= fail_times:
        raise TransientJobError(f"planned failure {attempt} of {fail_times}")
    return {"message": message, "attempts": attempt, "worker": self.request.hostname}
