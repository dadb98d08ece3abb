"""What Herald produces to Kafka (README: Outputs): dead letters, metadata commands, decisions.

Fates of a failed output, decided here: a fault of the one record (a value that cannot
be serialized or is too large, a `reply_to` topic Kafka does not know or refuses) raises
`OutputFailed` and its event is dead-lettered; any other Kafka error is an outage and
propagates, so the batch is rewound and consumed again. A dead letter that cannot be
written is an outage too: nothing is committed that did not reach its end.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson
from aiokafka.errors import (
    MessageSizeTooLargeError,
    TopicAuthorizationFailedError,
    UnknownTopicOrPartitionError,
)

from service.consumed import Record, source_partition
from service.failures import OutputFailed
from service.kafka.status import StatusEvents
from service.kafka.transactions import Transactions

__all__ = [
    "COMMAND_TYPE",
    "MAX_REQUEST_BYTES",
    "REPLY_TOPIC_WAIT_S",
    "Outputs",
    "Producer",
    "Record",
    "command_id",
]

log = logging.getLogger("herald")

COMMAND_TYPE = "identity.user.metadata_update"
_COMMAND_NAMESPACE = uuid.UUID("6f1c3c1e-8a53-4c55-9b6f-7d0f2f7d6a11")

_MAX_REASON_BYTES = 2000

#: The producer's `max_request_size` (aiokafka's default; service.kafka sets it).
MAX_REQUEST_BYTES = 1024 * 1024
#: How long a decision waits for its `reply_to` topic to be known and writable before its
#: event is dead-lettered (README: Outputs: at most 30 s). Short, as the batch waits meanwhile;
#: aiokafka alone waits `request_timeout_ms` (40 s), and the rewound batch waited again.
REPLY_TOPIC_WAIT_S = 10.0
_TOPIC_RETRY_S = 0.5
#: Kafka's rule for topic names. A broker refuses any other name, and one too long for
#: the protocol would break every later metadata request of the shared producer.
_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")
#: A record batch's own header and a record's fixed fields, rounded up; each length
#: prefix (key, value, every header's name and value) is a varint of at most 5 bytes.
_BATCH_OVERHEAD = 128
_PREFIX = 5
#: Kafka headers as they may be written: a null value is a header too.
Headers = Sequence[tuple[str, bytes | None]]


class Producer(Protocol):
    """An aiokafka-style producer."""

    async def send_and_wait(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        headers: list[tuple[str, bytes | None]] | None = None,
    ) -> Any: ...

    async def partitions_for(self, topic: str) -> Any: ...

    def create_batch(self) -> Any: ...

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> Any: ...


@dataclasses.dataclass(eq=False)
class Outputs:
    """Publishes Herald's outputs: `OutputFailed` for a fault of the one event, any other
    failure propagates so that the offset is not committed."""

    producer: Producer
    _: dataclasses.KW_ONLY
    dlq_suffix: str
    retry_suffix: str = ".retry"
    commands_topic: str = "identity.commands"
    decisions_topic: str = "identity.decisions"
    max_request_size: int = MAX_REQUEST_BYTES
    reply_topic_wait_s: float = REPLY_TOPIC_WAIT_S
    #: `kafka.exactly_once`: outputs of a consumed record go in its partition's
    #: transaction; others (the decision webhook's) through the plain producer.
    transactions: Transactions | None = None
    status_topic: str | None = None

    def __post_init__(self) -> None:
        topic = self.status_topic
        self.statuses = StatusEvents(self.producer, topic, self.transactions) if topic else None

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
        value = _json(command, "metadata command")
        await self._send(self.commands_topic, value, key=user_id.encode())

    async def decision(
        self, body: dict[str, Any], user_id: str, reply_to: str | None, correlation_id: bytes | None
    ) -> str:
        """To the input's `reply_to` topic (with its `correlation_id`), else the decisions
        topic; a `reply_to` Kafka does not know or refuses is retried for a while first."""
        topic = reply_to or self.decisions_topic
        headers: list[tuple[str, bytes | None]] = (
            [("correlation_id", correlation_id)] if correlation_id is not None else []
        )
        value = _json(body, "decision")
        if reply_to:
            await self._wait_for_topic(reply_to)
        await self._send(topic, value, key=user_id.encode(), headers=headers)
        return topic

    async def dead_letter(self, record: Record, error: str, reason: str) -> str:
        """Copy the record (key, value, headers) to `<topic><dlq_suffix>` with the reason;
        a value Kafka would refuse as too large is left out (`x-herald-value-omitted`)."""
        topic = record.topic + self.dlq_suffix
        # A null header is copied as null, neither dropped nor made empty: the dead letter
        # keeps the record's headers as they came, and a replay gives them back unchanged.
        headers: list[tuple[str, bytes | None]] = [
            *record.headers,
            ("x-herald-error", error.encode()),
            ("x-herald-reason", _clip(reason)),
            ("x-herald-original-topic", record.topic.encode()),
            ("x-herald-original-partition", str(record.partition).encode()),
            ("x-herald-original-offset", str(record.offset).encode()),
            ("x-herald-failed-at", _now().encode()),
        ]
        # aiokafka refuses a record with neither key nor value; Kafka has no other way to
        # say "no value" than this one, so such a dead letter carries an empty value.
        value = b"" if record.value is None and record.key is None else record.value
        if value and _size(record.key, value, headers) > self.max_request_size:
            await self._without_value(topic, record.key, value, headers)
            return topic
        try:
            await self._produce(topic, value, key=record.key, headers=headers)
        except MessageSizeTooLargeError:
            if not value:
                raise
            # The broker's limit (`message.max.bytes`) may be lower than the producer's.
            # (aiokafka's idempotent producer keeps the refused batch's sequence number:
            # on a partition it wrote to before, this retry then fails with
            # OutOfOrderSequenceNumber, an outage until the producer is restarted.)
            await self._without_value(topic, record.key, value, headers)
        return topic

    async def _without_value(
        self, topic: str, key: bytes | None, value: bytes, headers: Headers
    ) -> None:
        omitted = ("x-herald-value-omitted", str(len(value)).encode())
        await self._produce(topic, b"", key=key, headers=[*headers, omitted])

    async def _send(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes,
        headers: list[tuple[str, bytes | None]] | None = None,
    ) -> None:
        """Publish one output; a value too large for Kafka is this event's fault."""
        try:
            await self._produce(topic, value, key=key, headers=headers)
        except MessageSizeTooLargeError:
            raise OutputFailed(f"{len(value)} bytes to {topic}: too large for Kafka") from None

    async def _produce(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None,
        headers: list[tuple[str, bytes | None]] | None,
    ) -> None:
        source = source_partition() if self.transactions is not None else None
        if source is None or self.transactions is None:
            await self.producer.send_and_wait(topic, value, key=key, headers=headers)
        else:
            await self.transactions.send(source, topic, value, key, headers)

    def status(self, key: bytes, value: bytes) -> None:
        """A delivery status event, queued for the next `flush` (service/kafka/status.py)."""
        if self.statuses is not None:
            self.statuses.queue(key, value)

    async def flush(self) -> None:
        """Write the queued status events and wait until Kafka has acknowledged every one;
        raises if one failed (the batch is then consumed again)."""
        pending = await self.statuses.write() if self.statuses is not None else []
        if pending:
            await asyncio.gather(*pending)

    async def _wait_for_topic(self, topic: str) -> None:
        """Until Kafka knows `topic` and lets Herald write it, for `reply_topic_wait_s` at
        most. Not for Herald's own topics: a missing one there is the operator's to fix,
        and waits like an outage."""
        if not _TOPIC_NAME.fullmatch(topic) or topic in (".", ".."):
            raise OutputFailed(f"reply_to {topic[:100]!r} is not a valid Kafka topic name")
        refused = "unknown to Kafka"
        try:
            async with asyncio.timeout(self.reply_topic_wait_s):
                while True:
                    try:
                        await self.producer.partitions_for(topic)
                        return
                    except TopicAuthorizationFailedError:
                        refused = "not authorized for Herald"
                    except UnknownTopicOrPartitionError:
                        refused = "unknown to Kafka"
                    await asyncio.sleep(_TOPIC_RETRY_S)
        except TimeoutError:
            waited = f"retried for {self.reply_topic_wait_s:g} s"
            raise OutputFailed(f"reply_to topic {topic!r} is {refused} ({waited})") from None

    async def retry(self, original: Record, headers: list[tuple[str, bytes]]) -> str:
        """An email's next attempt → `<input topic><retry_suffix>`: the original record's
        key, value and headers, plus the retry's own headers (service/kafka/retries.py)."""
        topic = original.topic + self.retry_suffix
        all_headers: list[tuple[str, bytes | None]] = [*original.headers, *headers]
        if _size(original.key, original.value or b"", all_headers) > self.max_request_size:
            raise OutputFailed(f"the retry item for {topic} is too large for Kafka")
        try:
            await self._produce(topic, original.value, key=original.key, headers=all_headers)
        except MessageSizeTooLargeError:
            raise OutputFailed(f"the retry item for {topic} is too large for Kafka") from None
        return topic


def command_id(event_id: str) -> str:
    """The metadata command's id: the same for every delivery of one source event."""
    return str(uuid.uuid5(_COMMAND_NAMESPACE, event_id))


def _json(value: Any, what: str) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError as exc:  # orjson.JSONEncodeError: a set, an int over 64 bits, …
        raise OutputFailed(f"{what} cannot be serialized as JSON: {exc}") from None


def _size(key: bytes | None, value: bytes, headers: Headers) -> int:
    """At least the record's size as the producer counts it against `max_request_size`."""
    fields = sum(len(name.encode()) + len(data or b"") for name, data in headers)
    prefixes = _PREFIX * (2 + 2 * len(headers))
    return _BATCH_OVERHEAD + len(key or b"") + len(value) + fields + prefixes


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _clip(reason: str) -> bytes:
    data = " ".join(reason.split()).encode()
    if len(data) <= _MAX_REASON_BYTES:
        return data
    return data[: _MAX_REASON_BYTES - 3].decode(errors="ignore").encode() + b"..."
