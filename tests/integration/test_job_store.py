"""Job state transitions on a real Redis, including the races a cancel can run into."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from offload_core.store.jobs import CancelOutcome, JobStatus, JobStore, StartOutcome, job_key
from offload_dev.processes import start_redis


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JobStore]:
    server = start_redis(tmp_path_factory.mktemp("store"))
    try:
        yield JobStore(redis.Redis(port=server.port, decode_responses=True), ttl_seconds=600)
    finally:
        server.stop()


def _start(store: JobStore, job_id: str) -> StartOutcome:
    return store.start(job_id, task="offload.echo", queue="default", worker="w@test")


def test_a_job_goes_from_queued_to_succeeded(store: JobStore) -> None:
    store.create("a", task="offload.echo", queue="default")
    assert store.get("a").status is JobStatus.QUEUED  # type: ignore[union-attr]
    assert _start(store, "a") is StartOutcome.RUN
    assert store.progress("a", 40, "halfway")
    store.succeed("a", {"ok": True})
    job = store.get("a")
    assert job is not None
    assert (job.status, job.progress.percent, job.result, job.attempts, job.worker) == (
        JobStatus.SUCCEEDED, 100, {"ok": True}, 1, "w@test"
    )  # fmt: skip
    assert 0 < store.client.ttl(job_key("a")) <= 600


def test_a_cancelled_job_is_never_started_and_a_finished_one_never_again(store: JobStore) -> None:
    store.create("b", task="offload.echo", queue="default")
    assert store.cancel("b") is CancelOutcome.CANCELLED
    assert _start(store, "b") is StartOutcome.SKIP_CANCELLED
    assert store.get("b").attempts == 0  # type: ignore[union-attr]

    store.create("c", task="offload.echo", queue="default")
    _start(store, "c")
    store.succeed("c", 1)
    assert _start(store, "c") is StartOutcome.SKIP_FINISHED  # a redelivered message after the run
    assert store.cancel("c") is CancelOutcome.FINISHED


def test_a_cancel_while_running_is_a_request_that_also_stops_later_retries(store: JobStore) -> None:
    store.create("d", task="offload.echo", queue="default")
    _start(store, "d")
    assert store.cancel("d") is CancelOutcome.REQUESTED
    assert store.cancel_requested("d")
    store.mark_retrying("d", "boom", 1.0, kwargs={}, retries=1)
    assert _start(store, "d") is StartOutcome.SKIP_CANCELLED
    assert store.get("d").status is JobStatus.CANCELLED  # type: ignore[union-attr]


def test_progress_does_not_revive_an_ended_job(store: JobStore) -> None:
    store.create("e", task="offload.echo", queue="default")
    _start(store, "e")
    store.fail("e", "ValueError: nope")
    assert not store.progress("e", 50)
    assert store.get("e").progress.percent == 0  # type: ignore[union-attr]


def test_a_message_without_a_record_gets_one_when_it_starts(store: JobStore) -> None:
    assert _start(store, "sent-by-another-client") is StartOutcome.RUN
    job = store.get("sent-by-another-client")
    assert job is not None
    assert (job.id, job.status, job.queue) == ("sent-by-another-client", JobStatus.STARTED, "default")
    assert store.cancel("missing") is CancelOutcome.MISSING
