"""`offload`: submit and watch jobs from a shell. Needs the `cli` extra
(``pip install 'offload-client[cli]'``) for typer and rich.

Human tables by default, ``offload --json ...`` for scripts. Exit codes: 0 done (a job that
succeeded), 1 the job failed or was cancelled, 2 bad usage, 3 not found, 4 refused by the API
(invalid, conflict, unauthorized), 5 Offload unreachable or unavailable, 124 a wait timed out."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from enum import IntEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

try:
    import typer
    from rich import box
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
    from rich.table import Table
except ImportError as missing:  # pragma: no cover - depends on how the package was installed
    raise SystemExit(
        f"The offload command needs the cli extra ({missing.name} is missing): pip install 'offload-client[cli]'"
    ) from missing

from pydantic import BaseModel

from offload_client import errors
from offload_client._base import KEY_VARIABLE, URL_VARIABLE
from offload_client.client import Offload
from offload_client.models import Job, JobStatus


class Exit(IntEnum):
    OK = 0
    JOB_FAILED = 1
    USAGE = 2
    NOT_FOUND = 3
    REFUSED = 4
    UNAVAILABLE = 5
    TIMED_OUT = 124


app = typer.Typer(
    help="Submit and watch Offload jobs. Configure with --url/--api-key or OFFLOAD_URL/OFFLOAD_API_KEY.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
jobs_app = typer.Typer(help="Jobs: list them.", no_args_is_help=True)
dead_letters_app = typer.Typer(help="Jobs that failed for good: list, replay, delete.", no_args_is_help=True)
reports_app = typer.Typer(help="Reports: download a result.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")
app.add_typer(dead_letters_app, name="dead-letters")
app.add_typer(reports_app, name="reports")

out = Console()
err = Console(stderr=True)


class Options(BaseModel):
    url: str | None
    api_key: str | None
    json_output: bool
    timeout: float


def _options(ctx: typer.Context) -> Options:
    options = ctx.find_root().obj
    assert isinstance(options, Options)
    return options


@contextmanager
def _client(ctx: typer.Context) -> Iterator[Offload]:
    """The client, with every error it raises turned into a message and an exit code."""
    options = _options(ctx)
    try:
        with Offload(options.url, options.api_key, timeout=options.timeout) as client:
            yield client
    except errors.ConfigurationError as exc:
        _fail(str(exc), Exit.USAGE)
    except errors.NotFound as exc:
        _fail(exc.detail, Exit.NOT_FOUND)
    except errors.ValidationFailed as exc:
        lines = [exc.detail] + [f"  {e.field}: {e.message}" for e in exc.errors]
        _fail("\n".join(lines), Exit.REFUSED)
    except (errors.RetryableError, errors.TransportError) as exc:
        _fail(str(exc), Exit.UNAVAILABLE)
    except errors.WaitTimeout as exc:
        _fail(str(exc), Exit.TIMED_OUT)
    except errors.ApiError as exc:
        _fail(f"{exc.status_code} {exc.code}: {exc.detail}", Exit.REFUSED)


def _fail(message: str, code: Exit) -> NoReturn:
    err.print(f"[red]error:[/red] {message}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(code)


def _print_json(value: Any) -> None:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    elif isinstance(value, list):
        value = [v.model_dump(mode="json") if isinstance(v, BaseModel) else v for v in value]
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


def _when(moment: datetime | None) -> str:
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S") if moment else ""


def _short(text: str, length: int) -> str:
    return text if len(text) <= length else text[: length - 1] + "…"


def _status(status: str) -> str:
    colour = {"succeeded": "green", "failed": "red", "cancelled": "yellow", "retrying": "yellow"}.get(status, "cyan")
    return f"[{colour}]{status}[/{colour}]"


def _job_exit(job: Job) -> Exit:
    return Exit.OK if job.status == JobStatus.SUCCEEDED else Exit.JOB_FAILED


def _show_job(job: Job, json_output: bool) -> None:
    if json_output:
        _print_json(job)
        return
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("id", job.id)
    table.add_row("type", job.task)
    table.add_row("status", _status(job.status))
    message = f"  {job.progress.message}" if job.progress.message else ""
    table.add_row("progress", f"{job.progress.percent}%{message}")
    table.add_row("queue", f"{job.queue} (priority {job.priority})")
    table.add_row("attempts", str(job.attempts))
    if job.worker:
        table.add_row("worker", job.worker)
    table.add_row("created", _when(job.created_at))
    if job.finished_at:
        table.add_row("finished", _when(job.finished_at))
    if job.error:
        table.add_row("error", f"[red]{job.error}[/red]")
    if job.result is not None:
        table.add_row("result", json.dumps(job.result, indent=2, default=str))
    out.print(table)


@app.callback()
def main_options(
    ctx: typer.Context,
    url: Annotated[str | None, typer.Option(envvar=URL_VARIABLE, help="The API, e.g. http://127.0.0.1:8000.")] = None,
    api_key: Annotated[
        str | None, typer.Option(envvar=KEY_VARIABLE, help="An API key (a bearer token).", show_default=False)
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables, for scripts.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds each request may take.")] = 10.0,
) -> None:
    ctx.obj = Options(url=url, api_key=api_key, json_output=json_output, timeout=timeout)


@app.command()
def submit(
    ctx: typer.Context,
    job_type: Annotated[str, typer.Argument(help="The job type, e.g. offload.echo (see `offload job-types`).")],
    data: Annotated[str | None, typer.Option("--json", help="The payload as JSON.")] = None,
    file: Annotated[Path | None, typer.Option("--file", help="The payload from a JSON file (- for stdin).")] = None,
    queue: Annotated[str | None, typer.Option(help="One of the type's queues.")] = None,
    priority: Annotated[int | None, typer.Option(min=0, max=9, help="0 runs first, 9 last.")] = None,
    idempotency_key: Annotated[str | None, typer.Option(help="Repeat a submission safely (default: new).")] = None,
    delay: Annotated[float | None, typer.Option("--delay", min=0, help="Start it this many seconds from now.")] = None,
    at: Annotated[
        datetime | None,
        typer.Option(
            "--at", formats=["%Y-%m-%dT%H:%M:%S%z"], help="Start it at this time, e.g. 2026-01-31T12:00:00+00:00."
        ),
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the job to end; exit 1 if it fails.")] = False,
    wait_timeout: Annotated[float, typer.Option(help="With --wait: give up after this many seconds.")] = 300.0,
) -> None:
    """Submit a job; print its id (and with --wait, the job once it ended)."""
    payload = _payload(data, file)
    options = _options(ctx)
    with _client(ctx) as client:
        accepted = client.submit(
            job_type,
            payload,
            queue=queue,
            priority=priority,
            idempotency_key=idempotency_key,
            run_at=at,
            delay_seconds=delay,
        )
        if not wait:
            if options.json_output:
                _print_json(accepted)
            else:
                out.print(accepted.id, highlight=False)
                when = f"scheduled for {accepted.run_at.isoformat()}" if accepted.run_at else "queued"
                err.print(f"{job_type} {when} on {accepted.queue}: offload watch {accepted.id}", highlight=False)
            return
        job = client.wait(accepted.id, timeout=wait_timeout)
    _show_job(job, options.json_output)
    raise typer.Exit(_job_exit(job))


def _payload(data: str | None, file: Path | None) -> dict[str, Any]:
    if data is not None and file is not None:
        _fail("give the payload with --json or --file, not both", Exit.USAGE)
    text = data if data is not None else ("{}" if file is None else _read(file))
    try:
        payload = json.loads(text)
    except ValueError as exc:
        _fail(f"the payload is not JSON: {exc}", Exit.USAGE)
    if not isinstance(payload, dict):
        _fail('the payload must be a JSON object, e.g. \'{"message": "hi"}\'', Exit.USAGE)
    return payload


def _read(file: Path) -> str:
    if str(file) == "-":
        return sys.stdin.read()
    try:
        return file.read_text()
    except OSError as exc:
        _fail(f"cannot read {file}: {exc.strerror}", Exit.USAGE)
    raise AssertionError("unreachable")


@app.command()
def get(ctx: typer.Context, job_id: Annotated[str, typer.Argument(help="The job's id.")]) -> None:
    """Show a job: status, progress, result or error."""
    with _client(ctx) as client:
        job = client.get(job_id)
    _show_job(job, _options(ctx).json_output)


@app.command("wait")
def wait_command(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    timeout: Annotated[float, typer.Option(help="Give up (exit 124) after this many seconds.")] = 300.0,
) -> None:
    """Wait until a job ends and show it; exit 0 if it succeeded, 1 if not."""
    with _client(ctx) as client:
        job = client.wait(job_id, timeout=timeout)
    _show_job(job, _options(ctx).json_output)
    raise typer.Exit(_job_exit(job))


@app.command()
def watch(ctx: typer.Context, job_id: Annotated[str, typer.Argument(help="The job's id.")]) -> None:
    """Follow a job live with a progress bar until it ends; exit 0 if it succeeded, 1 if not."""
    options = _options(ctx)
    final: Job | None = None
    with _client(ctx) as client:
        if options.json_output:  # one JSON line per event, for scripts
            for event in client.events(job_id):
                sys.stdout.write(event.model_dump_json() + "\n")
                sys.stdout.flush()
                final = event.job or final
        else:
            columns = (
                TextColumn("[bold]{task.fields[job]}"),
                BarColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[status]}"),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
            )
            with Progress(*columns, console=err, transient=False) as bar:
                task = bar.add_task("", total=100, job=job_id[:12], status="connecting")
                for event in client.events(job_id):
                    bar.update(
                        task, completed=event.percent, status=_status(event.status or ""), description=event.message
                    )
                    final = event.job or final
    if final is None:
        _fail(f"the event stream of job {job_id} ended without the job's end", Exit.UNAVAILABLE)
    if not options.json_output:
        _show_job(final, False)
    raise typer.Exit(_job_exit(final))


@jobs_app.command("list")
def list_jobs(
    ctx: typer.Context,
    status: Annotated[str | None, typer.Option(help="Only jobs in this status (queued, failed, ...).")] = None,
    job_type: Annotated[str | None, typer.Option("--type", help="Only jobs of this type.")] = None,
    queue: Annotated[str | None, typer.Option(help="Only jobs on this queue.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many, newest first.")] = 20,
) -> None:
    """Jobs, newest first."""
    with _client(ctx) as client:
        found: list[Job] = []
        for job in client.list_jobs(status=status, job_type=job_type, queue=queue, page_size=min(limit, 200)):
            found.append(job)
            if len(found) >= limit:
                break
    if _options(ctx).json_output:
        _print_json(found)
        return
    wide = out.width >= 120  # errors only where they fit; ids always whole, to copy
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("id", no_wrap=True, min_width=max((len(job.id) for job in found), default=2))
    for heading in ("type", "status", "done", "queue", "created"):
        table.add_column(heading, no_wrap=True)
    if wide:
        table.add_column("error", overflow="fold")
    for job in found:
        row = [
            job.id,
            job.task,
            _status(job.status),
            f"{job.progress.percent}%",
            job.queue,
            job.created_at.astimezone().strftime("%m-%d %H:%M:%S"),
        ]
        table.add_row(*row, *([_short(job.error or "", 60)] if wide else []))
    out.print(table)


@app.command()
def queues(ctx: typer.Context) -> None:
    """Queues: waiting jobs, workers consuming, the oldest job's age, dead letters."""
    with _client(ctx) as client:
        found = client.queues()
    if _options(ctx).json_output:
        _print_json(found)
        return
    table = Table("queue", "depth", "consumers", "oldest (s)", "dead letters")
    for queue in found:
        age = "" if queue.oldest_age_seconds is None else f"{queue.oldest_age_seconds:.1f}"
        table.add_row(queue.name, str(queue.depth), str(queue.consumers), age, str(queue.dead_letters))
    out.print(table)


