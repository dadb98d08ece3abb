"""Rate-limit refunds against the real backends: a count the SMTP server did not take is
given back, exactly once, and stays given back (sqlite: across a reopen; redis: for every
instance on the server)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import types
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from service import ratelimit
from service.dedupe import Claim, SqliteDedupe
from service.ratelimit import (
    MemoryRateLimiter,
    RateLimiter,
    RedisRateLimiter,
    SqliteRateLimiter,
    address_digest,
)

ADA = "ada@example.com"
MakeLimiter = Callable[[int, float], RateLimiter]


@pytest.fixture(params=["memory", "sqlite", "redis"])
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
    monkeypatch.setattr(ratelimit, "time", frozen)
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
