"""Dedupe stores: "this email was sent" records keyed by (event id, action id, recipient).

Claim-then-send, as arq's idempotent `enqueue_job(_job_id=…)`: `claim` reserves a key
and says what it found (`Claim.TAKEN`: ours now; `Claim.SENT`: already sent;
`Claim.HELD`: another sender holds it and has not finished), `record` makes "sent"
durable for `ttl_s` after the SMTP server accepted the message, `release` gives an
unsent key back so a redelivered or replayed event can still be delivered.

`HELD` is not "sent": the holder may still fail and release, or die. The caller waits
for the holder's outcome instead of counting the email as a duplicate.

A claim is a *lease*: if its holder dies between claim and record, the key becomes
claimable again and another task or instance sends the email. In-process leases
(memory, sqlite) last `claim_ttl_s` (default 5 min; a dead process takes its leases with
it). Redis leases are short (`REDIS_CLAIM_TTL_S`, 30 s) and renewed every third of that
while their holder lives, so the partitions of a killed instance are not held back for
long. Backends:

- `memory` — one process, forgets on exit (`herald dev`, tests).
- `sqlite` — one process; claims live in the process, "sent" records in a WAL file. A
  record is committed on its own, before `record` returns, so it survives a process kill
  (`synchronous=NORMAL`: only an OS crash can lose the last few). The store and the
  sqlite rate limiter of a process share one connection to the file (`SqliteFile`):
  one page cache, and the rate limiter's rows ride along in the next record's
  transaction instead of paying a commit of their own.
- `redis` — shared by every instance: `SET NX PX` claims (one Lua call that also says
  sent or held), `SET EX` records, Lua compare-and-delete release and compare-and-renew.
  Keys are `herald:sent:<sha256 of the key>`, so no address is stored in clear.

`open()` is the startup check (a wrong Redis URL fails there with one line); any later
backend failure raises `DedupeUnavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Awaitable
from enum import StrEnum
from pathlib import Path
from typing import ClassVar, Protocol, TypeVar
from urllib.parse import urlsplit

from redis.asyncio import Redis, from_url
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

__all__ = [
    "CLAIM_TTL_S",
    "REDIS_CLAIM_TTL_S",
    "Claim",
    "DedupeStore",
    "DedupeUnavailable",
    "MemoryDedupe",
    "RedisDedupe",
    "SqliteDedupe",
    "SqliteFile",
    "dedupe_key",
    "open_dedupe",
    "redis_call",
    "redis_client",
    "safe_url",
]

#: How long an in-process claim holds without a record: longer than one email's send.
CLAIM_TTL_S = 300.0
#: A Redis claim's lease; its holder renews it every third of this while it lives.
REDIS_CLAIM_TTL_S = 30.0
_PURGE_EVERY_S = 3600.0
_T = TypeVar("_T")
_REDIS_TIMEOUT_S = 5.0
# Compare-and-delete: a claim that expired and was taken over is someone else's now.
_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


# Claim in one round trip: take the key, or say whether it was sent or is held.
_CLAIM_LUA = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
if redis.call('GET', KEYS[1]) == 'sent' then
  return 2
end
return 3
"""
# Compare-and-renew: extend only the leases that are still ours; 1 or 0 per key.
_RENEW_LUA = """
local renewed = {}
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[i + 1] then
    redis.call('PEXPIRE', key, ARGV[1])
    renewed[i] = 1
  else
    renewed[i] = 0
  end
end
return renewed
"""
# Still ours (renewed), or free again (taken back): 1; someone else's or sent: 0.
_CONFIRM_LUA = """
local found = redis.call('GET', KEYS[1])
if found == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not found then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
#: A lease closer than this to its end is confirmed with Redis before the send.
_CONFIRM_MARGIN_S = 5.0
_RENEW_CHUNK = 500

log = logging.getLogger(__name__)


class Claim(StrEnum):
    """What `claim` found."""

    TAKEN = "taken"  # the key is ours: send, then record or release
    SENT = "sent"  # already sent: a duplicate
    HELD = "held"  # another sender holds it and has not finished: wait for its outcome


class DedupeUnavailable(ConnectionError):
    """The dedupe backend cannot be reached; the message is one line, without secrets."""


def dedupe_key(event_id: str, action_id: str, recipient: str) -> str:
    """The once-only key of one email; the unit separator cannot occur in an event id."""
    return f"{event_id}\x1f{action_id}\x1f{recipient.lower()}"


class DedupeStore(Protocol):
    """Where sent emails are remembered for `ttl_s` seconds."""

    async def open(self) -> None:
        """Check the backend is usable; raise DedupeUnavailable with one line if not."""

    async def claim(self, key: str) -> Claim:
        """Reserve `key`, or say that it was sent or is held by another sender."""

    async def record(self, key: str) -> None:
        """Remember `key` as sent for `ttl_s`, durably, and drop our claim."""

    async def release(self, key: str) -> None:
        """Drop our claim on an unsent `key`; never removes a sent record."""

    async def confirm(self, key: str) -> bool:
        """Right before the send: whether our claim on `key` still holds. A lease may
        lapse while its holder was frozen (a pause, a stopped VM) and another instance
        take it over; in-process leases live and die with their holder: always True."""

    async def close(self) -> None:
        """Free the backend's resources."""


