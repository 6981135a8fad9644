"""`make run` starts the default worker sets, plus one worker per queue of your own in OFFLOAD_QUEUES."""

from __future__ import annotations

from pathlib import Path

import pytest

from offload_core.topology import DEFAULT_WORKER_SETS, WorkerSet
from offload_dev.run_local import local_worker_sets, worker_processes


def test_the_default_sets_run_locally() -> None:
    assert local_worker_sets(["high", "default", "low"]) == list(DEFAULT_WORKER_SETS)


def test_a_queue_of_your_own_gets_a_worker_of_its_own(tmp_path: Path) -> None:
    worker_sets = local_worker_sets(["high", "default", "low", "acme", "acme-bulk"])
    assert worker_sets[-2:] == [WorkerSet("acme", ("acme",)), WorkerSet("acme-bulk", ("acme-bulk",))]
    processes = worker_processes(worker_sets, tmp_path)
    assert list(processes) == ["worker-default", "worker-low", "worker-high", "worker-acme", "worker-acme-bulk"]
    command, env = processes["worker-high"]
    assert command == "python -m offload_notifier"
    assert env["OFFLOAD_WORKER_QUEUES"] == "high"
    command, env = processes["worker-acme"]
    assert (command, env["OFFLOAD_WORKER_QUEUES"]) == ("python -m offload_worker", "acme")
    assert len({env["OFFLOAD_WORKER_METRICS_PORT"] for _, env in processes.values()}) == len(processes)
    assert len({env["OFFLOAD_WORKER_STATE_DIR"] for _, env in processes.values()}) == len(processes)


@pytest.mark.parametrize(
    ("queues", "message"),
    [(["high", "default"], "the built-in queue 'low' is missing"), (["high", "default", "low", "Acme"], "'Acme'")],
)
def test_unusable_queues_are_refused(queues: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        local_worker_sets(queues)
