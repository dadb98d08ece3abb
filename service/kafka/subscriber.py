"""The FastStream broker and Herald's one batch subscriber, the retry topics' consumer, and
the committed offsets' metadata."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient
from faststream.kafka import KafkaBroker, Topic
from faststream.kafka.annotations import KafkaMessage
from faststream.kafka.subscriber.usecase import BatchSubscriber
from faststream.middlewares import AckPolicy

from service.config import KafkaConfig
from service.events import present_headers
from service.kafka.options import consumer_options, isolation_level, security

#: FastStream's own wait for a handler at shutdown; Herald's drain (app.py) ends first.
GRACEFUL_TIMEOUT_S = 30.0
_BATCH_RECORDS = 500
_FETCH_MAX_WAIT_MS = 25


def retry_consumer(cfg: KafkaConfig, listener: ConsumerRebalanceListener) -> AIOKafkaConsumer:
    """The consumer of the retry topics (service/kafka/retries.py): a group of its own, so the
    input consumer's rebalances do not move it; from the earliest offset, so a new group
    never skips a scheduled retry; commits only by hand."""
    consumer = AIOKafkaConsumer(
        group_id=cfg.group_id + cfg.retry_suffix,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        # A retry topic created after start-up (auto-created by the first retry) is seen
        # within this long.
        metadata_max_age_ms=10_000,
        isolation_level=isolation_level(cfg),
        **consumer_options(cfg),
    )
    consumer.subscribe([topic + cfg.retry_suffix for topic in cfg.topics], listener=listener)
    return consumer


def committed_metadata(
    cfg: KafkaConfig, group_id: str
) -> Callable[[Sequence[TopicPartition]], Awaitable[dict[TopicPartition, str]]]:
    """Reads the metadata strings committed with `group_id`'s offsets (what the retry
    scheduler finished above its committed offset, service/retry/offsets.py)."""

    async def read(tps: Sequence[TopicPartition]) -> dict[TopicPartition, str]:
        admin = AIOKafkaAdminClient(**consumer_options(cfg))
        await admin.start()
        try:
            found = await admin.list_consumer_group_offsets(group_id, partitions=list(tps))
        finally:
            await admin.close()
        return {tp: meta.metadata or "" for tp, meta in found.items()}

    return read


def new_broker(cfg: KafkaConfig) -> KafkaBroker:
    """The FastStream broker for `kafka:` (also used to generate the AsyncAPI document)."""
    return KafkaBroker(
        cfg.bootstrap_servers.split(","),
        security=security(cfg),
        client_id="herald",
        logger=logging.getLogger("faststream"),
        log_level=logging.DEBUG,  # per-message lines; Herald logs each outcome itself
        graceful_timeout=GRACEFUL_TIMEOUT_S,
    )


def declare_subscriber(
    broker: KafkaBroker,
    cfg: KafkaConfig,
    listener: ConsumerRebalanceListener | None = None,
    *,
    max_poll_interval_s: float = 300.0,
) -> BatchSubscriber:
    """Herald's one subscriber: every input topic, batches, commits only by hand.
    `max_poll_interval_s` must exceed the longest batch (service/kafka/batches.py)."""
    return broker.subscriber(
        *(Topic(name, declare=False) for name in cfg.topics),
        group_id=cfg.group_id,
        auto_offset_reset=cfg.auto_offset_reset,
        batch=True,
        max_records=_BATCH_RECORDS,
        # An idle fetch returns after this long at most: a new event waits for the next
        # fetch, so this bounds the latency from publish to processing.
        fetch_max_wait_ms=_FETCH_MAX_WAIT_MS,
        ack_policy=AckPolicy.MANUAL,
        max_poll_interval_ms=int(max_poll_interval_s * 1000),
        isolation_level=isolation_level(cfg),
        # `reply_to` is Herald's header for decisions (README: Outputs); FastStream would also
        # publish the handler's return value there, an empty record the caller cannot parse.
        no_reply=True,
        listener=listener,
        parser=_keep_raw_headers,
        decoder=_no_decode,
        description=f"Identity events ({cfg.format}); each trigger runs its flow.",
    )


def consumer_broker(
    cfg: KafkaConfig,
    listener: ConsumerRebalanceListener,
    handle: Callable[[Any], Awaitable[None]],
    *,
    max_poll_interval_s: float,
) -> KafkaBroker:
    """A broker whose one subscriber hands each batch (FastStream's message) to `handle`."""
    broker = new_broker(cfg)
    subscriber = declare_subscriber(broker, cfg, listener, max_poll_interval_s=max_poll_interval_s)

    @subscriber
    async def on_batch(_: Any, message: KafkaMessage) -> None:
        await handle(message)

    return broker


async def started_producer(options: dict[str, Any]) -> AIOKafkaProducer:
    """An aiokafka producer with `options`, started (closed again if it cannot start)."""
    producer = AIOKafkaProducer(**options)
    try:
        await producer.start()
    except BaseException:
        await producer.stop()  # else aiokafka warns of an unclosed producer
        raise
    return producer


async def _keep_raw_headers(records: tuple[ConsumerRecord, ...], original: Any) -> Any:
    """FastStream decodes every header as UTF-8 and fails on other bytes or a null value;
    Herald must keep them byte-exact for dead letters, so parse a header-safe copy (a null
    header left out: it counts as absent), keep the raw."""
    safe = tuple(
        dataclasses.replace(
            r, headers=[(k, _utf8_or_empty(v)) for k, v in present_headers(r.headers)]
        )
        for r in records
    )
    message = await original(safe)
    message.raw_message = records
    return message


def _utf8_or_empty(value: bytes) -> bytes:
    if not value:
        return b""
    with contextlib.suppress(UnicodeDecodeError):
        value.decode()
        return value
    return b""


async def _no_decode(message: Any, original: Any) -> None:
    """Herald parses record values itself (events.py); skip FastStream's JSON decode."""
    return None
