"""Emails end to end: POST /v1/emails, the worker's SMTP delivery to a real aiosmtpd server,
retries of 4xx replies, immediate failure on 5xx; and smtp.send itself against real servers
that refuse recipients, demand a login, speak TLS, stay silent or hang up."""

from __future__ import annotations

import socket
import ssl
import threading
import time
import uuid
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from offload_core.contract.job_errors import PermanentJobError, TransientJobError
from offload_core.engines import smtp
from offload_core.settings import Settings
from offload_dev.polling import wait_for
from offload_dev.redis_server import free_port
from tests.receivers import ReceivedMail, smtp_controller
from tests.support import Stack, wait_job

SENDER = "Offload Tests <offload@tests.example>"  # OFFLOAD_EMAIL_FROM of the test stack


def _address(name: str = "rcpt") -> str:
    """A recipient no other test uses: the stack's SMTP server is shared by the session."""
    return f"{name}-{uuid.uuid4().hex[:12]}@example.com"


def _submit(client: httpx.Client, **body: Any) -> httpx.Response:
    return client.post("/v1/emails", json={"subject": "Hello", "text": "Hi there.\n", **body})


def _send(stack: Stack, **body: Any) -> str:
    response = _submit(stack.client, **body)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def _one_mail(stack: Stack, recipient: str) -> ReceivedMail:
    mails = wait_for(lambda: stack.smtp.messages_to(recipient), 30, f"a message to {recipient}")
    assert len(mails) == 1, mails
    return mails[0]


def _text(part: Any) -> str:
    content = part.get_content()
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")


# --- through the API and the worker ------------------------------------------------------------


def test_an_email_arrives_with_its_headers_and_body(stack: Stack) -> None:
    ann, bob = _address("ann"), _address("bob")
    response = _submit(
        stack.client, to=[ann, bob], subject="Quarterly report", text="It is ready.\n", reply_to="help@example.com"
    )
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert (accepted["task"], accepted["queue"], accepted["status"]) == ("offload.send_email", "default", "queued")
    assert response.headers["location"] == accepted["status_url"] == f"/v1/jobs/{accepted['id']}"

    mail = _one_mail(stack, ann)
    assert mail.sender == "offload@tests.example"
    assert mail.recipients == [ann, bob]
    message = mail.message
    assert message["From"] == SENDER
    assert [a.addr_spec for a in message["To"].addresses] == [ann, bob]
    assert message["Subject"] == "Quarterly report"
    assert message["Reply-To"] == "help@example.com"
    assert message["Message-ID"] == f"<{accepted['id']}@tests.example>"
    assert message["Date"] is not None
    assert message.get_content_type() == "text/plain"
    assert _text(message) == "It is ready.\n"

    done = wait_job(stack.client, accepted["id"], {"succeeded", "failed"})
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 1
    assert done["result"] == {
        "message_id": f"<{accepted['id']}@tests.example>",
        "accepted": [ann, bob],
        "refused": {},
        "reply": "250 2.0.0 OK queued",
    }


def test_an_email_with_html_is_multipart_alternative(stack: Stack) -> None:
    ann = _address("ann")
    job_id = _send(stack, to=[ann], text="Plain words.\n", html="<p>Rich <b>words</b>.</p>", queue="low")
    message = _one_mail(stack, ann).message
    assert message.get_content_type() == "multipart/alternative"
    parts = list(message.iter_parts())
    assert [part.get_content_type() for part in parts] == ["text/plain", "text/html"]
    assert [_text(part) for part in parts] == ["Plain words.\n", "<p>Rich <b>words</b>.</p>\n"]
    done = wait_job(stack.client, job_id, {"succeeded", "failed"})
    assert (done["status"], done["queue"]) == ("succeeded", "low")


def test_4xx_replies_are_retried_under_one_message_id_and_delivered_once(stack: Stack) -> None:
    ann = _address("ann")
    stack.smtp.script(ann, "451 4.3.0 try later", "451 4.3.0 try later")
    job_id = _send(stack, to=[ann])
    done = wait_job(stack.client, job_id, {"succeeded", "failed"})
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 3
    assert stack.smtp.attempts[ann] == 3
    assert len(stack.smtp.messages_to(ann)) == 1
    # The same Message-ID on every attempt, so a receiver can spot a repeat.
    assert stack.smtp.message_ids[ann] == [f"<{job_id}@tests.example>"] * 3
    assert stack.client.get(f"/v1/dead-letters/{job_id}").status_code == 404


