"""Consumer lag (`herald_consumer_lag`): records behind the end of each assigned partition.

Computed from what the consumer already knows, with no request to Kafka: the end offset
(the high watermark) comes with every fetch response, the position is where the next
record handed to Herald starts (after a rewind, the record consumed again). Updated
after every batch (service/kafka/batches.py); a series exists exactly for the partitions
assigned at that moment whose end and position are known, so a revoked partition's
series is removed and a reassigned one's set again once it was fetched.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import IllegalStateError
from prometheus_client import Gauge

__all__ = ["update_lag"]

#: A position being reset (out of range) is not waited for: that partition has no
#: series until the next batch.
_POSITION_WAIT_S = 0.05


async def update_lag(consumer: Any, gauge: Gauge) -> None:
    """Set `gauge{topic,partition}` for every assigned partition; remove the others."""
    live: set[tuple[str, str]] = set()
    for tp in list(consumer.assignment()):
        lag = await _lag(consumer, tp)
        if lag is not None:
            labels = (tp.topic, str(tp.partition))
            gauge.labels(*labels).set(lag)
            live.add(labels)
    for labels in _series(gauge) - live:
        gauge.remove(*labels)


async def _lag(consumer: Any, tp: TopicPartition) -> int | None:
    try:
        end = consumer.highwater(tp)
        if end is None:  # not fetched yet
            return None
        # A valid position is returned at once; only a pending reset would wait.
        async with asyncio.timeout(_POSITION_WAIT_S):
            position = await consumer.position(tp)
    except (IllegalStateError, AssertionError, TimeoutError):  # revoked meanwhile, or reset
        return None
    return max(int(end) - int(position), 0)


def _series(gauge: Gauge) -> set[tuple[str, str]]:
    return {
        (sample.labels["topic"], sample.labels["partition"])
        for family in gauge.collect()
        for sample in family.samples
    }
