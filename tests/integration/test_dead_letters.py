"""Dead letters over HTTP with real workers: a job that fails for good is recorded with its
payload, error and attempts, can be listed by queue and task, replayed as a linked new job and
deleted, and the API's gauge counts it."""

from __future__ import annotations

import itertools
from typing import Any

import httpx
import redis

from offload_client import Offload
from offload_core.contract import builtin_jobs
from offload_core.store.jobs import job_key
from offload_dev.polling import wait_for
from tests.support import API_KEY, Stack, job, sample, scrape, submit_echo, wait_job

ECHO = "offload.echo"

# The helpers go through the Python client; the tests keep raw HTTP where status codes and
# headers are what they check.


def _offload(stack: Stack) -> Offload:
    return Offload(stack.api.extra["url"], API_KEY, timeout=15)


def _fail_for_good(
    stack: Stack, queue: str | None = None, priority: int | None = None, **payload: Any
) -> dict[str, Any]:
    with _offload(stack) as offload:
        # fail_times more than OFFLOAD_TASK_MAX_RETRIES=3
        accepted = offload.submit(
            ECHO, {"message": "ping", "fail_times": 10, **payload}, queue=queue, priority=priority
        )
        failed = offload.wait(accepted.id, timeout=60)
    assert failed.status == "failed", failed
    return failed.model_dump(mode="json")


def _dead_letter(client: httpx.Client, dead_letter_id: str) -> dict[str, Any]:
    with Offload(str(client.base_url), API_KEY) as offload:
        return offload.get_dead_letter(dead_letter_id).model_dump(mode="json")


def _listed(client: httpx.Client, limit: int = 50, **filters: Any) -> list[str]:
    """The first `limit` dead letters' ids, newest first, over as many pages as that takes."""
    with Offload(str(client.base_url), API_KEY) as offload:
        letters = offload.list_dead_letters(page_size=min(limit, 500), **filters)
        return [letter.id for letter in itertools.islice(letters, limit)]


def test_a_job_that_exhausts_its_retries_becomes_a_dead_letter(stack: Stack) -> None:
    failed = _fail_for_good(stack, message="doomed", queue="low")
    letter = _dead_letter(stack.client, failed["id"])
    assert letter["task"] == ECHO
    assert letter["queue"] == "low"
    assert letter["payload"] == {"message": "doomed", "sleep_ms": 0, "fail_times": 10}
    assert letter["error"] == "TransientJobError: planned failure 4 of 10" == failed["error"]
    assert letter["attempts"] == 4 == failed["attempts"]
    assert letter["failed_at"] is not None
    assert (letter["replay_of"], letter["replayed_as"]) == (None, None)
    assert _listed(stack.client, limit=1) == [failed["id"]]  # newest first


def test_a_job_that_hits_its_time_limit_becomes_a_dead_letter(stack: Stack) -> None:
    job_id = submit_echo(stack.client, sleep_ms=9_000, queue="low")  # soft limit 8 s in the tests
    failed = wait_job(stack.client, job_id, {"succeeded", "failed"}, timeout=60)
    assert failed["status"] == "failed", failed
    letter = _dead_letter(stack.client, job_id)
    assert (letter["error"], letter["attempts"]) == ("timed out after 8 s", 1)


def test_a_job_that_succeeds_after_retries_leaves_no_dead_letter(stack: Stack) -> None:
    job_id = submit_echo(stack.client, fail_times=1)
    assert wait_job(stack.client, job_id, {"succeeded", "failed"})["status"] == "succeeded"
    assert stack.client.get(f"/v1/dead-letters/{job_id}").status_code == 404


def test_dead_letters_are_listed_by_queue_and_task_a_page_at_a_time(stack: Stack) -> None:
    on_high = _fail_for_good(stack, message="high", queue="high")["id"]  # on the notifier
    on_default = _fail_for_good(stack, message="default", queue="default")["id"]

    assert _listed(stack.client, limit=2) == [on_default, on_high]
    # Read the narrower listing first: other tests' notifications may fail on `high` meanwhile.
    high_echo = _listed(stack.client, queue="high", task=ECHO)
    high = _listed(stack.client, queue="high")
    assert on_high in high_echo
    assert on_default not in high
    assert all(stack.client.get(f"/v1/dead-letters/{i}").json()["task"] == ECHO for i in high_echo)
    assert set(high_echo) <= set(high)
    assert on_default in _listed(stack.client, task=ECHO, queue="default")
    assert _listed(stack.client, task="offload.nothing") == []

    first = stack.client.get("/v1/dead-letters", params={"limit": 1}).json()
    assert [letter["id"] for letter in first["dead_letters"]] == [on_default]
    second = stack.client.get("/v1/dead-letters", params={"limit": 1, "cursor": first["next_cursor"]}).json()
    assert [letter["id"] for letter in second["dead_letters"]] == [on_high]


def test_bad_list_parameters_are_422(stack: Stack) -> None:
    for params in ({"queue": "urgent"}, {"limit": 0}, {"limit": 501}, {"cursor": "yesterday"}):
        response = stack.client.get("/v1/dead-letters", params=params)
        assert response.status_code == 422, params
        assert response.json()["code"] == "invalid_request"


