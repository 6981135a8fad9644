"""The SDK's declaration options and what the worker's task makes of them; and `mypy --strict`
on a user's job module (tests/sdk_user/acme_jobs.py) and on one that gets the types wrong."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mypy.api
import pytest
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from pydantic import BaseModel

from offload_core.contract.registry import job_time_limits
from offload_core.runtime import job_task
from offload_core.runtime.celery_app import create_celery_app
from offload_core.runtime.job_task import JobTypeTask, register_job_types
from offload_core.sdk import JobContext, JobEnd, JobType, TransientJobError, declare_job, job
from offload_core.settings import Settings

REPO = Path(__file__).resolve().parents[2]
SETTINGS = Settings(API_KEYS=["k" * 16], TASK_MAX_RETRIES=3, RETRY_BACKOFF_SECONDS=0.1, RETRY_BACKOFF_MAX_SECONDS=0.5)


class Request(BaseModel):
    n: int = 0


def run(ctx: JobContext, request: Request) -> None:
    pass


def ended(end: JobEnd, request: Request) -> None:
    pass


@pytest.fixture
def task_of(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The Celery task a worker registers for a job type, in the middle of its third attempt."""
    monkeypatch.setattr(job_task, "get_settings", lambda: SETTINGS)
    app = create_celery_app(SETTINGS, main="sdk-test")
    pushed: list[JobTypeTask] = []

    def task_of(job_type: JobType[Any, Any]) -> JobTypeTask:
        register_job_types(app, [job_type], SETTINGS)
        task = app.tasks[job_type.name]
        assert isinstance(task, JobTypeTask)
        task.push_request(id="j1", retries=2)
        pushed.append(task)
        return task

    yield task_of
    for task in pushed:
        task.pop_request()


def test_callbacks_are_functions_or_references() -> None:
    declared = declare_job("acme.a", request=Request, handler=run, on_end=ended, dead_letter_payload="acme.hooks:trim")
    assert declared.on_end_callback() is ended
    assert declared.references() == {"dead_letter_payload": "acme.hooks:trim"}
    by_decorator = job("acme.b", request=Request, on_end="offload_worker.images:close_later_steps")(run)
    assert by_decorator.on_end_callback().__name__ == "close_later_steps"  # type: ignore[union-attr]
    assert by_decorator.dead_letter_callback() is None


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"on_end": "no_colon"}, "on_end='no_colon' must name a function as 'package.module:function'"),
        ({"dead_letter_payload": 42}, "dead_letter_payload= must be a function or a 'package.module:function'"),
        ({"time_limit": 60, "hard_time_limit": 60}, "hard_time_limit must be longer than time_limit (60 s), not 60"),
        ({"hard_time_limit": 0}, "hard_time_limit must be longer than time_limit (0 s), not 0"),
        ({"max_retries": 10_001}, "max_retries must be between 0 and 10000, not 10001"),
    ],
)
def test_bad_options_are_refused_with_what_to_change(options: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=r"job 'acme\.bad' is not valid: ") as caught:
        declare_job("acme.bad", request=Request, handler=run, **options)
    assert problem in str(caught.value)


def test_time_limits_soft_then_hard() -> None:
    assert job_time_limits(declare_job("acme.a", request=Request, handler=run), SETTINGS) == (
        SETTINGS.TASK_SOFT_TIME_LIMIT_SECONDS,
        SETTINGS.TASK_TIME_LIMIT_SECONDS,
    )
    declared = declare_job("acme.b", request=Request, handler=run, time_limit=60)
    assert job_time_limits(declared, SETTINGS) == (60, 60 + 6)  # a tenth later, at least 2 s
    declared = declare_job("acme.c", request=Request, handler=run, time_limit=60, hard_time_limit=65)
    assert job_time_limits(declared, SETTINGS) == (60, 65)


def test_retries_follow_the_declaration_or_the_settings(task_of: Any) -> None:
    assert task_of(declare_job("acme.default", request=Request, handler=run)).max_retries == 3
    assert task_of(declare_job("acme.many", request=Request, handler=run, max_retries=500)).max_retries == 500


def test_backoff_grows_and_waits_at_least_what_the_other_side_asks(task_of: Any) -> None:
    task = task_of(declare_job("acme.backoff", request=Request, handler=run))
    delays = [task.retry_delay(TransientJobError("busy")) for _ in range(100)]
    assert all(0.2 <= d <= 0.4 for d in delays)  # third attempt: 0.1 * 2**2, half of it jittered
    assert task.retry_delay(TransientJobError("busy", retry_after=0.45)) == 0.45
    assert task.retry_delay(TransientJobError("busy", retry_after=30)) == 0.5  # OFFLOAD_RETRY_BACKOFF_MAX_SECONDS


def test_without_backoff_the_retry_comes_exactly_when_asked(task_of: Any) -> None:
    task = task_of(declare_job("acme.scheduled", request=Request, handler=run, retry_backoff=False))
    assert task.retry_delay(TransientJobError("not due yet", retry_after=0.05)) == 0.05
    assert task.retry_delay(TransientJobError("again at once")) == 0.0
    assert task.retry_delay(TransientJobError("much later", retry_after=30)) == 0.5


def test_timeouts_name_the_job_types_own_limits(task_of: Any) -> None:
    task = task_of(declare_job("acme.limited", request=Request, handler=run, time_limit=7, hard_time_limit=9))
    assert task.describe_error(SoftTimeLimitExceeded()) == "timed out after 7 s"
    assert (
        task.describe_error(TimeLimitExceeded(9))
        == "timed out after 9 s (its process was killed at the hard time limit)"
    )
    assert task.describe_error(ValueError("bad")) == "ValueError: bad"


def test_a_user_module_passes_mypy_strict_and_wrong_types_are_caught(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong_jobs.py"
    wrong.write_text(
        textwrap.dedent(
            """
            from pydantic import BaseModel
            from offload_core.sdk import JobContext, JobEnd, job

            class Resize(BaseModel):
                width: int

            class Crop(BaseModel):
                left: int

            def on_crop_end(end: JobEnd, request: Crop) -> None:
                pass

            @job("acme.handler-mismatch", request=Resize)
            def takes_crop(ctx: JobContext, request: Crop) -> None:
                pass

            @job("acme.callback-mismatch", request=Resize, on_end=on_crop_end)
            def resize(ctx: JobContext, request: Resize) -> None:
                pass

            @job("acme.result-mismatch", request=Resize, result=int)
            def returns_text(ctx: JobContext, request: Resize) -> str:
                return ""
            """
        )
    )
    config = tmp_path / "mypy.ini"
    config.write_text("[mypy]\nstrict = True\n")
    user_module = REPO / "tests" / "sdk_user" / "acme_jobs.py"
    report, errors, _ = mypy.api.run(
        ["--config-file", str(config), "--cache-dir", str(tmp_path / "cache"), str(user_module), str(wrong)]
    )
    assert errors == ""
    problems = [line for line in report.splitlines() if ": error: " in line]
    assert not [line for line in problems if "acme_jobs.py" in line], report
    decorators = [str(n) for n, line in enumerate(wrong.read_text().splitlines(), 1) if line.startswith("@job(")]
    assert [line.split(":")[1] for line in problems] == decorators, report
    assert 'incompatible type "Callable[[JobContext, Crop], None]"' in problems[0]
    assert 'Argument "on_end" to "job" has incompatible type "Callable[[JobEnd, Crop], None]"' in problems[1]
    assert 'expected "Callable[[JobContext, Resize], int | Awaitable[int]]"' in problems[2]
