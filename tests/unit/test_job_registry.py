"""The registry refuses a job plugin it cannot use with a message naming the plugin and the fix:
modules written to a temporary directory on sys.path, named through OFFLOAD_JOB_MODULES or an
installed distribution's `offload.jobs` entry point."""

from __future__ import annotations

import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from offload_core.contract.registry import JobTypeError, celery_time_limits, job_time_limits, load_job_types
from offload_core.contract.topology import Queue
from offload_core.settings import Settings

QUEUES = [str(q) for q in Queue]

DECLARES = """
from pydantic import BaseModel
from offload_core.sdk import JobContext, declare_job, job

class Request(BaseModel):
    n: int = 0
"""

WriteModule = Callable[[str], str]


@pytest.fixture
def write_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WriteModule]:
    """Writes a module with a fresh name on sys.path; returns the name."""
    monkeypatch.syspath_prepend(str(tmp_path))
    written: list[str] = []

    def write(source: str) -> str:
        name = f"plugin_{uuid.uuid4().hex[:10]}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        written.append(name)
        return name

    yield write
    for name in written:
        sys.modules.pop(name, None)


def settings(*modules: str, **values: object) -> Settings:
    return Settings(API_KEYS=["k" * 16], JOB_MODULES=list(modules), **values)  # type: ignore[arg-type]


def refused(*modules: str) -> str:
    with pytest.raises(JobTypeError) as caught:
        load_job_types(settings(*modules), known_queues=QUEUES)
    return str(caught.value)


def test_the_builtins_load_and_their_handlers_resolve() -> None:
    job_types = load_job_types(settings(), known_queues=QUEUES)
    assert {"offload.send_email", "offload.notify", "offload.report", "offload.image.index"} <= set(job_types)
    job_types.check_handlers(QUEUES, settings())  # imports every handler and callback


def test_a_module_that_fails_to_import_is_named_with_the_fix(write_module: WriteModule) -> None:
    name = write_module("import a_library_this_image_lacks\n")
    message = refused(name)
    assert f"module {name} (OFFLOAD_JOB_MODULES) cannot be imported" in message
    assert "ModuleNotFoundError: No module named 'a_library_this_image_lacks'" in message
    assert "Install its dependencies into this image, or remove it (OFFLOAD_JOB_MODULES)" in message


def test_a_module_without_job_types_is_refused(write_module: WriteModule) -> None:
    name = write_module("VALUE = 1\n")
    assert f"module {name} (OFFLOAD_JOB_MODULES) declares no job types: define them with @job" in refused(name)


def test_a_duplicate_name_names_both_declarations(write_module: WriteModule) -> None:
    declaration = DECLARES + "same = declare_job('acme.same', request=Request, handler='x.y:z')\n"
    first, second = write_module(declaration), write_module(declaration)
    message = refused(first, second)
    assert f"job type 'acme.same' is declared twice: by module {first} (OFFLOAD_JOB_MODULES)" in message
    assert f"and by module {second} (OFFLOAD_JOB_MODULES)" in message
    assert "Rename one of them (names are global)" in message


def test_a_plugin_cannot_take_a_builtin_name(write_module: WriteModule) -> None:
    name = write_module(DECLARES + "echo = declare_job('offload.echo', request=Request, handler='x.y:z')\n")
    message = refused(name)
    assert (
        "job type 'offload.echo' is declared twice: by Offload's built-in module offload_core.contract.builtin_jobs"
        in message
    )
    assert f"and by module {name}" in message


def test_an_unknown_queue_names_the_queue_and_the_fix(write_module: WriteModule) -> None:
    name = write_module(DECLARES + "gpu = declare_job('acme.gpu', request=Request, queue='gpu', handler='x.y:z')\n")
    message = refused(name)
    assert f"job type 'acme.gpu' (module {name} (OFFLOAD_JOB_MODULES)) names the queue(s) gpu" in message
    assert "(it has default, high, low)" in message
    assert "Add a worker set for the queue" in message


def test_an_entry_point_that_fails_to_load_names_its_package(tmp_path: Path, write_module: WriteModule) -> None:
    module = write_module("raise RuntimeError('needs a GPU driver')\n")
    dist_info = tmp_path / "acme_jobs-1.2.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-jobs\nVersion: 1.2\n")
    (dist_info / "entry_points.txt").write_text(f"[offload.jobs]\nacme = {module}\n")
    message = refused()
    assert (
        f"entry point 'acme' = {module} of acme-jobs 1.2 cannot be loaded: RuntimeError: needs a GPU driver" in message
    )
    assert "[project.entry-points.'offload.jobs'] table of that package's pyproject.toml" in message


@pytest.mark.parametrize(
    ("reference", "error"),
    [
        ("acme_not_installed.handlers:resize", "ModuleNotFoundError: No module named 'acme_not_installed'"),
        ("{module}:no_such_function", "AttributeError"),
        ("{module}:NOT_A_FUNCTION", "TypeError: {module}:NOT_A_FUNCTION is not a function but a int"),
    ],
    ids=["missing-module", "missing-function", "not-callable"],
)
def test_a_handler_that_does_not_resolve_stops_a_worker_that_would_run_it(
    write_module: WriteModule, reference: str, error: str
) -> None:
    handlers = write_module("NOT_A_FUNCTION = 1\n")
    reference, error = reference.format(module=handlers), error.format(module=handlers)
    name = write_module(
        DECLARES + f"low = declare_job('acme.low', request=Request, queue='low', handler={reference!r})\n"
    )
    job_types = load_job_types(settings(name), known_queues=QUEUES)  # the API reads declarations only
    job_types.check_handlers(["high"], settings(name))  # nor does a worker that never receives it
    with pytest.raises(JobTypeError) as caught:
        job_types.check_handlers(["default", "low"], settings(name))
    message = str(caught.value)
    assert (
        f"the handler of job type 'acme.low' ({reference}, declared by module {name} (OFFLOAD_JOB_MODULES))" in message
    )
    assert f"cannot be loaded: {error}" in message
    assert "Install what it needs into this worker's image, or fix the reference (OFFLOAD_JOB_MODULES)" in message


