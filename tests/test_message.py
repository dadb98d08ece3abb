"""MIME construction: RFC-correct output and no header or recipient injection."""

from __future__ import annotations

import email
from datetime import UTC, datetime
from email import policy
from email.header import decode_header, make_header

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.mail.message import (
    InvalidAddress,
    Mailbox,
    WireMessage,
    build_message,
    one_line,
    parse_mailbox,
)
from service.mail.smtp_session import data_payload

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


# --- wire format: RFC 5322 / 2045-2047, checked with the standard library's parser ---

LONG_ASCII = " ".join(f"word{i}" for i in range(80))
GERMAN = "Ihr Passwort wurde geändert – Jörg, Größe, Übermaß"
SUBJECTS = [
    "Hello",
    "",
    "Ihr Passwort wurde geändert",
    "🔐 Your password was changed 🔑",
    "您的密码已更改，请立即检查您的帐户安全设置以及最近的登录活动",
    'Quotes "and" (parens), commas; semicolons: <angles> \\ backslash',
    LONG_ASCII,
    (GERMAN + " ") * 6,
    "x" * 2000,
    "literal =?utf-8?q?not_an_encoded_word?= here",
    "Tab\tand\u00a0no-break space",
]
NAMES = [
    "Ada",
    "Ada Lovelace",
    "Jörg Müller",
    "李小龙",
    "Ada 🚀",
    "Lovelace, Ada",
    'Ada "the first" Lovelace',
    "Ada (Countess) Lovelace",
    "O'Brien",
    "Dr. Ada L. Lovelace",
    "back\\slash",
    "=?utf-8?q?evil?=",
    "Ada, " + "Lovelace " * 20,
    "Jörg-Alexander Müller-Lüdenscheidt von und zu Überlingen-Großherzogtum",
]
BODIES = [
    "Hällo\n",
    "no newline at the end",
    ".\n.leading dot\n..two dots\n.",
    "From here\nFrom there\n>From quoted\n",
    "trailing spaces   \ntrailing tab\t\n  \n",
    "a = b == c =\n=3D=\n",
    "x" * 2500 + "\n" + "ä" * 1200 + "\n" + ("From " + "y" * 70) * 5,
    "CRLF\r\nbare CR\rLF\n",
    "emoji 🔐🔑 and CJK 您的密码已更改 and RTL שלום\n",
    "您的密码已更改。" * 40,
    "control \x00\x01\x0b\x0c\x1b\x7f chars\n",
    "",
]


def build_full(
    subject: str = "Hello",
    name: str = "Ada",
    text: str = "Hi\n",
    html: str | None = "<p>Hi</p>\n",
    extra: dict[str, str] | None = None,
) -> bytes:
    return build_message(
        sender=SENDER,
        recipient=parse_mailbox("ada@example.com", name),
        subject=subject,
        text=text,
        html=html,
        headers=extra or {"X-Herald-Event-Id": "evt-1", "X-Herald-Template": "welcome"},
        reply_to=parse_mailbox("support@example.com", name),
    ).data


def header_block(data: bytes) -> bytes:
    return data.split(b"\r\n\r\n", 1)[0]


def assert_wire_format(data: bytes) -> None:
    """CRLF only, 7-bit, lines within RFC limits, headers folded under 78 columns."""
    assert data.isascii()
    assert b"\n" not in data.replace(b"\r\n", b"") and b"\r" not in data.replace(b"\r\n", b"")
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        # Longer only for one unbreakable token, never past 998.
        assert len(line) <= 78 or b" " not in line.strip()[line.find(b":") + 2 :], line
        assert len(line) <= 998
    for line in body.split(b"\r\n"):
        assert len(line) <= 76 or line.startswith(b"Content-"), line
    # A WireMessage goes out without dot-stuffing: no line may start with ".".
    assert not data.startswith(b".") and b"\r\n." not in data
    assert isinstance(data, WireMessage) and data_payload(data) == data_payload(bytes(data))


def rfc2047(raw: str) -> str:
    """Decode as RFC 2047 says (whitespace between adjacent encoded-words is dropped)."""
    return str(make_header(decode_header(raw)))


