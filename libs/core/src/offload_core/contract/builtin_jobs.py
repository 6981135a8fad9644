"""Offload's own job types, declared with the public SDK like any user's.

Declarations only: each handler (and callback) lives in the service that runs it and is
imported by workers alone, so the API (which reads this module) carries no worker code.
"""

from __future__ import annotations

from typing import Any

from offload_core.contract.payloads import MAX_NOTIFICATION_TARGETS, EchoPayload, EmailPayload, NotificationPayload
from offload_core.contract.reports import ReportRequest
from offload_core.contract.topology import Queue
from offload_core.sdk import JobType, declare_job
from offload_core.store.images import ImageIndexPayload, ImageProcessPayload

# The most OFFLOAD_TASK_MAX_RETRIES allows: a notification target is tried at most this often, plus once.
_MOST_TARGET_RETRIES = 100

echo: JobType[EchoPayload, dict[str, Any]] = declare_job(
    "offload.echo",
    request=EchoPayload,
    # The probe may go anywhere: it exercises queueing, retries and shutdown on every queue.
    queue=Queue.DEFAULT,
    queues=tuple(Queue),
    priority=3,
    description="The probe job: sleeps `sleep_ms`, reports progress, fails its first `fail_times` attempts.",
    handler="offload_core.engines.probe:echo",
)

send_email: JobType[EmailPayload, dict[str, Any]] = declare_job(
    "offload.send_email",
    request=EmailPayload,
    # Emails run on the worker; bulk mailings may be sent to `low`.
    queue=Queue.DEFAULT,
    queues=(Queue.DEFAULT, Queue.LOW),
    priority=3,
    description=(
        "Send one email over SMTP (OFFLOAD_SMTP_*), multipart/alternative when `html` is given; retried on "
        "transient failures. The result lists the recipients the server accepted and refused, with its reply."
    ),
    handler="offload_worker.emails:send_email",
    dead_letter_payload="offload_worker.emails:keep_message_id",
)

notify: JobType[NotificationPayload, dict[str, Any]] = declare_job(
    "offload.notify",
    request=NotificationPayload,
    # Critical notifications: the notifier alone, first in line.
    queue=Queue.HIGH,
    priority=0,
    # Each target keeps its own retries and backoff (at most OFFLOAD_TASK_MAX_RETRIES each) and
    # every attempt of the job tries at least one target, so the targets bound the job's
    # attempts; this is only a backstop. The job wakes exactly when the earliest target is due.
    max_retries=(_MOST_TARGET_RETRIES + 1) * MAX_NOTIFICATION_TARGETS,
    retry_backoff=False,
    description=(
        "Deliver a message to 1 to 20 targets (signed webhooks, emails), each delivered and retried on its own; "
        "a failed notification's dead letter holds the undelivered targets only."
    ),
    handler="offload_notifier.notify:notify",
    dead_letter_payload="offload_notifier.notify:undelivered_targets",
)

report: JobType[ReportRequest, dict[str, Any]] = declare_job(
    "offload.report",
    request=ReportRequest,
    # Long and heavy work: bulk, on `low`, so it never starves `default`.
    queue=Queue.LOW,
    priority=3,
    # Time limits: OFFLOAD_REPORT_*_TIME_LIMIT_SECONDS when set (Settings.job_time_limit_overrides),
    # else the OFFLOAD_TASK_* ones.
    description=(
        "Aggregate a CSV or JSON Lines source fetched over HTTP(S), streamed, and keep the result for download "
        "from /v1/reports/{id}/download."
    ),
    handler="offload_worker.reports:run_report",
)

# An image pipeline is a chain process → index (→ notify); a step that ends without success
# closes the records of the steps after it, which Celery would never send (on_end).
image_process: JobType[ImageProcessPayload, dict[str, Any]] = declare_job(
    "offload.image.process",
    request=ImageProcessPayload,
    queue=Queue.LOW,
    priority=3,
    description="Apply the operations, in order, to an uploaded image and store the result.",
    handler="offload_worker.images:process_image",
    on_end="offload_worker.images:close_later_steps",
)

image_index: JobType[ImageIndexPayload, dict[str, Any]] = declare_job(
    "offload.image.index",
    request=ImageIndexPayload,
    queue=Queue.LOW,
    priority=3,
    description="Put a processed image under its tags in the search index.",
    handler="offload_worker.images:index_image",
    on_end="offload_worker.images:close_later_steps",
)
