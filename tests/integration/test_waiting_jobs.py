"""The waiting set and kept arguments that let a job whose message Redis lost be published
again: every way a job stops waiting for a worker takes it out, on a real Redis."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from offload_core.store.jobs import (
    WAITING_KEY,
    CancelOutcome,
    JobStatus,
    JobStore,
    RecoveryOutcome,
    StartOutcome,
    kwargs_key,
)
from offload_dev.processes import start_redis

KWARGS = {"message": "ping", "sleep_ms": 5}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JobStore]:
    server = start_redis(tmp_path_factory.mktemp("waiting"))
    try:
        yield JobStore(redis.Redis(port=server.port, decode_responses=True), ttl_seconds=600)
    finally:
        server.stop()


def _create(store: JobStore, job_id: str, **options: object) -> None:
    store.create(job_id, task="offload.echo", queue="default", kwargs=KWARGS, priority=6, **options)  # type: ignore[arg-type]


def _waiting(store: JobStore, job_id: str) -> bool:
    return store.client.zscore(WAITING_KEY, job_id) is not None


def _kept(store: JobStore, job_id: str) -> bool:
    return bool(store.client.exists(kwargs_key(job_id)))


def test_an_accepted_job_waits_with_what_publishing_it_again_takes(store: JobStore) -> None:
    _create(store, "w1")
    assert _waiting(store, "w1")
    assert _kept(store, "w1")
    job = store.waiting_jobs(["w1", "nobody"])["w1"]
    assert (job.status, job.task, job.queue, job.priority, job.kwargs) == (
        "queued",
        "offload.echo",
        "default",
        6,
        KWARGS,
    )
    assert 0 < store.client.ttl(kwargs_key("w1")) <= 600
    assert [job_id for job_id, _ in store.waiting_since(before=9e9, after=None, limit=100)].count("w1") == 1


def test_start_takes_it_out_and_drops_the_arguments(store: JobStore) -> None:
    _create(store, "w2")
    assert store.start("w2", task="offload.echo", queue="default", worker="w@test") is StartOutcome.RUN
    assert not _waiting(store, "w2")
    assert not _kept(store, "w2")
    assert store.waiting_jobs(["w2"])["w2"].kwargs is None


def test_cancel_while_queued_takes_it_out(store: JobStore) -> None:
    _create(store, "w3")
    assert store.cancel("w3") is CancelOutcome.CANCELLED
    assert not _waiting(store, "w3")
    assert not _kept(store, "w3")


def test_fail_takes_it_out(store: JobStore) -> None:
    _create(store, "w4")
    assert store.fail("w4", "boom", payload=KWARGS) == "default"
    assert store.get("w4").status is JobStatus.FAILED  # type: ignore[union-attr]
    assert not _waiting(store, "w4")
    assert not _kept(store, "w4")


def test_discard_forgets_everything(store: JobStore) -> None:
    _create(store, "w5")
    store.discard("w5")
    assert store.get("w5") is None
    assert not _waiting(store, "w5")
    assert not _kept(store, "w5")


def test_a_later_chain_step_waits_only_once_the_step_before_it_succeeded(store: JobStore) -> None:
    _create(store, "c1", next_step="c2")
    _create(store, "c2", published_now=False)
    assert _waiting(store, "c1")
    assert not _waiting(store, "c2")
    assert _kept(store, "c2")
    store.start("c1", task="offload.echo", queue="default", worker="w@test")
    store.succeed("c1", {"ok": True})
    assert _waiting(store, "c2")
    assert store.get("c1").result == {"ok": True}  # type: ignore[union-attr]


def test_a_cancelled_chain_step_does_not_wait_after_the_step_before_it(store: JobStore) -> None:
    _create(store, "d1", next_step="d2")
    _create(store, "d2", published_now=False)
    assert store.cancel("d2") is CancelOutcome.CANCELLED
    store.start("d1", task="offload.echo", queue="default", worker="w@test")
    store.succeed("d1", None)
    assert not _waiting(store, "d2")


def test_a_recovery_is_claimed_while_queued_and_at_most_so_often(store: JobStore) -> None:
    _create(store, "r1")
    before = store.client.zscore(WAITING_KEY, "r1")
    assert store.claim_recovery("r1", most=2) is RecoveryOutcome.REPUBLISH
    assert store.client.zscore(WAITING_KEY, "r1") >= before  # type: ignore[operator]  # its wait restarts
    assert store.claim_recovery("r1", most=2) is RecoveryOutcome.REPUBLISH
    assert store.claim_recovery("r1", most=2) is RecoveryOutcome.EXHAUSTED
    assert not _waiting(store, "r1")
    _create(store, "r2")
    store.start("r2", task="offload.echo", queue="default", worker="w@test")
    assert store.claim_recovery("r2", most=2) is RecoveryOutcome.GONE
