"""One record read again by its position (`herald resend`)."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from service.config import KafkaConfig
from service.kafka.options import consumer_options

__all__ = ["read_record"]


async def read_record(
    cfg: KafkaConfig, topic: str, partition: int, offset: int, *, timeout_s: float
) -> ConsumerRecord | None:
    """The record at `topic`/`partition`/`offset`, or None when it is no longer there
    (removed by the topic's retention). Raises OSError or ConnectionError when Kafka
    cannot be reached."""
    tp = TopicPartition(topic, partition)
    consumer = AIOKafkaConsumer(enable_auto_commit=False, **consumer_options(cfg))
    try:
        await consumer.start()
        consumer.assign([tp])
        consumer.seek(tp, offset)
        found = await consumer.getmany(tp, timeout_ms=int(timeout_s * 1000), max_records=1)
    finally:
        await consumer.stop()
    got = found.get(tp, [])
    return got[0] if got and got[0].offset == offset else None
