"""Every Offload setting, read once from ``OFFLOAD_*`` environment variables.

The API, the worker and the notifier all read this one class, so a value means the same
thing in every process. The README lists each setting with its default.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from offload_core.contract.api_keys import (
    KEY_ID_PATTERN,
    RequestRate,
    parse_api_key,
    parse_key_rate_limits,
    parse_request_rate,
)
from offload_core.contract.topology import BUILTIN_QUEUES, queue_name_problem
from offload_core.contract.topology import WORKER_QUEUES as WORKER_IMAGE_QUEUES


def _split_csv(value: object) -> object:
    """Accept ``a,b,c`` as well as a JSON list from the environment."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [item.strip() for item in text.split(",") if item.strip()]
    return value


WEBHOOK_SECRET_PREFIX = "whsec_"  # noqa: S105  (a format prefix, not a secret)


def webhook_secret_problem(secret: str) -> str | None:
    """Why a webhook signing secret is unusable, if it is: Standard Webhooks secrets are
    ``whsec_`` followed by 24 to 64 random bytes in base64."""
    if not secret.startswith(WEBHOOK_SECRET_PREFIX):
        return f"a secret must start with {WEBHOOK_SECRET_PREFIX!r}"
    try:
        key = base64.b64decode(secret.removeprefix(WEBHOOK_SECRET_PREFIX), validate=True)
    except binascii.Error:
        return f"a secret must be {WEBHOOK_SECRET_PREFIX!r} followed by base64"
    if not 24 <= len(key) <= 64:
        return f"a secret must hold 24 to 64 bytes, this one holds {len(key)}"
    return None


def parse_quota_overrides(entries: Sequence[str]) -> dict[str, int]:
    """OFFLOAD_BLOB_QUOTA_OVERRIDES: ``<key id>=<bytes>`` entries."""
    overrides: dict[str, int] = {}
    for entry in entries:
        key_id, _, amount = entry.partition("=")
        if not re.fullmatch(KEY_ID_PATTERN, key_id.strip()) or not amount.strip().isdigit():
            raise ValueError(
                f"OFFLOAD_BLOB_QUOTA_OVERRIDES entry {entry!r} must be <key id>=<bytes>, e.g. reports-bot=10737418240"
            )
        overrides[key_id.strip()] = int(amount)
    return overrides


