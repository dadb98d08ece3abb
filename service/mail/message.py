"""MIME construction: one multipart/alternative message as wire-ready bytes.

The bytes are written directly, `service.mail.encoding` doing the RFC 2045-2047 work:
`email.message.EmailMessage` costs ~2 ms per message, more than rendering and sending
together, this some tens of µs (BENCHMARKS.md). The tests hold the output against the
standard library's parser.

Nothing taken from an event can add a header or a recipient: addresses follow the one
rule of `service.addresses` (re-exported here), header names must be field names, and
every header value goes through `one_line`.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from functools import lru_cache

from service.addresses import (
    InvalidAddress,
    Mailbox,
    is_valid_address,
    mask_address,
    one_line,
    parse_mailbox,
)
from service.mail.encoding import address_header, multipart, text_header, text_part

__all__ = [
    "InvalidAddress",
    "Mailbox",
    "OutgoingEmail",
    "WireMessage",
    "build_message",
    "one_line",
    "parse_mailbox",
]

#: RFC 5322 field names, less a leading "." (a `WireMessage` has no line starting with one).
_FIELD_NAME = re.compile(r"[!-\-/-9;-~][!-9;-~]*")


class WireMessage(bytes):
    """A message exactly as SMTP's DATA carries it, without dot-stuffing or line-end
    normalization to do: CRLF line ends only, the last included, and no line starting
    with "." (the header's lines start with a field name or folding space, QP bodies
    encode a leading ".", base64 has none). `build_message` makes only these; the
    transport sends them as they are (`service.mail.smtp_session.data_payload`)."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class OutgoingEmail:
    """Everything that goes into one message; `data` is the wire form."""

    sender: Mailbox
    recipient: Mailbox
    message_id: str
    data: WireMessage


def build_message(
    *,
    sender: Mailbox,
    recipient: Mailbox,
    subject: str,
    text: str,
    html: str | None,
    headers: dict[str, str],
    reply_to: Mailbox | None = None,
    now: datetime | None = None,
) -> OutgoingEmail:
    """Build the multipart/alternative message; `headers` are extra X- headers."""
    token = secrets.token_hex(20)  # one read of the OS's randomness for both
    message_id = f"<{time.time_ns():x}.{token[:16]}@{sender.domain}>"
    lines = [_own_mailbox("From", sender), _mailbox("To", recipient)]
    if reply_to is not None:
        lines.append(_own_mailbox("Reply-To", reply_to))
    lines += [
        text_header("Subject", one_line(subject)),
        "Date: " + (format_datetime(now) if now else _date(int(time.time()))),
        "Message-ID: " + message_id,
        "Auto-Submitted: auto-generated",
    ]
    for key, value in headers.items():
        if not _FIELD_NAME.fullmatch(key):
            raise ValueError(f"invalid header name {key!r}")
        lines.append(text_header(key, one_line(value)))
    lines.append("MIME-Version: 1.0")
    if html is None:
        body = text_part("plain", text, last=True)  # its Content-* lines end the header
    else:
        boundary = "=_" + token[16:]  # "=_" never occurs in QP or base64
        lines.append(f'Content-Type: multipart/alternative;\r\n boundary="{boundary}"')
        body = b"\r\n" + multipart(boundary, text_part("plain", text), text_part("html", html))
    head = "\r\n".join(lines).encode("ascii")
    return OutgoingEmail(sender, recipient, message_id, WireMessage(head + b"\r\n" + body))


def _mailbox(field: str, box: Mailbox) -> str:
    """The header line for `box`; a Mailbox made without parse_mailbox is checked too."""
    if not is_valid_address(box.address):
        raise InvalidAddress(f"not a single valid address: {mask_address(box.address)}")
    return address_header(field, one_line(box.name), box.address)


@lru_cache(maxsize=64)
def _own_mailbox(field: str, box: Mailbox) -> str:
    """`_mailbox` for the few addresses of Herald's own config (from, reply_to)."""
    return _mailbox(field, box)


@lru_cache(maxsize=2)
def _date(second: int) -> str:
    """The Date header value for a Unix time; the same for every message of a second."""
    return format_datetime(datetime.fromtimestamp(second, UTC))
