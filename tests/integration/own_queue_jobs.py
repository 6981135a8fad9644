"""A job type on a queue of the deployment's own, as a user's module declares it (loaded by the
workers through OFFLOAD_JOB_MODULES in test_own_queues.py). It reuses the echo probe's handler."""

from __future__ import annotations

from typing import Any

from offload_core.payloads import EchoPayload
from offload_core.sdk import JobType, declare_job

OWN_QUEUE = "acme-bulk_1"  # a hyphen and an underscore: names a user may choose

acme_echo: JobType[EchoPayload, dict[str, Any]] = declare_job(
    "acme.echo",
    request=EchoPayload,
    queue=OWN_QUEUE,
    handler="offload_core.probe:echo",
)
