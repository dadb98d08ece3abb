"""Dedupe stores and rate limiters against their real backends.

Redis tests run against the suite's own redis-server (the `redis_url` fixture), each
under a key prefix of its own that is deleted afterwards.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from service import ratelimit
from service.dedupe import (
    Claim,
    DedupeStore,
    DedupeUnavailable,
    MemoryDedupe,
    RedisDedupe,
    SqliteDedupe,
    dedupe_key,
    open_dedupe,
)
from service.mail.mailer import EmailRequest, Mailer
from service.mail.render import Renderer
from service.metrics import Metrics
from service.ratelimit import (
    MemoryRateLimiter,
    RateLimiter,
    RedisRateLimiter,
    SqliteRateLimiter,
    address_digest,
    open_rate_limiter,
)

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ["memory", "sqlite", "redis"]


@pytest.fixture(params=BACKENDS)
async def make_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Callable[..., DedupeStore]]:
    """Builds stores of one backend that share state (same file / same Redis prefix)."""
    prefix = request.getfixturevalue("redis_prefix") if request.param == "redis" else ""
    url = request.getfixturevalue("redis_url") if request.param == "redis" else ""
    memory: list[MemoryDedupe] = []
    made: list[DedupeStore] = []

    def make(ttl_s: float = 60, claim_ttl_s: float = 300) -> DedupeStore:
        store: DedupeStore
        if request.param == "memory":
            store = memory[0] if memory else MemoryDedupe(ttl_s, claim_ttl_s=claim_ttl_s)
            memory.append(store)
        elif request.param == "sqlite":
            store = SqliteDedupe(tmp_path / "d.db", ttl_s, claim_ttl_s=claim_ttl_s)
        else:
            store = RedisDedupe(url, ttl_s, claim_ttl_s=claim_ttl_s, prefix=prefix + "sent:")
        made.append(store)
        return store

    yield make
    for store in dict.fromkeys(made):
        await store.close()


# --- dedupe stores --------------------------------------------------------------------


def test_dedupe_key_ignores_address_case() -> None:
    key = dedupe_key("evt", "act", "Ada@Example.com")
    assert key == dedupe_key("evt", "act", "ada@example.com")


async def test_claim_record_release(make_store: Callable[..., DedupeStore]) -> None:
    store = make_store()
    await store.open()
    assert await store.claim("k") is Claim.TAKEN
    assert await store.claim("k") is Claim.HELD  # in flight, not sent
    await store.release("k")
    assert await store.claim("k") is Claim.TAKEN  # a failed send can be retried
    await store.record("k")
    assert await store.claim("k") is Claim.SENT
    await store.release("k")  # release never removes a sent record
    assert await store.claim("k") is Claim.SENT


async def test_concurrent_claims_have_one_winner(make_store: Callable[..., DedupeStore]) -> None:
    store = make_store()
    wins = await asyncio.gather(*(store.claim("race") for _ in range(20)))
    assert wins.count(Claim.TAKEN) == 1 and wins.count(Claim.HELD) == 19


async def test_a_crashed_holders_claim_expires(make_store: Callable[..., DedupeStore]) -> None:
    store = make_store(claim_ttl_s=0.05)
    assert await store.claim("k") is Claim.TAKEN  # ... its holder never records nor releases
    await asyncio.sleep(0.1)
    assert await store.claim("k") is Claim.TAKEN


async def test_sqlite_record_survives_reopen(tmp_path: Path) -> None:
    store = SqliteDedupe(tmp_path / "d.db", ttl_s=60)
    assert await store.claim("k") is Claim.TAKEN
    await store.record("k")
    await store.close()
    reopened = SqliteDedupe(tmp_path / "d.db", ttl_s=60)
    assert await reopened.claim("k") is Claim.SENT
    assert await reopened.claim("other") is Claim.TAKEN
    await reopened.close()


async def test_sqlite_and_memory_records_expire(tmp_path: Path) -> None:
    for store in (SqliteDedupe(tmp_path / "d.db", ttl_s=-1), MemoryDedupe(ttl_s=-1)):
        await store.record("k")
        assert await store.claim("k") is Claim.TAKEN
        await store.close()


async def test_redis_is_shared_by_instances(redis_prefix: str, redis_url: str) -> None:
    a = RedisDedupe(redis_url, 60, prefix=redis_prefix)
    b = RedisDedupe(redis_url, 60, prefix=redis_prefix)
    try:
        assert await a.claim("k") is Claim.TAKEN
        assert await b.claim("k") is Claim.HELD
        await b.release("k")  # not b's claim: a no-op
        assert await b.claim("k") is Claim.HELD
        await a.record("k")
        assert await b.claim("k") is Claim.SENT and await a.claim("k") is Claim.SENT
        assert await a.claim("k2") is Claim.TAKEN
        await a.release("k2")
        assert await b.claim("k2") is Claim.TAKEN
    finally:
        await a.close()
        await b.close()


async def test_redis_release_spares_a_claim_taken_over(redis_prefix: str, redis_url: str) -> None:
    slow = RedisDedupe(redis_url, 60, claim_ttl_s=0.05, prefix=redis_prefix)
    other = RedisDedupe(redis_url, 60, prefix=redis_prefix)
    try:
        assert await slow.claim("k") is Claim.TAKEN
        await asyncio.sleep(0.1)  # slow's lease ran out; other takes over
        assert await other.claim("k") is Claim.TAKEN
        await slow.release("k")
        assert await slow.claim("k") is Claim.HELD  # other's claim is still there
    finally:
        await slow.close()
        await other.close()


async def test_redis_keys_values_and_ttls(redis_prefix: str, redis_url: str) -> None:
    store = RedisDedupe(redis_url, 3600, prefix=redis_prefix)
    key = dedupe_key("evt-1", "notify", "ada@example.com")
    try:
        assert await store.claim(key) is Claim.TAKEN
        [name] = [k async for k in store.client.scan_iter(match=redis_prefix + "*")]
        # The random prefix and the hex digest may contain "ada" by chance; the address may not.
        assert b"ada@example.com" not in name and b"example" not in name
        assert len(name) == len(redis_prefix) + 64  # sha256, no PII
        claimed = await store.client.get(name)
        assert claimed.startswith(f"claimed:{store.instance_id}".encode())
        assert 0 < await store.client.pttl(name) <= 300_000
        await store.record(key)
        assert await store.client.get(name) == b"sent"
        assert 3590 < await store.client.ttl(name) <= 3600
    finally:
        await store.close()


@pytest.mark.parametrize(
    "url", ["redis://herald:s3cret@127.0.0.1:1/0", "http://herald:s3cret@127.0.0.1/0"]
)
async def test_redis_bad_url_fails_at_open_with_one_line(url: str) -> None:
    with pytest.raises(DedupeUnavailable) as failure:
        store = open_dedupe("redis", path="unused", url=url, ttl_s=60)
        try:
            await store.open()
        finally:
            await store.close()
    message = str(failure.value)
    assert "\n" not in message and "s3cret" not in message and "127.0.0.1" in message


async def test_open_dedupe_backends(tmp_path: Path) -> None:
    kinds = {
        "memory": MemoryDedupe,
        "sqlite": SqliteDedupe,
        "redis": RedisDedupe,
    }
    for backend, kind in kinds.items():
        store = open_dedupe(
            backend, path=str(tmp_path / "d.db"), url="redis://127.0.0.1:1/0", ttl_s=60
        )
        assert isinstance(store, kind)
        await store.close()
    with pytest.raises(ValueError):
        open_dedupe("etcd", path="", url="", ttl_s=60)


# --- rate limiters --------------------------------------------------------------------


def _limiter(
    backend: tuple[str, str, str], tmp_path: Path, limit: int, window: float
) -> RateLimiter:
    """A limiter of `backend` (name, Redis URL, key prefix); same backend, same state."""
    backend, url, prefix = backend
    if backend == "memory":
        return MemoryRateLimiter(limit, window)
    if backend == "sqlite":
        return SqliteRateLimiter(tmp_path / "d.db", limit, window)
    return RedisRateLimiter(url, limit, window, prefix=prefix + "rate:")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> tuple[str, str, str]:
    """A backend name and, for Redis, the server's URL and the test's key prefix."""
    return _backend(request, request.param)


def _backend(request: pytest.FixtureRequest, name: str) -> tuple[str, str, str]:
    if name != "redis":
        return name, "", ""
    return name, request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")


async def test_limit_counts_per_recipient(backend: tuple[str, str, str], tmp_path: Path) -> None:
    limiter = _limiter(backend, tmp_path, limit=2, window=60)
    try:
        results = [await limiter.acquire("ada@example.com") for _ in range(5)]
        assert [token is not None for token in results] == [True, True, False, False, False]
        assert not await limiter.acquire("ADA@example.com")  # same address
        assert await limiter.acquire("bob@example.com")
    finally:
        await limiter.close()


async def test_limit_window_slides(backend: tuple[str, str, str], tmp_path: Path) -> None:
    limiter = _limiter(backend, tmp_path, limit=2, window=0.4)
    try:
        assert await limiter.acquire("ada@example.com")
        await asyncio.sleep(0.2)
        assert await limiter.acquire("ada@example.com")
        assert not await limiter.acquire("ada@example.com")
        await asyncio.sleep(0.25)  # the first has left the window, the second not yet
        assert await limiter.acquire("ada@example.com")
        assert not await limiter.acquire("ada@example.com")
    finally:
        await limiter.close()


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
async def test_limit_is_shared_by_instances(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    a = _limiter(_backend(request, kind), tmp_path, limit=3, window=60)
    b = _limiter(_backend(request, kind), tmp_path, limit=3, window=60)
    try:
        got = [await x.acquire("ada@example.com") for x in (a, b, a, b, a)]
        assert [token is not None for token in got] == [True, True, True, False, False]
    finally:
        await a.close()
        await b.close()


async def test_redis_limit_keys_expire_and_hide_addresses(
    redis_prefix: str, redis_url: str
) -> None:
    limiter = RedisRateLimiter(redis_url, 5, 60, prefix=redis_prefix)
    try:
        await limiter.acquire("ada@example.com")
        [name] = [k async for k in limiter.client.scan_iter(match=redis_prefix + "*")]
        # The random prefix and the hex digest may contain "ada" by chance; the address may not.
        assert b"ada@example.com" not in name and b"example" not in name
        assert 0 < await limiter.client.pttl(name) <= 60_000
    finally:
        await limiter.close()


async def test_sqlite_limit_survives_a_restart(tmp_path: Path) -> None:
    first = SqliteRateLimiter(tmp_path / "d.db", 3, 60)
    assert await first.acquire("ada@example.com")
    assert await first.acquire("ada@example.com")
    await first.close()  # writes the rows no dedupe record carried
    again = SqliteRateLimiter(tmp_path / "d.db", 3, 60)
    try:
        assert await again.acquire("ADA@example.com")
        assert not await again.acquire("ada@example.com")
        assert await again.acquire("bob@example.com")
    finally:
        await again.close()


async def test_sqlite_record_commits_the_rate_rows(tmp_path: Path) -> None:
    store = SqliteDedupe(tmp_path / "d.db", 60)
    limiter = SqliteRateLimiter(tmp_path / "d.db", 5, 60)
    reader = sqlite3.connect(tmp_path / "d.db")
    try:
        assert await store.claim("k") is Claim.TAKEN
        assert await limiter.acquire("ada@example.com")
        await store.record("k")
        # Another connection (as after a kill) sees the record and the count, both
        # committed by the record's one transaction.
        assert reader.execute("SELECT count(*) FROM sent").fetchone() == (1,)
        [(digest,)] = reader.execute("SELECT key FROM rate_log").fetchall()
        assert digest == address_digest("ada@example.com")
    finally:
        reader.close()
        await limiter.close()
        await store.close()


async def test_sqlite_limit_holds_when_addresses_are_evicted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ratelimit, "_WINDOWS_MAX", 4)
    limiter = SqliteRateLimiter(tmp_path / "d.db", 2, 60)
    try:
        assert await limiter.acquire("ada@example.com")
        assert await limiter.acquire("ada@example.com")
        for i in range(20):  # pushes ada out of memory, more than once
            assert await limiter.acquire(f"user{i}@example.com")
        assert not await limiter.acquire("ada@example.com")
        assert await limiter.acquire("user0@example.com")
    finally:
        await limiter.close()


async def test_sqlite_checkpoints_off_the_event_loop(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    store = SqliteDedupe(path, 60)
    assert store._db.execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)
    for i in range(300):
        assert await store.claim(f"key-{i:04d}-" + "x" * 40) is Claim.TAKEN
        await store.record(f"key-{i:04d}-" + "x" * 40)
    # Copied into the database file by the checkpoint thread, not by a commit.
    for _ in range(100):
        if path.stat().st_size > 16384:
            break
        await asyncio.sleep(0.05)
    assert path.stat().st_size > 16384
    checkpoints = store._file._checkpoints
    await store.close()
    assert not checkpoints.is_alive()
    assert not Path(f"{path}-wal").exists()  # the last connection closed cleanly


async def test_sqlite_files_of_an_earlier_version_still_work(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    old = sqlite3.connect(path, isolation_level=None)
    old.execute("PRAGMA journal_mode=WAL")
    old.execute("CREATE TABLE sent (key TEXT PRIMARY KEY, expires_at REAL NOT NULL)")
    old.execute("CREATE TABLE rate_log (key TEXT NOT NULL, at REAL NOT NULL)")
    old.execute("CREATE INDEX rate_log_key_at ON rate_log (key, at)")
    old.execute("INSERT INTO sent VALUES ('old', ?)", (time.time() + 60,))
    old.execute(
        "INSERT INTO rate_log VALUES (?, ?)", (address_digest("ada@example.com"), time.time())
    )
    old.close()
    store = SqliteDedupe(path, 60)
    limiter = SqliteRateLimiter(path, 2, 60)
    try:
        assert await store.claim("old") is Claim.SENT
        assert await store.claim("new") is Claim.TAKEN
        assert await limiter.acquire("ada@example.com")
        assert not await limiter.acquire("ada@example.com")
        await store.record("new")
        assert await store.claim("new") is Claim.SENT
    finally:
        await limiter.close()
        await store.close()


def test_zero_means_unlimited() -> None:
    limiter = open_rate_limiter(
        "redis", path="", url="redis://127.0.0.1:1/0", per_recipient=0, window_s=60
    )
    assert limiter is None


# --- the mailer with a rate limit -----------------------------------------------------


class _Recorder:
    """A transport that accepts everything: the mailer's decisions are what is tested."""

    def __init__(self) -> None:
        self.sent: list[list[str]] = []

    async def send(self, sender: str, recipients: list[str], message: bytes, **options: Any) -> str:
        self.sent.append(recipients)
        return "250 OK"


