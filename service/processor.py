"""From consumed records to finished work: parse, run the flow, dead-letter, log, count.

Ordering: records with the same key run one after another, in offset order; different
keys run concurrently. The caller commits only after `process_batch` returned.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from service.addresses import mask_address
from service.consumed import Record, consuming, where
from service.events import Event, MalformedEvent, parse_cloudevent, present_headers
from service.failures import ActionFailed, Outage, OutputFailed
from service.flows import FlowEngine, FlowResult
from service.formats import Parser
from service.logs import mask_addresses
from service.metrics import LabelledCounter, Metrics
from service.retry.retrier import Retrier

__all__ = ["Processor"]

log = logging.getLogger("herald.events")

PRE_REGISTRATION = "pre-user-registration"
_OUTPUT_HEADERS = frozenset({"reply_to", "correlation_id"})


#: `user_metadata` / `app_metadata` of a metadata command.
Metadata = dict[str, Any]


class Outputs(Protocol):
    """What a flow's end writes (service/kafka/outputs.py): its outputs, or its dead letter."""

    async def metadata_command(
        self, event_id: str, user_id: str, user_metadata: Metadata, app_metadata: Metadata
    ) -> None: ...

    async def decision(
        self, body: dict[str, Any], user_id: str, reply_to: str | None, correlation_id: bytes | None
    ) -> str: ...

    async def dead_letter(self, record: Record, error: str, reason: str) -> str: ...

    async def flush(self) -> None:
        """Until everything written so far is acknowledged (before a commit)."""


def _nothing(record: Record) -> None:
    return None


