"""The record being consumed: its shape, and where it was read while its work runs.

`consuming(topic, partition, offset)` is set while a record's flow runs (the retry
scheduler sets it without an offset for a retry item). What the work writes reads it:
Kafka outputs go into the transaction of that partition (`exactly_once`), and delivery
records note the event's position, which `herald resend` reads the event again from.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

__all__ = ["Position", "Record", "consuming", "event_position", "source_partition", "where"]

#: Where an event was read: topic, partition, offset.
Position = tuple[str, int, int]


class Record(Protocol):
    """The parts of a consumed Kafka record Herald needs (aiokafka's ConsumerRecord, or a
    retry item's original record)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]  # values may be null on the wire (present_headers)


def where(record: Record) -> dict[str, Any]:
    """Where `record` was read, as log fields."""
    return {"topic": record.topic, "partition": record.partition, "offset": record.offset}


_CURRENT: contextvars.ContextVar[tuple[str, int, int | None] | None] = contextvars.ContextVar(
    "herald_consuming", default=None
)


@contextmanager
def consuming(topic: str, partition: int, offset: int | None = None) -> Iterator[None]:
    """The work inside is the record at `topic`/`partition`/`offset`'s."""
    token = _CURRENT.set((topic, partition, offset))
    try:
        yield
    finally:
        _CURRENT.reset(token)


def source_partition() -> tuple[str, int] | None:
    """The partition of the record being processed, if any."""
    current = _CURRENT.get()
    return None if current is None else (current[0], current[1])


def event_position() -> Position | None:
    """Where the event being processed was read, if it came from Kafka with an offset."""
    current = _CURRENT.get()
    if current is None or current[2] is None:
        return None
    return (current[0], current[1], current[2])
