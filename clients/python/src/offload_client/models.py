"""What the API answers, typed. Fields the API adds later are kept (``extra="allow"``) rather
than refused, and statuses stay strings, so an older client keeps working with a newer API."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

ResultT = TypeVar("ResultT")


class JobStatus(StrEnum):
    """The statuses a job goes through; `Job.status` is a plain string that compares equal to these."""

    SCHEDULED = "scheduled"  # delayed: waits for its run_at
    QUEUED = "queued"
    STARTED = "started"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


class ApiModel(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class JobAccepted(ApiModel):
    """A submission's answer: the job's id and where to follow it."""

    id: str
    status: str
    task: str
    queue: str
    priority: int
    status_url: str
    run_at: datetime | None = None
    # Whether an earlier request with the same Idempotency-Key made this job (header Idempotent-Replayed).
    replayed: bool = False


class Progress(ApiModel):
    percent: int = 0
    message: str = ""


class Job(ApiModel):
    id: str
    task: str
    queue: str
    status: str
    progress: Progress = Field(default_factory=Progress)
    result: Any = None
    error: str | None = None
    attempts: int = 0
    worker: str | None = None
    priority: int | None = None
    replay_of: str | None = None
    run_at: datetime | None = None  # a delayed job's due time
    schedule_id: str | None = None  # the recurring schedule that fired it
    cancel_requested: bool = False
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def result_as(self, model: type[ResultT]) -> ResultT:
        """The result validated as ``model`` (e.g. the job type's result model)."""
        return TypeAdapter(model).validate_python(self.result)

    @property
    def succeeded(self) -> bool:
        return self.status == JobStatus.SUCCEEDED


class JobPage(ApiModel):
    jobs: list[Job]
    next_cursor: str | None = None


class JobType(ApiModel):
    name: str
    queue: str
    queues: list[str]
    priority: int
    max_retries: int
    time_limit_seconds: int
    # Across all workers: starts a second and jobs running at once; None: no limit.
    rate_limit: float | None = None
    concurrency: int | None = None
    description: str = ""
    request_schema: dict[str, Any] = Field(default_factory=dict)
    result_schema: dict[str, Any] | None = None
    consumed: bool = False
    submit_url: str


class JobEvent(ApiModel):
    """One Server-Sent Event of a job's stream: `progress` (status, percent, message) on every
    change, then `end` with the whole job; `timeout`, `gone` and `error` end a stream early."""

    event: str
    id: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)

    @property
    def status(self) -> str | None:
        value = self.data.get("status")
        return str(value) if value is not None else None

    @property
    def percent(self) -> int:
        return int(self.data.get("percent") or (100 if self.event == "end" else 0))

    @property
    def message(self) -> str:
        return str(self.data.get("message") or "")

    @property
    def job(self) -> Job | None:
        """The job, on the `end` event."""
        return Job.model_validate(self.data) if self.event == "end" else None


class Schedule(ApiModel):
    """A recurring schedule: `job_type` with `payload` on a `cron` expression (in `timezone`) or
    every `interval_seconds`; `next_fire_times` is empty while paused."""

    id: str
    job_type: str
    payload: dict[str, Any]
    queue: str
    priority: int
    cron: str | None = None
    timezone: str = "UTC"
    interval_seconds: float | None = None
    misfire: str = "skip"
    paused: bool = False
    created_at: datetime
    updated_at: datetime
    next_fire_times: list[datetime] = Field(default_factory=list)
    last_fired_at: datetime | None = None
    last_job_id: str | None = None
    fires: int = 0


class QueueInfo(ApiModel):
    name: str
    depth: int
    consumers: int
    oldest_age_seconds: float | None = None
    dead_letters: int = 0


class DeadLetter(ApiModel):
    id: str
    task: str
    queue: str
    payload: dict[str, Any] = Field(default_factory=dict)
    error: str
    attempts: int
    failed_at: datetime
    replay_of: str | None = None
    replayed_as: str | None = None


class DeadLetterPage(ApiModel):
    dead_letters: list[DeadLetter]
    next_cursor: int | None = None


class NotificationTarget(ApiModel):
    index: int
    channel: str
    address: str
    status: str = "pending"
    attempts: int = 0
    last_error: str | None = None
    http_status: int | None = None
    smtp_reply: str | None = None
    delivered_at: datetime | None = None
    next_attempt_at: datetime | None = None
    reachable: bool | None = None


class Notification(Job):
    targets: list[NotificationTarget] = Field(default_factory=list)


class ReportAccepted(JobAccepted):
    events_url: str
    download_url: str


class Report(Job):
    events_url: str
    download_url: str


class ImageInfo(ApiModel):
    format: str
    width: int
    height: int
    bytes: int
    mode: str = ""


class Image(ApiModel):
    """An uploaded image, its latest pipeline (`pipeline`) and its processed result (`result`)."""

    id: str
    format: str
    width: int
    height: int
    bytes: int
    mode: str = ""
    tags: list[str] = Field(default_factory=list)
    created_at: datetime
    url: str
    process_url: str
    pipeline: dict[str, Any] | None = None
    result: ImageInfo | None = None
    result_url: str
    indexed_tags: list[str] = Field(default_factory=list)
    indexed_at: datetime | None = None


class PipelineAccepted(ApiModel):
    image_id: str
    pipeline_id: str
    status: str = "queued"
    planned: dict[str, Any]
    steps: list[dict[str, Any]]
    status_url: str
    result_url: str
    replayed: bool = False


class ImageHit(ApiModel):
    id: str
    original: ImageInfo
    result: ImageInfo | None = None
    tags: list[str] = Field(default_factory=list)
    indexed_at: datetime | None = None
    url: str
    result_url: str


class ImagePage(ApiModel):
    images: list[ImageHit]
    next_cursor: int | None = None


class AuditEntry(ApiModel):
    id: str
    at: datetime
    key_id: str
    method: str
    route: str
    path: str
    status: int
    job_id: str | None = None
    trace_id: str | None = None


class AuditPage(ApiModel):
    entries: list[AuditEntry]
    next_cursor: str | None = None
