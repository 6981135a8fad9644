"""A job that kills its worker process is not delivered forever: after OFFLOAD_TASK_MAX_LOST_RUNS
runs that ended without an outcome it fails and is dead-lettered with the reason. Real Redis,
API and a prefork worker whose pool process the test kills while it runs the job."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from offload_dev.polling import wait_for
from tests.support import TEST_SETTINGS, child_pids, cluster, job, submit_echo, wait_job

pytestmark = pytest.mark.slow

MAX_LOST_RUNS = 3


def test_a_job_whose_runs_keep_dying_fails_and_is_dead_lettered(tmp_path: Path) -> None:
    env = {**TEST_SETTINGS, "OFFLOAD_TASK_MAX_LOST_RUNS": str(MAX_LOST_RUNS), "OFFLOAD_WORKER_CONCURRENCY": "1"}
    with cluster(tmp_path, env) as own:
        own.start_api()
        client, direct = own.client, own.redis
        worker = own.start_worker("worker", queues="default")
        poison = submit_echo(client, message="poison", sleep_ms=60_000)

        def running(run: int) -> bool:
            record = job(client, poison)
            return bool(record["status"] == "started" and record["attempts"] == run)

        for run in range(1, MAX_LOST_RUNS + 1):
            wait_for(lambda: running(run), 30, f"run {run} of the job to start")  # noqa: B023
            # What an out-of-memory kill or a segfault in a native library does to the run.
            for pid in child_pids(worker.process.pid):
                os.kill(pid, signal.SIGKILL)

        done = wait_job(client, poison, {"failed", "succeeded"}, timeout=30)
        assert done["status"] == "failed", done
        assert done["attempts"] == MAX_LOST_RUNS, done
        assert f"its run was lost {MAX_LOST_RUNS} times" in done["error"], done
        letter = client.get(f"/v1/dead-letters/{poison}")
        assert letter.status_code == 200, letter.text
        assert letter.json()["payload"] == {"message": "poison", "sleep_ms": 60_000, "fail_times": 0}
        assert "OFFLOAD_TASK_MAX_LOST_RUNS" in letter.json()["error"]
        # Acknowledged: no message of it is left to deliver, and the worker goes on with others.
        wait_for(lambda: direct.hlen("unacked") == 0, 5, "the message to be acknowledged")  # acks go in batches
        assert all(direct.llen(name) == 0 for name in direct.keys("default*"))
        after = submit_echo(client, message="after")
        assert wait_job(client, after, {"succeeded", "failed"})["status"] == "succeeded"
        assert worker.alive()
