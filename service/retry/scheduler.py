"""Scheduled email retries: the retry topic, written and consumed by Herald (README:
"Delivery guarantees").

The batch that deferred an email commits once its item (service/retry/item.py) is
written: nothing else waits for it. The scheduler consumes the retry topics in its own
consumer group (`<group_id><retry_suffix>`). It keeps the items it read in a heap ordered
by due time and makes each attempt (`Retrier.attempt`, service/retry/retrier.py) when it is
due: one timer for all of them, nothing polled, and an item due later never holds back
one due sooner. A retry-topic offset is committed only up to the oldest item not
finished (service/retry/progress.py), so an item survives SIGKILL.

This module sees the Kafka client only through the protocols of service/retry/protocols.py;
service/kafka/retries.py binds it to aiokafka.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import heapq
import itertools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from service.consumed import where
from service.failures import Outage
from service.metrics import Metrics
from service.retry.item import MalformedRetry, RetryItem, read_item
from service.retry.progress import Progress
from service.retry.protocols import ConsumerErrors, Partition, RetryConsumer, RetryGroup
from service.retry.retrier import Retrier

__all__ = ["Scheduler"]

log = logging.getLogger("herald.retries")

#: An outage during a retry: look again this much later, without spending an attempt.
_OUTAGE_DELAY_S = 5.0
#: Items read and not finished, beyond which fetching from the retry topic pauses.
_MAX_PENDING = 10_000
DEFAULT_CONCURRENCY = 16
_COMMIT_EVERY_S = 1.0


@dataclasses.dataclass(order=True)
class _Due:
    due: float
    seq: int
    tp: Partition = dataclasses.field(compare=False)
    offset: int = dataclasses.field(compare=False)
    item: RetryItem = dataclasses.field(compare=False)


class Scheduler:
    """Consumes the retry topics and makes each attempt when it is due; also the
    consumer's rebalance listener."""

    def __init__(
        self,
        consumer: Callable[[Any], RetryConsumer],
        retrier: Retrier,
        metrics: Metrics,
        group: RetryGroup,
        *,
        errors: ConsumerErrors,
        consuming: Callable[[str, int], AbstractContextManager[None]],
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        self.retrier = retrier
        self.metrics = metrics
        self.group = group
        self.errors = errors
        #: Why the committed metadata may not be read.
        self._unread: tuple[type[Exception], ...] = (*errors.failed, OSError)
        self._consuming = consuming
        self.consumer = consumer(self)
        self._heap: list[_Due] = []
        self._seq = itertools.count()
        self._progress = Progress()
        metrics.retry_oldest.set_function(self._progress.oldest_s)
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(concurrency)
        self._running: set[asyncio.Task[None]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._paused = False

    async def start(self) -> None:
        """Join the retry group and start reading, dispatching and committing."""
        try:
            await self.consumer.start()
        except BaseException:
            await self.consumer.stop()
            raise
        self._tasks = [
            asyncio.create_task(self._fetch_forever(), name="retry-fetch"),
            asyncio.create_task(self._dispatch_forever(), name="retry-dispatch"),
            asyncio.create_task(self._commit_forever(), name="retry-commit"),
        ]

    async def stop(self, drain_s: float = 10.0) -> None:
        """Stop reading and dispatching (items waiting for their time stay on the retry
        topic); give attempts in flight `drain_s` to finish, then cancel them (a send
        already handed to the server is recorded, never abandoned); commit; close."""
        self._stopping = True
        self._wake.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._running:
            await asyncio.wait(self._running, timeout=drain_s)
        for task in self._running:
            task.cancel()
        if self._running:
            await asyncio.wait(self._running)
        await self._commit()
        await self.consumer.stop()

    # --- rebalances ------------------------------------------------------------------

    async def on_partitions_revoked(self, revoked: Sequence[Partition]) -> None:
        await self._commit()
        if self.group.transactions is not None:
            await self.group.transactions.revoke(revoked)
        self._progress.revoke(revoked)
        gone = set(revoked)
        self._heap = [d for d in self._heap if d.tp not in gone]
        heapq.heapify(self._heap)
        self._gauge()

    async def on_partitions_assigned(self, assigned: Sequence[Partition]) -> None:
        if self.group.transactions is not None:
            await self.group.transactions.assign(assigned, self.group.id)
        metadata = await self._committed_metadata(assigned)
        for tp in assigned:
            self._progress.assign(tp, metadata.get(tp))

    async def _committed_metadata(self, tps: Sequence[Partition]) -> Mapping[Partition, str]:
        if self.group.committed is None or not tps:
            return {}
        try:
            return await self.group.committed(tps)
        except self._unread as exc:  # then those items are attempted again
            log.warning("retry progress not read", extra={"error": repr(exc)})
            return {}

    # --- the three loops ---------------------------------------------------------------

    async def _fetch_forever(self) -> None:
        while not self._stopping:
            try:
                batch = await self.consumer.getmany(timeout_ms=500, max_records=500)
            except self.errors.failed as exc:
                log.warning("retry topic fetch failed", extra={"error": repr(exc)})
                await asyncio.sleep(1.0)
                continue
            for tp, records in batch.items():
                for record in records:
                    self._add(tp, record)
            self._backpressure()

    def _add(self, tp: Partition, record: Any) -> None:
        if not self._progress.read(tp, record.offset):  # finished before the last rebalance
            return
        try:
            item = read_item(record)
        except MalformedRetry as exc:
            log.error(
                "unreadable record on the retry topic, skipped",
                extra={**where(record), "reason": str(exc)},
            )
            self._progress.skip(tp, record.offset)
            return
        self._progress.add(tp, record.offset, record.timestamp)
        heapq.heappush(self._heap, _Due(item.due, next(self._seq), tp, record.offset, item))
        self._gauge()
        self._wake.set()

    async def _dispatch_forever(self) -> None:
        while not self._stopping:
            delay = self._heap[0].due - time.time() if self._heap else 3600.0
            if delay > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
                continue
            due = heapq.heappop(self._heap)
            await self._slots.acquire()
            task = asyncio.create_task(self._run(due))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, due: _Due) -> None:
        try:
            with self._consuming(due.tp.topic, due.tp.partition):
                await self.retrier.attempt(due.item)
            mailer = self.retrier.mailer()
            if mailer.deliveries is not None:  # retries are few: their records at once
                await mailer.deliveries.flush()
        except asyncio.CancelledError:  # shutdown: the item stays uncommitted
            raise
        except Outage as exc:
            log.warning("retry waits for an outage", extra={"reason": str(exc)})
            self._again_later(due)
        except Exception as exc:
            # Kafka refused the next item or the dead letter: try again shortly.
            log.error("retry attempt failed, trying again", exc_info=exc)
            self._again_later(due)
        else:
            self._progress.finish(due.tp, due.offset)
            self._gauge()
        finally:
            self._slots.release()

    def _again_later(self, due: _Due) -> None:
        """The same item again in a few seconds, no attempt spent; unless its partition
        was revoked meanwhile (the new owner reads it again from the committed offset)."""
        if not self._progress.owns(due.tp):
            return
        due.due, due.seq = time.time() + _OUTAGE_DELAY_S, next(self._seq)
        heapq.heappush(self._heap, due)
        self._wake.set()

    async def _commit_forever(self) -> None:
        while not self._stopping:
            await asyncio.sleep(_COMMIT_EVERY_S)
            await self._commit()

    async def _commit(self) -> None:
        """Commit each partition up to its oldest unfinished item, with the items finished
        above it in the metadata (with `kafka.exactly_once`, in the transaction holding
        the attempts' outputs)."""
        offsets = self._progress.due_commits(self._written)
        if not offsets:
            return
        try:
            await self.retrier.flush()  # the status events and records of these attempts
        except Exception as exc:
            log.warning("status events not written; committing later", extra={"error": repr(exc)})
            return
        if self.group.transactions is not None:
            failed = await self.group.transactions.commit(offsets, self.consumer)
            self._progress.committed({tp: o for tp, o in offsets.items() if tp not in failed})
            for tp in failed:
                await self._read_again(tp)
            return
        try:
            await self.consumer.commit(offsets)
            self._progress.committed(offsets)
        except self.errors.rebalance as exc:
            log.warning("retry commit failed (rebalance)", extra={"error": type(exc).__name__})
        except self.errors.failed as exc:
            log.warning("retry commit failed", extra={"error": repr(exc)})

    def _written(self, tp: Partition) -> bool:
        return self.group.transactions is not None and self.group.transactions.written(tp)

    async def _read_again(self, tp: Partition) -> None:
        """The transaction of `tp` was aborted: what its attempts wrote is gone, so read
        the partition again from its committed offset and make those attempts again (an
        email already sent is not sent twice: the dedupe store)."""
        self._heap = [d for d in self._heap if d.tp != tp]
        heapq.heapify(self._heap)
        self._progress.read_again(tp)
        with contextlib.suppress(*self.errors.failed, *self.errors.rebalance, AssertionError):
            await self.consumer.seek_to_committed(tp)
        self._gauge()

    def _backpressure(self) -> None:
        pending = len(self._heap)
        assignment = list(self.consumer.assignment())
        if not self._paused and pending >= _MAX_PENDING:
            self.consumer.pause(*assignment)
            self._paused = True
        elif self._paused and pending < _MAX_PENDING // 2:
            self.consumer.resume(*assignment)
            self._paused = False

    def _gauge(self) -> None:
        self.metrics.retries_pending.set(self._progress.pending())
