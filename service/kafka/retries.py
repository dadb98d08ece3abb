"""The retry scheduler bound to aiokafka: the one part of the retries that imports it.

`RetryScheduler` is `Scheduler` (service/retry/scheduler.py) as the rebalance listener
of an AIOKafkaConsumer, catching aiokafka's errors, its attempts' outputs written in the
source partition's transaction (service/kafka/transactions.py).
"""

from __future__ import annotations

from collections.abc import Callable

from aiokafka import AIOKafkaConsumer
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from service.consumed import consuming
from service.metrics import Metrics
from service.retry.protocols import ConsumerErrors, RetryGroup
from service.retry.retrier import Retrier
from service.retry.scheduler import DEFAULT_CONCURRENCY, Scheduler

__all__ = ["KAFKA_ERRORS", "RetryScheduler"]

#: A commit refused by a rebalance is logged as such; any other client error as it is.
KAFKA_ERRORS = ConsumerErrors(
    failed=(KafkaError,), rebalance=(CommitFailedError, IllegalStateError)
)


class RetryScheduler(Scheduler, ConsumerRebalanceListener):  # type: ignore[misc]
    """Consumes the retry topics and makes each attempt when it is due."""

    def __init__(
        self,
        consumer: Callable[[ConsumerRebalanceListener], AIOKafkaConsumer],
        retrier: Retrier,
        metrics: Metrics,
        group: RetryGroup,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        super().__init__(
            consumer,
            retrier,
            metrics,
            group,
            errors=KAFKA_ERRORS,
            consuming=consuming,
            concurrency=concurrency,
        )
