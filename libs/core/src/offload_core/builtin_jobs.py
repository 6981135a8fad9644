"""Offload's own job types, declared with the public SDK like any user's.

Declarations only: each handler lives in the service that runs it and is imported by workers
alone, so the API (which reads this module) carries no worker code.
"""

from __future__ import annotations

from typing import Any

from offload_core.payloads import EchoPayload
from offload_core.sdk import JobType, declare_job
from offload_core.topology import Queue

echo: JobType[EchoPayload, dict[str, Any]] = declare_job(
    "offload.echo",
    request=EchoPayload,
    # The probe may go anywhere: it exercises queueing, retries and shutdown on every queue.
    queue=Queue.DEFAULT,
    queues=tuple(Queue),
    priority=3,
    description="The probe job: sleeps `sleep_ms`, reports progress, fails its first `fail_times` attempts.",
    handler="offload_core.probe:echo",
)