def test_a_callback_that_does_not_resolve_is_named(write_module: WriteModule) -> None:
    name = write_module(
        DECLARES
        + "def run(ctx: JobContext, request: Request) -> None: ...\n"
        + "j = declare_job('acme.cb', request=Request, handler=run, on_end='acme_gone.hooks:ended')\n"
    )
    job_types = load_job_types(settings(name), known_queues=QUEUES)
    with pytest.raises(JobTypeError, match=r"the on_end of job type 'acme.cb' \(acme_gone.hooks:ended, declared by"):
        job_types.check_handlers(["default"], settings(name))


def test_a_time_limit_that_outlasts_the_visibility_timeout_is_refused(write_module: WriteModule) -> None:
    name = write_module(
        DECLARES
        + "def run(ctx: JobContext, request: Request) -> None: ...\n"
        + "slow = declare_job('acme.slow', request=Request, time_limit=3000, handler=run)\n"
    )
    job_types = load_job_types(settings(name), known_queues=QUEUES)
    with pytest.raises(
        JobTypeError, match=r"job type 'acme.slow' may run 3030 s .* OFFLOAD_VISIBILITY_TIMEOUT_SECONDS"
    ):
        job_types.check_handlers(["default"], settings(name))


def test_the_report_settings_override_its_declared_time_limits() -> None:
    plain = load_job_types(settings(), known_queues=QUEUES)["offload.report"]
    assert (plain.time_limit, plain.hard_time_limit) == (None, None)
    tuned = settings(REPORT_SOFT_TIME_LIMIT_SECONDS=3, REPORT_TIME_LIMIT_SECONDS=5)
    report = load_job_types(tuned, known_queues=QUEUES)["offload.report"]
    assert job_time_limits(report, tuned) == (3, 5)
    echo = load_job_types(tuned, known_queues=QUEUES)["offload.echo"]
    assert job_time_limits(echo, tuned) == (tuned.TASK_SOFT_TIME_LIMIT_SECONDS, tuned.TASK_TIME_LIMIT_SECONDS)


def test_limits_are_declared_checked_and_overridden_by_the_settings(write_module: WriteModule) -> None:
    name = write_module(
        DECLARES
        + """
@job("acme.partner", request=Request, rate_limit=10, concurrency=4)
def partner(ctx: JobContext, req: Request) -> None: ...
"""
    )
    declared = load_job_types(settings(name), known_queues=QUEUES)["acme.partner"]
    assert (declared.rate_limit, declared.concurrency) == (10, 4)
    overridden = load_job_types(
        settings(name, JOB_LIMITS='{"acme.partner": {"concurrency": 2}, "offload.echo": {"rate_limit": 0.5}}'),
        known_queues=QUEUES,
    )
    assert (overridden["acme.partner"].rate_limit, overridden["acme.partner"].concurrency) == (10, 2)
    assert overridden["offload.echo"].rate_limit == 0.5
    removed = load_job_types(settings(name, JOB_LIMITS='{"acme.partner": {"rate_limit": null}}'), known_queues=QUEUES)
    assert removed["acme.partner"].rate_limit is None
    with pytest.raises(JobTypeError, match=r"OFFLOAD_JOB_LIMITS names 'acme\.partnr'"):
        load_job_types(settings(name, JOB_LIMITS='{"acme.partnr": {"concurrency": 2}}'), known_queues=QUEUES)


def test_bad_limits_are_refused_naming_the_option(write_module: WriteModule) -> None:
    name = write_module(
        DECLARES
        + """
@job("acme.bad", request=Request, rate_limit=0, concurrency=0)
def bad(ctx: JobContext, req: Request) -> None: ...
"""
    )
    problem = refused(name)
    assert "rate_limit must be above 0" in problem
    assert "concurrency must be between 1" in problem
    with pytest.raises(ValueError, match="OFFLOAD_JOB_LIMITS must be a JSON object"):
        settings(JOB_LIMITS="acme.bad=3")


def test_a_limited_types_wait_counts_in_its_celery_time_limits_and_must_fit_the_visibility_timeout(
    write_module: WriteModule,
) -> None:
    name = write_module(
        DECLARES
        + """
@job("acme.slow", request=Request, time_limit=100, concurrency=1)
def slow(ctx: JobContext, req: Request) -> None: ...
"""
    )
    ok = settings(name, JOB_LIMIT_MAX_WAIT_SECONDS=30)
    slow = load_job_types(ok, known_queues=QUEUES)["acme.slow"]
    assert job_time_limits(slow, ok) == (100, 110)
    assert celery_time_limits(slow, ok) == (130, 140)
    too_long = settings(name, JOB_LIMIT_MAX_WAIT_SECONDS=300)
    with pytest.raises(JobTypeError, match="OFFLOAD_JOB_LIMIT_MAX_WAIT_SECONDS"):
        load_job_types(too_long, known_queues=QUEUES).check_handlers(["default"], too_long)
