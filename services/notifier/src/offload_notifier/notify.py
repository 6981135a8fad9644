"""Critical notifications: one job fans out to every target, each delivered and retried on its own.

Every attempt of the job delivers the targets that are due, all at once, and records each
outcome as soon as it is known. A delivered target is never sent again (not by a retry, not
by a redelivery after a crash); a target that keeps failing neither delays nor re-sends the
others. The job ends when no target is left open: succeeded if all were delivered, failed
(and dead-lettered with the undelivered targets only) otherwise.
"""

from __future__ import annotations

import contextvars
import json
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

import httpx

from offload_core.contract.payloads import NotificationPayload
from offload_core.engines import smtp, webhooks
from offload_core.engines.outbound import OutboundPolicy
from offload_core.runtime.job_task import retry_countdown
from offload_core.sdk import JobContext, JobEnd, PermanentJobError, TransientJobError
from offload_core.settings import Settings, get_settings
from offload_core.store.jobs import JobStore
from offload_core.store.notifications import OPEN, Attempt, NotificationTargets, Outcome, TargetRecord, TargetStatus

logger = logging.getLogger(__name__)

# A target whose next attempt is this close is treated as due now (ETA jitter).
DUE_SLACK_SECONDS = 0.2


# A target of a replayed notification carries the id its first delivery had (MESSAGE_ID_FIELD):
# the webhook-id (and the email Message-ID) stay the same across replays, so receivers that drop
# repeats by it still do. Replays set it.
MESSAGE_ID_FIELD = "message_id"


def message_id(job_id: str, index: int, target: dict[str, Any]) -> str:
    """The id every delivery of this target carries, on every attempt and every replay."""
    kept = target.get(MESSAGE_ID_FIELD)
    if isinstance(kept, str) and kept:
        return kept
    return f"msg_{job_id}_{index}" if target.get("channel") == "webhook" else f"{job_id}.{index}"


class TargetsFailed(PermanentJobError):
    """Some targets failed for good; the others were delivered."""


@cache
def _store() -> JobStore:
    """One Redis client per process, made on first use (after the pool process was forked)."""
    return JobStore.from_settings(get_settings())


def _targets() -> NotificationTargets:
    return NotificationTargets(_store().client, get_settings().JOB_TTL_SECONDS)


def undelivered_targets(end: JobEnd, request: NotificationPayload) -> NotificationPayload:
    """The dead letter's payload: a replay must not send again what was delivered, so it gets
    the undelivered targets only; each keeps the id of its first delivery, whatever its index
    becomes, so receivers that drop repeats by it still do."""
    delivered = {r.index for r in _targets().all(end.job_id) if r.status is TargetStatus.DELIVERED}
    payload = request.model_dump(mode="json")["targets"]
    targets = [
        {**target, MESSAGE_ID_FIELD: message_id(end.job_id, index, target)}
        for index, target in enumerate(payload)
        if index not in delivered
    ]
    return request.model_validate({**request.model_dump(mode="json"), "targets": targets})


def _email_body(message: dict[str, Any]) -> str:
    lines = [str(message["body"])]
    if message.get("data"):
        lines += ["", "Data:", json.dumps(message["data"], indent=2, ensure_ascii=False)]
    return "\n".join(lines)


class Delivery:
    """One attempt's deliveries of a notification, sharing an HTTP client and the body."""

    def __init__(
        self,
        settings: Settings,
        job_id: str,
        message: dict[str, Any],
        created_at: datetime,
        message_ids: Sequence[str],
    ) -> None:
        self.settings = settings
        self.job_id = job_id
        self.message = message
        self.message_ids = message_ids
        self.body = webhooks.event_body(job_id, message, created_at)
        self.secrets = [secret.get_secret_value() for secret in settings.WEBHOOK_SECRETS]

    def attempt(self, client: httpx.Client, record: TargetRecord) -> Attempt:
        if record.channel == "webhook":
            return webhooks.deliver(
                client,
                record.address,
                # The same id for every attempt and replay: receivers drop repeats by it.
                message_id=self.message_ids[record.index],
                body=self.body,
                secrets=self.secrets,
            )
        return self._email(record)

    def _email(self, record: TargetRecord) -> Attempt:
        severity = str(self.message.get("severity", "critical")).upper()
        email = smtp.build_message(
            self.settings,
            # The same for every attempt and replay, so a receiver can spot a repeat.
            message_id=self.message_ids[record.index],
            to=[record.address],
            subject=f"[{severity}] {self.message['title']}",
            text=_email_body(self.message),
        )
        try:
            report = smtp.send(self.settings, email, [record.address])
        except TransientJobError as exc:
            return Attempt(Outcome.RETRY, str(exc))
        except PermanentJobError as exc:
            return Attempt(Outcome.FAILED, str(exc))
        if report.refused:
            reply = next(iter(report.refused.values()))
            return Attempt(Outcome.FAILED, f"recipient refused: {reply}")
        return Attempt(Outcome.DELIVERED, smtp_reply=report.reply)


