"""The echo probe: the smallest real job, run by the worker and the notifier alike, so tests and
benchmarks can exercise queueing, progress, retries and shutdown on any queue."""

from __future__ import annotations

import time
from typing import Any

from offload_core.payloads import EchoPayload
from offload_core.sdk import JobContext, TransientJobError

# How often a sleeping echo reports progress and looks for a cancel request.
TICK_SECONDS = 0.25


def echo(ctx: JobContext, request: EchoPayload) -> dict[str, Any]:
    total = request.sleep_ms / 1000
    deadline = time.monotonic() + total
    while (remaining := deadline - time.monotonic()) > 0:
        time.sleep(min(TICK_SECONDS, remaining))
        ctx.check_cancelled()
        slept = total - max(0.0, deadline - time.monotonic())
        ctx.progress(int(99 * slept / total), f"slept {slept:.2f} of {total:.2f} s")
    if ctx.attempt <= request.fail_times:
        raise TransientJobError(f"planned failure {ctx.attempt} of {request.fail_times}")
    return {"message": request.message, "attempts": ctx.attempt, "worker": ctx.worker}
