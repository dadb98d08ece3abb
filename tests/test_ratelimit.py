"""Rate limiters against their real backends: the limit per recipient over a sliding
window, refunds (a count the SMTP server did not take is given back, exactly once, and
stays given back: sqlite across a reopen, redis for every instance on the server), and
the mailer skipping emails over the limit."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
import types
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from service.dedupe import Claim, MemoryDedupe, SqliteDedupe, dedupe_key
from service.metrics import Metrics
from service.ratelimit import (
    MemoryRateLimiter,
    RateLimiter,
    RedisRateLimiter,
    SqliteRateLimiter,
    address_digest,
    open_rate_limiter,
)
from service.ratelimit import sqlite as sqlite_limiter
from tests.mailer_doubles import Recorder, email_request, mailer

ADA = "ada@example.com"
BACKENDS = ["memory", "sqlite", "redis"]
MakeLimiter = Callable[[int, float], RateLimiter]


@pytest.fixture(params=BACKENDS)
async def make(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MakeLimiter]:
    """Builds limiters of one backend, closed afterwards (sqlite: one file each test)."""
    made: list[RateLimiter] = []

    def build(limit: int, window: float) -> RateLimiter:
        limiter: RateLimiter
        if request.param == "memory":
            limiter = MemoryRateLimiter(limit, window)
        elif request.param == "sqlite":
            limiter = SqliteRateLimiter(tmp_path / "d.db", limit, window)
        else:
            url, prefix = (
                request.getfixturevalue("redis_url"),
                request.getfixturevalue("redis_prefix"),
            )
            limiter = RedisRateLimiter(url, limit, window, prefix=prefix)
        made.append(limiter)
        return limiter

    yield build
    for limiter in made:
        await limiter.close()


async def test_a_refund_gives_one_count_back(make: MakeLimiter) -> None:
    limiter = make(2, 60)
    first, second = await limiter.acquire(ADA), await limiter.acquire(ADA)
    assert first and second and first != second  # truthy: the mailer tests them as bools
    assert await limiter.acquire(ADA) is None
    await limiter.refund("ADA@example.com", first)  # same address, any case
    again = await limiter.acquire(ADA)
    assert again and again != second
    assert await limiter.acquire(ADA) is None
    assert await limiter.acquire("bob@example.com")  # other addresses were never full


async def test_a_refund_counts_once(make: MakeLimiter) -> None:
    limiter = make(2, 60)
    token = await limiter.acquire(ADA)
    assert token and await limiter.acquire(ADA)
    await limiter.refund(ADA, token)
    await limiter.refund(ADA, token)  # given back already: the other count stays
    await limiter.refund("bob@example.com", token)  # not bob's
    assert await limiter.acquire(ADA)
    assert await limiter.acquire(ADA) is None


async def test_a_refund_of_an_expired_token_is_a_noop(make: MakeLimiter) -> None:
    limiter = make(2, 0.3)
    stale = await limiter.acquire(ADA)
    assert stale
    await asyncio.sleep(0.4)  # `stale` has left the window
    assert await limiter.acquire(ADA) and await limiter.acquire(ADA)
    await limiter.refund(ADA, stale)
    assert await limiter.acquire(ADA) is None


def _rows(path: Path) -> int:
    """The rate rows another connection (as after a kill) sees in the file."""
    reader = sqlite3.connect(path)
    try:
        ((count,),) = reader.execute("SELECT count(*) FROM rate_log").fetchall()
        return int(count)
    finally:
        reader.close()


async def test_sqlite_refund_of_a_written_row_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    store, limiter = SqliteDedupe(path, 60), SqliteRateLimiter(path, 2, 60)
    try:
        refused, sent = await limiter.acquire(ADA), await limiter.acquire(ADA)
        assert refused and sent
        assert await store.claim("k") is Claim.TAKEN
        await store.record("k")  # its commit writes both rows
        assert _rows(path) == 2
        await limiter.refund(ADA, refused)
        assert _rows(path) == 1  # deleted from the file, not only from memory
    finally:
        await limiter.close()
        await store.close()
    again = SqliteRateLimiter(path, 2, 60)
    try:
        assert await again.acquire(ADA)
        assert await again.acquire(ADA) is None
    finally:
        await again.close()


async def test_sqlite_refund_of_a_pending_row_costs_no_commit(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    limiter = SqliteRateLimiter(path, 2, 60)
    try:
        refused, sent = await limiter.acquire(ADA), await limiter.acquire(ADA)
        assert refused and sent
        db = limiter._file.db
        changes = db.total_changes
        await limiter.refund(ADA, refused)
        assert db.total_changes == changes and _rows(path) == 0  # nothing written yet
        assert limiter._file.rate_rows == [(address_digest(ADA), sent)]
    finally:
        await limiter.close()  # writes the one row left
    assert _rows(path) == 1
    again = SqliteRateLimiter(path, 2, 60)
    try:
        assert await again.acquire(ADA)
        assert await again.acquire(ADA) is None
    finally:
        await again.close()


async def test_sqlite_counts_at_one_instant_are_rows_of_their_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = time.time()  # the limiter's wall clock stands still: every count at one time
    frozen = types.SimpleNamespace(time=lambda: now, monotonic=time.monotonic)
    monkeypatch.setattr(sqlite_limiter, "time", frozen)
    path = tmp_path / "d.db"
    limiter = SqliteRateLimiter(path, 3, 60)
    try:
        tokens = [await limiter.acquire(ADA) for _ in range(3)]
        assert len(set(tokens)) == 3 and None not in tokens
        await limiter.refund(ADA, tokens[1])
    finally:
        await limiter.close()
    assert _rows(path) == 2  # the (key, at) primary key kept two rows, not one


async def test_redis_instances_see_each_others_refunds(redis_prefix: str, redis_url: str) -> None:
    a = RedisRateLimiter(redis_url, 2, 60, prefix=redis_prefix)
    b = RedisRateLimiter(redis_url, 2, 60, prefix=redis_prefix)
    try:
        from_a, from_b = await a.acquire(ADA), await b.acquire(ADA)
        assert from_a and from_b and from_a != from_b
        assert await b.acquire(ADA) is None
        await a.refund(ADA, from_a)
        assert await b.acquire(ADA)  # b counted in a's place
        await a.refund(ADA, from_b)  # any instance can give back any count
        [name] = [k async for k in a.client.scan_iter(match=redis_prefix + "*")]
        assert await a.client.zcard(name) == 1
        assert await a.acquire(ADA) and await b.acquire(ADA) is None
    finally:
        await a.close()
        await b.close()


# --- the limit per recipient ----------------------------------------------------------


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


async def test_sqlite_limit_holds_when_addresses_are_evicted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_limiter, "_WINDOWS_MAX", 4)
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


def test_zero_means_unlimited() -> None:
    limiter = open_rate_limiter(
        "redis", path="", url="redis://127.0.0.1:1/0", per_recipient=0, window_s=60
    )
    assert limiter is None


# --- the mailer with a rate limit -----------------------------------------------------


async def test_mailer_skips_emails_over_the_limit(
    backend: tuple[str, str, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    metrics, transport = Metrics(), Recorder()
    dedupe = MemoryDedupe(60)
    limiter = _limiter(backend, tmp_path, limit=2, window=60)
    sender = mailer(dedupe, transport, metrics=metrics, rate_limiter=limiter)
    with caplog.at_level(logging.INFO, "service.mail.mailer"):
        ada = [await sender.send(email_request(f"e{i}", "ada@herald.test")) for i in range(5)]
        bob = [await sender.send(email_request(f"e{i}", "bob@herald.test")) for i in range(2)]
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
