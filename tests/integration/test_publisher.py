"""The API's submit path on a real Redis: the Celery message it builds by hand is the one Celery
would publish, and the script batcher shares round trips without mixing up results."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from celery import Celery

from offload_api.batching import ScriptBatcher
from offload_core.contract.topology import Queue, priority_lists
from offload_core.runtime.celery_app import create_celery_app
from offload_core.runtime.task_message import queue_list, task_message
from offload_core.settings import Settings
from offload_dev.processes import start_redis
from offload_dev.redis_server import free_port

# Fields that differ between any two messages, or that we fill on purpose in our own way.
VOLATILE_HEADERS = {"origin", "kwargsrepr"}
VOLATILE_PROPERTIES = {"delivery_tag", "reply_to"}


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = start_redis(tmp_path_factory.mktemp("publisher"))
    try:
        yield f"redis://127.0.0.1:{server.port}/0"
    finally:
        server.stop()


def _pop_only_message(client: redis.Redis) -> tuple[str, dict[str, Any]]:
    lists = [key for key in client.keys("*") if client.type(key) == "list"]
    assert len(lists) == 1, lists
    raw = client.lpop(lists[0])
    assert isinstance(raw, str)
    return str(lists[0]), json.loads(raw)


@pytest.fixture(scope="module")
def celery(redis_url: str) -> Iterator[Celery]:
    app = create_celery_app(Settings(REDIS_URL=redis_url), main="offload-api")
    try:
        yield app
    finally:
        app.close()


@pytest.mark.parametrize("priority", range(10))
def test_our_message_is_the_one_celery_publishes(redis_url: str, celery: Celery, priority: int) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushdb()
    kwargs = {"message": "héllo", "sleep_ms": 5, "nested": {"a": [1, 2.5, None, True]}}
    headers = {"offload_enqueued_at": 1700000000.25, "traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}
    celery.send_task(
        "offload.echo",
        kwargs=kwargs,
        task_id="celery-job",
        queue="default",
        routing_key="default",
        priority=priority,
        headers=headers,
        ignore_result=True,
    )
    celery_list, theirs = _pop_only_message(client)

    ours = json.loads(
        task_message(
            "offload.echo", "celery-job", kwargs, queue="default", priority=priority, headers=headers, origin="api@test"
        )
    )
    assert queue_list("default", priority) == celery_list
    assert celery_list in priority_lists(Queue.DEFAULT)
    assert base64.b64decode(ours["body"]) == base64.b64decode(theirs["body"])
    assert {k: v for k, v in ours.items() if k not in {"body", "headers", "properties"}} == {
        k: v for k, v in theirs.items() if k not in {"body", "headers", "properties"}
    }
    for section, volatile in (("headers", VOLATILE_HEADERS), ("properties", VOLATILE_PROPERTIES)):
        assert {k: v for k, v in ours[section].items() if k not in volatile} == {
            k: v for k, v in theirs[section].items() if k not in volatile
        }, section
    assert ours["headers"]["kwargsrepr"] == repr(kwargs)
    assert ours["headers"]["origin"] == "api@test"


def test_the_arguments_repr_is_bounded_as_celerys() -> None:
    message = json.loads(
        task_message("offload.echo", "j", {"message": "x" * 5000}, queue="low", priority=3, headers={}, origin="o")
    )
    assert len(message["headers"]["kwargsrepr"]) == 1024
    assert message["headers"]["kwargsrepr"].endswith("...")


# KEYS[1] a counter; ARGV[1] "fail" to answer an error. Returns the counter after INCR.
COUNTING_SCRIPT = """
if ARGV[1] == 'fail' then return redis.error_reply('asked to fail') end
return redis.call('INCR', KEYS[1])
"""


def _reads_processed(client: redis.Redis) -> int:
    return int(client.info("stats")["total_reads_processed"])


def test_concurrent_calls_share_round_trips_and_keep_their_own_results(redis_url: str) -> None:
    sync = redis.Redis.from_url(redis_url, decode_responses=True)
    sync.flushdb()

    async def run() -> tuple[list[Any], list[Any], int, int]:
        client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        batcher = ScriptBatcher(client, COUNTING_SCRIPT)
        await batcher(["warm"], ["ok"])  # loads the script, opens the connection
        before = _reads_processed(sync)
        together = await asyncio.gather(
            *(batcher(["together"], ["fail" if n % 10 == 3 else "ok"]) for n in range(200)), return_exceptions=True
        )
        shared = _reads_processed(sync) - before
        before = _reads_processed(sync)
        one_by_one = [await batcher(["alone"], ["ok"]) for _ in range(50)]
        alone = _reads_processed(sync) - before
        await client.aclose()
        return together, one_by_one, shared, alone

    together, one_by_one, shared, alone = asyncio.run(run())
    failures = [r for r in together if isinstance(r, Exception)]
    assert len(failures) == 20
    assert all("asked to fail" in str(f) for f in failures)
    assert [r for r in together if not isinstance(r, Exception)] == list(range(1, 181))  # each its own INCR
    assert one_by_one == list(range(1, 51))
    # 200 calls in a handful of reads (batches of at most 128); 50 awaited calls in one read each.
    assert shared <= 10, shared
    assert alone >= 50, alone


def test_calls_go_through_after_redis_forgot_the_script(redis_url: str) -> None:
    sync = redis.Redis.from_url(redis_url, decode_responses=True)
    sync.flushdb()

    async def run() -> list[Any]:
        client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        batcher = ScriptBatcher(client, COUNTING_SCRIPT)
        first = await batcher(["n"], ["ok"])
        sync.script_flush()  # as after a Redis restart
        rest = await asyncio.gather(*(batcher(["n"], ["ok"]) for _ in range(5)))
        await client.aclose()
        return [first, *rest]

    assert sorted(asyncio.run(run())) == [1, 2, 3, 4, 5, 6]
    assert sync.get("n") == "6"  # none ran twice


def test_a_call_fails_with_its_batch_when_redis_is_unreachable() -> None:
    async def run() -> BaseException | None:
        client = aioredis.Redis(port=free_port(), socket_connect_timeout=1)
        batcher = ScriptBatcher(client, COUNTING_SCRIPT)
        try:
            await batcher(["n"], ["ok"])
        except redis.ConnectionError as exc:
            return exc
        finally:
            await client.aclose()
        return None

    assert isinstance(asyncio.run(run()), redis.ConnectionError)