class JobTypeLimits(BaseModel):
    """A deployment's limits for one job type (OFFLOAD_JOB_LIMITS), over what its declaration says:
    a field given replaces the declared one (null removes it), a field left out keeps it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rate_limit: float | None = Field(None, gt=0, le=100_000, description="Starts per second, all workers together.")
    concurrency: int | None = Field(None, ge=1, le=100_000, description="Jobs running at once, all workers together.")


class Settings(BaseSettings):
    # Inputs stay out of error messages: they hold keys and passwords.
    model_config = SettingsConfigDict(env_prefix="OFFLOAD_", extra="ignore", frozen=True, hide_input_in_errors=True)

    # "development" allows running without API keys (make run generates one anyway);
    # "production" refuses to start without them.
    ENVIRONMENT: Literal["development", "production"] = "production"
    LOG_LEVEL: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # "json": one object a line for log search; "text": for people; "auto": text when stderr
    # is a terminal, JSON otherwise (containers, process managers).
    LOG_FORMAT: Literal["auto", "json", "text"] = "auto"

    # Broker, result backend and job store. A password belongs in the URL, which comes
    # from the environment (a Kubernetes Secret in the chart).
    REDIS_URL: SecretStr = SecretStr("redis://localhost:6379/0")
    # Bounds every Redis call of the API and the job store, so an outage is an error, not a hang.
    REDIS_CONNECT_TIMEOUT_SECONDS: float = Field(2.0, gt=0, le=60)
    REDIS_SOCKET_TIMEOUT_SECONDS: float = Field(5.0, gt=0, le=300)
    # TLS (a rediss:// URL, or REDIS_SENTINEL_TLS): the CA bundle (PEM file) that signs the
    # server's certificate, the system's CAs when unset; and whether the certificate is checked.
    # "required" is the only safe choice; "none" accepts any server (a test Redis only).
    REDIS_TLS_CA_FILE: Path | None = None
    REDIS_TLS_CERT_REQS: Literal["required", "optional", "none"] = "required"
    # Redis Sentinel: with sentinel addresses (host:port, comma-separated) every client asks
    # them for the primary of REDIS_SENTINEL_MASTER and follows a failover. REDIS_URL then gives
    # only the scheme (rediss:// for TLS to Redis), password and database; its host is not used.
    REDIS_SENTINELS: Annotated[list[str], NoDecode] = []
    REDIS_SENTINEL_MASTER: str = "mymaster"
    # The sentinels' own password (their requirepass), if they have one, and TLS to them.
    REDIS_SENTINEL_PASSWORD: SecretStr | None = None
    REDIS_SENTINEL_TLS: bool = False
    # The API refuses new jobs (503 redis_full) once Redis uses this share of its maxmemory, so the
    # rest stays for workers: they must write to start consuming and to finish the jobs that free
    # memory. 1 = only when Redis itself refuses. No effect while maxmemory is 0 (no limit).
    REDIS_SUBMIT_MEMORY_RATIO: float = Field(0.95, gt=0, le=1)

    # API keys accepted as `Authorization: Bearer <key>`; comma-separated or a JSON list. Each is
    # a plain key, `sha256:<hex>` (its hash), or `<id>:<scopes>:<key or sha256:hex>`
    # (offload_core.contract.api_keys); a key sees its own records, the `admin` scope all.
    API_KEYS: Annotated[list[SecretStr], NoDecode] = []
    # Requests per window each key id may make on /v1 (`<requests>/<seconds>`, or `off`), and
    # the keys that get other limits (`<key id>=<requests>/<seconds>` or `<key id>=off`,
    # comma-separated). A key over its limit gets 429 with Retry-After; counted in Redis, so the
    # limit holds across API replicas.
    API_RATE_LIMIT: str = "60000/60"
    API_KEY_RATE_LIMITS: Annotated[list[str], NoDecode] = []
    API_HOST: str = "127.0.0.1"
    API_PORT: int = Field(8000, ge=1, le=65535)
    # Larger request bodies are refused with 413 before they are read.
    API_MAX_BODY_BYTES: int = Field(1024 * 1024, ge=1024)
    # The API's Prometheus metrics are served on this port, apart from API_PORT, so that nothing
    # routing the API (an Ingress) exposes them; on API_METRICS_HOST, API_HOST when unset.
    API_METRICS_PORT: int = Field(9807, ge=1, le=65535)
    API_METRICS_HOST: str | None = None
    # Open connections (or requests in progress) one API process takes; more are answered 503.
    API_MAX_CONNECTIONS: int = Field(1000, ge=1, le=100_000)

    # In-process work of the API (the README's "Choose the right tool"). The audit trail keeps
    # about this many entries (a capped Redis stream; the oldest go first).
    AUDIT_MAX_ENTRIES: int = Field(100_000, ge=100, le=10_000_000)
    # Tracked asyncio tasks (webhook reachability checks) running at once; more are skipped.
    API_TRACKED_TASKS_MAX: int = Field(100, ge=1, le=10_000)
    # On shutdown, tracked tasks and running computations get this long, then are cancelled.
    # With uvicorn's 20 s for open requests it must fit the pod's grace period.
    API_SHUTDOWN_TASKS_TIMEOUT_SECONDS: float = Field(5.0, ge=0, le=300)
    # POST /v1/compute: waiting computations at most (more get 429), the processes running
    # them, and the most numbers one computation may take.
    COMPUTE_QUEUE_MAX: int = Field(100, ge=1, le=100_000)
    COMPUTE_WORKERS: int = Field(2, ge=1, le=64)
    COMPUTE_MAX_NUMBERS: int = Field(100_000, ge=1, le=1_000_000)

    # How long a job's record (status, progress, result, error) is kept after its last change.
    JOB_TTL_SECONDS: int = Field(7 * 24 * 3600, ge=60)
    # How long Celery's own result backend keeps task results.
    RESULT_EXPIRES_SECONDS: int = Field(24 * 3600, ge=60)
    # A repeated Idempotency-Key returns the first job for this long after its first use.
    IDEMPOTENCY_TTL_SECONDS: int = Field(24 * 3600, ge=1)
    # Jobs that failed for good, kept for inspection and replay: at most this many (the
    # oldest go first), each for this long.
    DEAD_LETTER_MAX: int = Field(10_000, ge=1)
    DEAD_LETTER_TTL_SECONDS: int = Field(14 * 24 * 3600, ge=60)

    # Time limits of every task: at the soft limit the task gets SoftTimeLimitExceeded and
    # records a "timed out" failure; at the hard limit its process is killed.
    TASK_SOFT_TIME_LIMIT_SECONDS: int = Field(240, ge=1)
    TASK_TIME_LIMIT_SECONDS: int = Field(300, ge=1)
    # Retries of transient failures: exponential backoff with full jitter, capped.
    TASK_MAX_RETRIES: int = Field(5, ge=0, le=100)
    RETRY_BACKOFF_SECONDS: float = Field(1.0, gt=0)
    RETRY_BACKOFF_MAX_SECONDS: float = Field(60.0, gt=0)
    # A job whose run ends this many times without an outcome (its worker process was killed,
    # ran out of memory or crashed, or its worker shut down before it finished) is not
    # delivered again: it fails and is dead-lettered with that reason, so a job that kills its
    # worker cannot take the pool down forever.
    TASK_MAX_LOST_RUNS: int = Field(5, ge=1, le=100)

    # A message taken by a worker that dies without acknowledging it is handed to another
    # worker once it is older than the visibility timeout. It must exceed the longest task
    # run (hard limit) plus the longest retry countdown, or running tasks get delivered twice.
    VISIBILITY_TIMEOUT_SECONDS: int = Field(420, ge=2)
    # How often a running worker looks for such messages. A killed worker's task is back on
    # the queue at most VISIBILITY_TIMEOUT + INTERVAL * THROTTLE seconds after it was taken.
    UNACKED_RESTORE_INTERVAL_SECONDS: float = Field(5.0, gt=0)
    UNACKED_RESTORE_THROTTLE: int = Field(1, ge=1)

    # Recovery of accepted jobs whose broker message Redis lost (a restart between the BRPOP that
    # takes a message and the write that records it as unacknowledged). Every interval one worker
    # looks for jobs still queued after the grace whose message is on no list and held by no
    # worker; missing in two sweeps in a row, such a job is published again. The grace must exceed
    # the longest publish of the API, or a message still on its way could be published twice.
    ORPHAN_SWEEP_INTERVAL_SECONDS: float = Field(30.0, ge=0.1, le=3600)
    ORPHAN_GRACE_SECONDS: float = Field(60.0, ge=1, le=7 * 24 * 3600)

    # Delayed jobs (`run_at` / `delay_seconds` on a submit): the longest delay accepted. They wait
    # in Redis and every worker's timekeeper thread publishes the due ones (any number of workers
    # may run it; each job is published once); it looks at least every POLL seconds, so a job is
    # published within about that long of its time, at most BATCH per Redis call.
    DELAY_MAX_SECONDS: int = Field(30 * 24 * 3600, ge=1, le=366 * 24 * 3600)
    TIMEKEEPER_ENABLED: bool = True
    TIMEKEEPER_POLL_SECONDS: float = Field(0.2, ge=0.01, le=1.0)
    TIMEKEEPER_BATCH: int = Field(500, ge=1, le=10_000)
    # Recurring schedules (/v1/schedules) are fired by the same timekeepers. A tick found later
    # than this (every timekeeper was down) is a misfire, handled by the schedule's policy.
    SCHEDULE_MISFIRE_GRACE_SECONDS: float = Field(5.0, ge=0.5, le=3600)

    # Publishing: connection attempts and their timeout, so a broker outage answers 503 in
    # seconds instead of hanging a request.
    PUBLISH_MAX_RETRIES: int = Field(2, ge=0, le=10)
    BROKER_CONNECT_TIMEOUT_SECONDS: float = Field(2.0, gt=0, le=60)
    BROKER_SOCKET_TIMEOUT_SECONDS: float = Field(10.0, gt=1, le=300)
    # Connections (and producers) kept for what is published through Celery: chains (the API,
    # from its thread pool), retries and chain steps (workers) and recovered jobs (the sweep).
    BROKER_POOL_LIMIT: int = Field(40, ge=1)

    # The deployment's queues: the built-in ones (high, default, low) plus any its own job types
    # use. Every process of a deployment must read the same list (the chart renders it from its
    # worker sets): the API accepts jobs for these queues only, and a job type naming another
    # queue stops the process at start.
    QUEUES: Annotated[list[str], NoDecode] = list(BUILTIN_QUEUES)
    # Which of them this worker consumes, so one image can run one Deployment per queue set. The
    # notifier consumes `high` when this is not set.
    WORKER_QUEUES: Annotated[list[str], NoDecode] = list(WORKER_IMAGE_QUEUES)
    WORKER_CONCURRENCY: int = Field(2, ge=1, le=256)
    WORKER_POOL: Literal["prefork", "threads", "solo"] = "prefork"
    # Messages reserved per process (late acks: a reserved message is redelivered if the worker
    # dies). 4 suits short jobs, which the worker then takes from Redis in batches; a worker set
    # of long jobs (reports, images) should use 1, so that no job waits behind another.
    WORKER_PREFETCH_MULTIPLIER: int = Field(4, ge=1, le=100)
    # Task events feed Flower's live view. The worker sends them in batches (a few per second);
    # a high-volume set nobody watches live may still turn them off to spare its main process.
    WORKER_SEND_EVENTS: bool = True
    # Celery node name; %h is the host name (the pod name on Kubernetes).
    WORKER_NAME: str | None = None
    # On SIGTERM a worker gives running tasks this long, then hands them back to the queue.
    WORKER_SOFT_SHUTDOWN_TIMEOUT_SECONDS: float = Field(25.0, ge=0)
    # Heartbeat and ready files for Kubernetes probes, written under this directory.
    WORKER_STATE_DIR: Path = Path("/tmp/offload")
    WORKER_HEARTBEAT_INTERVAL_SECONDS: float = Field(5.0, gt=0)
    # Prometheus metrics of a worker's process set (all pool processes summed) are served on
    # this port by its main process; 0 turns the endpoint off.
    WORKER_METRICS_PORT: int = Field(9808, ge=0, le=65535)
    WORKER_METRICS_HOST: str = "0.0.0.0"

    # Queue depth gauges read Redis at most this often, however often Prometheus scrapes.
    QUEUE_METRICS_CACHE_SECONDS: float = Field(5.0, ge=0, le=300)

    # Outbound email: the email job and the notifier's email channel. "starttls" upgrades a
    # plain connection (port 587), "tls" is implicit TLS from the first byte (port 465), "none"
    # is for a local relay or a test server only.
    SMTP_HOST: str = "localhost"
    SMTP_PORT: int = Field(587, ge=1, le=65535)
    SMTP_SECURITY: Literal["starttls", "tls", "none"] = "starttls"
    SMTP_USERNAME: str | None = None
    SMTP_PASSWORD: SecretStr | None = None
    # Bounds the connect and every SMTP command, so a silent server is a retryable timeout.
    SMTP_TIMEOUT_SECONDS: float = Field(10.0, gt=0, le=120)
    EMAIL_FROM: str = "Offload <offload@localhost>"

    # Webhook signing secrets (Standard Webhooks: "whsec_" + base64). Every delivery carries one
    # signature per secret, so receivers can move to a new secret while the old one still works.
    WEBHOOK_SECRETS: Annotated[list[SecretStr], NoDecode] = []
    WEBHOOK_CONNECT_TIMEOUT_SECONDS: float = Field(5.0, gt=0, le=60)
    # Read and write timeout of a webhook request once connected.
    WEBHOOK_TIMEOUT_SECONDS: float = Field(10.0, gt=0, le=120)

    # Outbound URLs (webhooks, report sources) must resolve to public addresses. Hosts named
    # here (host names, IP addresses or networks such as 10.0.0.0/8) are exempt.
    OUTBOUND_ALLOWED_HOSTS: Annotated[list[str], NoDecode] = []
    # Timeouts of the outbound HTTP client that user jobs get as JobContext.http.
    OUTBOUND_CONNECT_TIMEOUT_SECONDS: float = Field(5.0, gt=0, le=60)
    OUTBOUND_READ_TIMEOUT_SECONDS: float = Field(30.0, gt=0, le=300)

    # Job types (offload_core.sdk) come from the built-ins, from installed packages' `offload.jobs`
    # entry points, and from the modules named here (comma-separated), for code not packaged.
    JOB_MODULES: Annotated[list[str], NoDecode] = []
    # Limits of job types across all workers, over their declarations (@job(rate_limit=...,
    # concurrency=...)): a JSON object such as {"acme.sync": {"rate_limit": 10, "concurrency": 4}}.
    JOB_LIMITS: Annotated[dict[str, JobTypeLimits], NoDecode] = {}
    # The longest a job over its type's limits waits in its worker for a start; then it is
    # handed back to the front of its queue and waits again where a worker takes it next. The
    # Celery time limits of a limited type are longer by this much (the handler's own limit
    # starts when it starts), and must still fit the visibility timeout.
    JOB_LIMIT_MAX_WAIT_SECONDS: float = Field(30.0, ge=1, le=3600)

    # Image pipelines: an upload larger than IMAGE_MAX_BYTES is refused with 413 (its path alone
    # may exceed API_MAX_BODY_BYTES); images, and every step's output, may hold at most
    # IMAGE_MAX_PIXELS pixels, which bounds a worker's memory (4 bytes a pixel) and refuses
    # decompression bombs. Originals, results and their index entries live IMAGE_TTL_SECONDS
    # after their last upload or processing.
    IMAGE_MAX_BYTES: int = Field(20 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024)
    IMAGE_MAX_PIXELS: int = Field(40_000_000, ge=1024, le=500_000_000)
    IMAGE_MAX_RESULT_BYTES: int = Field(64 * 1024 * 1024, ge=1024, le=512 * 1024 * 1024)
    IMAGE_TTL_SECONDS: int = Field(24 * 3600, ge=60)

    # Reports (POST /v1/reports). The source is streamed and aggregated as it arrives; these bound
    # what one report may read, hold and produce. Each limit fails the job with a message naming it.
    REPORT_MAX_SOURCE_BYTES: int = Field(1024 * 1024 * 1024, ge=1)
    REPORT_MAX_ROWS: int = Field(20_000_000, ge=1)
    # Memory grows with the number of groups, never with the rows.
    REPORT_MAX_GROUPS: int = Field(100_000, ge=1)
    REPORT_MAX_RESULT_BYTES: int = Field(10 * 1024 * 1024, ge=1024)
    # A row whose group_by values take more bytes than this is malformed (skipped and counted):
    # every group's key is held until the end.
    REPORT_MAX_GROUP_KEY_BYTES: int = Field(1024, ge=16, le=1024 * 1024)
    # Malformed rows are counted and skipped; above this share (judged once this many rows were
    # read, and at the end) the job fails.
    REPORT_MAX_MALFORMED_SHARE: float = Field(0.01, ge=0, le=1)
    REPORT_MALFORMED_MIN_ROWS: int = Field(1000, ge=1)
    # How long a finished report can be downloaded.
    REPORT_RESULT_TTL_SECONDS: int = Field(24 * 3600, ge=1)
    REPORT_FETCH_CONNECT_TIMEOUT_SECONDS: float = Field(5.0, gt=0, le=60)
    # Longest silence of the source while streaming it.
    REPORT_FETCH_READ_TIMEOUT_SECONDS: float = Field(30.0, gt=0, le=300)
    # Time limits of a report when it needs other ones than OFFLOAD_TASK_*; unset: those.
    REPORT_SOFT_TIME_LIMIT_SECONDS: int | None = Field(None, ge=1)
    REPORT_TIME_LIMIT_SECONDS: int | None = Field(None, ge=1)
    # GET /v1/jobs/{id}/events (and a report's) reads the job this often, and ends a stream
    # after this long (clients reconnect with Last-Event-ID).
    JOB_EVENTS_POLL_SECONDS: float = Field(0.5, ge=0.05, le=10)
    JOB_EVENTS_MAX_SECONDS: float = Field(1800.0, ge=1)

    # Blob store: the bytes of image uploads and results and of report results (the broker Redis
    # keeps only their metadata). "filesystem" keeps them under BLOB_DIR, which every API and
    # worker process must share (make run; one volume in Kubernetes); "s3" in an S3-compatible
    # bucket. S3 credentials come from the environment only (AWS_ACCESS_KEY_ID and
    # AWS_SECRET_ACCESS_KEY, or a web identity / instance role), never from these settings.
    BLOB_BACKEND: Literal["filesystem", "s3"] = "filesystem"
    BLOB_DIR: Path = Path("/var/lib/offload/blobs")
    BLOB_S3_BUCKET: str = ""
    # Prepended to every object key, so one bucket can serve several deployments.
    BLOB_S3_PREFIX: str = Field("offload", pattern=r"^[A-Za-z0-9_./-]{0,200}$")
    # Empty for AWS itself; the URL of any other S3-compatible service (MinIO, Ceph, R2...).
    BLOB_S3_ENDPOINT_URL: str = ""
    BLOB_S3_REGION: str | None = None
    # Path-style addressing (https://host/bucket/key), which most self-hosted services need.
    BLOB_S3_PATH_STYLE: bool = False
    BLOB_S3_CONNECT_TIMEOUT_SECONDS: float = Field(5.0, gt=0, le=60)
    BLOB_S3_READ_TIMEOUT_SECONDS: float = Field(30.0, gt=0, le=300)
    # Bytes of blobs one API key may keep stored at once (originals, results, reports); beyond
    # it an upload is refused with 413 and a job's result fails the job. Per-key exceptions:
    # `<key id>=<bytes>` entries, comma-separated.
    BLOB_QUOTA_BYTES: int = Field(1024 * 1024 * 1024, ge=0)
    BLOB_QUOTA_OVERRIDES: Annotated[list[str], NoDecode] = []
    # How often a worker deletes blobs whose TTL has passed and frees their quota.
    BLOB_SWEEP_INTERVAL_SECONDS: float = Field(60.0, ge=0.1, le=3600)

    @field_validator(
        "API_KEYS",
        "API_KEY_RATE_LIMITS",
        "QUEUES",
        "WORKER_QUEUES",
        "WEBHOOK_SECRETS",
        "OUTBOUND_ALLOWED_HOSTS",
        "JOB_MODULES",
        "REDIS_SENTINELS",
        "BLOB_QUOTA_OVERRIDES",
        mode="before",
    )
    @classmethod
    def _parse_list(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("QUEUES", "WORKER_QUEUES")
    @classmethod
    def _queue_names(cls, value: list[str], info: ValidationInfo) -> list[str]:
        problems = [problem for name in value if (problem := queue_name_problem(name))]
        if problems:
            raise ValueError(f"OFFLOAD_{info.field_name}: " + "; ".join(problems))
        if len(set(value)) != len(value):
            raise ValueError(f"OFFLOAD_{info.field_name} names a queue twice: {', '.join(value)}")
        return value

    @field_validator("OUTBOUND_ALLOWED_HOSTS")
    @classmethod
    def _allowed_hosts_parse(cls, value: list[str]) -> list[str]:
        from offload_core.engines.outbound import OutboundPolicy  # it imports this module

        OutboundPolicy(value)  # raises ValueError naming the entry that is not a host, address or network
        return value

    @field_validator("BLOB_QUOTA_OVERRIDES")
    @classmethod
    def _quota_overrides(cls, value: list[str]) -> list[str]:
        parse_quota_overrides(value)  # raises ValueError naming the entry
        return value

    @field_validator("JOB_LIMITS", mode="before")
    @classmethod
    def _job_limits_json(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                return json.loads(value or "{}")
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f'OFFLOAD_JOB_LIMITS must be a JSON object such as {{"acme.sync": {{"rate_limit": 10}}}}: {exc}'
                ) from None
        return value

    @field_validator("API_RATE_LIMIT")
    @classmethod
    def _api_rate_limit(cls, value: str) -> str:
        try:
            parse_request_rate(value)
        except ValueError as exc:
            raise ValueError(f"OFFLOAD_API_RATE_LIMIT: {exc}") from None
        return value

    @field_validator("API_KEY_RATE_LIMITS")
    @classmethod
    def _api_key_rate_limits(cls, value: list[str]) -> list[str]:
        try:
            parse_key_rate_limits(value)
        except ValueError as exc:
            raise ValueError(f"OFFLOAD_API_KEY_RATE_LIMITS: {exc}") from None
        return value

    @field_validator("REDIS_URL")
    @classmethod
    def _redis_url_scheme(cls, value: SecretStr) -> SecretStr:
        scheme = urlsplit(value.get_secret_value()).scheme
        if scheme not in {"redis", "rediss", "unix"}:
            raise ValueError(
                f"OFFLOAD_REDIS_URL must be a redis://, rediss:// or unix:// URL, got {scheme or 'no'} scheme"
            )
        return value

    @field_validator("REDIS_SENTINELS")
    @classmethod
    def _sentinel_addresses(cls, value: list[str]) -> list[str]:
        for address in value:
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
                raise ValueError(f"OFFLOAD_REDIS_SENTINELS: {address!r} is not host:port (e.g. sentinel-0.redis:26379)")
        return value

    @field_validator("REDIS_TLS_CA_FILE")
    @classmethod
    def _ca_file_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"OFFLOAD_REDIS_TLS_CA_FILE: no file at {value}; mount the CA bundle there or unset it")
        return value

    @model_validator(mode="after")
    def _check_consistency(self) -> Settings:
        if self.TASK_SOFT_TIME_LIMIT_SECONDS >= self.TASK_TIME_LIMIT_SECONDS:
            raise ValueError(
                "OFFLOAD_TASK_SOFT_TIME_LIMIT_SECONDS must be below OFFLOAD_TASK_TIME_LIMIT_SECONDS "
                "so a task can record its timeout before it is killed"
            )
        longest_hold = self.TASK_TIME_LIMIT_SECONDS + self.RETRY_BACKOFF_MAX_SECONDS
        if longest_hold >= self.VISIBILITY_TIMEOUT_SECONDS:
            raise ValueError(
                f"OFFLOAD_VISIBILITY_TIMEOUT_SECONDS ({self.VISIBILITY_TIMEOUT_SECONDS}) must exceed "
                f"OFFLOAD_TASK_TIME_LIMIT_SECONDS + OFFLOAD_RETRY_BACKOFF_MAX_SECONDS ({longest_hold:g}), "
                "or Redis hands running tasks to a second worker"
            )
        report_soft, report_hard = self.report_time_limits
        if report_soft >= report_hard:
            raise ValueError(
                f"the report soft time limit ({report_soft}) must be below its hard limit ({report_hard}); "
                "check OFFLOAD_REPORT_SOFT_TIME_LIMIT_SECONDS and OFFLOAD_REPORT_TIME_LIMIT_SECONDS"
            )
        if report_hard + self.RETRY_BACKOFF_MAX_SECONDS >= self.VISIBILITY_TIMEOUT_SECONDS:
            raise ValueError(
                f"OFFLOAD_VISIBILITY_TIMEOUT_SECONDS ({self.VISIBILITY_TIMEOUT_SECONDS}) must exceed the report "
                f"time limit + OFFLOAD_RETRY_BACKOFF_MAX_SECONDS ({report_hard + self.RETRY_BACKOFF_MAX_SECONDS:g}), "
                "or Redis hands running reports to a second worker"
            )
        for position, key in enumerate(self.API_KEYS, start=1):
            try:
                parse_api_key(key.get_secret_value())
            except ValueError as exc:
                raise ValueError(f"OFFLOAD_API_KEYS entry {position}: {exc}") from None
        for secret in self.WEBHOOK_SECRETS:
            if (problem := webhook_secret_problem(secret.get_secret_value())) is not None:
                raise ValueError(f"OFFLOAD_WEBHOOK_SECRETS: {problem}")
        if self.publish_bound_seconds >= self.ORPHAN_GRACE_SECONDS:
            raise ValueError(
                f"OFFLOAD_ORPHAN_GRACE_SECONDS ({self.ORPHAN_GRACE_SECONDS:g}) must exceed the longest publish, "
                f"{self.publish_bound_seconds:g} s = (OFFLOAD_PUBLISH_MAX_RETRIES + 1) x "
                "(OFFLOAD_BROKER_CONNECT_TIMEOUT_SECONDS + OFFLOAD_BROKER_SOCKET_TIMEOUT_SECONDS), "
                "or a job whose message is still being published may be published twice"
            )
        if self.REDIS_SENTINELS and urlsplit(self.redis_url).scheme == "unix":
            raise ValueError(
                "OFFLOAD_REDIS_SENTINELS is set but OFFLOAD_REDIS_URL is a unix:// socket; use redis:// or rediss:// "
                "(its host is not used: the sentinels name the primary)"
            )
        if self.BLOB_BACKEND == "s3" and not self.BLOB_S3_BUCKET:
            raise ValueError("OFFLOAD_BLOB_BACKEND=s3 needs OFFLOAD_BLOB_S3_BUCKET, the bucket to keep blobs in")
        self._check_queues()
        return self

    def _check_queues(self) -> None:
        missing = [queue for queue in BUILTIN_QUEUES if queue not in self.QUEUES]
        if missing:
            raise ValueError(
                f"OFFLOAD_QUEUES ({','.join(self.QUEUES)}) lacks the built-in queue(s) {', '.join(missing)}, "
                f"which Offload's own jobs use; list them too, e.g. {','.join([*BUILTIN_QUEUES, 'acme'])}"
            )
        if not self.WORKER_QUEUES:
            raise ValueError("OFFLOAD_WORKER_QUEUES names no queue; use e.g. default,low")
        unknown = [queue for queue in self.WORKER_QUEUES if queue not in self.QUEUES]
        if unknown:
            raise ValueError(
                f"OFFLOAD_WORKER_QUEUES names {', '.join(unknown)}, which OFFLOAD_QUEUES ({','.join(self.QUEUES)}) "
                "lacks: every queue a worker consumes must be one of the deployment's queues; add it to OFFLOAD_QUEUES"
            )

    def consumed_queues(self, image_default: Sequence[str]) -> list[str]:
        """The queues a worker process consumes: OFFLOAD_WORKER_QUEUES when it is set, else its
        image's own default (the notifier's is `high`)."""
        return list(self.WORKER_QUEUES) if "WORKER_QUEUES" in self.model_fields_set else list(image_default)

    def missing_api_keys(self) -> str | None:
        """Why the API must not start, if it must not: production without keys. Checked by the
        API alone; workers never read the keys and run without them."""
        if self.ENVIRONMENT == "production" and not self.API_KEYS:
            return (
                "OFFLOAD_API_KEYS is empty: set at least one key (comma-separated), "
                "or OFFLOAD_ENVIRONMENT=development for a local run"
            )
        return None

    @property
    def api_rate_limit(self) -> RequestRate | None:
        """The /v1 request rate of a key without a limit of its own; None: unlimited."""
        return parse_request_rate(self.API_RATE_LIMIT)

    def api_key_rate_limits(self) -> dict[str, RequestRate | None]:
        """The /v1 request rates of the key ids OFFLOAD_API_KEY_RATE_LIMITS names."""
        return parse_key_rate_limits(self.API_KEY_RATE_LIMITS)

    def job_time_limit_overrides(self) -> dict[str, tuple[int, int]]:
        """(soft, hard) time limits this deployment sets for a job type over its declaration:
        the report's, when OFFLOAD_REPORT_*_TIME_LIMIT_SECONDS are set."""
        if self.REPORT_SOFT_TIME_LIMIT_SECONDS is None and self.REPORT_TIME_LIMIT_SECONDS is None:
            return {}
        return {"offload.report": self.report_time_limits}

    @property
    def report_time_limits(self) -> tuple[int, int]:
        """Soft and hard time limit of a report: OFFLOAD_REPORT_*, else OFFLOAD_TASK_*."""
        return (
            self.REPORT_SOFT_TIME_LIMIT_SECONDS or self.TASK_SOFT_TIME_LIMIT_SECONDS,
            self.REPORT_TIME_LIMIT_SECONDS or self.TASK_TIME_LIMIT_SECONDS,
        )

    @property
    def blob_quota_overrides(self) -> dict[str, int]:
        return parse_quota_overrides(self.BLOB_QUOTA_OVERRIDES)

    @property
    def redis_url(self) -> str:
        return self.REDIS_URL.get_secret_value()

    @property
    def redis_tls(self) -> bool:
        """Whether the connections to Redis itself (not the sentinels) use TLS."""
        return urlsplit(self.redis_url).scheme == "rediss"

    @property
    def redis_location(self) -> str:
        """Host and port (or socket path) of Redis, without credentials, for messages."""
        if self.REDIS_SENTINELS:
            return f"the primary {self.REDIS_SENTINEL_MASTER!r} of sentinels {','.join(self.REDIS_SENTINELS)}"
        parts = urlsplit(self.redis_url)
        if parts.scheme == "unix":
            return parts.path
        return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"

    @property
    def publish_bound_seconds(self) -> float:
        """Longest time the API can spend publishing one message (every attempt timing out)."""
        return (self.PUBLISH_MAX_RETRIES + 1) * (
            self.BROKER_CONNECT_TIMEOUT_SECONDS + self.BROKER_SOCKET_TIMEOUT_SECONDS
        )

    @property
    def orphan_recovery_bound_seconds(self) -> float:
        """Longest time, from acceptance (or from the loss, if later), before a job whose message
        Redis lost is published again: the grace, then two sweeps that find it missing."""
        return self.ORPHAN_GRACE_SECONDS + 2 * self.ORPHAN_SWEEP_INTERVAL_SECONDS

    @property
    def unacked_restore_bound_seconds(self) -> float:
        """Longest time before a killed worker's task is back on its queue."""
        return self.VISIBILITY_TIMEOUT_SECONDS + self.UNACKED_RESTORE_INTERVAL_SECONDS * self.UNACKED_RESTORE_THROTTLE


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
