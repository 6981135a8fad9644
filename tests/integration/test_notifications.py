"""Critical notifications end to end: the API accepts them, the notifier (a real subprocess on
`high`) fans out to a real webhook receiver and a real SMTP server on loopback, and each
target is recorded and retried on its own. Signatures are checked with the `standardwebhooks`
package, exactly as a receiver would, never with Offload's own signing code."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.receivers import ReceivedRequest, ScriptedReply
from tests.support import MESSAGE, WEBHOOK_SECRETS, Stack, finished_notification, notification, webhook


def _path() -> str:
    return f"/hooks/{uuid.uuid4().hex[:12]}"


def submit(client: httpx.Client, *targets: dict[str, str], **extra: Any) -> str:
    response = client.post("/v1/notifications", json={"message": MESSAGE, "targets": list(targets), **extra})
    assert response.status_code == 202, response.text
    body = response.json()
    assert (body["task"], body["queue"], body["priority"]) == ("offload.notify", "high", 0)
    assert body["status_url"] == f"/v1/notifications/{body['id']}" == response.headers["location"]
    job_id: str = body["id"]
    return job_id


def verified(request: ReceivedRequest, secret: str) -> dict[str, Any]:
    payload: dict[str, Any] = Webhook(secret).verify(request.body, request.headers)
    return payload


def test_a_webhook_is_delivered_signed_with_every_secret(stack: Stack) -> None:
    path = _path()
    job_id = submit(stack.client, webhook(stack.webhooks, path))
    done = finished_notification(stack.client, job_id)

    assert done["status"] == "succeeded", done
    [target] = done["targets"]
    assert target["status"] == "delivered"
    assert (target["attempts"], target["http_status"], target["last_error"]) == (1, 200, None)
    assert target["delivered_at"] is not None
    [request] = stack.webhooks.received(path)
    assert request.headers["content-type"] == "application/json"
    assert request.headers["webhook-id"] == f"msg_{job_id}_0"
    assert len(request.headers["webhook-signature"].split(" ")) == 2  # one per secret: a rotation
    # Receivers on the old secret and on the new one both verify it.
    for secret in WEBHOOK_SECRETS:
        event = verified(request, secret)
        assert event["type"] == "notification"
        assert event["data"] == {"id": job_id, **MESSAGE}
    other_secret = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODk="
    with pytest.raises(WebhookVerificationError):
        verified(request, other_secret)


def test_503_twice_then_200_is_one_delivery_with_the_same_id_three_times(stack: Stack) -> None:
    path = _path()
    stack.webhooks.script(path, ScriptedReply(503), ScriptedReply(503))
    job_id = submit(stack.client, webhook(stack.webhooks, path))
    done = finished_notification(stack.client, job_id)

    assert done["status"] == "succeeded", done
    [target] = done["targets"]
    assert (target["status"], target["attempts"], target["http_status"]) == ("delivered", 3, 200)
    requests = stack.webhooks.received(path)
    assert [r.headers["webhook-id"] for r in requests] == [f"msg_{job_id}_0"] * 3
    for request in requests:  # every attempt carries a valid signature of its own timestamp
        verified(request, WEBHOOK_SECRETS[0])


def test_retry_after_is_honoured(stack: Stack) -> None:
    path = _path()
    # The tests cap every delay at 0.5 s (OFFLOAD_RETRY_BACKOFF_MAX_SECONDS); the first backoff
    # step alone would be at most 0.1 s.
    stack.webhooks.script(path, ScriptedReply(429, {"Retry-After": "30"}))
    job_id = submit(stack.client, webhook(stack.webhooks, path))
    done = finished_notification(stack.client, job_id)

    assert done["status"] == "succeeded", done
    first, second = stack.webhooks.received(path)
    assert second.received_at - first.received_at >= 0.45  # the cap, not the 0.1 s backoff
    assert done["targets"][0]["attempts"] == 2


def test_each_target_is_retried_on_its_own_and_a_dead_one_fails_alone(stack: Stack) -> None:
    flaky, fine, gone = _path(), _path(), _path()
    stack.webhooks.script(flaky, ScriptedReply(503), ScriptedReply(502))
    stack.webhooks.script(gone, ScriptedReply(404))
    address = f"oncall-{uuid.uuid4().hex[:8]}@example.com"
    job_id = submit(
        stack.client,
        webhook(stack.webhooks, flaky),
        webhook(stack.webhooks, fine),
        webhook(stack.webhooks, gone),
        {"channel": "email", "address": address},
    )
    done = finished_notification(stack.client, job_id)

    assert done["status"] == "failed", done
    assert done["error"] == "1 of 4 targets failed: target 2 (webhook): HTTP 404"
    by_index = {t["index"]: t for t in done["targets"]}
    assert (by_index[0]["status"], by_index[0]["attempts"]) == ("delivered", 3)
    assert (by_index[1]["status"], by_index[1]["attempts"]) == ("delivered", 1)
    assert (by_index[2]["status"], by_index[2]["attempts"], by_index[2]["http_status"]) == ("failed", 1, 404)
    assert (by_index[3]["status"], by_index[3]["attempts"]) == ("delivered", 1)
    assert by_index[3]["smtp_reply"].startswith("250")
    # Nothing delivered was sent again while the flaky target was retried.
    assert len(stack.webhooks.received(fine)) == 1
    assert len(stack.webhooks.received(gone)) == 1
    assert len(stack.webhooks.received(flaky)) == 3
    [mail] = stack.smtp.messages_to(address)
    assert mail.message["Subject"] == "[CRITICAL] Disk almost full"
    assert "db-1 is at 97%" in mail.message.get_content()

    # The dead letter holds the undelivered target only: a replay cannot re-send the others.
    letter = stack.client.get(f"/v1/dead-letters/{job_id}").json()
    assert letter["task"] == "offload.notify"
    assert letter["payload"]["targets"] == [{**webhook(stack.webhooks, gone), "message_id": f"msg_{job_id}_2"}]
    assert letter["payload"]["message"] == MESSAGE


def test_a_target_that_keeps_failing_gives_up_after_the_retry_limit(stack: Stack) -> None:
    path = _path()
    stack.webhooks.script(path, *[ScriptedReply(500)] * 4)  # OFFLOAD_TASK_MAX_RETRIES=3: four attempts
    job_id = submit(stack.client, webhook(stack.webhooks, path))
    done = finished_notification(stack.client, job_id)

    assert done["status"] == "failed", done
    [target] = done["targets"]
    assert (target["status"], target["attempts"], target["http_status"]) == ("failed", 4, 500)
    assert target["last_error"] == "gave up after 4 attempts: HTTP 500"
    assert len(stack.webhooks.received(path)) == 4


def test_a_redirect_is_not_followed(stack: Stack) -> None:
    path, elsewhere = _path(), _path()
    stack.webhooks.script(path, ScriptedReply(302, {"Location": stack.webhooks.url(elsewhere)}))
    job_id = submit(stack.client, webhook(stack.webhooks, path))
    done = finished_notification(stack.client, job_id)

    assert done["status"] == "failed", done
    assert done["targets"][0]["last_error"] == "HTTP 302 (redirects are not followed; use the final URL)"
    assert stack.webhooks.received(elsewhere) == []


def test_the_status_lists_every_target_while_the_job_waits(stack: Stack) -> None:
    path = _path()
    stack.webhooks.script(path, ScriptedReply(200, delay_seconds=2))
    job_id = submit(stack.client, webhook(stack.webhooks, path), {"channel": "email", "address": "x@example.com"})
    first = notification(stack.client, job_id)
    assert [(t["index"], t["channel"]) for t in first["targets"]] == [(0, "webhook"), (1, "email")]
    assert all(t["status"] in {"pending", "delivered"} for t in first["targets"])
    assert finished_notification(stack.client, job_id)["status"] == "succeeded"


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://10.1.2.3/hook", "10.1.2.3"),
        ("http://169.254.169.254/latest/meta-data", "169.254.169.254"),
        ("http://127.0.0.2:9/hook", "127.0.0.2"),  # only 127.0.0.1 is allow-listed in the tests
        ("http://[::1]:9/hook", "::1"),
    ],
)
def test_a_private_address_is_refused_at_submit(stack: Stack, url: str, why: str) -> None:
    response = stack.client.post(
        "/v1/notifications", json={"message": MESSAGE, "targets": [{"channel": "webhook", "url": url}]}
    )
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["errors"][0]["field"] == "body.targets.0.url"
    assert why in body["detail"]
    assert "OFFLOAD_OUTBOUND_ALLOWED_HOSTS" in body["detail"]


@pytest.mark.parametrize(
    ("targets", "field"),
    [
        ([], "body.targets"),
        ([{"channel": "email", "address": f"a{i}@example.com"} for i in range(21)], "body.targets"),
        ([{"channel": "email", "address": "a@example.com"}, {"channel": "email", "address": "A@example.com"}], ""),
        ([{"channel": "sms", "address": "+15550100"}], "body.targets.0"),
        ([{"channel": "webhook", "url": "ftp://example.com/x"}], "body.targets.0.webhook.url"),
        ([{"channel": "email", "address": "not-an-address"}], "body.targets.0.email.address"),
    ],
)
def test_invalid_targets_are_422_naming_the_field(stack: Stack, targets: list[Any], field: str) -> None:
    response = stack.client.post("/v1/notifications", json={"message": MESSAGE, "targets": targets})
    assert response.status_code == 422, response.text
    assert any(e["field"].startswith(field or "body.targets") for e in response.json()["errors"]), response.text


def test_an_idempotency_key_delivers_once(stack: Stack) -> None:
    path = _path()
    key = {"Idempotency-Key": uuid.uuid4().hex}
    body = {"message": MESSAGE, "targets": [webhook(stack.webhooks, path)]}
    first = stack.client.post("/v1/notifications", json=body, headers=key)
    again = stack.client.post("/v1/notifications", json=body, headers=key)
    assert (first.status_code, again.status_code) == (202, 200)
    assert first.json()["id"] == again.json()["id"]
    finished_notification(stack.client, first.json()["id"])
    assert len(stack.webhooks.received(path)) == 1


def test_other_jobs_are_not_notifications(stack: Stack) -> None:
    echo = stack.client.post("/v1/jobs/echo", json={"message": "hi"}).json()["id"]
    response = stack.client.get(f"/v1/notifications/{echo}")
    assert response.status_code == 404
    assert "No notification" in response.json()["detail"]


def test_the_event_body_is_the_same_json_on_every_attempt(stack: Stack) -> None:
    path = _path()
    stack.webhooks.script(path, ScriptedReply(503))
    job_id = submit(stack.client, webhook(stack.webhooks, path))
    assert finished_notification(stack.client, job_id)["status"] == "succeeded"
    requests = stack.webhooks.received(path)
    assert len(requests) == 2  # the 503, then the retry
    bodies = {r.body for r in requests}
    assert len(bodies) == 1
    assert json.loads(bodies.pop())["data"]["id"] == job_id


def test_the_webhook_continues_the_callers_trace_even_when_nothing_is_exported(stack: Stack) -> None:
    # This stack exports no spans; the trace context still travels API -> Redis -> notifier -> receiver.
    trace_id = uuid.uuid4().hex
    caller = f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"
    path = _path()
    response = stack.client.post(
        "/v1/notifications",
        json={"message": MESSAGE, "targets": [webhook(stack.webhooks, path)]},
        headers={"traceparent": caller},
    )
    assert response.status_code == 202, response.text
    assert finished_notification(stack.client, response.json()["id"])["status"] == "succeeded"
    [request] = stack.webhooks.received(path)
    version, received_trace_id, parent_id, _flags = request.headers["traceparent"].split("-")
    assert (version, received_trace_id) == ("00", trace_id)
    assert len(parent_id) == 16
    assert parent_id != caller.split("-")[2]  # a span of the notifier's, not the caller's


def test_a_replay_delivers_with_the_original_message_ids(stack: Stack) -> None:
    fine, down = _path(), _path()
    stack.webhooks.script(down, ScriptedReply(410))  # fails for good once, then answers 200
    address = f"replay-{uuid.uuid4().hex[:8]}@example.com"
    stack.smtp.script(address, "550 mailbox unavailable")
    job_id = submit(
        stack.client,
        webhook(stack.webhooks, fine),
        webhook(stack.webhooks, down),
        {"channel": "email", "address": address},
    )
    assert finished_notification(stack.client, job_id)["status"] == "failed"
    [first] = stack.webhooks.received(down)

    # The delivered target is left out, so the failed ones move to other indexes: their ids do not.
    replayed = stack.client.post(f"/v1/dead-letters/{job_id}/replay")
    assert replayed.status_code == 202, replayed.text
    replay_id = replayed.json()["id"]
    assert finished_notification(stack.client, replay_id)["status"] == "succeeded"
    [_, again] = stack.webhooks.received(down)
    assert again.headers["webhook-id"] == first.headers["webhook-id"] == f"msg_{job_id}_1"
    [mail] = stack.smtp.messages_to(address)
    assert mail.message["Message-ID"].startswith(f"<{job_id}.2")
    assert len(stack.webhooks.received(fine)) == 1


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"x": json.loads("[" * 900 + "]" * 900)}, "nested deeper than 20 levels"),
        ({"blob": "x" * 70_000}, "larger than 65536 bytes"),
    ],
    ids=["deep", "large"],
)
def test_free_form_data_too_deep_or_too_large_is_422_naming_it(stack: Stack, data: Any, problem: str) -> None:
    body = {"message": {**MESSAGE, "data": data}, "targets": [webhook(stack.webhooks, _path())]}
    response = stack.client.post("/v1/notifications", json=body)
    assert response.status_code == 422, response.text
    [error] = response.json()["errors"]
    assert error["field"] == "body.message.data"
    assert problem in error["message"]


def test_nested_data_within_the_bounds_is_accepted(stack: Stack) -> None:
    nested: Any = {"level": 19}
    for level in range(18, 0, -1):
        nested = {"level": level, "inner": nested}
    job_id = submit(stack.client, webhook(stack.webhooks, _path()), message={**MESSAGE, "data": nested})
    assert finished_notification(stack.client, job_id)["status"] == "succeeded"
