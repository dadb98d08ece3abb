"""Event parsing: structured and binary CloudEvents, and the fate of malformed input."""

from __future__ import annotations

import orjson
import pytest

from service.events import MAX_EVENT_BYTES, MalformedEvent, parse_cloudevent

BASE = {
    "specversion": "1.0",
    "id": "evt-1",
    "source": "https://login.example.com",
    "type": "identity.user.password_changed",
    "data": {"user": {"user_id": "user-42", "email": "ada@example.com"}},
}


def event(**changes: object) -> bytes:
    return orjson.dumps({**BASE, **changes})


def test_structured_event() -> None:
    parsed = parse_cloudevent(event(), [])
    assert parsed is not None
    assert parsed.trigger.name == "post-change-password"
    assert (parsed.id, parsed.user_id) == ("evt-1", "user-42")


def test_binary_event_takes_attributes_from_ce_headers() -> None:
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", b"evt-2"),
        ("ce_source", b"/idp"),
        ("ce_type", b"identity.user.registered"),
    ]
    parsed = parse_cloudevent(orjson.dumps(BASE["data"]), headers)
    assert parsed is not None
    assert (parsed.id, parsed.trigger.name) == ("evt-2", "post-user-registration")


def test_unknown_type_is_none() -> None:
    assert parse_cloudevent(event(type="com.example.other"), []) is None


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "not a JSON object"),
        (event(specversion="0.3"), "specversion"),
        (event(id=""), "'id'"),
        (event(id="x" * 257), "longer than 256"),
        (event(source=None), "'source'"),
        (event(data=None), "'data'"),
        (event(data={"user": {"email": "a@b.c"}}), "data.user.user_id"),
        (event(data={"user": {"user_id": 42}}), "data.user.user_id"),
        (event(data={"user": {"user_id": "u", "email": ["x"]}}), "data.user.email"),
        (event(data={"user": {"user_id": "u"}, "request": "x"}), "data.request"),
        (b" " * (MAX_EVENT_BYTES + 1), "1 MiB"),
        (None, "no value"),
    ],
)
def test_malformed_input_raises_with_a_reason(value: bytes | None, reason: str) -> None:
    with pytest.raises(MalformedEvent, match=reason):
        parse_cloudevent(value, [])


def test_binary_header_that_is_not_utf8_is_malformed() -> None:
    headers = [("ce_specversion", b"1.0"), ("ce_id", b"\xff")]
    with pytest.raises(MalformedEvent, match="ce_id"):
        parse_cloudevent(orjson.dumps(BASE["data"]), headers)
