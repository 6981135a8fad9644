"""Logs of every Offload process: one JSON object a line for log search, or plain text for a
person at a terminal, and OTLP log records too when the OTEL_* variables ask for them. Each line
names the job, task and queue it belongs to (from the running Celery task, the job the API
request accepted, or `extra=job_fields(...)`) and the trace it is part of, and never carries a
secret: credentials in URLs and the configured Redis password and API keys are masked, whatever
code wrote the line.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from contextvars import ContextVar
from datetime import UTC, datetime
from urllib.parse import urlsplit

from celery._state import get_current_task
from opentelemetry import trace
from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider

from offload_core.settings import Settings
from offload_core.telemetry import log_provider

MASK = "***"
# scheme://user:password@host -> scheme://user:***@host
_URL_CREDENTIALS = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]+@", re.IGNORECASE)

JOB_FIELDS = ("job_id", "task", "queue")


# The job a request accepted, for the lines logged after it in the same request (the access
# line among them): each request runs in its own task, so its own copy of the context.
REQUEST_JOB: ContextVar[dict[str, str] | None] = ContextVar("offload_request_job", default=None)


def job_fields(job_id: str, task: str, queue: str) -> dict[str, str]:
    """`extra=` for a log call about a job outside its task (the API's acceptance)."""
    return {"job_id": job_id, "task": task, "queue": queue}


def secrets_to_mask(settings: Settings) -> list[str]:
    secrets = [key.get_secret_value() for key in settings.API_KEYS]
    password = urlsplit(settings.redis_url).password
    if password:
        secrets.append(password)
    if settings.REDIS_SENTINEL_PASSWORD is not None:
        secrets.append(settings.REDIS_SENTINEL_PASSWORD.get_secret_value())
    # Longest first, so a secret that contains another is masked whole.
    return sorted({s for s in secrets if s}, key=len, reverse=True)


class Redactor:
    def __init__(self, secrets: list[str]) -> None:
        self.secrets = secrets

    def __call__(self, text: str) -> str:
        text = _URL_CREDENTIALS.sub(rf"\g<1>{MASK}@", text)
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        return text


def correlation_fields(record: logging.LogRecord) -> dict[str, str]:
    """The record's job (given, or the Celery task running now) and the current trace."""
    fields = {name: str(getattr(record, name)) for name in JOB_FIELDS if hasattr(record, name)}
    if not fields and (accepted := REQUEST_JOB.get()) is not None:
        fields = dict(accepted)
    task = get_current_task()
    if not fields and task is not None and task.request.id:
        queue = (task.request.delivery_info or {}).get("routing_key") or ""
        fields = job_fields(str(task.request.id), task.name, queue)
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        fields["trace_id"] = format(span_context.trace_id, "032x")
        fields["span_id"] = format(span_context.span_id, "016x")
    return fields


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str, redact: Redactor) -> None:
        super().__init__()
        self.service = service
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.fromtimestamp(record.created, UTC)
        entry: dict[str, object] = {
            "time": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": self.redact(record.getMessage()),
            **correlation_fields(record),
        }
        if record.exc_info:
            entry["error"] = self.redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self, service: str, redact: Redactor) -> None:
        super().__init__(f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s")
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = correlation_fields(record)
        if "job_id" in fields:
            line += f"  [job {fields['job_id']} {fields['task']} on {fields['queue']}]"
        return self.redact(line)


SEVERITIES = {
    logging.DEBUG: (SeverityNumber.DEBUG, "DEBUG"),
    logging.INFO: (SeverityNumber.INFO, "INFO"),
    logging.WARNING: (SeverityNumber.WARN, "WARN"),
    logging.ERROR: (SeverityNumber.ERROR, "ERROR"),
    logging.CRITICAL: (SeverityNumber.FATAL, "FATAL"),
}


class OtlpLogHandler(logging.Handler):
    """Sends each record as an OTLP log record: the masked message as its body, the job and
    logger as attributes, the current span's trace and span ids. The exporter's own complaints
    stay on stderr, or a failing export would log about itself forever."""

    def __init__(self, provider: LoggerProvider, redact: Redactor) -> None:
        super().__init__()
        self.provider = provider
        self.redact = redact
        self.addFilter(lambda record: not record.name.startswith("opentelemetry"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = correlation_fields(record)
            attributes: dict[str, str] = {
                "logger": record.name,
                **{name: value for name, value in fields.items() if name not in ("trace_id", "span_id")},
            }
            if record.exc_info:
                attributes["exception.stacktrace"] = self.redact(logging.Formatter().formatException(record.exc_info))
            number, text = SEVERITIES.get(record.levelno, (SeverityNumber.UNSPECIFIED, record.levelname))
            self.provider.get_logger(record.name).emit(
                LogRecord(
                    timestamp=int(record.created * 1e9),
                    observed_timestamp=time.time_ns(),
                    severity_number=number,
                    severity_text=text,
                    body=self.redact(record.getMessage()),
                    attributes=attributes,
                )
            )
        except Exception:
            self.handleError(record)


def wants_json(settings: Settings) -> bool:
    return settings.LOG_FORMAT == "json" or (settings.LOG_FORMAT == "auto" and not sys.stderr.isatty())


def configure_logging(service: str, settings: Settings) -> None:
    """Route every logger (uvicorn's, Celery's, warnings) through one handler on stderr."""
    redact = Redactor(secrets_to_mask(settings))
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service, redact) if wants_json(settings) else TextFormatter(service, redact))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    if (provider := log_provider(service)) is not None:
        root.addHandler(OtlpLogHandler(provider, redact))
    root.setLevel(settings.LOG_LEVEL)
    logging.captureWarnings(True)
