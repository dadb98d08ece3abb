"""Plumbing shared by the identity-provider formats: bytes → JSON object → envelope → Event."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from service.addresses import is_valid_address
from service.events import Event, MalformedEvent, decode_value, validate_envelope

__all__ = [
    "LOGIN_FAILED",
    "Parser",
    "compact",
    "email_or_none",
    "envelope",
    "mapping",
    "no_user",
    "provider_parser",
    "text",
]

#: Turns a record's value and headers into an Event, None (skip) or MalformedEvent.
Parser = Callable[[bytes | None, Sequence[tuple[str, bytes]]], Event | None]
#: A provider's JSON object → a CloudEvents envelope, or None for a type Herald skips.
ToEnvelope = Callable[[dict[str, Any]], dict[str, Any] | None]

LOGIN_FAILED = "identity.user.login_failed"


def provider_parser(to_envelope: ToEnvelope, provider: str) -> Parser:
    """A Parser for `provider`'s JSON: decode, map to CloudEvents, validate as usual."""

    def parse(value: bytes | None, headers: Sequence[tuple[str, bytes]]) -> Event | None:
        body = decode_value(value)
        if not isinstance(body, dict):
            raise MalformedEvent(f"{provider} event is not a JSON object")
        envelope = to_envelope(body)
        return None if envelope is None else validate_envelope(envelope)

    parse.__doc__ = f"Parse one Kafka record holding a {provider} event."
    return parse


def envelope(
    *, event_id: str, source: str, ce_type: str, time: str | None, user_id: str, data: Any
) -> dict[str, Any]:
    """The CloudEvents envelope of a provider's event (absent `time` stays absent)."""
    return compact(
        {
            "specversion": "1.0",
            "id": event_id,
            "source": source,
            "type": ce_type,
            "time": time,
            "subject": user_id,
            "datacontenttype": "application/json",
            "data": data,
        }
    )


def no_user(ce_type: str, problem: str) -> None:
    """For an event without a user id: MalformedEvent(`problem`), unless it is a failed
    login, which names no account to act for and is skipped (the caller returns None)."""
    if ce_type != LOGIN_FAILED:
        raise MalformedEvent(problem)


def text(obj: Any, *keys: str) -> str | None:
    """The first of `keys` in `obj` holding a non-empty string, else None."""
    if not isinstance(obj, Mapping):
        return None
    for key in keys:
        value = obj.get(key)
        if isinstance(value, str) and value.strip():
            return value
    return None


def email_or_none(*candidates: str | None) -> str | None:
    """The first candidate that is a valid address (a username may be a phone number)."""
    return next((c for c in candidates if c and is_valid_address(c)), None)


def compact(fields: Mapping[str, Any]) -> dict[str, Any]:
    """`fields` without None values and empty objects: absent stays absent."""
    return {k: v for k, v in fields.items() if v is not None and v != {}}


def mapping(obj: Any, key: str) -> dict[str, Any]:
    """`obj[key]` when it is an object, else an empty dict."""
    value = obj.get(key) if isinstance(obj, Mapping) else None
    return value if isinstance(value, dict) else {}
