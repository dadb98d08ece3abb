"""What Herald produces to Kafka (SPEC §6): dead letters, metadata commands, decisions."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson

__all__ = ["COMMAND_TYPE", "Outputs", "Producer", "Record", "command_id"]

COMMAND_TYPE = "identity.user.metadata_update"
_COMMAND_NAMESPACE = uuid.UUID("6f1c3c1e-8a53-4c55-9b6f-7d0f2f7d6a11")

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

    def __init__(
        self,
        producer: Producer,
        *,
        dlq_suffix: str,
        retry_suffix: str = ".retry",
        commands_topic: str = "identity.commands",
        decisions_topic: str = "identity.decisions",
    ) -> None:
        self.producer = producer
        self.dlq_suffix = dlq_suffix
        self.retry_suffix = retry_suffix
        self.commands_topic = commands_topic
        self.decisions_topic = decisions_topic

    async def metadata_command(
        self,
        event_id: str,
        user_id: str,
        user_metadata: dict[str, Any],
        app_metadata: dict[str, Any],
    ) -> None:
        """A CloudEvents `identity.user.metadata_update` keyed by user id; its id is derived
        from the source event so a redelivered event produces the same command id."""
        command = {
            "specversion": "1.0",
            "id": command_id(event_id),
            "source": "herald",
            "type": COMMAND_TYPE,
            "subject": user_id,
            "time": _now(),
            "datacontenttype": "application/json",
            "data": {
                "user_id": user_id,
                "user_metadata": user_metadata,
                "app_metadata": app_metadata,
            },
        }
        await self.producer.send_and_wait(
            self.commands_topic, orjson.dumps(command), key=user_id.encode()
        )

    async def decision(
        self, body: dict[str, Any], user_id: str, reply_to: str | None, correlation_id: bytes | None
    ) -> str:
        """To the input's `reply_to` topic (with its `correlation_id`), else the decisions topic."""
        topic = reply_to or self.decisions_topic
        headers = [("correlation_id", correlation_id)] if correlation_id is not None else []
        await self.producer.send_and_wait(
            topic, orjson.dumps(body), key=user_id.encode(), headers=headers
        )
        return topic

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
            ("x-herald-failed-at", _now().encode()),
        ]
        await self.producer.send_and_wait(topic, record.value, key=record.key, headers=headers)
        return topic


    async def retry(self, original: Record, headers: list[tuple[str, bytes]]) -> str:
        """An email's next attempt → `<input topic><retry_suffix>`: the original record's
        key, value and headers, plus the retry's own headers (service/retries.py)."""
        topic = original.topic + self.retry_suffix
        await self.producer.send_and_wait(
            topic, original.value, key=original.key, headers=[*original.headers, *headers]
        )
        return topic


def command_id(event_id: str) -> str:
    """The metadata command's id: the same for every delivery of one source event."""
    return str(uuid.uuid5(_COMMAND_NAMESPACE, event_id))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _clip(reason: str) -> bytes:
    data = " ".join(reason.split()).encode()
    if len(data) <= _MAX_REASON_BYTES:
        return data
    return data[: _MAX_REASON_BYTES - 3].decode(errors="ignore").encode() + b"..."
