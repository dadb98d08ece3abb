"""What the retry scheduler needs of the Kafka client, as small protocols: its consumer,
the partitions' transactions, the committed metadata and the errors it raises
(service/kafka/retries.py gives it aiokafka's)."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from service.retry.progress import Commit

__all__ = [
    "Committed",
    "ConsumerErrors",
    "Partition",
    "RetryConsumer",
    "RetryGroup",
    "RetryTransactions",
]

#: A partition, as the consumer names it (aiokafka's TopicPartition): `.topic`, `.partition`.
Partition = Any
#: The committed metadata of the retry group's partitions (service/retry/offsets.py).
Committed = Callable[[Sequence[Partition]], Awaitable[Mapping[Partition, str]]]


class RetryConsumer(Protocol):
    """The consumer of the retry topics (aiokafka's AIOKafkaConsumer)."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def getmany(self, *, timeout_ms: int, max_records: int) -> Mapping[Any, Any]: ...
    async def commit(self, offsets: Mapping[Any, Commit]) -> None: ...
    async def seek_to_committed(self, *partitions: Any) -> Any: ...
    def assignment(self) -> Any: ...
    def pause(self, *partitions: Any) -> None: ...
    def resume(self, *partitions: Any) -> None: ...


class RetryTransactions(Protocol):
    """The partitions' transactions under `kafka.exactly_once` (Transactions)."""

    async def assign(self, tps: Iterable[Any], group_id: str) -> None: ...
    async def revoke(self, tps: Iterable[Any]) -> None: ...
    async def commit(self, offsets: Mapping[Any, Commit], consumer: Any) -> set[Any]: ...
    def written(self, tp: Any) -> bool: ...


@dataclasses.dataclass(frozen=True)
class ConsumerErrors:
    """What the consumer raises: any client error, and a commit refused by a rebalance."""

    failed: tuple[type[Exception], ...]
    rebalance: tuple[type[Exception], ...]


@dataclasses.dataclass(frozen=True)
class RetryGroup:
    """The consumer group of the retry topics, as the scheduler commits in it."""

    #: Its name: the kafka section's `<group_id><retry_suffix>`.
    id: str = ""
    #: `kafka.exactly_once`: each partition's attempts' outputs and commits in one transaction.
    transactions: RetryTransactions | None = None
    #: Reads the committed offsets' metadata: the items finished above them.
    committed: Committed | None = None
