"""Webhook signing as receivers check it (with the standardwebhooks package), and Retry-After."""

from __future__ import annotations

import time
from email.utils import formatdate

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from offload_core.engines.webhooks import event_body, retry_after_seconds, signature_header
from offload_core.settings import Settings
from tests.support import WEBHOOK_SECRETS


def test_each_secret_verifies_the_signature_header_alone() -> None:
    body = event_body("job1", {"title": "t", "body": "b", "severity": "info", "data": None})
    timestamp = int(time.time())
    headers = {
        "webhook-id": "msg_job1_0",
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header("msg_job1_0", timestamp, body, WEBHOOK_SECRETS),
    }
    for secret in WEBHOOK_SECRETS:
        assert Webhook(secret).verify(body, headers)["data"]["id"] == "job1"
    with pytest.raises(WebhookVerificationError):
        Webhook(WEBHOOK_SECRETS[0]).verify(body + b" ", headers)  # a changed body
    with pytest.raises(WebhookVerificationError):
        Webhook(WEBHOOK_SECRETS[0]).verify(body, {**headers, "webhook-id": "msg_other"})


@pytest.mark.parametrize(
    ("secret", "problem"),
    [
        ("c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0", "must start with 'whsec_'"),
        ("whsec_not base64!", "followed by base64"),
        ("whsec_c2hvcnQ=", "24 to 64 bytes"),
    ],
)
def test_unusable_secrets_are_refused_at_start(secret: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Settings(WEBHOOK_SECRETS=secret)


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    now = time.time()
    assert retry_after_seconds("120") == 120
    assert retry_after_seconds(formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30, abs=1)
    assert retry_after_seconds(formatdate(now - 30, usegmt=True), now=now) == 0
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds(None) is None
