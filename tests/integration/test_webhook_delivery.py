"""One webhook delivery (offload_core.engines.webhooks.deliver) against a real receiver on loopback: how
each answer is judged, and that nothing goes out unsigned."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from offload_core.engines.outbound import OutboundPolicy
from offload_core.engines.webhooks import deliver, event_body
from offload_core.store.notifications import Outcome
from tests.receivers import ScriptedReply, WebhookReceiver
from tests.support import WEBHOOK_SECRETS

BODY = event_body("job1", {"title": "t", "body": "b", "severity": "info", "data": None})


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with OutboundPolicy(["127.0.0.1"]).client(connect_timeout=2.0, read_timeout=2.0) as http:
        yield http


def test_without_a_signing_secret_nothing_is_sent_and_the_target_fails(
    receiver: WebhookReceiver, client: httpx.Client
) -> None:
    attempt = deliver(client, receiver.url("/hook"), message_id="msg_job1_0", body=BODY, secrets=[])
    assert attempt.outcome is Outcome.FAILED
    assert attempt.error == "no webhook signing secret configured (OFFLOAD_WEBHOOK_SECRETS)"
    assert receiver.requests == []


@pytest.mark.parametrize("status", [408, 425, 429, 500, 503])
def test_answers_that_mean_later_are_retried(receiver: WebhookReceiver, client: httpx.Client, status: int) -> None:
    receiver.script("/hook", ScriptedReply(status))
    attempt = deliver(client, receiver.url("/hook"), message_id="msg_job1_0", body=BODY, secrets=WEBHOOK_SECRETS)
    assert (attempt.outcome, attempt.http_status) == (Outcome.RETRY, status)
    assert str(attempt.error).startswith(f"HTTP {status}")
    [request] = receiver.received("/hook")
    assert request.headers["webhook-id"] == "msg_job1_0"


@pytest.mark.parametrize("status", [400, 404, 409, 410, 422])
def test_other_4xx_answers_fail_at_once(receiver: WebhookReceiver, client: httpx.Client, status: int) -> None:
    receiver.script("/hook", ScriptedReply(status))
    attempt = deliver(client, receiver.url("/hook"), message_id="msg_job1_0", body=BODY, secrets=WEBHOOK_SECRETS)
    assert (attempt.outcome, attempt.http_status) == (Outcome.FAILED, status)