def _record(record: TargetRecord, attempt: Attempt, settings: Settings) -> TargetRecord:
    now = datetime.now(UTC)
    attempts = record.attempts + 1
    update: dict[str, Any] = {
        "attempts": attempts,
        "http_status": attempt.http_status,
        "smtp_reply": attempt.smtp_reply,
        "last_error": attempt.error,
        "next_attempt_at": None,
    }
    if attempt.outcome is Outcome.DELIVERED:
        update |= {"status": TargetStatus.DELIVERED, "delivered_at": now}
    elif attempt.outcome is Outcome.RETRY and attempts <= settings.TASK_MAX_RETRIES:
        delay = retry_countdown(attempts - 1, settings.RETRY_BACKOFF_SECONDS, settings.RETRY_BACKOFF_MAX_SECONDS)
        if attempt.retry_after is not None:
            delay = max(delay, attempt.retry_after)
        delay = min(delay, settings.RETRY_BACKOFF_MAX_SECONDS)
        update |= {"status": TargetStatus.RETRYING, "next_attempt_at": now + timedelta(seconds=delay)}
    else:
        gave_up = attempt.outcome is Outcome.RETRY
        error = f"gave up after {attempts} attempts: {attempt.error}" if gave_up else attempt.error
        update |= {"status": TargetStatus.FAILED, "last_error": error}
    return record.model_copy(update=update)


def _summary(records: Sequence[TargetRecord]) -> str:
    return "; ".join(f"target {r.index} ({r.channel}): {r.last_error}" for r in records)


def notify(ctx: JobContext, request: NotificationPayload) -> dict[str, Any]:
    settings = get_settings()
    job_id = ctx.job_id
    payload = request.model_dump(mode="json")
    message: dict[str, Any] = payload["message"]
    targets = _targets()
    records = targets.ensure(job_id, payload["targets"])
    now = datetime.now(UTC)
    due = [
        r
        for r in records
        if r.status in OPEN
        and (r.next_attempt_at is None or r.next_attempt_at <= now + timedelta(seconds=DUE_SLACK_SECONDS))
    ]
    if due:
        job = _store().get(job_id)
        message_ids = [message_id(job_id, index, target) for index, target in enumerate(payload["targets"])]
        delivery = Delivery(settings, job_id, message, job.created_at if job else now, message_ids)
        policy = OutboundPolicy.from_settings(settings)
        client = policy.client(
            connect_timeout=settings.WEBHOOK_CONNECT_TIMEOUT_SECONDS, read_timeout=settings.WEBHOOK_TIMEOUT_SECONDS
        )

        def deliver(record: TargetRecord) -> TargetRecord:
            try:
                attempt = delivery.attempt(client, record)
            except Exception as exc:
                # Unforeseen: count it as a failed attempt of this target alone; retries are bounded.
                logger.exception("notification %s target %d: unexpected error", job_id, record.index)
                attempt = Attempt(Outcome.RETRY, f"{type(exc).__name__}: {exc}")
            updated = _record(record, attempt, settings)
            # Written before anything else happens, so a crash after this point never re-sends it.
            targets.save(job_id, updated)
            logger.info(
                "notification %s target %d (%s): %s", job_id, record.index, record.channel, updated.status.value
            )
            return updated

        with client, ThreadPoolExecutor(max_workers=len(due), thread_name_prefix="notify") as pool:
            # Each delivery runs in a copy of this thread's context, so its spans and the
            # traceparent it sends belong to the task's trace.
            contexts = [contextvars.copy_context() for _ in due]
            done = {r.index: r for r in pool.map(lambda context, r: context.run(deliver, r), contexts, due)}
        records = [done.get(r.index, r) for r in records]

    still_open = [r for r in records if r.status in OPEN]
    if still_open:
        next_at = min(r.next_attempt_at or now for r in still_open)
        wait = max(0.0, (next_at - datetime.now(UTC)).total_seconds())
        raise TransientJobError(
            f"{len(still_open)} of {len(records)} targets not delivered yet: {_summary(still_open)}", retry_after=wait
        )
    failed = [r for r in records if r.status is TargetStatus.FAILED]
    if failed:
        raise TargetsFailed(f"{len(failed)} of {len(records)} targets failed: {_summary(failed)}")
    return {"delivered": len(records), "attempts": sum(r.attempts for r in records)}