def test_a_replay_runs_the_same_payload_as_a_new_linked_job(stack: Stack) -> None:
    original = _fail_for_good(stack, message="again", queue="default")
    response = stack.client.post(f"/v1/dead-letters/{original['id']}/replay")
    assert response.status_code == 202, response.text
    replayed = response.json()
    assert replayed["id"] != original["id"]
    assert (replayed["task"], replayed["queue"]) == (ECHO, "default")
    assert response.headers["location"] == f"/v1/jobs/{replayed['id']}"
    assert _dead_letter(stack.client, original["id"])["replayed_as"] == replayed["id"]
    assert job(stack.client, replayed["id"])["replay_of"] == original["id"]

    # The same payload fails the same way: all its attempts run, and it is a dead letter of its own.
    failed_again = wait_job(stack.client, replayed["id"], {"succeeded", "failed"}, timeout=60)
    assert (failed_again["status"], failed_again["attempts"]) == ("failed", 4)
    second = _dead_letter(stack.client, replayed["id"])
    assert second["replay_of"] == original["id"]
    assert second["payload"] == {"message": "again", "sleep_ms": 0, "fail_times": 10}


def test_a_replay_runs_at_the_tasks_default_priority(stack: Stack) -> None:
    original = _fail_for_good(stack, message="last in line", queue="low", priority=9)
    response = stack.client.post(f"/v1/dead-letters/{original['id']}/replay")
    assert response.status_code == 202, response.text
    default = builtin_jobs.echo.priority
    assert default != 9
    assert response.json()["priority"] == default
    with redis.Redis.from_url(stack.redis.url, decode_responses=True) as direct:
        assert direct.hget(job_key(original["id"]), "priority") == "9"
        assert direct.hget(job_key(response.json()["id"]), "priority") == str(default)


def test_a_replay_with_an_idempotency_key_runs_once(stack: Stack) -> None:
    original = _fail_for_good(stack, message="replay once")
    headers = {"Idempotency-Key": f"replay-{original['id']}"}
    first = stack.client.post(f"/v1/dead-letters/{original['id']}/replay", headers=headers)
    repeat = stack.client.post(f"/v1/dead-letters/{original['id']}/replay", headers=headers)
    assert (first.status_code, repeat.status_code) == (202, 200)
    assert repeat.json()["id"] == first.json()["id"]
    assert wait_job(stack.client, first.json()["id"], {"succeeded", "failed"}, timeout=60)["status"] == "failed"
    # Used on another route, the key is a different request.
    other = stack.client.post("/v1/jobs/echo", json={"message": "replay once", "fail_times": 10}, headers=headers)
    assert other.status_code == 422


def test_delete_removes_one(stack: Stack) -> None:
    failed = _fail_for_good(stack, message="to delete")
    assert stack.client.delete(f"/v1/dead-letters/{failed['id']}").status_code == 204
    assert stack.client.get(f"/v1/dead-letters/{failed['id']}").status_code == 404
    assert failed["id"] not in _listed(stack.client, limit=500)
    response = stack.client.delete(f"/v1/dead-letters/{failed['id']}")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
    assert stack.client.post(f"/v1/dead-letters/{failed['id']}/replay").status_code == 404
    assert job(stack.client, failed["id"])["status"] == "failed"  # the job's own record stays


def test_the_gauge_counts_dead_letters_per_queue(stack: Stack) -> None:
    def counted() -> dict[str, int]:  # read from Redis now, not cached like the gauge
        return {q["name"]: q["dead_letters"] for q in stack.client.get("/v1/queues").json()["queues"]}

    before = counted()
    for _ in range(2):
        _fail_for_good(stack, message="counted", queue="low")
    assert counted() == {**before, "low": before["low"] + 2}
    metrics_url = stack.api.extra["metrics_url"]
    wait_for(
        lambda: sample(scrape(metrics_url), "offload_dead_letters", queue="low") == before["low"] + 2,
        30,
        "offload_dead_letters{queue=low} to grow by 2",
        interval=0.5,
    )
    assert sample(scrape(metrics_url), "offload_dead_letters", queue="high") == before["high"]


def test_a_replay_can_be_delayed(stack: Stack) -> None:
    original = _fail_for_good(stack, message="later again", queue="default")
    response = stack.client.post(f"/v1/dead-letters/{original['id']}/replay", json={"delay_seconds": 1})
    assert response.status_code == 202, response.text
    replayed = response.json()
    assert replayed["status"] == "scheduled"
    assert job(stack.client, replayed["id"])["replay_of"] == original["id"]
    ran = wait_job(stack.client, replayed["id"], {"succeeded", "failed"}, timeout=60)
    assert ran["started_at"] >= replayed["run_at"]
    refused = stack.client.post(f"/v1/dead-letters/{ran['id']}/replay", json={"run_at": "2030-01-01T00:00:00"})
    assert refused.status_code == 422
    assert "body.run_at" in [error["field"] for error in refused.json()["errors"]]
