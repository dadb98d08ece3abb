"""The SQLite file its store, rate limiter and records share (service/shared_sqlite.py):
one commit carries a record and the rate rows, checkpoints run off the event loop, and
files of an earlier version still work."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

from service.dedupe import Claim, SqliteDedupe
from service.ratelimit import SqliteRateLimiter, address_digest


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