@dataclasses.dataclass(eq=False)
class Processor:
    """Processes batches of records; never raises for a bad record, only for lost output."""

    engine: FlowEngine
    outputs: Outputs
    metrics: Metrics
    _: dataclasses.KW_ONLY
    #: Records of a batch in flight at once, over all keys (one worker each).
    concurrency: int = 64
    show_addresses: bool = False
    parse: Parser = parse_cloudevent
    retrier: Retrier | None = None

    def __post_init__(self) -> None:
        self._events = LabelledCounter(self.metrics.events)

    async def process_batch(
        self,
        records: Sequence[Record],
        finished: Callable[[Record], None] = _nothing,
        handback: asyncio.Event | None = None,
    ) -> None:
        """Process every record; same-key records in order, other keys concurrently.
        `finished` is told of each record that reached its end; once `handback` is set,
        no more records start (the caller hands them back)."""
        lanes: dict[Any, list[Record]] = defaultdict(list)
        for record in records:
            lane = record.key if record.key is not None else (record.topic, record.partition)
            lanes[lane].append(record)
        # Up to `concurrency` workers take the lanes in turn: a task per worker, not per
        # key. Siblings are not cancelled when one lane fails: work that could finish
        # does, and is committed.
        todo = iter(lanes.values())
        errors: list[BaseException] = []

        async def work() -> None:
            for same_key in todo:
                try:
                    await self._process_lane(same_key, finished, handback)
                except Exception as exc:
                    errors.append(exc)

        outcomes = await asyncio.gather(
            *(work() for _ in range(min(self.concurrency, len(lanes)))), return_exceptions=True
        )
        errors += [o for o in outcomes if isinstance(o, BaseException)]
        paused = [e for e in errors if isinstance(e, Outage)]
        if paused or errors:
            raise (paused or errors)[0]

    async def _process_lane(
        self,
        records: list[Record],
        finished: Callable[[Record], None],
        handback: asyncio.Event | None,
    ) -> None:
        for record in records:
            if handback is not None and handback.is_set():
                return
            with consuming(record.topic, record.partition, record.offset):
                await self.process(record)
            finished(record)

    async def process(self, record: Record) -> None:
        """One record to its fate: done, skipped or dead-lettered."""
        started = time.perf_counter()
        headers = present_headers(record.headers)
        try:
            event = self.parse(record.value, headers)
        except MalformedEvent as exc:
            await self._dead_letter(record, None, "MalformedEvent", str(exc), started)
            return
        if event is None:
            self._events.inc("unknown", "skipped")
            log.debug("event type has no trigger, skipped", extra=where(record))
            return
        try:
            result = await self.engine.run(event)
        except Outage:
            raise
        except Exception as exc:  # a bug in Herald itself: contain it to this event
            log.error("flow crashed", exc_info=exc, extra={"event_id": event.id})
            await self._dead_letter(record, event, "InternalError", str(exc), started)
            return
        try:
            await self._defer(record, result)
        except OutputFailed as exc:  # the retry item cannot be written: this event's end
            await self._dead_letter(record, event, exc.error, exc.reason, started, result)
            return
        if result.failure is not None and not event.trigger.synchronous:
            failure = result.failure
            await self._dead_letter(record, event, failure.error, failure.reason, started, result)
            return
        try:
            await self._publish(event, result, _headers(headers))
        except OutputFailed as exc:
            await self._dead_letter(record, event, exc.error, exc.reason, started, result)
            return
        self._finished(event, "failed_closed" if result.failure else "ok", started, result)

    async def _defer(self, record: Record, result: FlowResult) -> None:
        """Schedule the emails whose first attempt failed transiently; without retries
        (`retry.attempts: 1`) that failure is final."""
        for request, reason in result.deferred:
            if self.retrier is None or self.retrier.policy.exhausted(1):
                if result.failure is None:
                    result.failure = ActionFailed("SmtpRetriesExhausted", reason)
                await self.engine.mailer.note(request, "failed", reason="SmtpRetriesExhausted")
                continue
            await self.retrier.schedule(record, request, 2, reason)

    async def flush(self) -> None:
        """Status events acknowledged, delivery records written (before a commit)."""
        deliveries = self.engine.mailer.deliveries if self.engine.mailer else None
        if deliveries is not None:
            await deliveries.flush()
        await self.outputs.flush()

    async def decide(self, event: Event) -> dict[str, Any]:
        """Run a synchronous flow for the decision webhook; returns the decision body."""
        started = time.perf_counter()
        result = await self.engine.run(event)
        for request, reason in result.deferred:
            # No Kafka record to carry the retry: the caller gets its decision, the
            # email is reported here (and counted as deferred by the mailer).
            log.error(
                "webhook email failed transiently and is not retried",
                extra={"event_id": event.id, "action": request.action_id, "reason": reason},
            )
            await self.engine.mailer.note(request, "failed", smtp_reply=reason)
        await self._publish(event, result, {}, decision=False)
        await self.flush()
        self._finished(event, "failed_closed" if result.failure else "ok", started, result)
        return result.decision_body(event)

    async def _publish(
        self, event: Event, result: FlowResult, headers: dict[str, bytes], decision: bool = True
    ) -> None:
        """Emit the flow's outputs once, when it has ended: metadata, then the decision."""
        trigger = event.trigger
        if trigger.name != PRE_REGISTRATION and (result.user_metadata or result.app_metadata):
            await self.outputs.metadata_command(
                event.id, event.user_id, result.user_metadata, result.app_metadata
            )
        if not (decision and trigger.synchronous):
            return
        reply_to = headers.get("reply_to", b"").decode(errors="replace") or None
        if trigger.name == PRE_REGISTRATION or reply_to:
            await self.outputs.decision(
                result.decision_body(event), event.user_id, reply_to, headers.get("correlation_id")
            )

    async def _dead_letter(
        self,
        record: Record,
        event: Event | None,
        error: str,
        reason: str,
        started: float,
        result: FlowResult | None = None,
    ) -> None:
        topic = await self.outputs.dead_letter(record, error, reason)
        self.metrics.dlq.labels(error).inc()
        trigger = event.trigger.name if event else "unknown"
        self._events.inc(trigger, "dead_lettered")
        self.metrics.event_duration.observe(time.perf_counter() - started)
        log.warning(
            "event dead-lettered",
            extra={
                **where(record),
                "event_id": event.id if event else None,
                "trigger": trigger,
                "outcome": "dead_lettered",
                "error": error,
                "reason": reason if self.show_addresses else mask_addresses(reason),
                "dlq_topic": topic,
                "actions": result.actions if result else [],
                "duration_ms": round((time.perf_counter() - started) * 1000, 2),
            },
        )

    def _finished(self, event: Event, outcome: str, started: float, result: FlowResult) -> None:
        elapsed = time.perf_counter() - started
        self._events.inc(event.trigger.name, outcome)
        self.metrics.event_duration.observe(elapsed)
        if log.isEnabledFor(logging.INFO):
            email = event.user.get("email")
            log.info(
                "event processed",
                extra={
                    "event_id": event.id,
                    "trigger": event.trigger.name,
                    "outcome": outcome,
                    "decision": result.decision,
                    "user": self._address(email) if isinstance(email, str) else None,
                    "actions": result.actions,
                    "duration_ms": round(elapsed * 1000, 2),
                },
            )

    def _address(self, address: str) -> str:
        return address if self.show_addresses else mask_address(address)


def _headers(headers: Sequence[tuple[str, bytes]]) -> dict[str, bytes]:
    return {name: value for name, value in headers if name in _OUTPUT_HEADERS}