def _request(event_id: str, to: str) -> EmailRequest:
    event = orjson.loads((ROOT / "examples/events/post-change-password.json").read_bytes())
    user = {**event["data"]["user"], "email": to}
    view: dict[str, Any] = {**event["data"], **event, "user": user}
    context = {"event": view, "user": user, "secrets": {}, "data": {}}
    return EmailRequest(event_id, "notify", "password_changed", to, "", "en", context)


async def test_mailer_skips_emails_over_the_limit(
    backend: tuple[str, str, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    metrics, transport = Metrics(), _Recorder()
    dedupe = MemoryDedupe(60)
    limiter = _limiter(backend, tmp_path, limit=2, window=60)
    mailer = Mailer(
        renderer=Renderer(ROOT / "templates"),
        transport=transport,
        dedupe=dedupe,
        default_sender="Herald <no-reply@herald.test>",
        metrics=metrics,
        rate_limiter=limiter,
    )
    with caplog.at_level(logging.INFO, "service.mail.mailer"):
        ada = [await mailer.send(_request(f"e{i}", "ada@herald.test")) for i in range(5)]
        bob = [await mailer.send(_request(f"e{i}", "bob@herald.test")) for i in range(2)]
    await limiter.close()
    assert ada == ["sent", "sent", "rate_limited", "rate_limited", "rate_limited"]
    assert bob == ["sent", "sent"]
    assert transport.sent.count(["ada@herald.test"]) == 2
    limited = metrics.emails.labels("password_changed", "rate_limited")._value.get()
    assert limited == 3
    released = await dedupe.claim(dedupe_key("e4", "notify", "ada@herald.test"))
    assert released is Claim.TAKEN
    lines = [r for r in caplog.records if getattr(r, "outcome", None) == "rate_limited"]
    assert len(lines) == 3 and lines[0].recipient == "a***@herald.test"
    assert "ada@herald.test" not in caplog.text


# --- a claim held by another sender -----------------------------------------------------


async def test_redis_holder_renews_its_claim_and_a_dead_ones_lapses(
    redis_prefix: str, redis_url: str
) -> None:
    holder = RedisDedupe(redis_url, 60, claim_ttl_s=0.3, prefix=redis_prefix)
    other = RedisDedupe(redis_url, 60, prefix=redis_prefix)
    await holder.open()  # starts renewing its claims every 0.1 s
    try:
        assert await holder.claim("k") is Claim.TAKEN
        await asyncio.sleep(0.7)  # more than two leases: alive, so still held
        assert await other.claim("k") is Claim.HELD
    finally:
        await holder.close()  # as if it died: nobody renews any more
    try:
        await asyncio.sleep(0.4)
        assert await other.claim("k") is Claim.TAKEN
    finally:
        await other.close()


def _mailer(dedupe: DedupeStore, transport: _Recorder) -> Mailer:
    return Mailer(
        renderer=Renderer(ROOT / "templates"),
        transport=transport,
        dedupe=dedupe,
        default_sender="Herald <no-reply@herald.test>",
        metrics=Metrics(),
    )


@pytest.mark.parametrize("outcome", ["recorded", "released"])
async def test_mailer_waits_for_a_claim_held_elsewhere(outcome: str) -> None:
    """A claim held by another sender is neither sent over nor counted as sent: the
    mailer waits; a record makes it a duplicate, a release makes it this mailer's."""
    dedupe, transport = MemoryDedupe(60), _Recorder()
    key = dedupe_key("e1", "notify", "ada@herald.test")
    assert await dedupe.claim(key) is Claim.TAKEN  # the other sender, mid-send
    sending = asyncio.create_task(
        _mailer(dedupe, transport).send(_request("e1", "ada@herald.test"))
    )
    await asyncio.sleep(0.3)
    assert not sending.done() and transport.sent == []
    await (dedupe.record(key) if outcome == "recorded" else dedupe.release(key))
    result = await asyncio.wait_for(sending, 5)
    if outcome == "recorded":
        assert (result, transport.sent) == ("duplicate", [])
    else:
        assert (result, transport.sent) == ("sent", [["ada@herald.test"]])


class _PausedTransport(_Recorder):
    """Holds a connection slot, runs `meanwhile` (as if this process were frozen), then
    asks `before` whether to go on, as the SMTP pool does."""

    def __init__(self, meanwhile: Callable[[], Any]) -> None:
        super().__init__()
        self.meanwhile = meanwhile

    async def send(self, sender: str, recipients: list[str], message: bytes, **options: Any) -> str:
        await self.meanwhile()
        if options.get("before") is not None:
            await options["before"]()
        return await super().send(sender, recipients, message)


async def test_a_holder_whose_lease_lapsed_and_was_taken_over_does_not_send(
    redis_prefix: str, redis_url: str
) -> None:
    frozen = RedisDedupe(redis_url, 60, claim_ttl_s=0.2, prefix=redis_prefix)  # no renewal
    other = RedisDedupe(redis_url, 60, prefix=redis_prefix)
    request = _request("e-frozen", "ada@herald.test")
    key = dedupe_key("e-frozen", "notify", "ada@herald.test")

    async def taken_over_meanwhile() -> None:
        await asyncio.sleep(0.3)  # the lease lapses
        assert await other.claim(key) is Claim.TAKEN
        await other.record(key)  # the other instance sent it

    transport = _PausedTransport(taken_over_meanwhile)
    try:
        outcome = await _mailer(frozen, transport).send(request)
    finally:
        await frozen.close()
        await other.close()
    assert outcome == "duplicate"
    assert transport.sent == []


async def test_a_holder_whose_lease_lapsed_unclaimed_takes_it_back_and_sends_once(
    redis_prefix: str, redis_url: str
) -> None:
    frozen = RedisDedupe(redis_url, 60, claim_ttl_s=0.2, prefix=redis_prefix)
    other = RedisDedupe(redis_url, 60, prefix=redis_prefix)
    key = dedupe_key("e-back", "notify", "ada@herald.test")
    transport = _PausedTransport(lambda: asyncio.sleep(0.3))
    try:
        outcome = await _mailer(frozen, transport).send(_request("e-back", "ada@herald.test"))
        assert await other.claim(key) is Claim.SENT
    finally:
        await frozen.close()
        await other.close()
    assert outcome == "sent"
    assert transport.sent == [["ada@herald.test"]]
