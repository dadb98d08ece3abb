"""MIME construction: one multipart/alternative message as wire-ready bytes (SPEC §6).

The bytes are written directly, `service.mail.encoding` doing the RFC 2045-2047 work:
`email.message.EmailMessage` costs ~2 ms per message, more than rendering and sending
together, this some tens of µs (BENCHMARKS.md). The tests hold the output against the
standard library's parser.

Nothing taken from an event can add a header or a recipient: addresses are validated
as one ASCII addr-spec, header names must be field names, and every header value goes
through `one_line`.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.headerregistry import Address
from email.utils import format_datetime, getaddresses
from functools import lru_cache

from service.mail.encoding import address_header, multipart, text_header, text_part

__all__ = [
    "InvalidAddress",
    "Mailbox",
    "OutgoingEmail",
    "build_message",
    "one_line",
    "parse_mailbox",
]

_CONTROL = re.compile(r"[\x00-\x1f\x7f\u0085\u2028\u2029]+")
_ADDR_SPEC = re.compile(r"[^\s@<>()\[\],;:\"\\]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?\Z")
_FIELD_NAME = re.compile(r"[!-9;-~]+")


class InvalidAddress(ValueError):
    """An address that cannot be used as exactly one recipient or sender."""


@dataclass(frozen=True, slots=True)
class Mailbox:
    """A display name and one validated addr-spec."""

    name: str
    address: str

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2]

    def header(self) -> Address:
        """The mailbox as an `email.headerregistry.Address`."""
        local, _, domain = self.address.rpartition("@")
        return Address(display_name=self.name, username=local, domain=domain)


@dataclass(frozen=True, slots=True)
class OutgoingEmail:
    """Everything that goes into one message; `data` is the wire form."""

    sender: Mailbox
    recipient: Mailbox
    message_id: str
    data: bytes


def one_line(value: str) -> str:
    """Collapse control characters (CR, LF, NUL…) so a value stays one header line."""
    return " ".join(_CONTROL.sub(" ", value).split())


def parse_mailbox(value: str, name: str = "") -> Mailbox:
    """Validate `value` as one address (optionally `Name <addr>`); raise InvalidAddress."""
    if not isinstance(value, str) or _CONTROL.search(value):
        raise InvalidAddress("address contains control characters")
    if _ADDR_SPEC.match(value):  # a bare address: the common case, no parsing needed
        parsed_name, address = "", value
    else:
        parsed = getaddresses([value])
        if len(parsed) != 1:
            raise InvalidAddress("expected exactly one address")
        parsed_name, address = parsed[0][0], parsed[0][1].strip()
    if not _ADDR_SPEC.match(address) or len(address) > 254:
        raise InvalidAddress(f"not a single valid address: {_mask(address or value)}")
    if not address.isascii():
        # It would need SMTPUTF8 in the envelope and raw UTF-8 in the headers.
        raise InvalidAddress(f"non-ASCII address (SMTPUTF8 is not used): {_mask(address)}")
    return Mailbox(name=one_line(name or parsed_name), address=address)


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
    message_id = f"<{time.time_ns():x}.{secrets.token_hex(8)}@{sender.domain}>"
    lines = [_mailbox("From", sender), _mailbox("To", recipient)]
    if reply_to is not None:
        lines.append(_mailbox("Reply-To", reply_to))
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
        boundary = "=_" + secrets.token_hex(12)  # "=_" never occurs in QP or base64
        lines.append(f'Content-Type: multipart/alternative;\r\n boundary="{boundary}"')
        body = b"\r\n" + multipart(boundary, text_part("plain", text), text_part("html", html))
    head = "\r\n".join(lines).encode("ascii")
    return OutgoingEmail(sender, recipient, message_id, head + b"\r\n" + body)


def _mailbox(field: str, box: Mailbox) -> str:
    """The header line for `box`; a Mailbox made without parse_mailbox is checked too."""
    if not (box.address.isascii() and _ADDR_SPEC.match(box.address)):
        raise InvalidAddress(f"not a single valid address: {_mask(box.address)}")
    return address_header(field, one_line(box.name), box.address)


@lru_cache(maxsize=2)
def _date(second: int) -> str:
    """The Date header value for a Unix time; the same for every message of a second."""
    return format_datetime(datetime.fromtimestamp(second, UTC))


def _mask(address: str) -> str:
    local, at, domain = address.partition("@")
    return f"{local[:1]}***{at}{domain}" if at else "***"