class _Leases:
    """In-process claims that expire, like Redis' `PX` claims."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._until: dict[str, float] = {}

    def take(self, key: str) -> bool:
        now = time.monotonic()
        if self._until.get(key, 0.0) > now:
            return False
        self._until[key] = now + self.ttl_s
        return True

    def drop(self, key: str) -> None:
        self._until.pop(key, None)


class MemoryDedupe:
    """Process-local store: for tests and `herald dev`; forgets everything on exit."""

    def __init__(self, ttl_s: float, *, claim_ttl_s: float = CLAIM_TTL_S) -> None:
        self.ttl_s = ttl_s
        self._sent: dict[str, float] = {}
        self._claims = _Leases(claim_ttl_s)
        self._purged = time.monotonic()

    async def open(self) -> None:
        """Nothing to check."""

    async def claim(self, key: str) -> Claim:
        """Reserve `key`, or say that it was sent or is claimed."""
        if self._sent.get(key, 0.0) > time.time():
            return Claim.SENT
        return Claim.TAKEN if self._claims.take(key) else Claim.HELD

    async def record(self, key: str) -> None:
        """Remember `key` as sent."""
        self._sent[key] = time.time() + self.ttl_s
        self._claims.drop(key)
        if time.monotonic() - self._purged > _PURGE_EVERY_S:
            now, self._purged = time.time(), time.monotonic()
            self._sent = {k: t for k, t in self._sent.items() if t > now}

    async def release(self, key: str) -> None:
        """Drop the claim on `key`."""
        self._claims.drop(key)

    async def confirm(self, key: str) -> bool:
        return True

    async def close(self) -> None:
        """Forget everything."""
        self._sent.clear()


class SqliteFile:
    """One process' connection to a SQLite dedupe file, shared by its store and limiter.

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
        #: The sqlite rate limiter's in-memory window per address digest (ratelimit.py).
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
        self._claims = _Leases(claim_ttl_s)
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
        if time.monotonic() - self._purged > _PURGE_EVERY_S:
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


