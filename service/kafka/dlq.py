"""`herald dlq replay`: re-publish dead letters to the topic they came from (README:
Command line, Outputs).

The replay reads `<input topic><dlq_suffix>` from the offsets committed by the consumer
group `<group_id>-dlq-replay` (from the beginning the first time) and, for each dead
letter, produces its key, value and original headers (every `x-herald-*` header
dropped) to its `x-herald-original-topic`, then commits past it: a second replay
never repeats what the first one re-published. It stops when caught up with the end
of the DLQ as it was when the replay started, so an event that fails again (and is
dead-lettered again) waits for the next replay instead of looping.

Partitions are assigned by hand (the group only stores the offsets): run one replay
at a time per DLQ.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from service.config import KafkaConfig
from service.kafka import consumer_options, diagnose, producer_options
from service.logs import mask_addresses

__all__ = ["ReplayResult", "describe", "dlq_topic_for", "replay"]

_HERALD_HEADER = "x-herald-"
_IDLE_S = 1.5  # no record for this long: caught up, even if the end offsets said otherwise
_POLL_MS = 200
_REQUEST_TIMEOUT_MS = 10_000


@dataclass
class ReplayResult:
    """What one replay did (or, in a dry run, would do)."""

    dlq_topic: str
    replayed: int = 0
    skipped: int = 0


def dlq_topic_for(cfg: KafkaConfig, topic: str | None) -> str:
    """The DLQ of input topic `topic` (default: the first of `kafka.topics`); a name that
    already ends in `dlq_suffix` is taken as the DLQ itself."""
    topic = topic or cfg.topics[0]
    return topic if topic.endswith(cfg.dlq_suffix) else topic + cfg.dlq_suffix


def describe(record: ConsumerRecord, *, show_addresses: bool = False) -> str:
    """One line per dead letter: position, original topic, event id, error, reason."""
    headers = _headers(record.headers)
    reason = headers.get("x-herald-reason", "-")
    if not show_addresses:
        reason = mask_addresses(reason)
    return "  ".join(
        [
            f"{record.partition}:{record.offset}",
            headers.get("x-herald-original-topic", "?"),
            _event_id(record.value, headers) or "-",
            headers.get("x-herald-error", "?"),
            reason,
        ]
    )


async def replay(
    cfg: KafkaConfig,
    dlq_topic: str,
    *,
    limit: int | None = None,
    dry_run: bool = False,
    emit: Callable[[str], None] = print,
    show_addresses: bool = False,
) -> ReplayResult:
    """Replay (or, with `dry_run`, list) up to `limit` dead letters of `dlq_topic`."""
    consumer = AIOKafkaConsumer(
        **consumer_options(cfg),
        group_id=f"{cfg.group_id}-dlq-replay",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        request_timeout_ms=_REQUEST_TIMEOUT_MS,
    )
    producer = None if dry_run else AIOKafkaProducer(**producer_options(cfg))
    run = _Replay(consumer, producer, ReplayResult(dlq_topic), emit, show_addresses)
    try:
        await consumer.start()
        if producer is not None:
            await producer.start()
        await run.assign(dlq_topic)
        await run.drain(limit)
    except (KafkaError, OSError, TimeoutError) as exc:
        raise await diagnose(cfg, exc) from None
    finally:
        await consumer.stop()
        if producer is not None:
            await producer.stop()
    return run.result


@dataclass(eq=False)
class _Replay:
    """One pass over a DLQ, from the committed offsets to the end seen at the start."""

    consumer: AIOKafkaConsumer
    producer: AIOKafkaProducer | None  # None: a dry run
    result: ReplayResult
    emit: Callable[[str], None]
    show_addresses: bool
    #: Each partition's end offset when the replay started.
    end: dict[TopicPartition, int] = field(default_factory=dict)

    async def assign(self, topic: str) -> None:
        """Take every partition of `topic`, positioned at the group's committed offsets."""
        # aiokafka has no public call that returns a topic's partitions before it is
        # assigned; its client's metadata fetch is the one the consumer itself uses.
        cluster = await self.consumer._client.fetch_all_metadata()
        partitions = cluster.partitions_for_topic(topic)
        if partitions is None:
            raise LookupError(f"topic {topic!r} does not exist")
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        self.consumer.assign(tps)
        self.end = await self.consumer.end_offsets(tps)

    async def drain(self, limit: int | None) -> None:
        """Handle records until caught up, idle, or `limit` dead letters were handled."""
        idle_since = time.monotonic()
        while not await self._caught_up() and time.monotonic() - idle_since < _IDLE_S:
            batch = await self.consumer.getmany(timeout_ms=_POLL_MS)
            if batch:
                idle_since = time.monotonic()
            for tp, records in batch.items():
                for record in records:
                    if record.offset >= self.end.get(tp, 0):
                        self.consumer.pause(tp)  # dead-lettered after the replay began
                        break
                    if limit is not None and self.result.replayed >= limit:
                        return
                    await self._handle(tp, record)
            if limit is not None and self.result.replayed >= limit:
                return

    async def _caught_up(self) -> bool:
        for tp, end in self.end.items():
            if await self.consumer.position(tp) < end:
                return False
        return True

    async def _handle(self, tp: TopicPartition, record: ConsumerRecord) -> None:
        line = describe(record, show_addresses=self.show_addresses)
        original = _headers(record.headers).get("x-herald-original-topic")
        if not original:
            self.result.skipped += 1
            self.emit(f"{line}  (skipped: no x-herald-original-topic header)")
        else:
            self.result.replayed += 1
            self.emit(line)
            if self.producer is not None:
                headers = [(k, v) for k, v in record.headers if not k.startswith(_HERALD_HEADER)]
                await self.producer.send_and_wait(
                    original, record.value, key=record.key, headers=headers
                )
        if self.producer is not None:  # a dry run commits nothing
            await self.consumer.commit({tp: record.offset + 1})


def _headers(headers: Sequence[tuple[str, bytes]]) -> dict[str, str]:
    """Herald's own headers, decoded for display (the last one wins)."""
    return {
        k: (v or b"").decode(errors="replace")
        for k, v in headers
        if k.startswith(_HERALD_HEADER) or k == "ce_id"
    }


def _event_id(value: bytes | None, headers: dict[str, str]) -> str | None:
    """The event id when the value is a readable event (CloudEvents, Auth0, Keycloak)."""
    try:
        body = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict):
        data = body.get("data")
        inner = data if isinstance(data, dict) else {}
        for candidate in (body.get("id"), body.get("log_id"), inner.get("log_id")):
            if isinstance(candidate, str) and candidate:
                return candidate
    return headers.get("ce_id")
