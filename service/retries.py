"""Scheduled email retries (SPEC §6): the retry topic, written and consumed by Herald.

An email whose attempt failed transiently becomes a *work item* on
`<input topic><retry_suffix>`. It keeps the original record's key, value and headers, so
no rendered content or secret is written, and it adds these headers:

    x-herald-retry-action     the action id (dedupe key part)
    x-herald-retry-email      JSON: template, to, to_name, locale, from, reply_to, data
    x-herald-retry-attempt    the attempt to make next (2, 3, …)
    x-herald-retry-due        when it is due (ISO 8601, UTC)
    x-herald-retry-reason     why the last attempt failed (the server's reply)
    x-herald-original-topic / -partition / -offset   where the event came from

The batch that deferred the email commits once the item is written: nothing else waits
for it. `RetryScheduler` consumes the retry topics in its own consumer group
(`<group_id><retry_suffix>`). It keeps the items it read in a heap ordered by due time
and makes each attempt when it is due: one timer for all of them, nothing polled, and
an item due later never holds back one due sooner. A retry-topic offset is committed
only up to the oldest item not finished, so an item survives SIGKILL. Fates per attempt
(`Retrier.attempt`):

- sent, uncertain (never re-sent), duplicate, rate-limited → done;
- transient again → a new item with the next attempt number, or, after
  `retry.attempts`, a dead letter `SmtpRetriesExhausted` with the last reply;
- permanent → a dead letter with its reason;
- an outage (SMTP server or dedupe store down) → the same item again in a few seconds,
  no attempt spent.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import heapq
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from service.events import Event, MalformedEvent
from service.failures import EmailDeferred, EmailFailed, Outage, OutputFailed
from service.flows import event_view
from service.kafka.outputs import Outputs, Record
from service.kafka.transactions import Transactions, consuming
from service.mail.mailer import EmailRequest, Mailer
from service.mail.render import template_context
from service.metrics import Metrics
from service.offsets import decode_done, encode_done
from service.retry import RetryPolicy

__all__ = [
    "MalformedRetry",
    "Retrier",
    "RetryItem",
    "RetryScheduler",
    "request_from",
    "retry_headers",
]

log = logging.getLogger("herald.retries")

_PREFIX = "x-herald-retry-"
_ORIGINAL = ("x-herald-original-topic", "x-herald-original-partition", "x-herald-original-offset")
#: An outage during a retry: look again this much later, without spending an attempt.
_OUTAGE_DELAY_S = 5.0
#: Items read and not finished, beyond which fetching from the retry topic pauses.
_MAX_PENDING = 10_000
_CONCURRENCY = 16
_COMMIT_EVERY_S = 1.0

Parser = Callable[[bytes | None, Sequence[tuple[str, bytes]]], Event | None]
#: The committed metadata of the retry group's partitions (service/offsets.py).
Committed = Callable[[Sequence[TopicPartition]], Awaitable[Mapping[TopicPartition, str]]]


class MalformedRetry(ValueError):
    """A record on a retry topic that Herald did not write (or cannot read)."""


@dataclasses.dataclass(slots=True)
class Original:
    """The input record an item came from (a `Record`: dead letters go to its topic)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


@dataclasses.dataclass(frozen=True, slots=True)
class RetryItem:
    """One email's next attempt, as read from the retry topic."""

    original: Original
    action_id: str
    email: dict[str, Any]
    attempt: int
    due: float
    reason: str


def retry_headers(
    source: Record, request: EmailRequest, attempt: int, due: float, reason: str
) -> tuple[Original, list[tuple[str, bytes]]]:
    """The original record of `source` (itself, or the one it carries) and the headers of
    the work item that makes `attempt` of `request` at `due` (epoch seconds)."""
    original = _original(source)
    email = request.email_fields()
    headers = [
        (_PREFIX + "action", request.action_id.encode()),
        (_PREFIX + "email", orjson.dumps(email, default=str)),
        (_PREFIX + "attempt", str(attempt).encode()),
        (_PREFIX + "due", datetime.fromtimestamp(due, UTC).isoformat().encode()),
        (_PREFIX + "reason", " ".join(reason.split())[:2000].encode()),
        (_ORIGINAL[0], original.topic.encode()),
        (_ORIGINAL[1], str(original.partition).encode()),
        (_ORIGINAL[2], str(original.offset).encode()),
    ]
    return original, headers


