"""Request payloads the API validates and tasks receive, shared so both agree on the shape."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, EmailStr, Field, HttpUrl, field_validator

from offload_core.contract.timing import StartTime
from offload_core.contract.topology import MAX_PRIORITY, MIN_PRIORITY, Queue


class EchoPayload(BaseModel):
    """The probe job: sleeps, reports progress, fails its first attempts on purpose."""

    model_config = ConfigDict(extra="forbid")

    message: str = Field(max_length=10_000, description="Returned as the job's result.")
    sleep_ms: int = Field(0, ge=0, le=60_000, description="How long the job runs, in milliseconds.")
    fail_times: int = Field(0, ge=0, le=20, description="Attempts that fail with a retryable error first.")


class EchoRequest(EchoPayload, StartTime):
    """POST /v1/jobs/echo: the probe's payload with the queue, priority and start time beside it."""

    queue: Queue | None = Field(None, description="Queue to run on; the task's default route when omitted.")
    priority: int | None = Field(
        None, ge=MIN_PRIORITY, le=MAX_PRIORITY, description="0 runs first, 9 last; the route's default when omitted."
    )

    def task_kwargs(self) -> dict[str, object]:
        return self.model_dump(include=set(EchoPayload.model_fields))


def _single_line(value: str) -> str:
    if "\r" in value or "\n" in value:
        raise ValueError("must be a single line (no CR or LF)")
    return value


SingleLine = Annotated[str, AfterValidator(_single_line)]


# The id a delivery carries (a webhook-id, the local part of a Message-ID): the job's own, or, on a
# replay, the one its first delivery had, so receivers that drop repeats by it still do.
DeliveryId = Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,128}$")]
_KEPT_ID = "Set by a replay: the id (webhook-id or Message-ID) this target's first delivery had."


class EmailPayload(BaseModel):
    """An email sent over SMTP by the worker; retried on transient failures."""

    model_config = ConfigDict(extra="forbid")

    to: list[EmailStr] = Field(min_length=1, max_length=50, description="1 to 50 recipients.")
    subject: SingleLine = Field(min_length=1, max_length=998, description="One line.")
    text: str = Field(max_length=500_000, description="The plain-text body.")
    html: str | None = Field(
        None, max_length=500_000, description="An HTML body; the message is then multipart/alternative."
    )
    reply_to: EmailStr | None = None
    message_id: DeliveryId | None = Field(
        None,
        description="Set by a replay: the first job's id, whose Message-ID the email keeps (the job's own "
        "id when omitted).",
    )


class EmailRequest(EmailPayload, StartTime):
    """POST /v1/emails: the email with the queue, priority and start time beside it."""

    queue: Literal[Queue.DEFAULT, Queue.LOW] | None = Field(
        None, description="`default` when omitted; `low` for bulk mailings."
    )
    priority: int | None = Field(
        None, ge=MIN_PRIORITY, le=MAX_PRIORITY, description="0 runs first, 9 last; the route's default when omitted."
    )

    def task_kwargs(self) -> dict[str, object]:
        return self.model_dump(mode="json", include=set(EmailPayload.model_fields))


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


# Free-form JSON a client sends (a notification's `data`) is carried to workers and receivers and
# serialised several times on the way: bounded in depth (deep nesting exhausts the serialisers'
# recursion) and in size, and checked before anything walks it recursively.
MAX_JSON_DEPTH = 20
MAX_JSON_BYTES = 64 * 1024


def _bounded_json(value: object) -> object:
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:  # iterative: the check itself must not recurse
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        for child in children:
            if isinstance(child, dict | list):
                if depth + 1 > MAX_JSON_DEPTH:
                    raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels; flatten it")
                stack.append((child, depth + 1))
    if len(json.dumps(value, separators=(",", ":"), default=str).encode()) > MAX_JSON_BYTES:
        raise ValueError(f"larger than {MAX_JSON_BYTES} bytes as JSON; send less, or a link to it")
    return value


BoundedJsonObject = Annotated[dict[str, Any], BeforeValidator(_bounded_json)]


class NotificationMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: SingleLine = Field(min_length=1, max_length=200)
    body: str = Field(max_length=20_000)
    severity: Severity = Severity.CRITICAL
    data: BoundedJsonObject | None = Field(
        None,
        description=f"Any JSON object, passed on to webhook receivers: at most {MAX_JSON_DEPTH} levels deep and "
        f"{MAX_JSON_BYTES} bytes.",
    )


class WebhookTarget(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channel: Literal["webhook"]
    url: HttpUrl = Field(description="http(s) URL that receives a signed POST; it must resolve to a public address.")
    message_id: DeliveryId | None = Field(None, description=_KEPT_ID)

    @property
    def address(self) -> str:
        return str(self.url)


class EmailTarget(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channel: Literal["email"]
    address: EmailStr
    message_id: DeliveryId | None = Field(None, description=_KEPT_ID)


MAX_NOTIFICATION_TARGETS = 20

NotificationTarget = Annotated[WebhookTarget | EmailTarget, Field(discriminator="channel")]


class NotificationPayload(BaseModel):
    """A critical notification fanned out by the notifier to every target, each on its own."""

    model_config = ConfigDict(extra="forbid")

    message: NotificationMessage
    targets: list[NotificationTarget] = Field(
        min_length=1, max_length=MAX_NOTIFICATION_TARGETS, description="1 to 20 distinct targets."
    )

    @field_validator("targets")
    @classmethod
    def _distinct(cls, targets: list[WebhookTarget | EmailTarget]) -> list[WebhookTarget | EmailTarget]:
        seen: dict[tuple[str, str], int] = {}
        for index, target in enumerate(targets):
            first = seen.setdefault((target.channel, target.address.lower()), index)
            if first != index:
                raise ValueError(f"target {index} repeats target {first}; each target is delivered once")
        return targets


class NotificationRequest(NotificationPayload, StartTime):
    """POST /v1/notifications: the notification with its priority and start time beside it."""

    priority: int | None = Field(
        None, ge=MIN_PRIORITY, le=MAX_PRIORITY, description="0 runs first, 9 last; 0 when omitted."
    )

    def task_kwargs(self) -> dict[str, object]:
        return self.model_dump(mode="json", include=set(NotificationPayload.model_fields))