def test_a_5xx_reply_fails_the_job_at_once_with_the_reply(stack: Stack) -> None:
    ann = _address("ann")
    stack.smtp.script(ann, f"550 5.1.1 <{ann}>: mailbox unavailable")
    job_id = _send(stack, to=[ann])
    failed = wait_job(stack.client, job_id, {"succeeded", "failed"})
    assert failed["status"] == "failed", failed
    assert failed["error"].startswith(f"SMTP 550 5.1.1 <{ann}>: mailbox unavailable")
    assert failed["attempts"] == 1
    assert stack.smtp.attempts[ann] == 1
    assert stack.smtp.messages_to(ann) == []
    letter = stack.client.get(f"/v1/dead-letters/{job_id}")
    assert letter.status_code == 200, letter.text
    assert letter.json()["error"] == failed["error"]
    assert letter.json()["task"] == "offload.send_email"
    assert letter.json()["payload"]["to"] == [ann]
    assert letter.json()["payload"]["message_id"] == job_id

    # Replayed (the server accepts now), the message keeps the first job's Message-ID.
    replay = stack.client.post(f"/v1/dead-letters/{job_id}/replay")
    assert replay.status_code == 202, replay.text
    assert wait_job(stack.client, replay.json()["id"], {"succeeded", "failed"})["status"] == "succeeded"
    assert _one_mail(stack, ann).message["Message-ID"].startswith(f"<{job_id}@")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"to": ["not-an-address"]}, "body.to.0"),
        ({"to": []}, "body.to"),
        ({"to": [f"r{i}@example.com" for i in range(51)]}, "body.to"),
        ({"to": ["a@example.com"], "subject": "Hi\r\nBcc: eve@example.com"}, "body.subject"),
        ({"to": ["a@example.com"], "reply_to": "nobody"}, "body.reply_to"),
        ({"to": ["a@example.com"], "queue": "high"}, "body.queue"),
        ({"to": ["a@example.com"], "cc": ["b@example.com"]}, "body.cc"),
    ],
)
def test_invalid_emails_are_refused_with_422(stack: Stack, body: dict[str, Any], field: str) -> None:
    response = _submit(stack.client, **body)
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["code"] == "invalid_request"
    assert field in [error["field"] for error in problem["errors"]], problem
    assert field in problem["detail"]


# --- smtp.send against servers of its own ------------------------------------------------------


