"""Dead letters and idempotency keys on a real Redis, without the API: the bounds (the oldest go
first, then the TTL), paging, deletion, and an idempotency claim released after a failed publish."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from fastapi import Response

from offload_api.idempotency import IdempotencyKey
from offload_core.store.dead_letters import DeadLetters, dead_letter_key, index_key
from offload_core.store.jobs import JobStatus, JobStore
from offload_dev.polling import wait_for
from offload_dev.processes import start_redis

MAX = 3


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redis.Redis]:
    server = start_redis(tmp_path_factory.mktemp("dead-letters"))
    try:
        yield redis.Redis(port=server.port, decode_responses=True)
    finally:
        server.stop()


@pytest.fixture
def store(client: redis.Redis) -> JobStore:
    client.flushdb()
    return JobStore(client, ttl_seconds=600, dead_letter_ttl_seconds=600, dead_letter_max=MAX)


def _fail(store: JobStore, job_id: str, queue: str = "default") -> None:
    store.create(job_id, task="offload.echo", queue=queue)
    store.start(job_id, task="offload.echo", queue=queue, worker="w@test")
    store.fail(job_id, f"ValueError: {job_id}", task="offload.echo", queue=queue, payload={"message": job_id})


def test_failing_a_job_records_its_dead_letter_in_the_same_step(store: JobStore) -> None:
    _fail(store, "a", queue="low")
    job = store.get("a")
    assert job is not None
    assert (job.status, job.error) == (JobStatus.FAILED, "ValueError: a")
    letter = DeadLetters(store.client, 600).get("a")
    assert letter is not None
    assert (letter.task, letter.queue, letter.payload, letter.error, letter.attempts) == (
        "offload.echo", "low", {"message": "a"}, "ValueError: a", 1
    )  # fmt: skip
    assert 0 < store.client.ttl(dead_letter_key("a")) <= 600


def test_the_queue_comes_from_the_record_when_the_failing_process_has_no_request(store: JobStore) -> None:
    store.create("hard-limit", task="offload.echo", queue="high")
    assert store.fail("hard-limit", "timed out after 10 s", task="offload.echo") == "high"
    assert DeadLetters(store.client, 600).page(queue="high").dead_letters[0].id == "hard-limit"


def test_beyond_the_maximum_the_oldest_go_from_every_index(store: JobStore) -> None:
    ids = [f"job{n}" for n in range(MAX + 2)]
    for job_id in ids:
        _fail(store, job_id, queue="low" if job_id == "job0" else "default")
    dead_letters = DeadLetters(store.client, 600)
    kept = [letter.id for letter in dead_letters.page().dead_letters]
    assert kept == list(reversed(ids))[:MAX]  # newest first
    assert dead_letters.get("job0") is None
    assert dead_letters.get("job1") is None
    assert dead_letters.page(queue="low").dead_letters == []
    assert store.client.zcard(index_key(queue="default", task="offload.echo")) == MAX


def test_pages_follow_the_cursor_without_gaps_or_repeats(store: JobStore) -> None:
    for job_id in ("p1", "p2", "p3"):
        _fail(store, job_id)
    dead_letters = DeadLetters(store.client, 600)
    first = dead_letters.page(limit=2)
    assert [letter.id for letter in first.dead_letters] == ["p3", "p2"]
    assert first.next_cursor is not None
    rest = dead_letters.page(limit=2, cursor=first.next_cursor)
    assert [letter.id for letter in rest.dead_letters] == ["p1"]
    assert rest.next_cursor is None


def test_delete_removes_it_from_every_index(store: JobStore) -> None:
    _fail(store, "gone", queue="low")
    dead_letters = DeadLetters(store.client, 600)
    assert dead_letters.delete("gone")
    assert not dead_letters.delete("gone")
    assert dead_letters.get("gone") is None
    assert dead_letters.page(queue="low", task="offload.echo").dead_letters == []
    assert not dead_letters.mark_replayed("gone", "new-job")  # does not bring it back
    assert not store.client.exists(dead_letter_key("gone"))


def test_dead_letters_expire_after_their_ttl(client: redis.Redis) -> None:
    client.flushdb()
    store = JobStore(client, ttl_seconds=600, dead_letter_ttl_seconds=1, dead_letter_max=MAX)
    _fail(store, "old")
    dead_letters = DeadLetters(client, 1)
    assert [letter.id for letter in dead_letters.page().dead_letters] == ["old"]
    wait_for(lambda: dead_letters.page().dead_letters == [], 10, "the dead letter to expire")
    assert dead_letters.get("old") is None


def test_an_idempotency_key_released_after_a_failed_publish_can_be_claimed_again(client: redis.Redis) -> None:
    key = IdempotencyKey(key="k", redis_key="offload:idempotency:test:k", route="/v1/jobs/echo", ttl_seconds=60,
                         response=Response())  # fmt: skip
    assert key.claim(client, "fingerprint", '{"id": "first"}') is None
    key.release(client)
    retry = IdempotencyKey(key="k", redis_key=key.redis_key, route=key.route, ttl_seconds=60, response=Response())
    assert retry.claim(client, "fingerprint", '{"id": "second"}') is None
    retry.finish(client)  # its job was published: repeats get its answer from now on
    repeat = IdempotencyKey(key="k", redis_key=key.redis_key, route=key.route, ttl_seconds=60, response=Response())
    assert repeat.claim(client, "fingerprint", '{"id": "third"}') == '{"id": "second"}'
    assert repeat.response.status_code == 200
    # A stale release (the first request's) never frees a key another request holds now.
    key.release(client)
    assert client.exists(key.redis_key)