def read_item(record: Record) -> RetryItem:
    """A retry-topic record → RetryItem; MalformedRetry when it is not one."""
    ours = {k: v for k, v in record.headers if k.startswith("x-herald-") and v is not None}
    try:
        original = Original(
            topic=ours[_ORIGINAL[0]].decode(),
            partition=int(ours[_ORIGINAL[1]]),
            offset=int(ours[_ORIGINAL[2]]),
            key=record.key,
            value=record.value,
            headers=[(k, v) for k, v in record.headers if not k.startswith("x-herald-")],
        )
        email = orjson.loads(ours[_PREFIX + "email"])
        due = datetime.fromisoformat(ours[_PREFIX + "due"].decode()).timestamp()
        return RetryItem(
            original=original,
            action_id=ours[_PREFIX + "action"].decode(),
            email=email if isinstance(email, dict) else {},
            attempt=int(ours[_PREFIX + "attempt"]),
            due=due,
            reason=ours.get(_PREFIX + "reason", b"").decode(errors="replace"),
        )
    except (KeyError, ValueError, orjson.JSONDecodeError) as exc:
        raise MalformedRetry(f"not a Herald retry item: {exc!r}") from None


def request_from(
    event: Event,
    email: Mapping[str, Any],
    action_id: str,
    secrets: Mapping[str, str],
    **options: Any,
) -> EmailRequest:
    """The email `email` (a retry item's or a delivery record's fields) of `event`,
    made again: the same template, recipient and data, the event as it was read."""
    context = template_context(event_view(event, secrets), secrets, email.get("data"))
    return EmailRequest(
        event_id=event.id,
        action_id=action_id,
        template=str(email.get("template")),
        to=email.get("to"),
        to_name=str(email.get("to_name") or ""),
        locale=email.get("locale"),
        context=context,
        sender=email.get("from"),
        reply_to=email.get("reply_to"),
        **options,
    )


def _original(record: Record) -> Original:
    if isinstance(record, Original):
        return record
    return Original(
        record.topic, record.partition, record.offset, record.key, record.value, record.headers
    )


class Retrier:
    """Makes one attempt of a RetryItem and decides its fate."""

    def __init__(
        self,
        *,
        parse: Parser,
        mailer: Callable[[], Mailer],
        secrets: Callable[[], dict[str, str]],
        outputs: Outputs,
        policy: RetryPolicy,
        metrics: Metrics,
    ) -> None:
        self.parse = parse
        self.mailer = mailer
        self.secrets = secrets
        self.outputs = outputs
        self.policy = policy
        self.metrics = metrics

    async def flush(self) -> None:
        """Status events acknowledged, delivery records written (before a commit)."""
        mailer = self.mailer()
        if mailer.deliveries is not None:
            await mailer.deliveries.flush()
        await self.outputs.flush()

    async def schedule(
        self, source: Record, request: EmailRequest, attempt: int, reason: str
    ) -> None:
        """Write `request`'s `attempt` to the retry topic, due after the policy's wait."""
        due = time.time() + self.policy.delay(attempt)
        original, headers = retry_headers(source, request, attempt, due, reason)
        topic = await self.outputs.retry(original, headers)
        self.metrics.smtp_retries.inc()
        await self.mailer().note(request, "deferred", smtp_reply=reason, next_attempt_at=due)
        log.info(
            "email retry scheduled",
            extra={
                "event_id": request.event_id,
                "action": request.action_id,
                "attempt": attempt,
                "due_in_s": round(due - time.time(), 1),
                "reason": reason,
                "retry_topic": topic,
            },
        )

    async def attempt(self, item: RetryItem) -> None:
        """Make the item's attempt. Raises Outage while the SMTP server or the store is down."""
        try:
            event = self.parse(item.original.value, item.original.headers)
        except MalformedEvent as exc:
            event, problem = None, str(exc)
        if event is None:
            problem = "the event can no longer be read"
            await self._dead_letter(item, "MalformedRetry", problem)
            return
        request = self._request(event, item)
        try:
            await self.mailer().send(request)
        except EmailDeferred as exc:
            if self.policy.exhausted(item.attempt):
                reason = f"gave up after {item.attempt} attempts: {exc.reason}"
                self.metrics.emails.labels(request.template, "retries_exhausted").inc()
                await self.mailer().note(
                    request, "failed", reason="SmtpRetriesExhausted", smtp_reply=exc.reason
                )
                await self._dead_letter(item, "SmtpRetriesExhausted", reason)
            else:
                try:
                    await self.schedule(item.original, request, item.attempt + 1, exc.reason)
                except OutputFailed as failed:
                    await self._dead_letter(item, failed.error, failed.reason)
        except EmailFailed as exc:
            await self._dead_letter(item, exc.error, exc.reason)

    def _request(self, event: Event, item: RetryItem) -> EmailRequest:
        original = item.original
        return request_from(
            event,
            item.email,
            item.action_id,
            self.secrets(),
            attempt=item.attempt,
            source=(original.topic, original.partition, original.offset),
        )

    async def _dead_letter(self, item: RetryItem, error: str, reason: str) -> None:
        topic = await self.outputs.dead_letter(item.original, error, reason)
        self.metrics.dlq.labels(error).inc()
        log.warning(
            "email retry dead-lettered",
            extra={
                "action": item.action_id,
                "attempt": item.attempt,
                "error": error,
                "reason": reason,
                "dlq_topic": topic,
            },
        )


