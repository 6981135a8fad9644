"""Building an email: headers, plain or multipart/alternative bodies, and what reaches the wire."""

from __future__ import annotations

from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage, MIMEPart

import pytest

from offload_core.engines.smtp import build_message, message_id_for
from offload_core.settings import Settings


@pytest.fixture
def settings() -> Settings:
    return Settings(EMAIL_FROM="Offload <offload@mail.example>")


def _on_the_wire(message: EmailMessage) -> EmailMessage:
    """The message as a receiver parses it from the bytes that are sent."""
    parsed = message_from_bytes(message.as_bytes(), policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def _text(part: MIMEPart) -> str:
    content = part.get_content()
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")  # the wire's line endings


def test_a_text_message_carries_every_header_and_its_body(settings: Settings) -> None:
    sent_at = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    message = build_message(
        settings,
        message_id="job123",
        to=["ann@example.com", "bob@example.org"],
        subject="Your report",
        text="Hello,\nthe report is ready.\n",
        reply_to="support@example.com",
        date=sent_at,
    )
    received = _on_the_wire(message)
    assert received["From"] == "Offload <offload@mail.example>"
    assert [a.addr_spec for a in received["To"].addresses] == ["ann@example.com", "bob@example.org"]
    assert received["Subject"] == "Your report"
    assert received["Reply-To"] == "support@example.com"
    assert received["Message-ID"] == "<job123@mail.example>"
    assert received["Date"].datetime == sent_at
    assert received.get_content_type() == "text/plain"
    assert _text(received) == "Hello,\nthe report is ready.\n"


def test_html_makes_the_message_multipart_alternative_text_first(settings: Settings) -> None:
    message = build_message(
        settings, message_id="job1", to=["ann@example.com"], subject="Hi", text="plain", html="<p>rich</p>"
    )
    received = _on_the_wire(message)
    assert received.get_content_type() == "multipart/alternative"
    parts = list(received.iter_parts())
    assert [part.get_content_type() for part in parts] == ["text/plain", "text/html"]
    assert [_text(part) for part in parts] == ["plain\n", "<p>rich</p>\n"]
    assert received["Reply-To"] is None


def test_non_ascii_and_long_lines_are_encoded_to_seven_bits_and_come_back_intact(settings: Settings) -> None:
    text = "Grüße aus Köln — " + "x" * 2000  # one line longer than SMTP's 998-octet limit
    message = build_message(settings, message_id="job1", to=["ann@example.com"], subject="Grüße", text=text)
    wire = message.as_bytes()
    assert wire.isascii()
    assert max(len(line) for line in wire.split(b"\r\n")) <= 998
    received = _on_the_wire(message)
    assert received["Subject"] == "Grüße"
    assert _text(received) == text + "\n"


def test_a_subject_with_a_line_break_cannot_inject_a_header(settings: Settings) -> None:
    with pytest.raises(ValueError, match="linefeed or carriage return"):
        build_message(
            settings, message_id="job1", to=["ann@example.com"], subject="Hi\r\nBcc: eve@example.com", text="x"
        )


def test_the_message_id_uses_the_senders_domain_or_a_fallback() -> None:
    assert message_id_for("abc.1", "Offload <offload@mail.example>") == "<abc.1@mail.example>"
    assert message_id_for("abc", "offload@mail.example") == "<abc@mail.example>"
    assert message_id_for("abc", "no address") == "<abc@offload>"
    with pytest.raises(ValueError, match="Message-ID key"):
        message_id_for("a b>", "offload@mail.example")
