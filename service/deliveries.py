"""Delivery records: what became of each email Herald decided about, answerable later.

One record per email decision (event id, action id, recipient; a resend gets a record
of its own), kept in the dedupe backend for `dedupe.ttl_s`. Its status moves through

    deferred (a retry is scheduled; `next_attempt_at`) → sent | uncertain | failed
    skipped (`rate_limited`, `expired`)

and every change is also a `herald.email.status` CloudEvent on `kafka.status_topic`.
`herald messages` and `GET /v1/messages` read the records; `herald resend` finds the
event through the recorded topic, partition and offset.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson

from service.addresses import mask_address
from service.consumed import Position, event_position

__all__ = [
    "STATUS_TYPE",
    "Delivery",
    "DeliveryLog",
    "DeliveryStore",
    "MemoryDeliveries",
    "Query",
]

log = logging.getLogger("herald")

STATUS_TYPE = "herald.email.status"
_STATUS_KEY = b"herald.email.status"
#: The memory backend keeps this many records at most.
_MEMORY_KEPT = 100_000


@dataclasses.dataclass(slots=True)
class Delivery:
    """One email decision and what became of it."""

    id: str
    event_id: str
    action_id: str
    template: str
    to: str
    user_id: str
    status: str
    reason: str | None = None
    attempts: int = 0
    smtp_reply: str | None = None
    message_id: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    next_attempt_at: float | None = None
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    resend: bool = False
    #: How to send it again: template, to, to_name, locale, from, reply_to, data.
    email: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> bytes:
        return orjson.dumps(self, default=str)  # orjson writes a dataclass's fields natively

    @classmethod
    def from_json(cls, raw: bytes | str) -> Delivery:
        doc = orjson.loads(raw)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in names})

    def public(self, show_addresses: bool) -> dict[str, Any]:
        """The record as `herald messages --json` and `GET /v1/messages` show it."""
        updated = _iso(self.updated_at)
        return {
            "event_id": self.event_id,
            "action_id": self.action_id,
            "template": self.template,
            "to": self.to if show_addresses else mask_address(self.to),
            "user_id": self.user_id,
            "status": self.status,
            "reason": self.reason,
            "attempts": self.attempts,
            "smtp_reply": self.smtp_reply,
            "message_id": self.message_id,
            "created_at": updated if self.created_at == self.updated_at else _iso(self.created_at),
            "updated_at": updated,
            "next_attempt_at": _iso(self.next_attempt_at) if self.next_attempt_at else None,
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "resend": self.resend,
        }


class DeliveryStore(Protocol):
    """Where delivery records live (the dedupe backend)."""

    async def put(self, delivery: Delivery) -> None: ...

    async def get(self, record_id: str) -> Delivery | None: ...

    async def find(self, query: Query) -> list[Delivery]:
        """The records `query` matches, newest first (by `updated_at`)."""
        ...

    async def flush(self) -> None:
        """Write what `put` queued (called before a batch commits)."""

    async def close(self) -> None: ...


@dataclasses.dataclass(frozen=True, slots=True)
class Query:
    """Which records `find` returns: those every given filter matches, `limit` at most."""

    event_id: str | None = None
    user_id: str | None = None
    to: str | None = None
    limit: int = 50

    def matches(self, d: Delivery) -> bool:
        return (
            (self.event_id is None or d.event_id == self.event_id)
            and (self.user_id is None or d.user_id == self.user_id)
            and (self.to is None or d.to.lower() == self.to.lower())
        )


class MemoryDeliveries:
    """In-process records (the `memory` backend: tests and `herald dev`)."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._records: dict[str, Delivery] = {}

    async def put(self, delivery: Delivery) -> None:
        self._records.pop(delivery.id, None)  # re-inserted: dict order is recency
        self._records[delivery.id] = dataclasses.replace(delivery)
        if len(self._records) > _MEMORY_KEPT:  # the oldest go first
            for old in list(self._records)[: len(self._records) - _MEMORY_KEPT]:
                del self._records[old]

    async def get(self, record_id: str) -> Delivery | None:
        found = self._records.get(record_id)
        return dataclasses.replace(found) if found else None

    async def find(self, query: Query) -> list[Delivery]:
        oldest = time.time() - self.ttl_s
        found = [d for d in self._records.values() if d.updated_at >= oldest and query.matches(d)]
        found.sort(key=lambda d: d.updated_at, reverse=True)
        return [dataclasses.replace(d) for d in found[: query.limit]]

    async def flush(self) -> None:
        return None

    async def close(self) -> None:
        return None


