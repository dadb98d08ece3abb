"""The `sqlite` rate limiter: one process' file (like the sqlite dedupe store, whose
claims live in the process too). The limit is decided in memory and the log is kept in
the dedupe database, table `rate_log`, so that it survives a restart.

Each address' window is a sorted list of times in a dict, authoritative while the process
lives; it is loaded from `rate_log` when the address is first seen, if the file may hold
rows for it (rows from before this process started, or of an address evicted from
memory). A counted email's row is written by the dedupe record's transaction (one commit
per sent email carries both, see service/shared_sqlite.py); rows of emails refused for
good go with the next record, or in a commit of their own once they are a second old, or
at close. A refund takes its row out of the pending ones (no commit) or, once written,
deletes it; a count's time is unique per address (nudged to the next float when two
meet), so a token names one row. A process kill can forget the count of the emails in
flight (at most the last second's refused ones), never more; a refund lost with the
process leaves its count. Instances on one host do not share the count: use `redis`.
Memory is bounded: past `_WINDOWS_MAX` addresses, the pending rows are written and the
older half is dropped from memory (and loaded again from the file when needed).
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left, bisect_right
from itertools import islice
from pathlib import Path

from service.ratelimit.protocol import SWEEP_EVERY_S, Token, address_digest
from service.shared_sqlite import SqliteFile

__all__ = ["SqliteRateLimiter"]

#: Addresses the sqlite limiter keeps in memory (~250 bytes each) before evicting.
_WINDOWS_MAX = 100_000
#: Pending rate rows older than this are written without waiting for a record.
_PENDING_MAX_S = 1.0
_PENDING_MAX_ROWS = 1000
_DELETE_RATE = "DELETE FROM rate_log WHERE key = ? AND at = ?"


class SqliteRateLimiter:
    """Counts in memory, logged to the dedupe database file (see this module's docstring)."""

    def __init__(self, path: Path, per_recipient: int, window_s: float) -> None:
        self.limit = per_recipient
        self.window_s = window_s
        self._file = SqliteFile.open(path)
        self._closed = False
        db = self._db = self._file.db
        # WITHOUT ROWID with the (key, at) primary key: a row is one b-tree entry, no index.
        db.execute(
            "CREATE TABLE IF NOT EXISTS rate_log (key TEXT NOT NULL, at REAL NOT NULL,"
            " PRIMARY KEY (key, at)) WITHOUT ROWID"
        )
        (sql,) = db.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'rate_log'"
        ).fetchone()
        if "WITHOUT ROWID" not in sql.upper():  # a file created by an earlier version
            db.execute("CREATE INDEX IF NOT EXISTS rate_log_key_at ON rate_log (key, at)")
        self._sweep()
        if db.execute("SELECT 1 FROM rate_log LIMIT 1").fetchone():
            # Rows of an earlier process: all within the window since the sweep.
            self._history(time.time())

    async def acquire(self, address: str) -> Token | None:
        """Trim, count and maybe add, in memory; the row goes to the file with a commit."""
        key, now = address_digest(address), time.time()
        file = self._file
        sent = file.rate_windows.get(key)
        if sent is None:
            sent = self._load(key, now)
        cutoff = now - self.window_s
        if sent and sent[0] <= cutoff:
            del sent[: bisect_right(sent, cutoff)]
        if len(sent) >= self.limit:
            return None
        # Kept sorted even if the wall clock steps back; a time already there is nudged,
        # so that a token (and a row of the (key, at) primary key) is one count.
        i = bisect_left(sent, now)
        while i < len(sent) and sent[i] == now:
            now, i = math.nextafter(now, math.inf), i + 1
        sent.insert(i, now)
        file.add_rate_row(key, now)
        if len(file.rate_rows) >= _PENDING_MAX_ROWS or (
            time.monotonic() - file.rate_rows_since > _PENDING_MAX_S
        ):
            file.flush_rate_rows()
        if time.monotonic() - self._swept > SWEEP_EVERY_S:
            self._sweep()
        return now

    async def refund(self, address: str, token: Token) -> None:
        """Remove the count from memory, and its row from the pending ones (no commit) or,
        once written, from the file."""
        if not isinstance(token, float):
            return
        key = address_digest(address)
        file = self._file
        sent = file.rate_windows.get(key)
        if sent is not None:  # else evicted: its rows were written, the file decides
            i = bisect_left(sent, token)
            if i == len(sent) or sent[i] != token:
                return  # expired or given back: memory holds every live count
            del sent[i]
        row = (key, token)
        if row in file.rate_rows:
            file.rate_rows.remove(row)
        else:
            self._db.execute(_DELETE_RATE, row)

    async def close(self) -> None:
        """Write pending rows and close the file (once its last user closed it)."""
        if not self._closed:
            self._closed = True
            await self._file.close()

    def _load(self, key: str, now: float) -> list[float]:
        """The window of an address not in memory: from the file, if it may hold any."""
        file = self._file
        if len(file.rate_windows) >= _WINDOWS_MAX:
            self._evict()
        sent: list[float] = []
        if now < file.rate_history_until:
            rows = self._db.execute(
                "SELECT at FROM rate_log WHERE key = ? AND at > ? ORDER BY at",
                (key, now - self.window_s),
            )
            sent = [at for (at,) in rows]
        file.rate_windows[key] = sent
        return sent

    def _evict(self) -> None:
        """Drop the older half of the windows; the file then holds everything they had."""
        file = self._file
        file.flush_rate_rows()
        windows = file.rate_windows
        for key in list(islice(windows, len(windows) // 2)):
            sent = windows.pop(key)
            if sent:
                self._history(sent[-1])

    def _history(self, newest: float) -> None:
        """The file holds rows up to `newest` that memory may not: load until they expire."""
        file = self._file
        file.rate_history_until = max(file.rate_history_until, newest + self.window_s)

    def _sweep(self) -> None:
        """Delete rows that left the window, and addresses with nothing in it."""
        cutoff = time.time() - self.window_s
        self._db.execute("DELETE FROM rate_log WHERE at <= ?", (cutoff,))
        windows = self._file.rate_windows
        for key in [k for k, sent in windows.items() if not sent or sent[-1] <= cutoff]:
            del windows[key]
        self._swept = time.monotonic()
