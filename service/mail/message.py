"""MIME construction: one multipart/alternative message as wire-ready bytes (SPEC §6).

Nothing taken from an event can add a header or a recipient: addresses are validated
as a single addr-spec, and every header value is stripped of control characters before
the standard library encodes it (RFC 2047 for non-ASCII).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, getaddresses, make_msgid

__all__ = ["InvalidAddress", "Mailbox", "OutgoingEmail", "build_message", "parse_mailbox"]

_CONTROL = re.compile(r"[\x00-\x1f\x7f\u0085\u2028\u2029]+")
_ADDR_SPEC = re.compile(r"^[^\s@<>()\[\],;:\"\\]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$")


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
    parsed = getaddresses([value])
    if len(parsed) != 1:
        raise InvalidAddress("expected exactly one address")
    parsed_name, address = parsed[0][0], parsed[0][1].strip()
    if not _ADDR_SPEC.match(address) or len(address) > 254:
        raise InvalidAddress(f"not a single valid address: {_mask(address or value)}")
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
    message_id = make_msgid(domain=sender.domain)
    msg = EmailMessage(policy=SMTP)
    msg["From"] = sender.header()
    msg["To"] = recipient.header()
    if reply_to is not None:
        msg["Reply-To"] = reply_to.header()
    msg["Subject"] = one_line(subject)
    msg["Date"] = format_datetime(now or datetime.now(UTC))
    msg["Message-ID"] = message_id
    msg["Auto-Submitted"] = "auto-generated"
    for key, value in headers.items():
        msg[key] = one_line(value)
    msg.set_content(text, charset="utf-8")
    if html is not None:
        msg.add_alternative(html, subtype="html", charset="utf-8")
    return OutgoingEmail(sender, recipient, message_id, msg.as_bytes())


def _mask(address: str) -> str:
    local, at, domain = address.partition("@")
    return f"{local[:1]}***{at}{domain}" if at else "***"
