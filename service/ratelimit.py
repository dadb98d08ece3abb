"""Per-recipient rate limit (`rate_limit.per_recipient` emails per `window_s`, SPEC §4).

A *sliding window log*: an email may go out when fewer than `per_recipient` emails went
to the same address in the last `window_s` seconds. Unlike a fixed window it never lets
twice the limit through around a window boundary, and it stays cheap because at most
`per_recipient` timestamps are kept per address.

What counts: emails handed to the SMTP server, not attempts. `acquire` is called once per
email that is about to be handed over (after the dedupe claim said "not yet sent"); it
counts the email and returns a token, or None when the window is full. Duplicates and
rate-limited emails do not count. When the server did not accept the email (a transient
failure, an outage), the caller gives the count back with `refund(address, token)`, so a
retried or redelivered email is counted once, when it finally goes out. A permanent
rejection (5xx) keeps its count: the server was reached, and a flood of failing events
must not bypass the limit. A refund of a token that expired or was already given back is
a no-op.

The counters live in the dedupe backend, so instances that share a Redis share the limit:

- `memory` — per process.
- `sqlite` — one process' file (like the sqlite dedupe store, whose claims live in the
  process too): the limit is decided in memory and the log is kept in the dedupe
  database, table `rate_log`, so that it survives a restart. Each address' window is a
  sorted list of times in a dict, authoritative while the process lives; it is loaded
  from `rate_log` when the address is first seen, if the file may hold rows for it (rows
  from before this process started, or of an address evicted from memory). A counted
  email's row is written by the dedupe record's transaction (one commit per sent email
  carries both, see `SqliteFile`); rows of emails refused for good go with the next
  record, or in a commit of their own once they are a second old, or at close. A
  refund takes its row out of the pending ones (no commit) or, once written, deletes
  it; a count's time is unique per address (nudged to the next float when two meet),
  so a token names one row. A process kill can forget the count of the emails in
  flight (at most the last second's refused ones), never more; a refund lost with the
  process leaves its count. Instances on one host do not share the count: use `redis`.
  Memory is bounded: past `_WINDOWS_MAX` addresses, the pending rows are written and
  the older half is dropped from memory (and loaded again from the file when needed).
- `redis` — one sorted set per address, `herald:rate:<sha256(address)>`, scored by the
  Redis server's clock (instances' clocks may drift), trimmed and checked atomically by a
  Lua script, expiring after `window_s` idle.

Addresses are compared case-insensitively and stored only as SHA-256 digests.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import time
from bisect import bisect_left, bisect_right
from collections import deque
from itertools import islice
from pathlib import Path
from typing import Protocol, TypeAlias

from service.dedupe import SqliteFile, redis_call, redis_client

__all__ = [
    "MemoryRateLimiter",
    "RateLimiter",
    "RedisRateLimiter",
    "SqliteRateLimiter",
    "Token",
    "address_digest",
    "open_rate_limiter",
]

_SWEEP_EVERY_S = 600.0
#: Addresses the sqlite limiter keeps in memory (~250 bytes each) before evicting.
_WINDOWS_MAX = 100_000
#: Pending rate rows older than this are written without waiting for a record.
_PENDING_MAX_S = 1.0
_PENDING_MAX_ROWS = 1000
_DELETE_RATE = "DELETE FROM rate_log WHERE key = ? AND at = ?"
# KEYS[1] the address' log; ARGV window (ms), limit, a member unique to this call.
_ACQUIRE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('PEXPIRE', KEYS[1], window)
return 1
"""

#: What `acquire` counted, for `refund` to give back: opaque to callers and always truthy.
#: The time that was logged (memory: monotonic, sqlite: wall clock; unique per address)
#: or the member added to the Redis sorted set (unique per call).
Token: TypeAlias = float | str


def address_digest(address: str) -> str:
    """The key an address is counted under: SHA-256 of its lower-cased form."""
    return hashlib.sha256(address.strip().lower().encode("utf-8", "surrogatepass")).hexdigest()


