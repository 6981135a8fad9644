"""The email job: one message over SMTP, retried while the failure is transient."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from pydantic import ValidationError

from offload_core import smtp
from offload_core.job_task import JobTask, PermanentJobError
from offload_core.payloads import EmailRequest
from offload_core.settings import get_settings
from offload_core.topology import TaskName

logger = logging.getLogger(__name__)


class EmailTask(JobTask):
    def dead_letter_payload(self, task_id: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        # A replay is a new job but the same message: it keeps the first job's Message-ID, so a
        # receiver that got the first one (its answer lost) can drop the repeat.
        return {**kwargs, "message_id": kwargs.get("message_id") or task_id}


@shared_task(bind=True, base=EmailTask, name=TaskName.SEND_EMAIL.value)
def send_email(
    self: EmailTask,
    to: list[str],
    subject: str,
    text: str,
    html: str | None = None,
    reply_to: str | None = None,
    message_id: str | None = None,
) -> dict[str, object]:
    """Returns ``{"message_id", "accepted", "refused", "reply"}`` (see smtp.SendReport)."""
    try:
        # Checked again here: messages can reach the broker without the API (replays, other clients).
        request = EmailRequest(to=to, subject=subject, text=text, html=html, reply_to=reply_to)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise PermanentJobError(f"invalid email: {problems}") from exc
    settings = get_settings()
    recipients = [str(address) for address in request.to]
    message = smtp.build_message(
        settings,
        # The same on every attempt and replay, so a receiver can spot a duplicate.
        message_id=message_id or self.job_id,
        to=recipients,
        subject=request.subject,
        text=request.text,
        html=request.html,
        reply_to=request.reply_to,
    )
    # The last step: JobTask records success as soon as this returns, keeping the window in
    # which a crash would send the message twice as small as it can be.
    report = smtp.send(settings, message, recipients)
    if report.refused:
        logger.warning(
            "job %s: email sent to %d recipients, %d refused", self.job_id, len(report.accepted), len(report.refused)
        )
    return report.as_result()