@dataclasses.dataclass(order=True)
class _Due:
    due: float
    seq: int
    tp: TopicPartition = dataclasses.field(compare=False)
    offset: int = dataclasses.field(compare=False)
    item: RetryItem = dataclasses.field(compare=False)


class RetryScheduler(ConsumerRebalanceListener):  # type: ignore[misc]
    """Consumes the retry topics and makes each attempt when it is due."""

    def __init__(
        self,
        consumer: Callable[[ConsumerRebalanceListener], AIOKafkaConsumer],
        retrier: Retrier,
        metrics: Metrics,
        *,
        concurrency: int = _CONCURRENCY,
        group_id: str = "",
        transactions: Transactions | None = None,
        committed: Committed | None = None,
    ) -> None:
        self.retrier = retrier
        self.group_id = group_id
        self.committed = committed
        self.transactions = transactions
        self.metrics = metrics
        self.consumer = consumer(self)
        self._heap: list[_Due] = []
        self._seq = itertools.count()
        self._pending: dict[TopicPartition, set[int]] = {}
        #: When each pending item was written to the retry topic (its record timestamp).
        self._written_at: dict[TopicPartition, dict[int, float]] = {}
        metrics.retry_oldest.set_function(self._oldest_s)
        self._next: dict[TopicPartition, int] = {}  # offset after the last one read
        self._committed: dict[TopicPartition, tuple[int, str]] = {}
        #: Finished at or above the commit position (items finish out of order), and
        #: the same as read back from the committed metadata: not attempted again.
        self._done: dict[TopicPartition, set[int]] = {}
        self._skip: dict[TopicPartition, set[int]] = {}
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

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        await self._commit()
        if self.transactions is not None:
            await self.transactions.revoke(revoked)
        for tp in revoked:
            for state in (
                self._pending,
                self._written_at,
                self._next,
                self._committed,
                self._done,
                self._skip,
            ):
                state.pop(tp, None)
        gone = set(revoked)
        self._heap = [d for d in self._heap if d.tp not in gone]
        heapq.heapify(self._heap)
        self._gauge()

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        if self.transactions is not None:
            await self.transactions.assign(assigned, self.group_id)
        metadata = await self._committed_metadata(assigned)
        for tp in assigned:
            self._pending.setdefault(tp, set())
            self._done.setdefault(tp, set())
            self._skip[tp] = decode_done(metadata.get(tp))

    async def _committed_metadata(
        self, tps: Sequence[TopicPartition]
    ) -> Mapping[TopicPartition, str]:
        if self.committed is None or not tps:
            return {}
        try:
            return await self.committed(tps)
        except (KafkaError, OSError) as exc:  # then those items are attempted again
            log.warning("retry progress not read", extra={"error": repr(exc)})
            return {}

    # --- the three loops ---------------------------------------------------------------

    async def _fetch_forever(self) -> None:
        while not self._stopping:
            try:
                batch = await self.consumer.getmany(timeout_ms=500, max_records=500)
            except KafkaError as exc:
                log.warning("retry topic fetch failed", extra={"error": repr(exc)})
                await asyncio.sleep(1.0)
                continue
            for tp, records in batch.items():
                for record in records:
                    self._add(tp, record)
            self._backpressure()

    def _add(self, tp: TopicPartition, record: Any) -> None:
        self._next[tp] = record.offset + 1
        if record.offset in self._skip.get(tp, ()):  # finished before the last rebalance
            self._done.setdefault(tp, set()).add(record.offset)
            return
        try:
            item = read_item(record)
        except MalformedRetry as exc:
            log.error(
                "unreadable record on the retry topic, skipped",
                extra={
                    "topic": tp.topic,
                    "partition": tp.partition,
                    "offset": record.offset,
                    "reason": str(exc),
                },
            )
            self._done.setdefault(tp, set()).add(record.offset)
            return
        self._pending.setdefault(tp, set()).add(record.offset)
        written = record.timestamp / 1000 if record.timestamp and record.timestamp > 0 else None
        self._written_at.setdefault(tp, {})[record.offset] = written or time.time()
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
            with consuming(due.tp.topic, due.tp.partition):
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
            if due.tp in self._pending:
                self._pending[due.tp].discard(due.offset)
                self._done[due.tp].add(due.offset)
                self._written_at.get(due.tp, {}).pop(due.offset, None)
            self._gauge()
        finally:
            self._slots.release()

    def _again_later(self, due: _Due) -> None:
        """The same item again in a few seconds, no attempt spent; unless its partition
        was revoked meanwhile (the new owner reads it again from the committed offset)."""
        if due.tp not in self._pending:
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
        offsets: dict[TopicPartition, tuple[int, str]] = {}
        for tp, upto in self._next.items():
            pending = self._pending.get(tp)
            offset = min(pending) if pending else upto
            done = self._done[tp] = {o for o in self._done.get(tp, ()) if o >= offset}
            commit = (offset, encode_done(done))
            if self._committed.get(tp) != commit or self._written(tp):
                offsets[tp] = commit  # an idle scheduler commits nothing
        if not offsets:
            return
        try:
            await self.retrier.flush()  # the status events and records of these attempts
        except Exception as exc:
            log.warning("status events not written; committing later", extra={"error": repr(exc)})
            return
        if self.transactions is not None:
            failed = await self.transactions.commit(offsets, self.consumer)
            self._committed.update({tp: o for tp, o in offsets.items() if tp not in failed})
            for tp in failed:
                await self._read_again(tp)
            return
        try:
            await self.consumer.commit(offsets)
            self._committed.update(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            log.warning("retry commit failed (rebalance)", extra={"error": type(exc).__name__})
        except KafkaError as exc:
            log.warning("retry commit failed", extra={"error": repr(exc)})

    def _written(self, tp: TopicPartition) -> bool:
        return self.transactions is not None and self.transactions.written(tp)

    async def _read_again(self, tp: TopicPartition) -> None:
        """The transaction of `tp` was aborted: what its attempts wrote is gone, so read
        the partition again from its committed offset and make those attempts again (an
        email already sent is not sent twice: the dedupe store)."""
        self._heap = [d for d in self._heap if d.tp != tp]
        heapq.heapify(self._heap)
        self._pending[tp] = set()
        self._written_at[tp] = {}
        self._next.pop(tp, None)
        self._done[tp] = set()
        self._skip[tp] = decode_done(self._committed.get(tp, (0, ""))[1])
        with contextlib.suppress(KafkaError, IllegalStateError, AssertionError):
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
        self.metrics.retries_pending.set(sum(len(p) for p in self._pending.values()))

    def _oldest_s(self) -> float:
        """`herald_retry_oldest_seconds`, computed when scraped (not on every change)."""
        written = [t for items in self._written_at.values() for t in items.values()]
        return max(time.time() - min(written), 0.0) if written else 0.0
