"""The mail sink and webhook receiver `make run` starts, each as a real process on a free port."""

from __future__ import annotations

import json
import os
import smtplib
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from offload_core.engines.webhooks import deliver, event_body
from offload_core.settings import Settings
from offload_dev.polling import wait_for
from offload_dev.processes import PORT_ATTEMPTS, PortTaken, Service, spawn, wait_up
from offload_dev.redis_server import free_port
from offload_dev.run_local import delivery_env, new_webhook_secret


@contextmanager
def receiver(module: str, log: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[int]:
    """Run `python -m module --port N *args` until the block ends, then stop it as honcho does.
    A port found free may be taken before the receiver binds it: then it runs on another one.
    Its output goes to ``log``."""
    for attempt in range(PORT_ATTEMPTS):
        port = free_port()
        argv = [sys.executable, "-m", module, "--port", str(port), *args]
        service = spawn(log.stem, argv, {**os.environ, **(env or {})}, log.parent)
        start = service.log.stat().st_size if service.log.exists() else 0

        def listening(service: Service = service, start: int = start) -> bool:
            return "listening on" in service.log.read_text()[start:]

        try:
            wait_up(service, listening, 15, f"{module} to listen")
            break
        except PortTaken:
            if attempt == PORT_ATTEMPTS - 1:
                raise
    try:
        yield port
    finally:
        service.terminate()
        try:
            returncode = service.process.wait(10)
        except subprocess.TimeoutExpired:
            service.kill()
            raise
    assert returncode == 0, f"{module} did not stop cleanly on SIGTERM:\n{log.read_text()}"


def _signed_headers(secret: str, msg_id: str, body: str) -> dict[str, str]:
    now = datetime.now(UTC)
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, now, body),
    }


def test_webhook_receiver_verifies_signatures_answers_and_prints(tmp_path: Path) -> None:
    old, new = new_webhook_secret(), new_webhook_secret()
    log = tmp_path / "webhooks.log"
    body = json.dumps({"type": "notification", "data": {"title": "Disk full", "host": "db-1"}})
    with receiver("offload_dev.webhook_receiver", log, "--secrets", f"{old},{new}") as port:
        url = f"http://127.0.0.1:{port}/hooks/demo"
        signed = httpx.post(url, content=body, headers=_signed_headers(old, "msg_valid", body))
        rotated = httpx.post(url, content=body, headers=_signed_headers(new, "msg_rotated", body))
        wrong = httpx.post(url, content=body, headers=_signed_headers(new_webhook_secret(), "msg_wrong", body))
        tampered = httpx.post(
            url, content=body.replace("db-1", "db-2"), headers=_signed_headers(old, "msg_tampered", body)
        )
        unsigned = httpx.post(url, content=body, headers={"content-type": "application/json"})
        malformed = httpx.post(
            url, content=body, headers={**_signed_headers(old, "msg_malformed", body), "webhook-signature": "garbage"}
        )
        too_large = httpx.post(url, content=b"x" * (1024 * 1024 + 1), headers=_signed_headers(old, "msg_big", "x"))
        not_post = httpx.get(url)

    assert (signed.status_code, signed.content) == (204, b"")
    assert rotated.status_code == 204
    assert wrong.status_code == 401
    assert "No matching signature found" in wrong.json()["detail"]
    assert tampered.status_code == 401
    assert unsigned.status_code == 401
    assert "Missing required headers" in unsigned.json()["detail"]
    assert malformed.status_code == 401
    assert "malformed webhook-signature header" in malformed.json()["detail"]
    assert too_large.status_code == 413
    assert "at most 1048576 bytes" in too_large.json()["detail"]
    assert not_post.status_code == 405

    printed = log.read_text()
    valid_block = printed.split("-- webhook #1 ")[1].split("-- webhook #2 ")[0]
    assert "POST /hooks/demo" in valid_block
    assert "id:        msg_valid" in valid_block
    assert "signature: verified (signed with secret 1 of 2)" in valid_block
    assert "answer:    204 No Content" in valid_block
    assert '"host": "db-1"' in valid_block  # the JSON body, pretty-printed
    assert "signed with secret 2 of 2" in printed
    wrong_block = printed.split("-- webhook #3 ")[1].split("-- webhook #4 ")[0]
    assert "id:        msg_wrong" in wrong_block
    assert "signature: INVALID (No matching signature found)" in wrong_block
    assert "answer:    401 Unauthorized" in wrong_block
    assert "-- webhook #7 " not in printed  # refused before verification: nothing to report


def test_webhook_receiver_refuses_an_unusable_secret() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "offload_dev.webhook_receiver", "--port", str(free_port()), "--secrets", "hunter2"],
        capture_output=True,
        text=True,
        timeout=30,
        env={key: value for key, value in os.environ.items() if key != "OFFLOAD_WEBHOOK_SECRETS"},
    )
    assert result.returncode == 2
    assert "a secret must start with 'whsec_'" in result.stderr


def test_mail_sink_accepts_and_prints_a_message(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    message = EmailMessage()
    message["From"] = "Offload <offload@localhost>"
    message["To"] = "oncall@example.com"
    message["Subject"] = "[critical] Disk full on db-1"
    message.set_content("\n".join(["Disk full on db-1.", "Free space: 0 bytes.", *(f"line {n}" for n in range(20))]))
    with receiver("offload_dev.mail_sink", log) as port, smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        refused = smtp.send_message(message, to_addrs=["oncall@example.com", "backup@example.com"])
        wait_for(lambda: "-- mail #1 " in log.read_text(), 10, "the sink to print the message")

    assert refused == {}
    block = log.read_text().split("-- mail #1 ")[1]
    assert "From:    Offload <offload@localhost>" in block
    assert "To:      oncall@example.com, backup@example.com" in block
    assert "Subject: [critical] Disk full on db-1" in block
    assert "  | Disk full on db-1." in block
    assert "  | Free space: 0 bytes." in block
    assert "  | ... 14 more lines" in block  # 22 lines, the first 8 printed
    assert "line 19" not in block


def test_make_run_settings_deliver_to_the_receiver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment run_local gives the services is valid, and what they sign with it (the
    services' own webhook code) verifies at the receiver started with that same environment."""
    secret = new_webhook_secret()
    env = delivery_env(mail_port=free_port(), webhooks_port=free_port(), webhook_secrets=secret)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings(API_KEYS=["k" * 16])
    assert int(env["MAIL_PORT"]) == settings.SMTP_PORT
    assert settings.SMTP_HOST == "127.0.0.1"
    assert settings.SMTP_SECURITY == "none"
    assert settings.OUTBOUND_ALLOWED_HOSTS == ["127.0.0.1", "localhost"]
    assert [s.get_secret_value() for s in settings.WEBHOOK_SECRETS] == [secret]

    log = tmp_path / "webhooks.log"
    with receiver("offload_dev.webhook_receiver", log, env=env) as port, httpx.Client(timeout=5) as client:
        attempt = deliver(
            client,
            f"http://127.0.0.1:{port}/hooks/demo",
            message_id="msg_from_offload",
            body=event_body("job-1", {"title": "Disk full", "body": "db-1", "severity": "critical", "data": None}),
            secrets=[secret],
        )
    assert (attempt.outcome, attempt.http_status, attempt.error) == ("delivered", 204, None)
    assert "signature: verified (signed with the secret)" in log.read_text()