class RecipientPolicy:
    """aiosmtpd handler: refuses the recipients it was told to with their reply, accepts the rest."""

    def __init__(self, refusals: dict[str, str] | None = None) -> None:
        self.refusals = refusals or {}
        self.received: list[Envelope] = []

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if address in self.refusals:
            return self.refusals[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.received.append(envelope)
        return "250 2.0.0 Ok: queued as ABC123"


def _settings(port: int, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": port,
        "SMTP_SECURITY": "none",
        "SMTP_TIMEOUT_SECONDS": 5,
        "EMAIL_FROM": SENDER,
    }
    return Settings(**(values | overrides))


def _deliver(settings: Settings, recipients: list[str]) -> smtp.SendReport:
    message = smtp.build_message(
        settings, message_id=uuid.uuid4().hex, to=recipients, subject="Direct", text="Sent by smtp.send.\n"
    )
    return smtp.send(settings, message, recipients)


@pytest.fixture(scope="module")
def certificates() -> tuple[trustme.CA, ssl.SSLContext]:
    """A test CA and a server context with its certificate for 127.0.0.1."""
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    return ca, server_context


@pytest.fixture
def trusted_ca(
    certificates: tuple[trustme.CA, ssl.SSLContext], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Make the test CA the one OpenSSL trusts in this process, as a system CA would be."""
    bundle = tmp_path / "ca.pem"
    certificates[0].cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))


def test_some_recipients_refused_means_sent_to_the_rest_and_reported() -> None:
    ann, bob, cid = _address("ann"), _address("bob"), _address("cid")
    handler = RecipientPolicy({bob: "550 5.1.1 no such user", cid: "450 4.2.1 mailbox busy"})
    with smtp_controller(handler) as port:
        report = _deliver(_settings(port), [ann, bob, cid])
    assert report.accepted == [ann]
    assert report.refused == {bob: "550 5.1.1 no such user", cid: "450 4.2.1 mailbox busy"}
    assert report.reply == "250 2.0.0 Ok: queued as ABC123"
    assert [envelope.rcpt_tos for envelope in handler.received] == [[ann]]


def test_every_recipient_refused_for_good_is_a_permanent_failure() -> None:
    ann, bob = _address("ann"), _address("bob")
    handler = RecipientPolicy({ann: "550 5.1.1 no such user", bob: "553 5.1.3 bad address"})
    with smtp_controller(handler) as port, pytest.raises(PermanentJobError) as failure:
        _deliver(_settings(port), [ann, bob])
    assert f"{ann}: 550 5.1.1 no such user" in str(failure.value)
    assert f"{bob}: 553 5.1.3 bad address" in str(failure.value)
    assert handler.received == []


def test_every_recipient_refused_with_a_4xx_among_them_is_retried() -> None:
    ann, bob = _address("ann"), _address("bob")
    handler = RecipientPolicy({ann: "550 5.1.1 no such user", bob: "451 4.3.0 greylisted"})
    with smtp_controller(handler) as port, pytest.raises(TransientJobError, match=r"451 4\.3\.0 greylisted"):
        _deliver(_settings(port), [ann, bob])
    assert handler.received == []


def test_a_refused_connection_is_transient() -> None:
    with pytest.raises(TransientJobError, match="ConnectionRefusedError"):
        _deliver(_settings(free_port()), [_address()])


def test_a_server_that_never_greets_times_out_as_transient() -> None:
    # Listening but never accepting: the connection completes in the backlog, no greeting comes.
    with closing(socket.create_server(("127.0.0.1", 0))) as silent:
        started = time.monotonic()
        with pytest.raises(TransientJobError, match="timed out"):
            _deliver(_settings(silent.getsockname()[1], SMTP_TIMEOUT_SECONDS=0.5), [_address()])
        assert time.monotonic() - started < 10  # the 0.5 s timeout, not a hang


def test_a_server_that_hangs_up_after_its_greeting_is_transient() -> None:
    with closing(socket.create_server(("127.0.0.1", 0))) as listener:

        def greet_and_hang_up() -> None:
            connection, _ = listener.accept()
            with connection:
                connection.sendall(b"220 mail.example ESMTP\r\n")

        thread = threading.Thread(target=greet_and_hang_up, daemon=True)
        thread.start()
        with pytest.raises(TransientJobError, match="connection was lost"):
            _deliver(_settings(listener.getsockname()[1]), [_address()])
        thread.join(5)


def _authenticator(server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: object) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (b"mailer", b"right")
    return AuthResult(success=ok, handled=False)  # not handled: aiosmtpd answers 535 itself


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")  # loopback, on purpose
def test_a_login_is_made_and_a_wrong_password_fails_for_good() -> None:
    handler = RecipientPolicy()
    options = {"authenticator": _authenticator, "auth_require_tls": False, "auth_required": True}
    with smtp_controller(handler, **options) as port:
        ann = _address("ann")
        _deliver(_settings(port, SMTP_USERNAME="mailer", SMTP_PASSWORD="right"), [ann])
        with pytest.raises(PermanentJobError, match=r"authentication as 'mailer' .* failed: 535"):
            _deliver(_settings(port, SMTP_USERNAME="mailer", SMTP_PASSWORD="wrong"), [_address()])
    assert [envelope.rcpt_tos for envelope in handler.received] == [[ann]]


@pytest.mark.usefixtures("trusted_ca")
def test_starttls_upgrades_the_connection_before_sending(certificates: tuple[trustme.CA, ssl.SSLContext]) -> None:
    handler = RecipientPolicy()
    with smtp_controller(handler, tls_context=certificates[1], require_starttls=True) as port:
        ann = _address("ann")
        report = _deliver(_settings(port, SMTP_SECURITY="starttls"), [ann])
    assert report.accepted == [ann]
    assert len(handler.received) == 1


@pytest.mark.usefixtures("trusted_ca")
def test_implicit_tls_sends_over_tls_from_the_first_byte(certificates: tuple[trustme.CA, ssl.SSLContext]) -> None:
    handler = RecipientPolicy()
    with smtp_controller(handler, ssl_context=certificates[1]) as port:
        ann = _address("ann")
        report = _deliver(_settings(port, SMTP_SECURITY="tls"), [ann])
    assert report.accepted == [ann]


def test_starttls_refuses_an_untrusted_certificate(certificates: tuple[trustme.CA, ssl.SSLContext]) -> None:
    handler = RecipientPolicy()
    with (
        smtp_controller(handler, tls_context=certificates[1]) as port,
        pytest.raises(PermanentJobError, match="certificate is not trusted"),
    ):
        _deliver(_settings(port, SMTP_SECURITY="starttls"), [_address()])
    assert handler.received == []


def test_starttls_required_but_not_offered_fails_for_good() -> None:
    with (
        smtp_controller(RecipientPolicy()) as port,
        pytest.raises(PermanentJobError, match="does not offer STARTTLS"),
    ):
        _deliver(_settings(port, SMTP_SECURITY="starttls"), [_address()])


def test_a_non_ascii_address_travels_as_smtputf8_or_fails_for_good() -> None:
    jorg = f"jörg-{uuid.uuid4().hex[:8]}@bücher.example"
    handler = RecipientPolicy()
    with smtp_controller(handler, enable_SMTPUTF8=True) as port:
        report = _deliver(_settings(port), [jorg])
    assert report.accepted == [jorg]
    assert handler.received[0].rcpt_tos == [jorg]
    assert handler.received[0].smtp_utf8
    with (
        smtp_controller(RecipientPolicy(), enable_SMTPUTF8=False) as port,
        pytest.raises(PermanentJobError, match="SMTPUTF8"),
    ):
        _deliver(_settings(port), [jorg])
