"""One consumed batch to its fate: commit, hand back, rewind for redelivery, or pause.

The fates, decided here:
- every record finished or dead-lettered → commit;
- a dependency is down altogether (the SMTP server) → commit what finished, rewind the
  rest, wait until the server answers again (readiness is false meanwhile), then let the
  consumer fetch again;
- an output could not be written (Kafka) → the same, with a short pause;
- shutdown, or a batch running past its budget → records not started are handed back:
  what finished is committed, the rest is consumed again (by this instance, or on
  shutdown by whoever owns the partition next);
- the commit fails (a rebalance took the partitions) → the new owner redelivers the
  batch; the dedupe store keeps its emails from being sent twice.

"What finished" is per partition: the offsets before the first record not finished. With
`kafka.exactly_once` a partition commits only when all its records in the batch finished
(its transaction holds their outputs); an unfinished one is aborted and consumed again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from service.consumed import Record
from service.failures import Outage, StoreUnavailable
from service.kafka.lag import update_lag
from service.kafka.transactions import Transactions
from service.metrics import Metrics
from service.processor import Processor

__all__ = ["BATCH_BUDGET_S", "BatchRunner", "Message", "Progress"]

log = logging.getLogger("herald")

_REDELIVERY_PAUSE_S = 1.0
#: One wait for an outage stays well under the consumer's max poll interval, so the
#: consumer keeps its group membership while it waits.
_OUTAGE_WAIT_S = 30.0
#: After this long a batch starts no more records: the rest is consumed again at once.
#: Keeps every poll well inside `max_poll_interval_ms` (service/kafka.py).
BATCH_BUDGET_S = 60.0


class Message(Protocol):
    """A consumed batch: its records and the consumer that fetched them."""

    raw_message: Any
    consumer: Any


class Progress:
    """Which records of a batch finished, and so how far each partition may commit."""

    def __init__(self, records: Sequence[Record]) -> None:
        self.first: dict[TopicPartition, int] = {}
        self.next: dict[TopicPartition, int] = {}
        self.unfinished: dict[TopicPartition, set[int]] = {}
        for record in records:
            tp = TopicPartition(record.topic, record.partition)
            self.first.setdefault(tp, record.offset)
            self.next[tp] = record.offset + 1
            self.unfinished.setdefault(tp, set()).add(record.offset)

    def finished(self, record: Record) -> None:
        self.unfinished[TopicPartition(record.topic, record.partition)].discard(record.offset)

    @property
    def complete(self) -> bool:
        return not any(self.unfinished.values())

    def done(self, tp: TopicPartition) -> bool:
        return not self.unfinished[tp]

    def position(self, tp: TopicPartition) -> int:
        """The offset to commit: the first record not finished, or the one after the last."""
        pending = self.unfinished[tp]
        return min(pending) if pending else self.next[tp]

    def counts(self) -> tuple[int, int]:
        """Records finished, records not."""
        left = sum(len(p) for p in self.unfinished.values())
        total = sum(self.next[tp] - self.first[tp] for tp in self.first)
        return max(total - left, 0), left


class BatchRunner:
    """Processes batches and decides their fate; `stop` hands back what has not started."""

    def __init__(
        self,
        processor: Processor,
        probe: Callable[[], Awaitable[bool]],
        metrics: Metrics,
        *,
        initial_backoff_s: float,
        max_backoff_s: float,
        transactions: Transactions | None = None,
        budget_s: float = BATCH_BUDGET_S,
    ) -> None:
        self.processor = processor
        self.probe = probe
        self.metrics = metrics
        self.initial_backoff_s = max(initial_backoff_s, 0.05)
        self.max_backoff_s = max(max_backoff_s, self.initial_backoff_s)
        self.transactions = transactions
        self.budget_s = budget_s
        self.paused = False
        self.stopping = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._handback: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    async def handle(self, message: Message) -> None:
        """Process one batch; commit only what finished."""
        self._idle.clear()
        try:
            await self._handle(message)
        finally:
            self._idle.set()

    async def stop(self, drain_s: float) -> None:
        """Start no more records; give those in flight `drain_s` to finish, then cancel
        them (a send already handed to the server is recorded, never abandoned); return
        once the batch in flight committed what finished."""
        self.stopping.set()
        if self._handback is not None:
            self._handback.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), drain_s)
            return
        if self._task is not None:
            log.warning("shutdown: cancelling the records still in flight")
            self._task.cancel()
        await self._idle.wait()

    async def idle(self, timeout: float) -> None:
        """Until no batch is in flight (a rebalance lets it commit first), at most `timeout`."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)

    async def _handle(self, message: Message) -> None:
        records: Sequence[Record] = message.raw_message
        progress = Progress(records)
        if self.stopping.is_set():  # fetched as Herald stops: all of it handed back
            self._rewind(message, progress, progress.first)
            return
        handback = self._handback = asyncio.Event()
        task = self._task = asyncio.create_task(
            self.processor.process_batch(records, progress.finished, handback)
        )
        budget = asyncio.get_running_loop().call_later(self.budget_s, handback.set)
        try:
            await asyncio.wait([task])
        finally:
            budget.cancel()
            self._handback = self._task = None
        error = None if task.cancelled() else task.exception()
        await self._settle(message, progress)
        await update_lag(message.consumer, self.metrics.consumer_lag)
        if error is None:
            if not progress.complete:
                done, left = progress.counts()
                log.info("batch handed back", extra={"finished": done, "handed_back": left})
        elif isinstance(error, Outage):
            await self._wait_out_outage(error)
        else:
            log.error("batch failed, will be redelivered", exc_info=error)
            await self._sleep(_REDELIVERY_PAUSE_S)

    async def _settle(self, message: Message, progress: Progress) -> None:
        """Commit what finished; rewind the consumer to what did not."""
        try:
            await self.processor.flush()  # the status events and records written meanwhile
        except Exception as exc:
            log.warning("status events not written; the batch is consumed again", exc_info=exc)
            await self._abort_all(progress)
            self._rewind(message, progress, progress.first)
            return
        if self.transactions is None:
            offsets = {tp: progress.position(tp) for tp in progress.first}
            rewind = {tp: o for tp, o in offsets.items() if not progress.done(tp)}
            moved = {tp: o for tp, o in offsets.items() if o > progress.first[tp]}
            await self._commit(message, moved)
        else:
            done = {tp: progress.next[tp] for tp in progress.first if progress.done(tp)}
            rewind = {tp: o for tp, o in progress.first.items() if tp not in done}
            await self.transactions.abort(rewind)
            failed = await self._commit_transactions(message, done)
            rewind.update({tp: progress.first[tp] for tp in failed})
        self._rewind(message, progress, rewind)

    async def _abort_all(self, progress: Progress) -> None:
        if self.transactions is not None:
            await self.transactions.abort(progress.first)

    async def _commit(self, message: Message, offsets: dict[TopicPartition, int]) -> None:
        if not offsets:
            return
        try:
            await message.consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            log.warning(
                "commit failed (partitions reassigned); the new owner redelivers the batch",
                extra={"error": type(exc).__name__},
            )
        except KafkaError as exc:
            log.warning("commit failed; the batch may be redelivered", exc_info=exc)

    async def _commit_transactions(
        self, message: Message, offsets: dict[TopicPartition, int]
    ) -> set[TopicPartition]:
        assert self.transactions is not None
        failed = await self.transactions.commit(offsets, message.consumer)
        if failed:
            log.warning(
                "transaction commit failed; those partitions are consumed again",
                extra={"partitions": sorted(f"{tp.topic}/{tp.partition}" for tp in failed)},
            )
        return failed

    @staticmethod
    def _rewind(message: Message, progress: Progress, offsets: dict[TopicPartition, int]) -> None:
        for tp, offset in offsets.items():
            with contextlib.suppress(IllegalStateError, AssertionError, KeyError):
                message.consumer.seek(tp, offset)  # not assigned any more: nothing to do

    async def _wait_out_outage(self, error: Outage) -> None:
        """Poll the SMTP server (`probe`) with backoff until it answers, up to one wait
        period; a dedupe store that was down is simply tried again by the next batch."""
        store = isinstance(error, StoreUnavailable)
        if not self.paused:
            self.paused = True
            self.metrics.paused.set(1)
            paused = "dedupe store unavailable" if store else "smtp server unreachable"
            log.error(f"{paused}, consumption paused", extra={"reason": str(error)})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _OUTAGE_WAIT_S
        delay = self.initial_backoff_s
        while loop.time() < deadline and not self.stopping.is_set():
            await self._sleep(delay)
            if await self.probe():
                self.paused = False
                self.metrics.paused.set(0)
                log.warning(
                    "consumption resumed, trying the dedupe store again"
                    if store
                    else "smtp server reachable again, consumption resumed"
                )
                return
            delay = min(delay * 2, self.max_backoff_s)

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake up at once when Herald is stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)