@app.command("job-types")
def job_types(ctx: typer.Context) -> None:
    """The job types this deployment runs."""
    with _client(ctx) as client:
        found = client.job_types()
    if _options(ctx).json_output:
        _print_json(found)
        return
    wide = out.width >= 120  # the description only where it fits
    table = Table()
    for heading in ("type", "queue", "also", "prio", "retries", "limit s", "workers"):
        table.add_column(heading, no_wrap=True)
    if wide:
        table.add_column("description", no_wrap=True)
    for job_type in found:
        row = [
            job_type.name,
            job_type.queue,
            ",".join(q for q in job_type.queues if q != job_type.queue),
            str(job_type.priority),
            str(job_type.max_retries),
            str(job_type.time_limit_seconds),
            "yes" if job_type.consumed else "[red]none[/red]",
        ]
        table.add_row(*row, *([_short(job_type.description.split("\n")[0], 50)] if wide else []))
    out.print(table)


@dead_letters_app.command("list")
def list_dead_letters(
    ctx: typer.Context,
    queue: Annotated[str | None, typer.Option(help="Only this queue's.")] = None,
    task: Annotated[str | None, typer.Option(help="Only this job type's.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many, newest first.")] = 20,
) -> None:
    """Dead letters, newest first."""
    with _client(ctx) as client:
        found = []
        for letter in client.list_dead_letters(queue=queue, task=task, page_size=min(limit, 500)):
            found.append(letter)
            if len(found) >= limit:
                break
    if _options(ctx).json_output:
        _print_json(found)
        return
    table = Table("id", "type", "queue", "attempts", "failed at", "error", "replayed as")
    for letter in found:
        table.add_row(
            letter.id,
            letter.task,
            letter.queue,
            str(letter.attempts),
            _when(letter.failed_at),
            letter.error[:60],
            letter.replayed_as or "",
        )
    out.print(table)


