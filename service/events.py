"""Identity events: the one place that decides "malformed → dead letter" (README: Events)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from service.triggers import TRIGGERS_BY_TYPE, Trigger

__all__ = [
    "MAX_EVENT_BYTES",
    "Event",
    "MalformedEvent",
    "decode_value",
    "parse_cloudevent",
    "present_headers",
    "validate_envelope",
]

MAX_EVENT_BYTES = 1024 * 1024
_CE_HEADER_PREFIX = "ce_"
_OPTIONAL_OBJECTS = ("request", "connection", "client")


class MalformedEvent(ValueError):
    """The input cannot become an event; its fate is the dead-letter topic."""


@dataclass(frozen=True, slots=True)
class Event:
    """A validated identity event: the CloudEvents envelope plus its trigger."""

    trigger: Trigger
    envelope: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.envelope["id"])

    @property
    def data(self) -> dict[str, Any]:
        return self.envelope["data"]  # type: ignore[no-any-return]

    @property
    def user(self) -> dict[str, Any]:
        return self.data["user"]  # type: ignore[no-any-return]

    @property
    def user_id(self) -> str:
        return str(self.user["user_id"])


def present_headers(headers: Sequence[tuple[str, bytes | None]]) -> list[tuple[str, bytes]]:
    """The headers that count: a Kafka header whose value is null counts as absent
    (README: Events)."""
    return [(name, value) for name, value in headers if value is not None]


def parse_cloudevent(
    value: bytes | None, headers: Sequence[tuple[str, bytes | None]]
) -> Event | None:
    """Parse one Kafka record as a CloudEvent, structured or binary mode.

    Returns None for a well-formed event of a type Herald has no trigger for (skipped,
    not dead-lettered); raises MalformedEvent for anything that cannot be processed.
    """
    body = decode_value(value)
    attributes = _binary_attributes(present_headers(headers))
    envelope = {**attributes, "data": body} if attributes else body
    return validate_envelope(envelope)


def validate_envelope(envelope: Any) -> Event | None:
    """Check the CloudEvents attributes and the fields Herald relies on."""
    if not isinstance(envelope, dict):
        raise MalformedEvent("event is not a JSON object")
    if envelope.get("specversion") != "1.0":
        raise MalformedEvent('specversion must be "1.0"')
    _require_string(envelope, "id", max_len=256)
    _require_string(envelope, "source")
    _require_string(envelope, "type")
    trigger = TRIGGERS_BY_TYPE.get(envelope["type"])
    if trigger is None:
        return None
    _check_data(envelope.get("data"))
    return Event(trigger=trigger, envelope=envelope)


def decode_value(value: bytes | None) -> Any:
    """A record's value as JSON; MalformedEvent if it is absent, over 1 MiB or not JSON."""
    if value is None:
        raise MalformedEvent("record has no value")
    if len(value) > MAX_EVENT_BYTES:
        raise MalformedEvent(f"value is {len(value)} bytes, over the 1 MiB limit")
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise MalformedEvent(f"value is not valid JSON: {exc}") from None


def _binary_attributes(headers: Sequence[tuple[str, bytes]]) -> dict[str, str]:
    """CloudEvents binary mode: attributes travel as `ce_*` headers, the value is data."""
    attributes: dict[str, str] = {}
    for name, raw in headers:
        if not name.startswith(_CE_HEADER_PREFIX):
            continue
        try:
            attributes[name[len(_CE_HEADER_PREFIX) :]] = raw.decode()
        except UnicodeDecodeError:
            raise MalformedEvent(f"header {name} is not valid UTF-8") from None
    return attributes if "specversion" in attributes else {}


def _require_string(obj: Mapping[str, Any], key: str, max_len: int | None = None) -> None:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise MalformedEvent(f"missing required field {key!r}")
    if max_len is not None and len(value) > max_len:
        raise MalformedEvent(f"field {key!r} is longer than {max_len} characters")


def _check_data(data: Any) -> None:
    if not isinstance(data, dict):
        raise MalformedEvent("missing required field 'data'")
    user = data.get("user")
    if not isinstance(user, dict):
        raise MalformedEvent("missing required field 'data.user'")
    user_id = user.get("user_id")
    if not isinstance(user_id, str) or not user_id:
        raise MalformedEvent("missing required field 'data.user.user_id'")
    for name in _OPTIONAL_OBJECTS:
        if data.get(name) is not None and not isinstance(data[name], dict):
            raise MalformedEvent(f"field 'data.{name}' must be an object")
    email = user.get("email")
    if email is not None and not isinstance(email, str):
        raise MalformedEvent("field 'data.user.email' must be a string")