def raw_header(data: bytes, name: str) -> str:
    lines = header_block(data).decode().split("\r\n")
    start = next(i for i, line in enumerate(lines) if line.startswith(name + ":"))
    end = next(
        (i for i in range(start + 1, len(lines)) if not lines[i].startswith((" ", "\t"))),
        len(lines),
    )
    return "".join(lines[start:end])[len(name) + 1 :].strip()


@pytest.mark.parametrize("subject", SUBJECTS)
def test_subject_round_trips(subject: str) -> None:
    data = build_full(subject=subject)
    assert_wire_format(data)
    assert parse(data)["Subject"] == one_line(subject)
    assert rfc2047(raw_header(data, "Subject")) == one_line(subject)


@pytest.mark.parametrize("name", NAMES)
def test_display_name_round_trips(name: str) -> None:
    data = build_full(name=name)
    assert_wire_format(data)
    for field in ("To", "Reply-To"):
        addresses = parse(data)[field].addresses
        assert len(addresses) == 1
        assert addresses[0].addr_spec in ("ada@example.com", "support@example.com")
        phrase = raw_header(data, field).rpartition(" <")[0]
        if len(name.encode()) <= 40 or name.isascii():
            # The stdlib parser keeps the space between encoded-words inside a phrase
            # (RFC 2047 §6.2 drops it), so only names that fit one word compare exactly.
            assert addresses[0].display_name == one_line(name)
        else:
            assert rfc2047(phrase) == one_line(name)


def test_ascii_headers_stay_readable() -> None:
    data = build_full(subject="Your password was changed", name="Ada Lovelace")
    head = header_block(data).decode()
    assert "Subject: Your password was changed\r\n" in head
    assert "To: Ada Lovelace <ada@example.com>\r\n" in head
    assert (
        'Reply-To: "Lovelace, Ada" <support@example.com>'
        in header_block(build_full(name="Lovelace, Ada")).decode()
    )


def test_long_ascii_subject_is_folded_at_spaces() -> None:
    data = build_full(subject=LONG_ASCII)
    raw = header_block(data).decode()
    assert "=?" not in raw_header(data, "Subject")
    assert raw.count("\r\n ") > 5


@pytest.mark.parametrize("text", BODIES)
def test_bodies_round_trip(text: str) -> None:
    data = build_full(text=text, html=f"<pre>{text}</pre>")
    assert_wire_format(data)
    msg = parse(data)
    expected = text.replace("\r\n", "\n").replace("\r", "\n")
    plain, html = msg.get_body(("plain",)), msg.get_body(("html",))
    assert plain.get_content().replace("\r\n", "\n") == expected
    assert html.get_content().replace("\r\n", "\n") == f"<pre>{expected}</pre>"
    assert plain["Content-Transfer-Encoding"] in ("quoted-printable", "base64")
    assert plain.get_content_charset() == "utf-8"


def test_line_initial_from_and_trailing_space_are_encoded() -> None:
    body = build_full(text="From here \nok\n", html=None).split(b"\r\n\r\n", 1)[1]
    assert body == b"=46rom here=20\r\nok\r\n"


@pytest.mark.parametrize(
    "text",
    [".", ".\n..\n.x", "x" * 75 + ".y", "x" * 74 + "=.y", "x" * 75 + "From .", "x" * 75 + "."],
)
def test_no_body_line_starts_with_a_dot(text: str) -> None:
    data = build_full(text=text, html=None)
    assert_wire_format(data)
    assert parse(data).get_content().replace("\r\n", "\n") == text


def test_mostly_non_ascii_text_is_base64() -> None:
    msg = parse(build_full(text="您的密码已更改。" * 40))
    assert msg.get_body(("plain",))["Content-Transfer-Encoding"] == "base64"
    assert msg.get_body(("html",))["Content-Transfer-Encoding"] == "quoted-printable"


