"""Per-recipient rate limit (`rate_limit.per_recipient` emails per `window_s`, SPEC §4).

A *sliding window log*: an email may go out when fewer than `per_recipient` emails went
to the same address in the last `window_s` seconds. Unlike a fixed window it never lets
twice the limit through around a window boundary, and it stays cheap because at most
`per_recipient` timestamps are kept per address.

What counts: `acquire` is called once per email that is about to be attempted (after the
dedupe claim said "not yet sent") and counts it when it returns True. Duplicates and
rate-limited emails do not count; a send that then fails *does* (the recipient or the
SMTP server may still have been hit, and a flood of failing events must not bypass the
limit), and a later redelivery of that email counts again.

The counters live in the dedupe backend, so instances that share a Redis share the limit:

- `memory` — per process; `sqlite` — the dedupe database file, table `rate_log`;
- `redis` — one sorted set per address, `herald:rate:<sha256(address)>`, scored by the
  Redis server's clock (instances' clocks may drift), trimmed and checked atomically by a
  Lua script, expiring after `window_s` idle.

Addresses are compared case-insensitively and stored only as SHA-256 digests.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import sqlite3
import time
from collections import deque
from pathlib import Path
from typing import Protocol

from service.dedupe import redis_call, redis_client

__all__ = [
    "MemoryRateLimiter",
    "RateLimiter",
    "RedisRateLimiter",
    "SqliteRateLimiter",
    "address_digest",
    "open_rate_limiter",
]

_SWEEP_EVERY_S = 600.0
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


def address_digest(address: str) -> str:
    """The key an address is counted under: SHA-256 of its lower-cased form."""
    return hashlib.sha256(address.strip().lower().encode("utf-8", "surrogatepass")).hexdigest()


class RateLimiter(Protocol):
    """Counts emails per recipient address over a sliding window."""

    async def acquire(self, address: str) -> bool:
        """True (and counted) if one more email may go to `address` now."""

    async def close(self) -> None:
        """Free the limiter's resources."""


class MemoryRateLimiter:
    """One process' counts: for tests and `herald dev`."""

    def __init__(self, per_recipient: int, window_s: float) -> None:
        self.limit = per_recipient
        self.window_s = window_s
        self._log: dict[str, deque[float]] = {}
        self._swept = time.monotonic()

    async def acquire(self, address: str) -> bool:
        """Count one email to `address` unless the window is full."""
        now = time.monotonic()
        self._sweep(now)
        sent = self._log.setdefault(address_digest(address), deque())
        while sent and sent[0] <= now - self.window_s:
            sent.popleft()
        if len(sent) >= self.limit:
            return False
        sent.append(now)
        return True

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
    """Counts in a SQLite file (the dedupe database), shared by processes on one host."""

    def __init__(self, path: Path, per_recipient: int, window_s: float) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.limit = per_recipient
        self.window_s = window_s
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS rate_log (key TEXT NOT NULL, at REAL NOT NULL)"
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS rate_log_key_at ON rate_log (key, at)")
        self._sweep()

    async def acquire(self, address: str) -> bool:
        """Trim, count and maybe insert in one IMMEDIATE transaction (atomic across processes)."""
        key, now = address_digest(address), time.time()
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("DELETE FROM rate_log WHERE key = ? AND at <= ?", (key, now - self.window_s))
            (count,) = db.execute("SELECT COUNT(*) FROM rate_log WHERE key = ?", (key,)).fetchone()
            allowed = bool(count < self.limit)
            if allowed:
                db.execute("INSERT INTO rate_log (key, at) VALUES (?, ?)", (key, now))
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        if time.monotonic() - self._swept > _SWEEP_EVERY_S:
            self._sweep()
        return allowed

    async def close(self) -> None:
        """Close the file."""
        await asyncio.to_thread(self._db.close)

    def _sweep(self) -> None:
        self._db.execute("DELETE FROM rate_log WHERE at <= ?", (time.time() - self.window_s,))
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

    async def acquire(self, address: str) -> bool:
        """One atomic script: trim the address' log, count, add when under the limit."""
        member = f"{self._member}{next(self._serial)}"
        pending = self._acquire(
            keys=[self.prefix + address_digest(address)], args=[self.window_ms, self.limit, member]
        )
        result = await redis_call(pending, "cannot count in the redis rate limiter", self.url)
        return bool(result)

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
