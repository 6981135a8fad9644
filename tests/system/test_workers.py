"""Scenarios 1-3: priority isolation, a rolling restart under load, a crashed worker."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from offload_dev.polling import wait_for
from tests.system.harness import (
    GRACE_PERIOD_SECONDS,
    RESTORE_BOUND_SECONDS,
    Topology,
    report,
    start_delay,
    summary,
)

Report = Callable[[str, object], None]

BACKLOG = 2000
LONG_BACKLOG = 200
HIGH_JOBS = 50
# Every high job starts within this many seconds of its creation with a dedicated notifier:
# typically tens of ms, while each backlog takes a minute or more to drain, so a bound that holds
# with a wide margin on a loaded machine. The latencies themselves are bench/priority.py's.
DEDICATED_BOUND_SECONDS = 10.0


def _purge(topo: Topology, queue: str) -> None:
    """Drops the jobs still waiting in a queue (all of kombu's priority lists)."""
    topo.redis_cli("DEL", queue, *(f"{queue}\x06\x16{p}" for p in (3, 6, 9)))


def _high_start_delays(topo: Topology, record: Report, label: str, backlog: int, sleep_ms: int) -> dict[str, float]:
    started = time.monotonic()
    topo.submit([{"sleep_ms": sleep_ms}] * backlog)
    submit_seconds = time.monotonic() - started
    depth = topo.queue_depth("default")
    # One notification at a time, as separate requests send them (a burst would measure the
    # notifier's own queue of high jobs rather than what bulk work does to them).
    high = [topo.submit([{"queue": "high"}], concurrency=1)[0] for _ in range(HIGH_JOBS)]
    done = topo.wait_terminal(high, timeout=120, every=0.2)
    _purge(topo, "default")
    assert {j.status for j in done.values()} == {"succeeded"}
    figures = summary([start_delay(j) for j in done.values()])
    report(
        record,
        f"priority_{label}_backlog_{backlog}x{sleep_ms}ms",
        {**figures, "backlog_submit_s": round(submit_seconds, 1), "default_depth_when_high_sent": depth},
    )
    # The high jobs really were sent with bulk work waiting.
    assert depth >= backlog // 4, f"the backlog drained before the high jobs were sent ({depth} left)"
    return figures


def test_high_jobs_start_at_once_behind_a_default_backlog(topo: Topology, record_property: Report) -> None:
    """2,000 default echo jobs of 50 ms queued, then 50 high jobs sent one after the other: with
    the notifier consuming only `high`, all start within DEDICATED_BOUND_SECONDS of creation.
    The same with the notifier removed and one worker consuming high,default,low. Then both
    again behind 200 jobs of 1 s.

    Reported: p50/p99/max of started_at - created_at (job records) for the four runs, and the
    shared/dedicated p99 ratios. Asserted: the dedicated bound in both. The comparison of
    latencies is bench/priority.py's (with a baseline beside it): on this shared 2-core machine
    scheduling noise can exceed the difference (behind 50 ms jobs at most one job: kombu puts the
    queue that delivered last at the back of its BRPOP order)."""
    topo.start_redis()
    topo.start_api()
    topo.start_worker("worker")
    topo.start_worker("notifier")
    topo.wait_ready()
    dedicated = _high_start_delays(topo, record_property, "dedicated", BACKLOG, 50)
    dedicated_long = _high_start_delays(topo, record_property, "dedicated", LONG_BACKLOG, 1000)
    assert max(dedicated["max_ms"], dedicated_long["max_ms"]) <= DEDICATED_BOUND_SECONDS * 1000

    # The same with the notifier removed and high consumed by the shared worker.
    for name in list(topo.workers):
        topo.remove_worker(name)
    topo.redis_cli("FLUSHALL")
    shared_worker = topo.start_worker("worker", queues="high,default,low")
    topo.wait_ready(shared_worker)
    shared = _high_start_delays(topo, record_property, "shared", BACKLOG, 50)
    shared_long = _high_start_delays(topo, record_property, "shared", LONG_BACKLOG, 1000)
    report(
        record_property,
        "priority_p99_shared_over_dedicated",
        {
            "50ms_backlog": round(shared["p99_ms"] / dedicated["p99_ms"], 1),
            "1s_backlog": round(shared_long["p99_ms"] / dedicated_long["p99_ms"], 1),
        },
    )


ROLLING_JOBS = 1000
ROLLING_SLEEP_MS = 200
ROLLING_CONCURRENCY = 8


def test_rolling_restart_under_load_loses_no_job(topo: Topology, record_property: Report) -> None:
    """1,000 echo jobs of 200 ms are submitted while the worker container is replaced three times
    the Kubernetes way (new container ready first — maxUnavailable 0 — then preStop, SIGTERM,
    SIGKILL after the grace period). Every job ends succeeded; runs per job (attempts) are
    counted: none ran twice. The worker runs 8 prefork processes (the chart's
    concurrency setting) so the 200 s of job time drain in about half a minute on 2 cores."""
    topo.start_redis()
    topo.start_api()
    current = topo.start_worker("worker", concurrency=ROLLING_CONCURRENCY)
    topo.wait_ready()

    ids: list[str] = []
    errors: list[BaseException] = []

    def submitter() -> None:
        try:
            for _ in range(10):  # in waves, so jobs keep arriving during the restarts
                ids.extend(topo.submit([{"sleep_ms": ROLLING_SLEEP_MS}] * (ROLLING_JOBS // 10), concurrency=4))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    started = time.monotonic()
    thread = threading.Thread(target=submitter, daemon=True)
    thread.start()
    stops: list[float] = []
    exit_codes: list[int] = []
    handed_back = 0
    for round_ in range(3):
        wanted = (round_ + 1) * ROLLING_JOBS // 5
        wait_for(lambda w=wanted: len(ids) >= w or errors, 120, f"{wanted} submissions")  # type: ignore[misc]
        replacement = topo.start_worker("worker", concurrency=ROLLING_CONCURRENCY)
        topo.wait_ready(replacement)
        stops.append(round(topo.stop_worker(current), 1))
        exit_codes.append(topo.workers[current].get_wrapped_container().attrs["State"]["ExitCode"])
        logs = topo.logs(current)
        handed_back += sum(
            int(line.split("Restoring ")[1].split()[0]) for line in logs.splitlines() if "Restoring " in line
        )
        current = replacement
    thread.join(120)
    assert not errors, errors
    assert len(ids) == ROLLING_JOBS

    done = topo.wait_terminal(ids, timeout=240)
    elapsed = time.monotonic() - started
    statuses: dict[str, int] = {}
    for record in done.values():
        statuses[record.status] = statuses.get(record.status, 0) + 1
    duplicates = {job_id: j.attempts for job_id, j in done.items() if j.attempts > 1}
    report(
        record_property,
        "rolling_restart",
        {
            "jobs": len(ids),
            "statuses": statuses,
            "runs_gt_1": len(duplicates),
            "max_runs": max(j.attempts for j in done.values()),
            "sigterm_to_exit_s": stops,
            "exit_codes": exit_codes,
            "messages_handed_back": handed_back,
            "elapsed_s": round(elapsed, 1),
        },
    )
    assert statuses == {"succeeded": ROLLING_JOBS}
    # The README's promise: 200 ms jobs end within the soft shutdown, a stopping worker hands back
    # only messages it had not started, and a redelivered message of an ended job is skipped.
    assert duplicates == {}, duplicates
    # SIGTERM was enough each time: the worker exited by itself before the grace period's SIGKILL.
    assert 137 not in exit_codes, exit_codes
    assert all(s < GRACE_PERIOD_SECONDS - 1 for s in stops), stops


def test_a_sigkilled_workers_job_comes_back_within_the_documented_bound(
    topo: Topology, record_property: Report
) -> None:
    """docker kill mid-job: the job is back on the queue within visibility timeout + restore
    interval x throttle (13 s here) of its first start, runs on the other worker and succeeds."""
    topo.start_redis()
    topo.start_api()
    first = topo.start_worker("worker", queues="default")
    topo.wait_ready()
    job_id = topo.submit([{"sleep_ms": 4000}])[0]
    wait_for(
        lambda: (j := topo.offload.get(job_id)).status == "started" and j.worker == f"worker@{first}",
        60,
        "the job to start on the first worker",
        interval=0.1,
    )
    # Killed before the second worker starts: on a loaded machine a container can take longer to
    # start than the job takes to run, and the job must still be running when its worker dies.
    topo.kill_worker(first)
    killed = time.monotonic()
    second = topo.start_worker("worker", queues="default")
    topo.wait_ready(second)

    def rerun_started() -> bool:
        return topo.offload.get(job_id).worker == f"worker@{second}"

    wait_for(rerun_started, RESTORE_BOUND_SECONDS + 60, "the job to run on the second worker", interval=0.2)
    back_after_kill = time.monotonic() - killed
    done = topo.wait_terminal([job_id], timeout=60, every=0.2)[job_id]
    assert done.started_at is not None, done
    assert done.finished_at is not None, done
    back_after_first_start = (done.finished_at - done.started_at).total_seconds() - 4.0
    report(
        record_property,
        "crash_recovery",
        {
            "bound_s": RESTORE_BOUND_SECONDS,
            "rerun_seen_after_kill_s": round(back_after_kill, 1),
            "rerun_start_after_first_start_s": round(back_after_first_start, 1),
            "attempts": done.attempts,
        },
    )
    assert done.status == "succeeded", done
    assert done.worker == f"worker@{second}"
    assert done.attempts == 2
    # Within the bound counted from when the first worker took it (+2 s for a loaded machine).
    assert back_after_first_start <= RESTORE_BOUND_SECONDS + 2
