"""Delivery records in the sqlite and redis dedupe backends (service/deliveries.py)."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from service.backends import Backends
from service.deliveries import Delivery, DeliveryStore, MemoryDeliveries, Query
from service.redis_client import redis_call, redis_client
from service.shared_sqlite import SqliteFile

__all__ = ["RedisDeliveries", "SqliteDeliveries", "open_deliveries"]

# Rows are replaced, not updated, on every change: rowid order is the order of the last
# change, so "newest first" needs no index of its own, and each index is one column. A
# record's id starts with its event id and the unit separator (service/dedupe.py's
# `dedupe_key`), so the id's own index finds an event's records as a range: each index
# costs a page write per row in the WAL (random keys), and there is one fewer.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    id TEXT NOT NULL UNIQUE,
    event_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    recipient TEXT NOT NULL,
    updated_at REAL NOT NULL,
    doc BLOB NOT NULL
);
DROP INDEX IF EXISTS deliveries_event;
CREATE INDEX IF NOT EXISTS deliveries_user ON deliveries (user_id);
CREATE INDEX IF NOT EXISTS deliveries_recipient ON deliveries (recipient);
"""
_UPSERT = (
    "INSERT OR REPLACE INTO deliveries (id, event_id, user_id, recipient, updated_at, doc)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
_PURGE_EVERY_S = 3600.0
_ALL_KEPT = 10_000
_QUEUE_MAX = 1000


class SqliteDeliveries:
    """A `deliveries` table in the dedupe file, on the connection the store uses."""

    def __init__(self, path: Path, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._file = SqliteFile.open(path)
        self._file.db.executescript(_SCHEMA)
        self._purged = 0.0
        #: Records of sent emails not written yet, by id (`flush`).
        self._queued: dict[str, tuple[object, ...]] = {}

    async def put(self, delivery: Delivery) -> None:
        """A "sent" record is queued and written with the others of its batch (`flush`,
        before the batch commits; its dedupe record is what keeps it from being sent
        again); any other status is written now."""
        row = (
            delivery.id,
            delivery.event_id,
            delivery.user_id,
            delivery.to.lower(),
            delivery.updated_at,
            delivery.to_json(),
        )
        self._queued[delivery.id] = row
        if delivery.status != "sent" or len(self._queued) >= _QUEUE_MAX:
            await self.flush()
        if delivery.updated_at - self._purged > _PURGE_EVERY_S:
            self._purged = delivery.updated_at
            self._file.db.execute(
                "DELETE FROM deliveries WHERE updated_at < ?", (time.time() - self.ttl_s,)
            )

    async def flush(self) -> None:
        """Write the queued records in one transaction."""
        if not self._queued:
            return
        rows, self._queued = list(self._queued.values()), {}
        db = self._file.db
        try:
            db.execute("BEGIN")
            db.executemany(_UPSERT, rows)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    async def get(self, record_id: str) -> Delivery | None:
        queued = self._queued.get(record_id)
        if queued is not None:
            return Delivery.from_json(queued[5])  # type: ignore[arg-type]
        row = self._file.db.execute(
            "SELECT doc FROM deliveries WHERE id = ?", (record_id,)
        ).fetchone()
        return Delivery.from_json(row[0]) if row else None

    async def find(self, query: Query) -> list[Delivery]:
        event_id, user_id, to, limit = query.event_id, query.user_id, query.to, query.limit
        where: list[str] = ["updated_at >= ?"]
        args: list[object] = [time.time() - self.ttl_s]
        if event_id is not None:  # the range of ids that start with it
            where.append("id >= ? AND id < ?")
            args += [event_id + "\x1f", event_id + "\x20"]
        for column, value in (("event_id", event_id), ("user_id", user_id), ("recipient", to)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value.lower() if column == "recipient" else value)
        await self.flush()  # what is queued is found too
        rows = self._file.db.execute(
            f"SELECT doc FROM deliveries WHERE {' AND '.join(where)} ORDER BY rowid DESC LIMIT ?",
            (*args, limit),
        ).fetchall()
        return [Delivery.from_json(row[0]) for row in rows]

    async def close(self) -> None:
        try:
            await self.flush()
        finally:
            await self._file.close()


class RedisDeliveries:
    """Each record a JSON string with the backend's TTL; sorted sets by event, user,
    recipient (hashed) and time index them, trimmed to the TTL as they are written."""

    def __init__(self, url: str, ttl_s: float, *, prefix: str = "herald:delivery:") -> None:
        self.url = url
        self.ttl_s = int(max(1, ttl_s))
        self.prefix = prefix
        self.client = redis_client(url)

    async def put(self, delivery: Delivery) -> None:
        now, oldest = delivery.updated_at, time.time() - self.ttl_s
        pipe = self.client.pipeline(transaction=False)
        pipe.set(self.prefix + "r:" + delivery.id, delivery.to_json(), ex=self.ttl_s)
        for index in self._indexes(delivery.event_id, delivery.user_id, delivery.to):
            pipe.zadd(index, {delivery.id: now})
            pipe.zremrangebyscore(index, "-inf", oldest)
            pipe.expire(index, self.ttl_s)
        # The index of everything keeps the newest only: `herald messages` without a filter.
        pipe.zremrangebyrank(self._indexes("", "", "")[3], 0, -_ALL_KEPT - 1)
        await redis_call(pipe.execute(), "write a delivery record in", self.url)

    async def get(self, record_id: str) -> Delivery | None:
        raw = await redis_call(
            self.client.get(self.prefix + "r:" + record_id), "read a delivery record in", self.url
        )
        return Delivery.from_json(raw) if raw else None

    async def find(self, query: Query) -> list[Delivery]:
        event_id, user_id, to, limit = query.event_id, query.user_id, query.to, query.limit
        event_ix, user_ix, to_ix, all_ix = self._indexes(event_id or "", user_id or "", to or "")
        index = event_ix if event_id else user_ix if user_id else to_ix if to else all_ix
        # Read more than `limit` when other filters narrow the first one down.
        ids = await redis_call(
            self.client.zrevrange(index, 0, max(limit * 10, 100) - 1),
            "read delivery records in",
            self.url,
        )
        if not ids:
            return []
        raws = await redis_call(
            self.client.mget([self.prefix + "r:" + _text(i) for i in ids]),
            "read delivery records in",
            self.url,
        )
        found = [Delivery.from_json(raw) for raw in raws if raw]
        oldest = time.time() - self.ttl_s
        found = [d for d in found if d.updated_at >= oldest and query.matches(d)]
        found.sort(key=lambda d: d.updated_at, reverse=True)
        return found[:limit]

    async def flush(self) -> None:
        return None

    async def close(self) -> None:
        await self.client.aclose()

    def _indexes(self, event_id: str, user_id: str, to: str) -> tuple[str, str, str, str]:
        digest = hashlib.sha256(to.lower().encode()).hexdigest()
        return (
            f"{self.prefix}event:{event_id}",
            f"{self.prefix}user:{user_id}",
            f"{self.prefix}to:{digest}",
            f"{self.prefix}all",
        )


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


_STORES: Backends[DeliveryStore] = Backends(
    "dedupe", MemoryDeliveries, SqliteDeliveries, RedisDeliveries
)


def open_deliveries(backend: str, *, path: str, url: str, ttl_s: float) -> DeliveryStore:
    """The records store of `dedupe.backend`."""
    return _STORES.create(backend, path, url, ttl_s)