class RateLimiter(Protocol):
    """Counts emails per recipient address over a sliding window."""

    async def acquire(self, address: str) -> Token | None:
        """Count one email to `address` and return its token; None (not counted) if the
        window is full."""

    async def refund(self, address: str, token: Token) -> None:
        """Give back the one count `token` stands for (the server did not take the email);
        a no-op if it expired or was given back already."""

    async def close(self) -> None:
        """Free the limiter's resources."""


class MemoryRateLimiter:
    """One process' counts: for tests and `herald dev`."""

    def __init__(self, per_recipient: int, window_s: float) -> None:
        self.limit = per_recipient
        self.window_s = window_s
        self._log: dict[str, deque[float]] = {}
        self._swept = time.monotonic()

    async def acquire(self, address: str) -> Token | None:
        """Count one email to `address` unless the window is full."""
        now = time.monotonic()
        self._sweep(now)
        sent = self._log.setdefault(address_digest(address), deque())
        while sent and sent[0] <= now - self.window_s:
            sent.popleft()
        if len(sent) >= self.limit:
            return None
        if sent and now <= sent[-1]:  # two counts in one clock tick: one token each
            now = math.nextafter(sent[-1], math.inf)
        sent.append(now)
        return now

    async def refund(self, address: str, token: Token) -> None:
        """Remove the count from the address' window, if it is still there."""
        sent = self._log.get(address_digest(address))
        if sent and isinstance(token, float) and token in sent:
            sent.remove(token)

    async def close(self) -> None:
        """Forget every count."""
        self._log.clear()

    def _sweep(self, now: float) -> None:
        """Drop addresses not mailed within the window, so the dict does not only grow."""
        if now - self._swept < _SWEEP_EVERY_S:
            return
        self._swept = now
        self._log = {k: v for k, v in self._log.items() if v and v[-1] > now - self.window_s}


class SqliteRateLimiter:
    """Counts in memory, logged to the dedupe database file (see the module docstring)."""

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
        if time.monotonic() - self._swept > _SWEEP_EVERY_S:
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


class RedisRateLimiter:
    """Counts in Redis: every instance on the same server shares the limit."""

    def __init__(
        self, url: str, per_recipient: int, window_s: float, *, prefix: str = "herald:rate:"
    ) -> None:
        self.url = url
        self.limit = per_recipient
        self.window_ms = max(1, round(window_s * 1000))
        self.prefix = prefix
        self.client = redis_client(url)
        self._acquire = self.client.register_script(_ACQUIRE_LUA)
        self._member = f"{os.getpid()}:{os.urandom(4).hex()}:"
        self._serial = itertools.count()

    async def acquire(self, address: str) -> Token | None:
        """One atomic script: trim the address' log, count, add when under the limit."""
        member = f"{self._member}{next(self._serial)}"
        pending = self._acquire(
            keys=[self.prefix + address_digest(address)], args=[self.window_ms, self.limit, member]
        )
        result = await redis_call(pending, "cannot count in the redis rate limiter", self.url)
        return member if result else None

    async def refund(self, address: str, token: Token) -> None:
        """Remove the member `acquire` added (ZREM: a no-op once trimmed or expired)."""
        if not isinstance(token, str):
            return
        pending = self.client.zrem(self.prefix + address_digest(address), token)
        await redis_call(pending, "cannot give back a count in the redis rate limiter", self.url)

    async def close(self) -> None:
        """Close the connection pool."""
        await self.client.aclose()


def open_rate_limiter(
    backend: str, *, path: str, url: str, per_recipient: int, window_s: float
) -> RateLimiter | None:
    """The limiter kept in the `dedupe.backend` store; None when `per_recipient` is 0."""
    if per_recipient <= 0:
        return None
    if backend == "memory":
        return MemoryRateLimiter(per_recipient, window_s)
    if backend == "sqlite":
        return SqliteRateLimiter(Path(path), per_recipient, window_s)
    if backend == "redis":
        return RedisRateLimiter(url, per_recipient, window_s)
    raise ValueError(f"rate limit backend {backend!r} is not available")
