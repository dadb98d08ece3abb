"""The `sqlite` dedupe backend: one process; claims live in the process, "sent" records
in a WAL file. A record is committed on its own, before `record` returns, so it survives
a process kill (`synchronous=NORMAL`: only an OS crash can lose the last few). The store
and the sqlite rate limiter of a process share one connection to the file
(service/shared_sqlite.py): one page cache, and the rate limiter's rows ride along in the
next record's transaction instead of paying a commit of their own.
"""

from __future__ import annotations

import time
from pathlib import Path

from service.dedupe.protocol import CLAIM_TTL_S, PURGE_EVERY_S, Claim, Leases
from service.shared_sqlite import SqliteFile

__all__ = ["SqliteDedupe"]


class SqliteDedupe:
    """A local SQLite file in WAL mode: a committed record survives a process kill."""

    def __init__(self, path: Path, ttl_s: float, *, claim_ttl_s: float = CLAIM_TTL_S) -> None:
        self.path = path
        self.ttl_s = ttl_s
        self._file = SqliteFile.open(path)
        self._closed = False
        self._db = self._file.db
        # WITHOUT ROWID: the key's b-tree holds the row, so a claim is one b-tree lookup
        # and a record writes one page, not two. (Files created before keep their table.)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS sent (key TEXT PRIMARY KEY, expires_at REAL NOT NULL)"
            " WITHOUT ROWID"
        )
        self._claims = Leases(claim_ttl_s)
        self._purge()

    async def open(self) -> None:
        """The file was opened (and created) by the constructor."""

    async def claim(self, key: str) -> Claim:
        """Reserve `key`, or say that it was sent or is claimed in this process."""
        row = self._db.execute(
            "SELECT 1 FROM sent WHERE key = ? AND expires_at > ?", (key, time.time())
        ).fetchone()
        if row is not None:
            return Claim.SENT
        return Claim.TAKEN if self._claims.take(key) else Claim.HELD

    async def record(self, key: str) -> None:
        """Commit `key` as sent before returning: one commit per email, never batched."""
        self._file.write_sent(key, time.time() + self.ttl_s)
        self._claims.drop(key)
        if time.monotonic() - self._purged > PURGE_EVERY_S:
            self._purge()

    async def release(self, key: str) -> None:
        """Drop the claim on `key`."""
        self._claims.drop(key)

    async def confirm(self, key: str) -> bool:
        return True

    async def close(self) -> None:
        """Close the file (once its last user closed it)."""
        if not self._closed:
            self._closed = True
            await self._file.close()

    def _purge(self) -> None:
        self._db.execute("DELETE FROM sent WHERE expires_at < ?", (time.time(),))
        self._purged = time.monotonic()
