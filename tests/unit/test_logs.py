"""Log lines: one JSON object naming job and trace, or text for people; never a secret."""

from __future__ import annotations

import io
import json
import logging
import sys

import pytest
from opentelemetry.sdk.trace import TracerProvider

from offload_core.logs import JsonFormatter, Redactor, TextFormatter, job_fields, secrets_to_mask, wants_json
from offload_core.settings import Settings

KEY = "api-key-0123456789abcdef"
PASSWORD = "redis-password-42"


def _settings(**overrides: object) -> Settings:
    return Settings(API_KEYS=[KEY], REDIS_URL=f"redis://:{PASSWORD}@redis:6379/0", **overrides)  # type: ignore[arg-type]


def _record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("offload.test", logging.INFO, __file__, 1, message, args, None)
    record.__dict__.update(extra)
    return record


def test_secrets_and_url_credentials_are_masked() -> None:
    redact = Redactor(secrets_to_mask(_settings()))
    line = redact(f"key={KEY} broker=redis://:{PASSWORD}@redis:6379/0 other=amqp://user:pw@mq// plain {PASSWORD}")
    assert KEY not in line
    assert PASSWORD not in line
    assert "pw@" not in line
    assert "redis://:***@redis:6379/0" in line
    assert "amqp://user:***@mq//" in line


def test_the_sentinel_password_is_masked_too() -> None:
    redact = Redactor(secrets_to_mask(_settings(REDIS_SENTINEL_PASSWORD="sentinel-password-7")))
    assert redact("AUTH sentinel-password-7 refused") == "AUTH *** refused"


def test_a_json_line_names_service_job_and_trace() -> None:
    formatter = JsonFormatter("offload-api", Redactor(secrets_to_mask(_settings())))
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("request") as span:
        line = formatter.format(
            _record("job %s accepted, key %s", "j1", KEY, **job_fields("j1", "offload.echo", "low"))
        )
    entry = json.loads(line)
    context = span.get_span_context()
    assert entry["service"] == "offload-api"
    assert entry["level"] == "INFO"
    assert entry["message"] == "job j1 accepted, key ***"
    assert (entry["job_id"], entry["task"], entry["queue"]) == ("j1", "offload.echo", "low")
    assert entry["trace_id"] == format(context.trace_id, "032x")
    assert entry["span_id"] == format(context.span_id, "016x")
    assert entry["time"].endswith("Z")


def test_outside_a_job_and_a_trace_the_line_has_only_the_basics() -> None:
    entry = json.loads(JsonFormatter("offload-worker", Redactor([])).format(_record("ready")))
    assert set(entry) == {"time", "level", "service", "logger", "message"}


def test_exceptions_are_one_masked_field() -> None:
    formatter = JsonFormatter("offload-worker", Redactor([PASSWORD]))
    try:
        raise RuntimeError(f"AUTH {PASSWORD} refused")
    except RuntimeError:
        record = _record("failed")
        record.exc_info = sys.exc_info()
    entry = json.loads(formatter.format(record))
    assert "RuntimeError: AUTH *** refused" in entry["error"]
    assert PASSWORD not in json.dumps(entry)


def test_text_lines_are_masked_too() -> None:
    line = TextFormatter("offload-api", Redactor([KEY])).format(_record("key %s", KEY, **job_fields("j2", "t", "q")))
    assert KEY not in line
    assert "[job j2 t on q]" in line


@pytest.mark.parametrize(
    ("setting", "tty", "expected"),
    [("auto", False, True), ("auto", True, False), ("json", True, True), ("text", False, False)],
)
def test_json_unless_a_terminal_or_told_otherwise(
    monkeypatch: pytest.MonkeyPatch, setting: str, tty: bool, expected: bool
) -> None:
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    monkeypatch.setattr(sys.stderr, "isatty", lambda: tty)
    assert wants_json(_settings(LOG_FORMAT=setting)) is expected
