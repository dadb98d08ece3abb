"""Delivery status events (`herald.email.status`) on `kafka.status_topic`: queued as
emails end, written when the batch (or the retry scheduler) flushes before it commits,
one record batch per partition, in the transaction of the record they belong to."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiokafka.errors import KafkaError

from service.consumed import source_partition
from service.kafka.transactions import Transactions, send_keyed

__all__ = ["StatusEvents"]

log = logging.getLogger("herald")

#: How long the first status event waits for Kafka to know the status topic, and how
#: often that is asked again.
_TOPIC_WAIT_S = 5.0
_RECHECK_S = 60.0


class StatusEvents:
    """The status events of one producer (and its transactions) not yet acknowledged."""

    def __init__(self, producer: Any, topic: str, transactions: Transactions | None) -> None:
        self.producer = producer
        self.topic = topic
        self.transactions = transactions
        #: Queued, with the partition whose transaction they belong to.
        self._queued: list[tuple[Any, bytes, bytes]] = []
        self._known = True
        self._checked_at = -_RECHECK_S
        self._lock = asyncio.Lock()

    def queue(self, key: bytes, value: bytes) -> None:
        source = source_partition() if self.transactions is not None else None
        self._queued.append((source, key, value))

    async def write(self) -> list[Any]:
        """Hand the queued events to the producer; returns the broker's futures."""
        queued, self._queued = self._queued, []
        if not queued or not await self._topic_known():
            return []
        by_source: dict[Any, list[tuple[bytes, bytes]]] = {}
        for source, key, value in queued:
            by_source.setdefault(source, []).append((key, value))
        futures: list[Any] = []
        for source, items in by_source.items():
            if source is None or self.transactions is None:
                futures += await send_keyed(self.producer, self.topic, items)
            else:
                futures += await self.transactions.enqueue_keyed(source, self.topic, items)
        return futures

    async def _topic_known(self) -> bool:
        """Whether Kafka knows the topic, asked at most once a minute: a status topic
        nobody created must not hold every email for the producer's metadata wait."""
        if time.monotonic() < self._checked_at + _RECHECK_S:
            return self._known
        async with self._lock:  # one question at a time; the others wait for it
            if time.monotonic() < self._checked_at + _RECHECK_S:
                return self._known
            try:
                async with asyncio.timeout(_TOPIC_WAIT_S):
                    await self.producer.partitions_for(self.topic)
                known = True
            except (TimeoutError, KafkaError) as exc:
                if self._known:
                    log.error(
                        "status topic unavailable; status events are skipped until it exists",
                        extra={"status_topic": self.topic, "error": type(exc).__name__},
                    )
                known = False
            self._known, self._checked_at = known, time.monotonic()
        return self._known
