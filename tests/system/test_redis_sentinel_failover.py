"""Redis Sentinel: the primary is killed under a steady submit load and a sentinel promotes the
replica; the API and a worker, configured with the sentinels only, follow it."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from testcontainers.core.container import DockerContainer

from offload_client import Job, NotFound
from offload_dev.polling import wait_for
from tests.support import API_KEY, ECHO_PATH
from tests.system.harness import Topology, report

Report = Callable[[str, object], None]

MASTER = "offload"
SENTINELS = 3
# How long a sentinel waits before it calls a silent primary down (Redis's default is 30 s; a
# production set tuned for quick failover uses a few seconds). The failover follows at once.
DOWN_AFTER_MS = 2000
LOAD_THREADS = 4
LOAD_PAUSE_SECONDS = 0.05
BEFORE_KILL_SECONDS = 8
AFTER_RECOVERY_SECONDS = 8


@dataclass
class Submission:
    at: float  # wall clock, as the records' timestamps
    status: int | str  # the HTTP status, or the exception's name
    seconds: float  # until the answer
    job_id: str | None = None


def _ip(topo: Topology, container: DockerContainer) -> str:
    wrapped = container.get_wrapped_container()
    wrapped.reload()
    return str(wrapped.attrs["NetworkSettings"]["Networks"][topo.network.name]["IPAddress"])


def _redis(topo: Topology, alias: str, extra: str = "") -> DockerContainer:
    command = (
        f"redis-server --protected-mode no --appendonly yes --appendfsync always --maxmemory-policy noeviction {extra}"
    )
    return topo._enter(topo._container(topo.images["redis"], alias, {}, read_only=False).with_command(command))


def _cli(container: DockerContainer, *args: str) -> str:
    code, out = container.get_wrapped_container().exec_run(["redis-cli", *args])
    return out.decode().strip() if code == 0 else ""


def start_sentinel_set(topo: Topology) -> tuple[DockerContainer, DockerContainer, list[DockerContainer]]:
    primary = _redis(topo, "redis-primary")
    wait_for(lambda: _cli(primary, "ping") == "PONG", 60, "the primary to answer PING", interval=0.2)
    primary_ip = _ip(topo, primary)
    replica = _redis(topo, "redis-replica", f"--replicaof {primary_ip} 6379")
    wait_for(
        lambda: "master_link_status:up" in _cli(replica, "info", "replication"), 60, "the replica to sync", interval=0.2
    )
    config = (
        f"port 26379\\nprotected-mode no\\nsentinel monitor {MASTER} {primary_ip} 6379 2\\n"
        f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\\n"
        f"sentinel failover-timeout {MASTER} 10000\\n"
    )
    sentinels = []
    for number in range(1, SENTINELS + 1):
        # A sentinel rewrites its configuration file: a writable copy of its own.
        command = f"sh -c 'printf \"{config}\" > /tmp/sentinel.conf && exec redis-server /tmp/sentinel.conf --sentinel'"
        sentinel = topo._container(topo.images["redis"], f"sentinel-{number}", {}, read_only=False)
        sentinels.append(topo._enter(sentinel.with_command(command)))
    for sentinel in sentinels:
        wait_for(
            lambda s=sentinel: "slaves=1,sentinels=3" in _cli(s, "-p", "26379", "info", "sentinel"),  # type: ignore[misc]
            60,
            "each sentinel to see the replica and the other sentinels",
            interval=0.2,
        )
    return primary, replica, sentinels


def test_killing_the_primary_under_load_loses_no_accepted_job(topo: Topology, record_property: Report) -> None:
    """Asserted: every job answered 202 (before, during or after the failover) ends succeeded;
    the API answers nothing but 202 and 503; the same worker container consumes again.
    Reported: accepted jobs lost, jobs run more than once, the API's 503 window (first to last
    non-2xx), the time from the kill until a worker starts a job again."""
    primary, replica, _ = start_sentinel_set(topo)
    env = {
        "OFFLOAD_REDIS_URL": "redis://unused:6379/0",
        "OFFLOAD_REDIS_SENTINELS": ",".join(f"sentinel-{n}:26379" for n in range(1, SENTINELS + 1)),
        "OFFLOAD_REDIS_SENTINEL_MASTER": MASTER,
    }
    topo.start_api(env)
    worker = topo.start_worker("worker", env=env)
    topo.wait_ready()

    submissions: list[Submission] = []
    stop = threading.Event()

    def load() -> None:
        # Plain HTTP on purpose: the client would retry the 503s this load exists to count.
        with httpx.Client(base_url=topo.api_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=15) as client:
            while not stop.is_set():
                at = time.time()
                try:
                    response = client.post(ECHO_PATH, json={"message": "failover", "sleep_ms": 20})
                    job_id = response.json().get("id") if response.status_code == 202 else None
                    submissions.append(Submission(at, response.status_code, time.time() - at, job_id))
                except httpx.HTTPError as exc:
                    submissions.append(Submission(at, type(exc).__name__, time.time() - at))
                stop.wait(LOAD_PAUSE_SECONDS)

    threads = [threading.Thread(target=load, daemon=True) for _ in range(LOAD_THREADS)]
    for thread in threads:
        thread.start()
    time.sleep(BEFORE_KILL_SECONDS)  # a steady load, not a condition to wait for

    killed_at = time.time()
    primary.get_wrapped_container().kill(signal="SIGKILL")
    wait_for(lambda: "role:master" in _cli(replica, "info", "replication"), 60, "a sentinel to promote the replica")
    promoted_at = time.time()
    wait_for(
        lambda: any(s.status == 202 and s.at > promoted_at for s in submissions),
        60,
        "the API to accept jobs on the new primary",
        interval=0.1,
    )
    time.sleep(AFTER_RECOVERY_SECONDS)  # the load goes on against the new primary
    stop.set()
    for thread in threads:
        thread.join(30)

    accepted = [s.job_id for s in submissions if s.job_id]
    records = _wait_terminal(topo, accepted, timeout=90)
    lost = {job_id: record for job_id, record in records.items() if not record or record.status != "succeeded"}
    run_twice = [job_id for job_id, record in records.items() if record and record.attempts > 1]
    after_kill = [s for s in submissions if s.at >= killed_at]
    failures = [s for s in after_kill if s.status != 202]
    statuses: dict[str, int] = {}
    for s in after_kill:
        statuses[str(s.status)] = statuses.get(str(s.status), 0) + 1
    # Workers consume again at the first start after the longest pause in starts around the kill.
    starts = sorted(record.started_at.timestamp() for record in records.values() if record and record.started_at)
    around = [at for at in starts if at > killed_at - 1]
    resumed = max(itertools.pairwise(around), key=lambda pair: pair[1] - pair[0])[1]
    figures = {
        "accepted": len(accepted),
        "accepted_lost": len(lost),
        "run_more_than_once": len(run_twice),
        "failover_s": round(promoted_at - killed_at, 1),
        # From the first refused submission's start to the last one's answer.
        "api_503_window_s": round(max(s.at + s.seconds for s in failures) - failures[0].at, 1) if failures else 0.0,
        "slowest_answer_after_kill_s": round(max(s.seconds for s in after_kill), 1),
        "statuses_from_kill": statuses,
        "workers_consume_again_after_s": round(resumed - killed_at, 1),
        "down_after_ms": DOWN_AFTER_MS,
    }
    report(record_property, "redis_sentinel_failover", figures)

    assert set(statuses) <= {"202", "503"}, statuses
    assert not lost, "; ".join(f"{job_id}: {record}" for job_id, record in list(lost.items())[:3])
    container = topo.workers[worker].get_wrapped_container()
    container.reload()
    assert container.attrs["State"]["Status"] == "running"
    assert container.attrs["RestartCount"] == 0


def _wait_terminal(topo: Topology, ids: list[str], timeout: float) -> dict[str, Job | None]:
    """Every job's record once all are terminal, or as they stand at the deadline; None for a
    job the API no longer knows (its record was on the killed primary only)."""
    records: dict[str, Job | None] = {}
    pending = list(ids)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for job_id in pending:
            try:
                records[job_id] = topo.offload.get(job_id)
            except NotFound:
                records[job_id] = None
        pending = [i for i in pending if (record := records[i]) is not None and not record.finished]
        if pending:
            time.sleep(1)
    return records
