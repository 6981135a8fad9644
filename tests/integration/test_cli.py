"""The `offload` command against the real stack: what a shell sees (output and exit codes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.support import API_KEY, SALES_CSV, Stack, served

OFFLOAD = Path(sys.executable).with_name("offload")


def offload(stack: Stack, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {
        **os.environ,
        "OFFLOAD_URL": stack.api.extra["url"],
        "OFFLOAD_API_KEY": API_KEY,
        "COLUMNS": "200",
        **(env or {}),
    }
    return subprocess.run(
        [str(OFFLOAD), *args], env=environment, capture_output=True, text=True, timeout=120, check=False
    )


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_help_names_every_command(stack: Stack) -> None:
    result = offload(stack, "--help")

    assert result.returncode == 0, result.stderr
    for command in ("submit", "get", "wait", "watch", "jobs", "queues", "job-types", "dead-letters", "reports"):
        assert command in result.stdout
    assert offload(stack, "dead-letters", "--help").stdout.count("replay") >= 1


def test_submit_and_wait_exit_with_the_jobs_outcome(stack: Stack) -> None:
    done = offload(stack, "submit", "offload.echo", "--json", '{"message": "from the shell"}', "--wait")
    assert done.returncode == 0, done.stderr
    assert "succeeded" in done.stdout
    assert "from the shell" in done.stdout

    failed = offload(
        stack, "submit", "offload.echo", "--json", '{"message": "x", "fail_times": 20}', "--queue", "low", "--wait"
    )
    assert failed.returncode == 1, failed.stderr
    assert "failed" in failed.stdout


def test_submit_with_a_delay_schedules_the_job(stack: Stack) -> None:
    submitted = offload(stack, "--json", "submit", "offload.echo", "--json", '{"message": "later"}', "--delay", "1")
    assert submitted.returncode == 0, submitted.stderr
    accepted = as_json(submitted)
    assert accepted["status"] == "scheduled"
    assert accepted["run_at"]
    waited = as_json(offload(stack, "--json", "wait", accepted["id"], "--timeout", "30"))
    assert waited["status"] == "succeeded"
    assert waited["started_at"] >= waited["run_at"]

    at = (datetime.now(UTC) + timedelta(minutes=5)).replace(microsecond=0).isoformat()
    submitted_at = offload(stack, "--json", "submit", "offload.echo", "--json", '{"message": "at"}', "--at", at)
    assert submitted_at.returncode == 0, submitted_at.stderr
    scheduled = as_json(submitted_at)
    assert datetime.fromisoformat(scheduled["run_at"]) == datetime.fromisoformat(at)
    assert stack.client.delete(f"/v1/jobs/{scheduled['id']}").status_code == 200


def test_submit_prints_the_id_for_scripts_and_get_and_wait_read_it(stack: Stack, tmp_path: Path) -> None:
    payload = tmp_path / "payload.json"
    payload.write_text('{"message": "scripted", "sleep_ms": 300}')

    submitted = offload(stack, "submit", "offload.echo", "--file", str(payload), "--priority", "1")
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    waited = as_json(offload(stack, "--json", "wait", job_id, "--timeout", "30"))
    assert (waited["id"], waited["status"], waited["priority"]) == (job_id, "succeeded", 1)
    assert as_json(offload(stack, "--json", "get", job_id))["result"]["message"] == "scripted"
    listed = as_json(offload(stack, "--json", "jobs", "list", "--type", "offload.echo", "--status", "succeeded"))
    assert job_id in [job["id"] for job in listed]


def test_watch_draws_a_progress_bar_until_the_end(stack: Stack) -> None:
    submitted = offload(stack, "submit", "offload.echo", "--json", '{"message": "watched", "sleep_ms": 1500}')
    job_id = submitted.stdout.strip()

    watched = offload(stack, "watch", job_id)

    assert watched.returncode == 0, watched.stderr
    assert "100%" in watched.stderr
    assert "━" in watched.stderr  # the bar
    assert "succeeded" in watched.stdout
    events = [json.loads(line) for line in offload(stack, "--json", "watch", job_id).stdout.splitlines()]
    assert events[-1]["event"] == "end"


def test_tables_of_queues_and_job_types(stack: Stack) -> None:
    queues = offload(stack, "queues")
    assert queues.returncode == 0, queues.stderr
    assert "consumers" in queues.stdout
    assert all(name in queues.stdout for name in ("high", "default", "low"))
    assert "offload.echo" in offload(stack, "job-types").stdout
    assert {q["name"] for q in as_json(offload(stack, "--json", "queues"))} >= {"high", "default", "low"}


def test_dead_letters_are_listed_replayed_and_deleted(stack: Stack) -> None:
    failed = offload(stack, "submit", "offload.echo", "--json", '{"message": "dead", "fail_times": 20}', "--wait")
    assert failed.returncode == 1
    letters = as_json(offload(stack, "--json", "dead-letters", "list", "--task", "offload.echo"))
    dead = next(letter for letter in letters if letter["payload"]["message"] == "dead")

    replayed = offload(stack, "dead-letters", "replay", dead["id"])
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout.strip() not in {"", dead["id"]}
    assert offload(stack, "dead-letters", "delete", dead["id"]).returncode == 0
    assert offload(stack, "dead-letters", "delete", dead["id"]).returncode == 3  # gone


def test_a_report_is_downloaded(stack: Stack, tmp_path: Path) -> None:
    from offload_client import Offload

    with served(SALES_CSV) as url, Offload(stack.api.extra["url"], API_KEY) as client:
        accepted = client.submit_report({"source_url": url, "source_format": "csv", "group_by": ["city"]})
        assert client.wait(accepted.id, timeout=30).succeeded
    downloaded = offload(stack, "reports", "download", accepted.id, "--output", str(tmp_path))

    assert downloaded.returncode == 0, downloaded.stderr
    written = Path(downloaded.stdout.strip())
    assert written == tmp_path / f"report-{accepted.id}.csv"
    assert written.read_text().splitlines() == ["city,count", "Lima,1", "Oslo,2"]


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (("get", "no-such-job"), 3, "no-such-job"),
        (("submit", "offload.echo", "--json", '{"sleep_ms": -1}'), 4, "body.payload.message"),
        (("submit", "offload.echo", "--json", "not json"), 2, "not JSON"),
        (("wait", "no-such-job"), 3, "no-such-job"),
    ],
)
def test_errors_say_what_and_exit_with_a_code_a_shell_can_use(
    stack: Stack, args: tuple[str, ...], code: int, says: str
) -> None:
    result = offload(stack, *args)

    assert result.returncode == code, (result.stdout, result.stderr)
    assert says in result.stderr


def test_an_unreachable_api_and_a_missing_url(stack: Stack) -> None:
    unreachable = offload(stack, "queues", env={"OFFLOAD_URL": "http://127.0.0.1:9"})
    assert unreachable.returncode == 5
    assert "127.0.0.1:9" in unreachable.stderr
    environment = {k: v for k, v in os.environ.items() if k != "OFFLOAD_URL"}
    missing = subprocess.run(
        [str(OFFLOAD), "queues"], env=environment, capture_output=True, text=True, timeout=60, check=False
    )
    assert missing.returncode == 2
    assert "OFFLOAD_URL" in missing.stderr
