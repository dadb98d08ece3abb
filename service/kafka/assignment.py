"""Which partitions this instance owns, as the consumer group's rebalances say."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from aiokafka import TopicPartition
from aiokafka.abc import ConsumerRebalanceListener

from service.kafka.batches import BatchRunner
from service.kafka.transactions import Transactions

__all__ = ["Assignment"]

log = logging.getLogger("herald")

#: How long a rebalance lets the batch in flight finish and commit before it takes over.
REBALANCE_WAIT_S = 30.0


class Assignment(ConsumerRebalanceListener):  # type: ignore[misc]
    """Tracks the partitions this instance owns, for readiness; a revoke lets the batch in
    flight commit first, and with `exactly_once` partitions come and go with producers."""

    def __init__(self, group_id: str) -> None:
        self.group_id = group_id
        self.partitions: set[TopicPartition] = set()
        self.runner: BatchRunner | None = None
        self.transactions: Transactions | None = None

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        if self.runner is not None:
            await self.runner.idle(REBALANCE_WAIT_S)
        self.partitions -= set(revoked)
        if self.transactions is not None:
            await self.transactions.revoke(revoked)

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        if self.transactions is not None:
            await self.transactions.assign(assigned, self.group_id)
        self.partitions |= set(assigned)
        log.info("partitions assigned", extra={"partitions": len(self.partitions)})
