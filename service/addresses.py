"""The one rule for an email address, used by `herald check`, the mailer and the parsers.

An address is an ASCII dot-atom `local@domain`: the local part is RFC 5322 `atext`
runs joined by single dots (at most 64 characters); the domain is dot-separated
letter-digit-hyphen labels of 1-63 characters that neither start nor end with a hyphen,
no trailing dot, at most 254 characters in all. Not accepted: quoted local parts
(`"a b"@example.com`), IP literals (`u@[192.0.2.1]`), non-ASCII addresses (they would
need SMTPUTF8), whitespace or control characters anywhere. An address that breaks the
rule is rejected, never repaired: `u@exa mple.com` is not `u@example.com`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.headerregistry import Address
from email.utils import getaddresses

__all__ = [
    "InvalidAddress",
    "Mailbox",
    "is_valid_address",
    "mask_address",
    "one_line",
    "parse_mailbox",
]

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_ADDR_SPEC = re.compile(rf"(?=[^@]{{1,64}}@){_ATEXT}(?:\.{_ATEXT})*@{_LABEL}(?:\.{_LABEL})*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u0085\u2028\u2029]+")


class InvalidAddress(ValueError):
    """An address that cannot be used as exactly one recipient or sender."""


@dataclass(frozen=True, slots=True)
class Mailbox:
    """A display name and one addr-spec that passed `is_valid_address`."""

    name: str
    address: str

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2]

    def header(self) -> Address:
        """The mailbox as an `email.headerregistry.Address`."""
        local, _, domain = self.address.rpartition("@")
        return Address(display_name=self.name, username=local, domain=domain)


def is_valid_address(address: str) -> bool:
    """Whether `address` is one bare addr-spec Herald can send from or to."""
    return len(address) <= 254 and _ADDR_SPEC.fullmatch(address) is not None


def parse_mailbox(value: str, name: str = "") -> Mailbox:
    """`addr` or `Name <addr>` as a Mailbox; InvalidAddress for anything else."""
    if not isinstance(value, str) or _CONTROL.search(value):
        raise InvalidAddress("address contains control characters")
    if is_valid_address(value):  # a bare address: the common case, no parsing needed
        return Mailbox(name=one_line(name), address=value)
    parsed = getaddresses([value])
    if len(parsed) != 1:
        raise InvalidAddress("expected exactly one address")
    parsed_name, address = parsed[0]
    # getaddresses drops whitespace and comments inside an address: only an addr-spec
    # that stands verbatim in `value`, as `<addr>` at its end, is the one written.
    if not (is_valid_address(address) and value.rstrip().endswith(f"<{address}>")):
        raise InvalidAddress(f"not a single valid address: {mask_address(value)}")
    return Mailbox(name=one_line(name or parsed_name), address=address)


def mask_address(address: str) -> str:
    """`ada@example.com` → `a***@example.com`; anything else → `***`."""
    local, at, domain = address.rpartition("@")
    return f"{local[:1]}***@{domain}" if at and local else "***"


def one_line(value: str) -> str:
    """Collapse control characters (CR, LF, NUL…) so a value stays one header line."""
    return " ".join(_CONTROL.sub(" ", value).split())
