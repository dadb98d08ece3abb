"""`herald messages` and `herald resend`: the delivery records, read and acted on.

`messages` reads the records where Herald writes them (the dedupe backend: the sqlite
file, or redis, where every instance's records are); the `memory` backend keeps them
inside the running process, which answers `GET /v1/messages` instead.

`resend` sends an event's email again on purpose: it finds the record, re-reads the
event from Kafka at the recorded topic, partition and offset, and sends it under a claim
and a record of its own (so once per call, whatever was sent before). An expired link
is not sent, as everywhere.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from service.addresses import mask_address
from service.config import Config
from service.dedupe import DedupeUnavailable, dedupe_store
from service.deliveries import Delivery, DeliveryLog, DeliveryStore, Query
from service.delivery_stores import open_deliveries
from service.events import Event, MalformedEvent
from service.failures import EmailDeferred, EmailFailed, Outage
from service.formats import parser_for
from service.kafka import CONNECTION_ERRORS, KafkaProducer, producer_options, started_producer
from service.kafka.outputs import Outputs
from service.kafka.read import read_record
from service.mail.mailer import Mailer
from service.mail.render import Renderer
from service.mail.transport import SmtpPool
from service.metrics import Metrics
from service.retry.retrier import request_from

__all__ = ["MessagesError", "find_messages", "resend", "table"]

_READ_TIMEOUT_S = 10.0
_REPLY_WIDTH = 60


class MessagesError(Exception):
    """One line for the operator."""


@contextlib.asynccontextmanager
async def _store(config: Config) -> AsyncIterator[DeliveryStore]:
    dedupe = config.dedupe
    if dedupe.backend == "memory":
        raise MessagesError(
            "dedupe.backend memory keeps delivery records inside the running Herald only:"
            " ask it with GET /v1/messages"
        )
    store = open_deliveries(dedupe.backend, path=dedupe.path, url=dedupe.url, ttl_s=dedupe.ttl_s)
    try:
        yield store
    except DedupeUnavailable as exc:
        raise MessagesError(str(exc)) from None
    finally:
        with contextlib.suppress(Exception):
            await store.close()


async def find_messages(
    config: Config,
    *,
    event_id: str | None = None,
    user_id: str | None = None,
    to: str | None = None,
    limit: int = 50,
) -> list[Delivery]:
    async with _store(config) as store:
        return await store.find(Query(event_id, user_id, to, limit))


def table(found: list[Delivery], show_addresses: bool) -> str:
    """A readable table, newest first."""
    if not found:
        return "no delivery records match"
    rows = [("TIME (UTC)", "EVENT", "TEMPLATE", "TO", "STATUS", "ATTEMPTS", "REPLY")]
    for d in found:
        status = d.status if not d.reason else f"{d.status} ({d.reason})"
        if d.next_attempt_at:
            status += f", next {_time(d.next_attempt_at)}"
        if d.resend:
            status += ", resend"
        reply = " ".join((d.smtp_reply or "").split())
        if len(reply) > _REPLY_WIDTH:
            reply = reply[: _REPLY_WIDTH - 1] + "…"
        rows.append(
            (
                _time(d.updated_at),
                d.event_id,
                d.template,
                d.to if show_addresses else mask_address(d.to),
                status,
                str(d.attempts),
                reply,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1]
        for row in rows
    )


async def resend(config: Config, event_id: str, action: str | None = None) -> list[str]:
    """Send the event's email(s) again; one line per email sent or refused."""
    async with _store(config) as store:
        records = await store.find(Query(event_id=event_id, limit=1000))
    originals: dict[tuple[str, str], Delivery] = {}
    for record in sorted(records, key=lambda d: d.created_at):
        if not record.resend and (action is None or record.action_id == action):
            originals.setdefault((record.action_id, record.to.lower()), record)
    if not originals:
        which = f" and action {action!r}" if action else ""
        raise MessagesError(f"no delivery record of event {event_id!r}{which}")
    lines = []
    for record in originals.values():
        event = await _read_event(config, record)
        lines.append(await _send_again(config, event, record))
    return lines


async def _read_event(config: Config, record: Delivery) -> Event:
    if record.topic is None or record.partition is None or record.offset is None:
        raise MessagesError(
            f"event {record.event_id!r} came through the decision webhook, not Kafka:"
            " there is nothing to read it again from"
        )
    where = f"{record.topic} partition {record.partition} offset {record.offset}"
    try:
        got = await read_record(
            config.kafka, record.topic, record.partition, record.offset, timeout_s=_READ_TIMEOUT_S
        )
    except (OSError, ConnectionError) as exc:
        raise MessagesError(f"cannot read {where}: {exc}") from None
    if got is None:
        raise MessagesError(
            f"event {record.event_id!r} is no longer on {where} (removed by the topic's retention)"
        )
    try:
        event = parser_for(config.kafka.format)(got.value, got.headers)
    except MalformedEvent as exc:
        raise MessagesError(f"the record at {where} is no longer readable: {exc}") from None
    if event is None or event.id != record.event_id:
        raise MessagesError(f"the record at {where} is not event {record.event_id!r}")
    return event


async def _send_again(config: Config, event: Event, record: Delivery) -> str:
    request = request_from(
        event,
        record.email,
        record.action_id,
        config.secrets,
        source=(record.topic, record.partition, record.offset),
        resend=uuid.uuid4().hex[:12],
    )
    shown = record.to if config.log.show_addresses else mask_address(record.to)
    what = f"{record.template} to {shown} (event {record.event_id}, action {record.action_id})"
    async with _mailer(config) as mailer:
        try:
            outcome = await mailer.send(request)
        except (EmailDeferred, EmailFailed, Outage) as exc:
            reason = getattr(exc, "reason", None) or str(exc)
            return f"not resent: {what}: {' '.join(reason.split())}"
    return f"resent {what}: {outcome}"


@contextlib.asynccontextmanager
async def _mailer(config: Config) -> AsyncIterator[Mailer]:
    d, smtp = config.dedupe, config.smtp
    dedupe = dedupe_store(d.backend, path=d.path, url=d.url, ttl_s=d.ttl_s)
    store = open_deliveries(d.backend, path=d.path, url=d.url, ttl_s=d.ttl_s)
    pool = SmtpPool.for_config(config.smtp, size=1)
    producer: KafkaProducer | None = None
    outputs: Outputs | None = None
    log = DeliveryLog(store, show_addresses=config.log.show_addresses)
    try:
        await dedupe.open()
        if config.kafka.status_topic:
            producer = await started_producer(producer_options(config.kafka))
            outputs = Outputs(
                producer, dlq_suffix=config.kafka.dlq_suffix, status_topic=config.kafka.status_topic
            )
            log.publish = outputs.status
        yield Mailer(
            renderer=Renderer(config.templates_dir, config.default_locale),
            transport=pool,
            dedupe=dedupe,
            default_sender=smtp.from_,
            metrics=Metrics(),
            deliveries=log,
        )
        await log.flush()
        if outputs is not None:
            try:
                await outputs.flush()
            except CONNECTION_ERRORS as exc:
                raise MessagesError(f"its status event was not written: {exc}") from None
    finally:
        await pool.close()
        if producer is not None:
            await producer.stop()
        await store.close()
        await dedupe.close()


def _time(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S")