@dead_letters_app.command("replay")
def replay_dead_letter(ctx: typer.Context, dead_letter_id: Annotated[str, typer.Argument(help="Its id.")]) -> None:
    """Submit a dead letter's job again; print the new job's id."""
    with _client(ctx) as client:
        accepted = client.replay_dead_letter(dead_letter_id)
    if _options(ctx).json_output:
        _print_json(accepted)
    else:
        out.print(accepted.id, highlight=False)


@dead_letters_app.command("delete")
def delete_dead_letter(ctx: typer.Context, dead_letter_id: Annotated[str, typer.Argument(help="Its id.")]) -> None:
    """Remove a dead letter."""
    with _client(ctx) as client:
        client.delete_dead_letter(dead_letter_id)
    if _options(ctx).json_output:
        _print_json({"deleted": dead_letter_id})
    else:
        err.print(f"deleted {dead_letter_id}", highlight=False)


@reports_app.command("download")
def download_report(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(help="The report's job id.")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="A file or directory (there: report-<id>.csv or .json).")
    ] = Path("."),
) -> None:
    """Download a succeeded report's result."""
    with _client(ctx) as client:
        written = client.download_report(job_id, output)
    if _options(ctx).json_output:
        _print_json({"path": str(written)})
    else:
        out.print(str(written), highlight=False)


def main() -> None:
    app(prog_name="offload")


if __name__ == "__main__":
    main()
