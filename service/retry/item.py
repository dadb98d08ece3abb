"""A retry item: one email's next attempt, as written to and read from the retry topic.

An email whose attempt failed transiently becomes a *work item* on
`<input topic><retry_suffix>`. It keeps the original record's key, value and headers, so
no rendered content or secret is written, and it adds these headers:

    x-herald-retry-action     the action id (dedupe key part)
    x-herald-retry-email      JSON: template, to, to_name, locale, from, reply_to, data
    x-herald-retry-attempt    the attempt to make next (2, 3, …)
    x-herald-retry-due        when it is due (ISO 8601, UTC)
    x-herald-retry-reason     why the last attempt failed (the server's reply)
    x-herald-original-topic / -partition / -offset   where the event came from
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from service.consumed import Record
from service.mail.request import EmailRequest

__all__ = ["MalformedRetry", "Original", "Record", "RetryItem", "read_item", "retry_headers"]

_PREFIX = "x-herald-retry-"
_ORIGINAL = ("x-herald-original-topic", "x-herald-original-partition", "x-herald-original-offset")


class MalformedRetry(ValueError):
    """A record on a retry topic that Herald did not write (or cannot read)."""


@dataclasses.dataclass(slots=True)
class Original:
    """The input record an item came from (a `Record`: dead letters go to its topic)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


@dataclasses.dataclass(frozen=True, slots=True)
class RetryItem:
    """One email's next attempt, as read from the retry topic."""

    original: Original
    action_id: str
    email: dict[str, Any]
    attempt: int
    due: float
    reason: str


def retry_headers(
    source: Record, request: EmailRequest, attempt: int, due: float, reason: str
) -> tuple[Original, list[tuple[str, bytes]]]:
    """The original record of `source` (itself, or the one it carries) and the headers of
    the work item that makes `attempt` of `request` at `due` (epoch seconds)."""
    original = _original(source)
    email = request.email_fields()
    headers = [
        (_PREFIX + "action", request.action_id.encode()),
        (_PREFIX + "email", orjson.dumps(email, default=str)),
        (_PREFIX + "attempt", str(attempt).encode()),
        (_PREFIX + "due", datetime.fromtimestamp(due, UTC).isoformat().encode()),
        (_PREFIX + "reason", " ".join(reason.split())[:2000].encode()),
        (_ORIGINAL[0], original.topic.encode()),
        (_ORIGINAL[1], str(original.partition).encode()),
        (_ORIGINAL[2], str(original.offset).encode()),
    ]
    return original, headers


def read_item(record: Record) -> RetryItem:
    """A retry-topic record → RetryItem; MalformedRetry when it is not one."""
    ours = {k: v for k, v in record.headers if k.startswith("x-herald-") and v is not None}
    try:
        original = Original(
            topic=ours[_ORIGINAL[0]].decode(),
            partition=int(ours[_ORIGINAL[1]]),
            offset=int(ours[_ORIGINAL[2]]),
            key=record.key,
            value=record.value,
            headers=[(k, v) for k, v in record.headers if not k.startswith("x-herald-")],
        )
        email = orjson.loads(ours[_PREFIX + "email"])
        due = datetime.fromisoformat(ours[_PREFIX + "due"].decode()).timestamp()
        return RetryItem(
            original=original,
            action_id=ours[_PREFIX + "action"].decode(),
            email=email if isinstance(email, dict) else {},
            attempt=int(ours[_PREFIX + "attempt"]),
            due=due,
            reason=ours.get(_PREFIX + "reason", b"").decode(errors="replace"),
        )
    except (KeyError, ValueError, orjson.JSONDecodeError) as exc:
        raise MalformedRetry(f"not a Herald retry item: {exc!r}") from None


def _original(record: Record) -> Original:
    if isinstance(record, Original):
        return record
    return Original(
        record.topic, record.partition, record.offset, record.key, record.value, record.headers
    )
