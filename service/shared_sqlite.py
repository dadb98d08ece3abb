"""The SQLite file of the `sqlite` dedupe backend, shared by everything it holds in one
process: the dedupe store (`sent`, service/dedupe/sqlite.py), the rate limiter
(`rate_log`, service/ratelimit/sqlite.py) and the delivery records (`deliveries`,
service/delivery_stores.py). One connection per file (`SqliteFile`) and the thread that
checkpoints its WAL (`_Checkpointer`).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import ClassVar

__all__ = ["SqliteFile"]

# The logger these warnings always had (in JSON logs, `"logger": "service.dedupe"`).
log = logging.getLogger("service.dedupe")


class SqliteFile:
    """One process' connection to the dedupe file, shared by its store, limiter and records.

    `SqliteFile.open(path)` hands every user of the same file in this process the same
    connection (counted; `close` by the last user closes it). Sharing it keeps one warm
    page cache (a write through a second connection would make this one drop its cache
    at its next read) and lets the rate limiter's rows be written by the dedupe record's
    transaction: one commit per sent email carries both.

    Autocommit (`isolation_level=None`): every statement outside an explicit BEGIN is a
    transaction of its own. Calls take microseconds, so they run inline on the event loop.

    Checkpoints (copying the WAL into the database file, with an fsync of each) do not
    run on the event loop: SQLite's automatic ones would stall whichever commit crossed
    the 1000-page mark for milliseconds. A thread of the file's own copies the WAL every
    `_CHECKPOINT_EVERY_S` without blocking commits (PASSIVE); only when the WAL has grown
    past `_WAL_RESTART_FRAMES` (continuous writes never leave it fully copied) does it
    make the next commit start the WAL over (RESTART, which holds commits for the short
    rest of the copy). Durability is unchanged: a commit is in the WAL when it returns.
    """

    _files: ClassVar[dict[Path, SqliteFile]] = {}

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        # NORMAL: no fsync per commit; a commit is in the WAL before it returns, so only
        # an OS crash (not a process crash) can lose the latest records.
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA busy_timeout=5000")  # another process on the same file
        self.db.execute("PRAGMA wal_autocheckpoint=0")  # see the class docstring
        self._checkpoints = _Checkpointer(path)
        self._checkpoints.start()
        #: Rate-limit rows `(address digest, time)` counted but not written yet; the next
        #: `write_sent` (or `flush_rate_rows`) writes them.
        self.rate_rows: list[tuple[str, float]] = []
        self.rate_rows_since = 0.0  # time.monotonic() of the oldest pending row
        #: The sqlite rate limiter's in-memory window per address digest
        #: (service/ratelimit/sqlite.py).
        self.rate_windows: dict[str, list[float]] = {}
        #: Until this time.time(), the file may hold in-window rate rows of addresses that
        #: are not in `rate_windows` (written before this process, or evicted).
        self.rate_history_until = 0.0
        self._users = 0

    @classmethod
    def open(cls, path: Path) -> SqliteFile:
        """The shared connection to the file at `path`, created (with its folder) if new."""
        path.parent.mkdir(parents=True, exist_ok=True)
        real = path.resolve()
        file = cls._files.get(real)
        if file is None:
            file = cls._files[real] = cls(real)
        file._users += 1
        return file

    def write_sent(self, key: str, expires_at: float) -> None:
        """Commit the "sent" record of `key` (with any pending rate rows) before returning."""
        if not self.rate_rows:
            self.db.execute(_INSERT_SENT, (key, expires_at))
        else:
            self._commit((key, expires_at))

    def add_rate_row(self, digest: str, at: float) -> None:
        """Queue one rate-limit row for the next commit."""
        if not self.rate_rows:
            self.rate_rows_since = time.monotonic()
        self.rate_rows.append((digest, at))

    def flush_rate_rows(self) -> None:
        """Write the pending rate-limit rows in a transaction of their own."""
        if self.rate_rows:
            self._commit(None)

    async def close(self) -> None:
        """Drop one user; the last one writes what is pending and closes the file."""
        self._users -= 1
        if self._users > 0:
            return
        if self._files.get(self.path) is self:
            del self._files[self.path]
        try:
            self.flush_rate_rows()
        finally:
            # The last connection to close checkpoints what is left and removes the WAL.
            await asyncio.to_thread(self._checkpoints.stop)
            await asyncio.to_thread(self.db.close)

    def _commit(self, sent: tuple[str, float] | None) -> None:
        rows, self.rate_rows = self.rate_rows, []
        db = self.db
        try:
            db.execute("BEGIN")
            if sent is not None:
                db.execute(_INSERT_SENT, sent)
            if rows:
                db.executemany(_INSERT_RATE, rows)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            self.rate_rows[:0] = rows  # counted all the same; written with a later commit
            raise


class _Checkpointer(threading.Thread):
    """Checkpoints a WAL-mode SQLite file periodically, on a connection of its own."""

    def __init__(self, path: Path) -> None:
        super().__init__(name=f"sqlite-checkpoint:{path.name}", daemon=True)
        self.path = path
        self._stopping = threading.Event()

    def run(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None)
        try:
            db.execute("PRAGMA busy_timeout=5000")
            while not self._stopping.wait(_CHECKPOINT_EVERY_S):
                self._checkpoint(db)
        finally:
            db.close()

    def stop(self) -> None:
        """Stop and wait for the thread (blocks: call it off the event loop)."""
        self._stopping.set()
        if self.is_alive():
            self.join()

    @staticmethod
    def _checkpoint(db: sqlite3.Connection) -> None:
        try:
            # Frames committed while a round copied are left for the next one: a few
            # quick rounds catch up.
            for _ in range(_CHECKPOINT_ROUNDS):
                _, frames, copied = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                if copied >= frames:
                    break
            # The next commit starts the WAL over only if no commit was under way when
            # it was last fully copied: under a steady load, make sure of it now and then.
            if frames > _WAL_RESTART_FRAMES:
                db.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
        except sqlite3.Error as exc:  # the next round tries again; commits are unaffected
            log.warning("sqlite checkpoint failed", extra={"error": str(exc)})


_CHECKPOINT_EVERY_S = 0.25
_CHECKPOINT_ROUNDS = 4
_WAL_RESTART_FRAMES = 8192  # pages of 4 KiB: 32 MiB
_INSERT_SENT = "INSERT OR REPLACE INTO sent (key, expires_at) VALUES (?, ?)"
# OR IGNORE: two rows of one address at the very same time.time() are one row.
_INSERT_RATE = "INSERT OR IGNORE INTO rate_log (key, at) VALUES (?, ?)"
