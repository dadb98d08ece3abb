"""Dedupe stores: "this email was sent" records keyed by (event id, action id, recipient).

Claim-then-send: `claim` reserves a key for this process (False if the email was
already sent or another task holds it), `record` makes "sent" durable after the SMTP
server accepted the message, `release` gives the key back when the send failed so a
replayed dead letter can still be delivered.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Protocol

__all__ = ["DedupeStore", "MemoryDedupe", "SqliteDedupe", "dedupe_key", "open_dedupe"]


def dedupe_key(event_id: str, action_id: str, recipient: str) -> str:
    """The once-only key of one email; the unit separator cannot occur in an event id."""
    return f"{event_id}\x1f{action_id}\x1f{recipient.lower()}"


class DedupeStore(Protocol):
    """Where sent emails are remembered for `ttl_s` seconds."""

    async def claim(self, key: str) -> bool: ...

    async def record(self, key: str) -> None: ...

    async def release(self, key: str) -> None: ...

    async def close(self) -> None: ...


class MemoryDedupe:
    """Process-local store: for tests and `herald dev`; forgets everything on exit."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._sent: dict[str, float] = {}
        self._claimed: set[str] = set()

    async def claim(self, key: str) -> bool:
        expires = self._sent.get(key)
        if (expires is not None and expires > time.time()) or key in self._claimed:
            return False
        self._claimed.add(key)
        return True

    async def record(self, key: str) -> None:
        self._claimed.discard(key)
        self._sent[key] = time.time() + self.ttl_s

    async def release(self, key: str) -> None:
        self._claimed.discard(key)

    async def close(self) -> None:
        self._sent.clear()


class SqliteDedupe:
    """A local SQLite file in WAL mode: a committed record survives a process kill."""

    def __init__(self, path: Path, ttl_s: float) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.ttl_s = ttl_s
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL: no fsync per commit; a commit is in the WAL before `record` returns, so
        # only an OS crash (not a process crash) can lose the latest records.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS sent (key TEXT PRIMARY KEY, expires_at REAL NOT NULL)"
        )
        self._db.execute("DELETE FROM sent WHERE expires_at < ?", (time.time(),))
        self._claimed: set[str] = set()

    async def claim(self, key: str) -> bool:
        if key in self._claimed:
            return False
        row = self._db.execute(
            "SELECT 1 FROM sent WHERE key = ? AND expires_at > ?", (key, time.time())
        ).fetchone()
        if row is not None:
            return False
        self._claimed.add(key)
        return True

    async def record(self, key: str) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO sent (key, expires_at) VALUES (?, ?)",
            (key, time.time() + self.ttl_s),
        )
        self._claimed.discard(key)

    async def release(self, key: str) -> None:
        self._claimed.discard(key)

    async def close(self) -> None:
        await asyncio.to_thread(self._db.close)


def open_dedupe(backend: str, *, path: str, url: str, ttl_s: float) -> DedupeStore:
    """The store named by `dedupe.backend`."""
    if backend == "memory":
        return MemoryDedupe(ttl_s)
    if backend == "sqlite":
        return SqliteDedupe(Path(path), ttl_s)
    raise ValueError(f"dedupe backend {backend!r} is not available (url {url.split('@')[-1]})")
