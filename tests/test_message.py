"""MIME construction: RFC-correct output and no header or recipient injection."""

from __future__ import annotations

import email
from email import policy

import pytest

from service.mail.message import InvalidAddress, build_message, parse_mailbox

SENDER = parse_mailbox("Example <no-reply@example.com>")


def build(name: str = "Ada", subject: str = "Hello", html: str | None = "<p>hi</p>") -> bytes:
    return build_message(
        sender=SENDER,
        recipient=parse_mailbox("ada@example.com", name),
        subject=subject,
        text="Hällo\n",
        html=html,
        headers={"X-Herald-Event-Id": "evt-1", "X-Herald-Template": "welcome"},
    ).data


def parse(data: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(data, policy=policy.default)  # type: ignore[return-value]


def test_headers_parts_and_crlf() -> None:
    data = build(subject="Ihr Passwort wurde geändert")
    msg = parse(data)
    assert b"\r\n" in data and b"\n" not in data.replace(b"\r\n", b"")
    assert msg["Subject"] == "Ihr Passwort wurde geändert"
    assert b"=?utf-8?" in data.split(b"\r\n\r\n")[0]
    assert msg["Message-ID"].endswith("@example.com>")
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg.get_content_type() == "multipart/alternative"
    assert msg.get_body(("plain",)).get_content() == "Hällo\r\n"
    assert msg.get_body(("html",)).get_content().strip() == "<p>hi</p>"


def test_text_only_when_no_html() -> None:
    msg = parse(build(html=None))
    assert msg.get_content_type() == "text/plain"


def test_crlf_in_name_and_subject_stays_inside_one_header() -> None:
    data = build(name="Ada\r\nBcc: evil@x.test", subject="Hi\r\nBcc: evil@x.test")
    msg = parse(data)
    assert msg["Bcc"] is None
    assert all(not line.startswith(b"Bcc:") for line in data.split(b"\r\n"))
    assert "Ada Bcc" in str(msg["To"])


@pytest.mark.parametrize(
    "value",
    [
        "ada@example.com\r\nBcc: x@y.z",
        "ada@example.com, eve@example.com",
        "ada@example.com; eve@example.com",
        "not an address",
        "",
        "ada@",
        "@example.com",
        "a" * 250 + "@example.com",
    ],
)
def test_invalid_addresses_are_refused(value: str) -> None:
    with pytest.raises(InvalidAddress):
        parse_mailbox(value)


def test_display_name_form_is_accepted() -> None:
    box = parse_mailbox("Ada Lovelace <ada@example.com>")
    assert (box.name, box.address, box.domain) == ("Ada Lovelace", "ada@example.com", "example.com")
