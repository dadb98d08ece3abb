"""`kafka.exactly_once`: what Herald writes for a consumed record, and that record's
offset, commit in one Kafka transaction.

One transactional producer per consumed partition, with the transactional id
`herald.<group>.<topic>.<partition>`: the same for whoever owns that partition, so the new
owner's producer fences the old owner (a zombie that lost the partition can commit
nothing more) and aborts the transaction a killed owner left open at once, instead of
after `transaction.timeout.ms`. The producer starts when the partition is assigned and
always has a transaction open; `commit` adds the offsets, commits and opens the next.

A partition with nothing written in its transaction commits its offset with the consumer's
own commit: the group coordinator checks the consumer's generation, so a zombie is fenced
there too, and a batch that wrote nothing (emails only, without status events) pays no
transaction round trips.

Outputs reach the right transaction through `service.consumed.consuming`, set while a
record of the partition is processed (service/kafka/outputs.py reads it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError, ProducerFenced
from aiokafka.partitioner import DefaultPartitioner

__all__ = ["NotOwned", "Transactions", "send_keyed"]

log = logging.getLogger("herald")

#: An offset to commit, alone or with its metadata string.
Offset = int | tuple[int, str]


class NotOwned(KafkaError):
    """An output for a partition this instance no longer owns: its batch is abandoned."""


class _Partition:
    """One consumed partition's producer, its open transaction and whether it holds writes."""

    def __init__(self, producer: AIOKafkaProducer, group_id: str) -> None:
        self.producer = producer
        self.group_id = group_id
        self.written = False
        self.lock = asyncio.Lock()


