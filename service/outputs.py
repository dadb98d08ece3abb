"""What Herald produces to Kafka: dead letters (SPEC §6)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

__all__ = ["Outputs", "Producer", "Record"]

_MAX_REASON_BYTES = 2000


class Record(Protocol):
    """The parts of a consumed Kafka record Herald needs (aiokafka's ConsumerRecord)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


class Producer(Protocol):
    """An aiokafka-style producer."""

    async def send_and_wait(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> Any: ...


class Outputs:
    """Publishes Herald's outputs; a failure here propagates so the offset is not committed."""

    def __init__(self, producer: Producer, *, dlq_suffix: str) -> None:
        self.producer = producer
        self.dlq_suffix = dlq_suffix

    async def dead_letter(self, record: Record, error: str, reason: str) -> str:
        """Copy the record (key, value, headers) to `<topic><dlq_suffix>` with the reason."""
        topic = record.topic + self.dlq_suffix
        headers = [
            *record.headers,
            ("x-herald-error", error.encode()),
            ("x-herald-reason", _clip(reason)),
            ("x-herald-original-topic", record.topic.encode()),
            ("x-herald-original-partition", str(record.partition).encode()),
            ("x-herald-original-offset", str(record.offset).encode()),
            ("x-herald-failed-at", datetime.now(UTC).isoformat(timespec="milliseconds").encode()),
        ]
        await self.producer.send_and_wait(topic, record.value, key=record.key, headers=headers)
        return topic


def _clip(reason: str) -> bytes:
    data = " ".join(reason.split()).encode()
    if len(data) <= _MAX_REASON_BYTES:
        return data
    return data[: _MAX_REASON_BYTES - 3].decode(errors="ignore").encode() + b"..."