def test_structure_and_standard_headers() -> None:
    data = build_full()
    msg = parse(data)
    assert msg["MIME-Version"] == "1.0"
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    assert msg["Date"].datetime.tzinfo is not None
    assert msg["X-Herald-Event-Id"] == "evt-1"
    assert msg["X-Herald-Template"] == "welcome"
    assert not msg.defects and all(not p.defects for p in msg.walk())
    assert data.endswith(b"--\r\n")


def test_message_ids_are_unique_and_in_the_sender_domain() -> None:
    ids = {parse(build_full())["Message-ID"] for _ in range(200)}
    assert len(ids) == 200
    assert all(i.startswith("<") and i.endswith("@example.com>") for i in ids)


def test_extra_header_names_are_validated() -> None:
    with pytest.raises(ValueError):
        build_full(extra={"X-Bad\r\nBcc": "x"})
    with pytest.raises(ValueError):
        build_full(extra={"X-Bad: y": "x"})


def test_crlf_in_extra_header_value_stays_inside() -> None:
    data = build_full(extra={"X-Herald-Event-Id": "evt\r\nBcc: evil@x.test"})
    assert parse(data)["Bcc"] is None
    assert parse(data)["X-Herald-Event-Id"] == "evt Bcc: evil@x.test"


def test_non_ascii_addresses_are_refused() -> None:
    with pytest.raises(InvalidAddress):
        parse_mailbox("jörg@example.com")


def test_explicit_date_is_used() -> None:
    when = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
    data = build_message(
        sender=SENDER,
        recipient=parse_mailbox("ada@example.com"),
        subject="x",
        text="x",
        html=None,
        headers={},
        now=when,
    ).data
    assert parse(data)["Date"].datetime == when
    assert b"To: ada@example.com\r\n" in data


@settings(max_examples=150, deadline=None)
@given(
    subject=st.text(),
    name=st.text(max_size=30),
    text=st.text(),
    html=st.none() | st.text(),
)
def test_random_messages_round_trip(subject: str, name: str, text: str, html: str | None) -> None:
    data = build_full(subject=subject, name=name, text=text, html=html)
    assert_wire_format(data)
    assert data.endswith(b"\r\n")
    msg = parse(data)
    assert msg["Subject"] == one_line(subject)
    assert rfc2047(raw_header(data, "Subject")) == one_line(subject)
    if name := one_line(name):
        phrase = raw_header(data, "To").rpartition(" <")[0]
        decoded = rfc2047(phrase) if "=?" in phrase else msg["To"].addresses[0].display_name
        assert decoded == name
    parts = [("plain", text)] if html is None else [("plain", text), ("html", html)]
    for subtype, content in parts:
        expected = content.replace("\r\n", "\n").replace("\r", "\n")
        assert msg.get_body((subtype,)).get_content().replace("\r\n", "\n") == expected


@pytest.mark.parametrize(
    "text",
    ["no newline at the end", "", "您的密码已更改。" * 40, "x" * 76, "x" * 74 + "ä", "x " * 38],
)
def test_text_only_message_ends_with_crlf_without_changing_the_text(text: str) -> None:
    data = build_full(text=text, html=None)
    assert data.endswith(b"\r\n")
    assert_wire_format(data)
    assert parse(data).get_content().replace("\r\n", "\n") == text


@pytest.mark.parametrize("name", ["A" * 995, "A " * 600, "Ä" * 600])
def test_huge_display_names_keep_lines_under_998(name: str) -> None:
    data = build_full(name=name)
    assert all(len(line) <= 998 for line in data.split(b"\r\n"))
    assert rfc2047(raw_header(data, "To").rpartition(" <")[0]).strip('"') == one_line(name)


def test_mailboxes_made_by_hand_cannot_inject() -> None:
    with pytest.raises(InvalidAddress):
        build_message(
            sender=SENDER,
            recipient=Mailbox("Ada", "ada@example.com\r\nBcc: evil@x.test"),
            subject="x",
            text="x",
            html=None,
            headers={},
        )
    data = build_message(
        sender=SENDER,
        recipient=Mailbox("Ada\r\nBcc: evil@x.test", "ada@example.com"),
        subject="x",
        text="x",
        html=None,
        headers={},
    ).data
    assert parse(data)["Bcc"] is None