class Transactions:
    """The transactional producers of the partitions this instance consumes (the input
    topics in the group `kafka.group_id`, the retry topics in the retry group)."""

    def __init__(self, options: Mapping[str, Any], *, timeout_ms: int) -> None:
        self.options = {k: v for k, v in options.items() if k != "enable_idempotence"}
        self.timeout_ms = timeout_ms
        self._partitions: dict[TopicPartition, _Partition] = {}
        self._assigned: dict[TopicPartition, str] = {}  # partition → its consumer group
        self._opening: dict[TopicPartition, asyncio.Future[_Partition]] = {}

    @staticmethod
    def transactional_id(group_id: str, tp: TopicPartition) -> str:
        return f"herald.{group_id}.{tp.topic}.{tp.partition}"

    async def assign(self, tps: Iterable[TopicPartition], group_id: str) -> None:
        """Start the producers of newly assigned partitions (fencing their last owner)."""
        tps = list(tps)
        self._assigned.update(dict.fromkeys(tps, group_id))
        opened = await asyncio.gather(*(self._partition(tp) for tp in tps), return_exceptions=True)
        for tp, result in zip(tps, opened, strict=True):
            if isinstance(result, Exception):  # tried again by the partition's first output
                log.error(
                    "cannot start the transactional producer",
                    extra={"topic": tp.topic, "partition": tp.partition, "error": repr(result)},
                )

    async def revoke(self, tps: Iterable[TopicPartition]) -> None:
        """Abort what is open and stop the producers of partitions no longer owned."""
        for tp in tps:
            self._assigned.pop(tp, None)
        gone = [self._partitions.pop(tp) for tp in tps if tp in self._partitions]
        await asyncio.gather(*(_close(p.producer) for p in gone))

    async def close(self) -> None:
        await self.revoke([*self._assigned, *self._partitions])

    async def send(
        self,
        source: tuple[str, int],
        topic: str,
        value: bytes | None,
        key: bytes | None,
        headers: list[tuple[str, bytes | None]] | None,
    ) -> Any:
        """Write one output in `source`'s open transaction and wait for the broker."""
        return await (await self.enqueue(source, topic, value, key, headers))

    async def enqueue(
        self,
        source: tuple[str, int],
        topic: str,
        value: bytes | None,
        key: bytes | None,
        headers: list[tuple[str, bytes | None]] | None = None,
    ) -> Any:
        """Write one output in `source`'s open transaction; returns the broker's future
        (the commit waits for it anyway)."""
        part = await self._partition(TopicPartition(*source))  # (topic, partition) too
        async with part.lock:
            part.written = True
            return await part.producer.send(topic, value, key=key, headers=headers)

    async def enqueue_keyed(
        self, source: tuple[str, int], topic: str, items: Sequence[tuple[bytes, bytes]]
    ) -> list[Any]:
        """Write keyed records in `source`'s open transaction (`send_keyed`)."""
        part = await self._partition(TopicPartition(*source))  # (topic, partition) too
        async with part.lock:
            part.written = True
            return await send_keyed(part.producer, topic, items)

    async def commit(
        self, offsets: Mapping[TopicPartition, Offset], consumer: Any
    ) -> set[TopicPartition]:
        """Commit each partition's offset: in its transaction when it wrote anything, else
        with the consumer's own commit. Returns the partitions whose commit failed; their
        transactions are aborted, so their records must be consumed again."""
        plain = {tp: o for tp, o in offsets.items() if not self.written(tp)}
        written = [tp for tp in offsets if tp not in plain]
        results = await asyncio.gather(
            *(self._commit(tp, offsets[tp]) for tp in written), return_exceptions=True
        )
        failed = {tp for tp, result in zip(written, results, strict=True) if result is not None}
        if plain:
            try:
                await consumer.commit(plain)
            except KafkaError as exc:
                log.warning(
                    "commit failed; the batch may be redelivered", extra={"error": repr(exc)}
                )
        return failed

    async def abort(self, tps: Iterable[TopicPartition]) -> None:
        """Throw away what the partitions' open transactions hold."""
        await asyncio.gather(*(self._abort(tp) for tp in tps if tp in self._partitions))

    def written(self, tp: TopicPartition) -> bool:
        """Whether the partition's open transaction holds any output."""
        part = self._partitions.get(tp)
        return part is not None and part.written

    async def _partition(self, tp: TopicPartition) -> _Partition:
        part = self._partitions.get(tp)
        if part is not None:
            return part
        if tp not in self._assigned:  # never fence the partition's new owner
            raise NotOwned(f"{tp.topic}/{tp.partition} is no longer assigned to this instance")
        # New, or its producer was fenced or failed and was dropped: one start at a time.
        opening = self._opening.get(tp)
        if opening is None:
            opening = self._opening[tp] = asyncio.ensure_future(self._open(tp))
            opening.add_done_callback(lambda _: self._opening.pop(tp, None))
        return await asyncio.shield(opening)

    async def _open(self, tp: TopicPartition) -> _Partition:
        group_id = self._assigned[tp]
        producer = AIOKafkaProducer(
            **self.options,
            transactional_id=self.transactional_id(group_id, tp),
            transaction_timeout_ms=self.timeout_ms,
        )
        try:
            await producer.start()
            await producer.begin_transaction()  # waits for the producer id: fenced now
        except BaseException:
            await _close(producer)
            raise
        part = self._partitions[tp] = _Partition(producer, group_id)
        return part

    async def _commit(self, tp: TopicPartition, offset: Offset) -> None:
        part = self._partitions[tp]
        async with part.lock:
            try:
                await part.producer.send_offsets_to_transaction({tp: offset}, part.group_id)
                await part.producer.commit_transaction()
                part.written = False
                await part.producer.begin_transaction()
            except KafkaError as exc:
                await self._discard(tp, part, exc)
                raise

    async def _abort(self, tp: TopicPartition) -> None:
        part = self._partitions[tp]
        async with part.lock:
            try:
                await part.producer.abort_transaction()
                part.written = False
                await part.producer.begin_transaction()
            except KafkaError as exc:
                await self._discard(tp, part, exc)

    async def _discard(self, tp: TopicPartition, part: _Partition, exc: KafkaError) -> None:
        """A fenced producer, or one in an unknown transaction state, is closed; the next
        write for its partition starts a fresh one, whose start aborts what it left open."""
        if isinstance(exc, ProducerFenced):
            log.warning(
                "transaction fenced: another instance owns the partition now",
                extra={"topic": tp.topic, "partition": tp.partition},
            )
        else:
            log.warning(
                "transaction failed, its records are consumed again",
                extra={"topic": tp.topic, "partition": tp.partition, "error": repr(exc)},
            )
        if self._partitions.get(tp) is part:
            del self._partitions[tp]
        await _close(part.producer)


_PARTITIONER = DefaultPartitioner()


async def send_keyed(producer: Any, topic: str, items: Sequence[tuple[bytes, bytes]]) -> list[Any]:
    """Write (key, value) records to `topic`, partitioned by key as `send` would (murmur2),
    as one record batch per partition instead of one `send` per record: a batch's worth
    of status events costs a fraction of the CPU. Returns the broker's futures."""
    partitions = sorted(await producer.partitions_for(topic))
    batches: dict[int, list[Any]] = {}
    futures = []
    for key, value in items:
        partition = _PARTITIONER(key, partitions, partitions)
        builders = batches.setdefault(partition, [])
        if not builders or builders[-1].append(key=key, value=value, timestamp=None) is None:
            builders.append(producer.create_batch())
            builders[-1].append(key=key, value=value, timestamp=None)  # a first one always fits
    for partition, builders in batches.items():
        for builder in builders:
            builder.close()
            futures.append(await producer.send_batch(builder, topic, partition=partition))
    return futures


async def _close(producer: AIOKafkaProducer) -> None:
    with contextlib.suppress(KafkaError, OSError, asyncio.TimeoutError):
        await producer.stop()
