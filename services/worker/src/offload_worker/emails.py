"""The email job: one message over SMTP, retried while the failure is transient."""

from __future__ import annotations

import logging

from offload_core.contract.payloads import EmailPayload
from offload_core.engines import smtp
from offload_core.sdk import JobContext, JobEnd
from offload_core.settings import get_settings

logger = logging.getLogger(__name__)


def send_email(ctx: JobContext, request: EmailPayload) -> dict[str, object]:
    """Returns ``{"message_id", "accepted", "refused", "reply"}`` (see smtp.SendReport)."""
    settings = get_settings()
    recipients = [str(address) for address in request.to]
    message = smtp.build_message(
        settings,
        # The same on every attempt and replay, so a receiver can spot a duplicate.
        message_id=request.message_id or ctx.job_id,
        to=recipients,
        subject=request.subject,
        text=request.text,
        html=request.html,
        reply_to=request.reply_to,
    )
    # The last step: the job is recorded as succeeded as soon as this returns, keeping the window
    # in which a crash would send the message twice as small as it can be.
    report = smtp.send(settings, message, recipients)
    if report.refused:
        logger.warning(
            "job %s: email sent to %d recipients, %d refused", ctx.job_id, len(report.accepted), len(report.refused)
        )
    return report.as_result()


def keep_message_id(end: JobEnd, request: EmailPayload) -> EmailPayload:
    """The dead letter's payload: a replay is a new job but the same message, so it keeps the
    first job's Message-ID, and a receiver that got the first one (its answer lost) can drop it."""
    return request.model_copy(update={"message_id": request.message_id or end.job_id})