#: Queues one status event (key, value) for the producer's next flush.
Publish = Callable[[bytes, bytes], None]


@dataclasses.dataclass(eq=False)
class DeliveryLog:
    """Writes each status change to the store and, when a status topic is set, as a
    `herald.email.status` CloudEvent. A store or topic that fails is logged, never
    failing the email: the email's fate does not depend on its record."""

    store: DeliveryStore
    _: dataclasses.KW_ONLY
    publish: Publish | None = None
    show_addresses: bool = False

    async def note(
        self,
        *,
        record_id: str,
        event_id: str,
        action_id: str,
        template: str,
        to: str,
        user_id: str,
        status: str,
        email: Mapping[str, Any],
        source: Position | None = None,
        resend: bool = False,
        **fields: Any,
    ) -> Delivery:
        """Create or update the record `record_id` with `status` and `fields`."""
        now = time.time()
        # A first attempt sent is the common case, and has no record yet.
        fresh = status == "sent" and fields.get("attempts", 1) <= 1 and not resend
        current = None if fresh else await self._get(record_id)
        position = source or event_position()
        if current is None:
            current = Delivery(
                id=record_id,
                event_id=event_id,
                action_id=action_id,
                template=template,
                to=to,
                user_id=user_id,
                status=status,
                created_at=now,
                resend=resend,
                email=email if isinstance(email, dict) else dict(email),
            )
        if position is not None and current.topic is None:
            current.topic, current.partition, current.offset = position
        current.status, current.updated_at = status, now
        current.next_attempt_at = None
        for name, value in fields.items():
            setattr(current, name, value)
        try:
            await self.store.put(current)
        except Exception as exc:
            log.error("delivery record not written", extra={"error": repr(exc)})
        if self.publish is not None:
            self.publish(user_id.encode(), self._status_event(current))
        return current

    async def flush(self) -> None:
        """Write the queued records; a failure is logged (the emails' fate stands)."""
        try:
            await self.store.flush()
        except Exception as exc:
            log.error("delivery records not written", extra={"error": repr(exc)})

    async def _get(self, record_id: str) -> Delivery | None:
        try:
            return await self.store.get(record_id)
        except Exception as exc:
            log.error("delivery record not read", extra={"error": repr(exc)})
            return None

    def _status_event(self, d: Delivery) -> bytes:
        data = d.public(self.show_addresses)
        return orjson.dumps(
            {
                "specversion": "1.0",
                # The same for every delivery of one transition: consumers deduplicate.
                "id": _status_id(d),
                "source": "herald",
                "type": STATUS_TYPE,
                "subject": d.user_id,
                "time": data["updated_at"],
                "datacontenttype": "application/json",
                "data": data,
            }
        )


def _status_id(d: Delivery) -> str:
    raw = f"{d.id}\x1f{d.status}\x1f{d.attempts}\x1f{d.resend}".encode("utf-8", "surrogatepass")
    return hashlib.blake2b(raw, digest_size=16, key=_STATUS_KEY).hexdigest()


def _iso(at: float | None) -> str | None:
    """ISO 8601 UTC with milliseconds (`2026-12-01T10:00:00.123+00:00`)."""
    if at is None:
        return None
    whole = int(at)
    return _second(whole) + f".{int((at - whole) * 1000):03d}+00:00"


@functools.lru_cache(maxsize=256)
def _second(whole: int) -> str:
    return datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S")