class RedisDedupe:
    """Redis, shared by every instance: the once-only guarantee holds across them."""

    def __init__(
        self,
        url: str,
        ttl_s: float,
        *,
        claim_ttl_s: float = REDIS_CLAIM_TTL_S,
        prefix: str = "herald:sent:",
    ) -> None:
        self.url = url
        self.ttl_s = int(max(1, ttl_s))
        self.claim_ttl_ms = int(max(1, claim_ttl_s * 1000))
        self.prefix = prefix
        #: Written into claims, so an operator can see who holds one.
        self.instance_id = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        self.client = redis_client(url)
        self._claim = self.client.register_script(_CLAIM_LUA)
        self._release = self.client.register_script(_RELEASE_LUA)
        self._renew = self.client.register_script(_RENEW_LUA)
        self._confirm = self.client.register_script(_CONFIRM_LUA)
        self._tokens: dict[str, str] = {}
        #: When each claim's lease ends at the latest (monotonic), as far as we know.
        self._until: dict[str, float] = {}
        self._serial = itertools.count()
        self._renewer: asyncio.Task[None] | None = None

    async def open(self) -> None:
        """PING the server (a wrong URL or a server that is down fails here), then keep
        this instance's claims alive while it runs."""
        await self._call("connect to", self.client.ping())
        if self._renewer is None:
            self._renewer = asyncio.create_task(self._renew_forever(), name="claim-renewal")

    async def claim(self, key: str) -> Claim:
        """`SET key claimed:<instance> NX PX claim_ttl`, else whether it is sent or held."""
        token = f"claimed:{self.instance_id}:{next(self._serial)}"
        found = await self._call(
            "claim in", self._claim(keys=[self._key(key)], args=[token, self.claim_ttl_ms])
        )
        if found == 1:
            self._tokens[key] = token
            self._until[key] = time.monotonic() + self.claim_ttl_ms / 1000
            return Claim.TAKEN
        return Claim.SENT if found == 2 else Claim.HELD

    async def renew(self) -> int:
        """Extend the lease of every claim this instance still holds; how many were. A
        claim found lost (its lease lapsed, another instance took it) is forgotten."""
        held = list(self._tokens.items())
        renewed = 0
        for start in range(0, len(held), _RENEW_CHUNK):
            chunk = held[start : start + _RENEW_CHUNK]
            began = time.monotonic()
            flags = await self._call(
                "renew claims in",
                self._renew(
                    keys=[self._key(k) for k, _ in chunk],
                    args=[self.claim_ttl_ms, *(token for _, token in chunk)],
                ),
            )
            for (key, token), kept in zip(chunk, flags, strict=True):
                if kept:
                    self._until[key] = began + self.claim_ttl_ms / 1000
                    renewed += 1
                elif self._tokens.get(key) == token:
                    self._forget(key)
        return renewed

    async def confirm(self, key: str) -> bool:
        """Without a round trip while the lease has more than `_CONFIRM_MARGIN_S` left;
        else ask Redis (renewing it, or taking it back if it lapsed and nobody took it)."""
        token = self._tokens.get(key)
        if token is None:
            return False  # found lost by a renewal
        if time.monotonic() < self._until.get(key, 0.0) - _CONFIRM_MARGIN_S:
            return True
        began = time.monotonic()
        kept = await self._call(
            "confirm a claim in",
            self._confirm(keys=[self._key(key)], args=[token, self.claim_ttl_ms]),
        )
        if kept:
            self._until[key] = began + self.claim_ttl_ms / 1000
            return True
        self._forget(key)
        return False

    def _forget(self, key: str) -> None:
        self._tokens.pop(key, None)
        self._until.pop(key, None)

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.claim_ttl_ms / 3000)
            try:
                await self.renew()
            except DedupeUnavailable as exc:
                # The leases may lapse; a record written later still wins (SET, not NX).
                log.warning("claim renewal failed", extra={"error": str(exc)})

    async def record(self, key: str) -> None:
        """`SET key sent EX ttl_s`, whoever holds the claim."""
        await self._call("record in", self.client.set(self._key(key), "sent", ex=self.ttl_s))
        self._forget(key)

    async def release(self, key: str) -> None:
        """Delete the key only while it still holds our claim."""
        token = self._tokens.get(key)
        self._forget(key)
        if token is not None:
            await self._call("release in", self._release(keys=[self._key(key)], args=[token]))

    async def close(self) -> None:
        """Stop renewing claims and close the connection pool."""
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None
        await self.client.aclose()

    def _key(self, key: str) -> str:
        return self.prefix + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()

    async def _call(self, what: str, pending: Awaitable[_T]) -> _T:
        return await redis_call(pending, f"cannot {what} the redis dedupe store", self.url)


def redis_client(url: str) -> Redis:
    """A `redis.asyncio` client for `url`, connecting lazily, with short timeouts."""
    try:
        return from_url(
            url,
            socket_timeout=_REDIS_TIMEOUT_S,
            socket_connect_timeout=_REDIS_TIMEOUT_S,
            # A blip (failover, restart) is retried briefly before it fails the email.
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 3),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
            health_check_interval=30,
        )
    except ValueError as exc:
        raise DedupeUnavailable(f"invalid redis url {safe_url(url)}: {exc}") from None


async def redis_call(pending: Awaitable[_T], what: str, url: str) -> _T:
    """Await a redis command; its failures become one-line DedupeUnavailable errors."""
    try:
        return await pending
    except (RedisError, OSError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DedupeUnavailable(f"{what} at {safe_url(url)}: {reason}") from None


def safe_url(url: str) -> str:
    """`url` without its user and password, for messages and logs."""
    parts = urlsplit(url)
    if not parts.netloc:
        return url.rpartition("@")[2]
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


def open_dedupe(backend: str, *, path: str, url: str, ttl_s: float) -> DedupeStore:
    """The store named by `dedupe.backend`; call `await store.open()` before use."""
    if backend == "memory":
        return MemoryDedupe(ttl_s)
    if backend == "sqlite":
        return SqliteDedupe(Path(path), ttl_s)
    if backend == "redis":
        return RedisDedupe(url, ttl_s)
    raise ValueError(f"dedupe backend {backend!r} is not available")
