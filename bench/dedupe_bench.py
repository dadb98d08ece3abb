"""Cost of the dedupe stores and rate limiters: one claim + record, one rate-limit acquire.

    python bench/dedupe_bench.py [--n 5000] [--redis redis://127.0.0.1:6379/15]

Prints microseconds per operation, sequential (one email at a time, the latency each email
pays) and with 64 concurrent emails (throughput), plus what batching SQLite records into
one transaction would save. Redis keys go under a random `herald-bench:` prefix and are
deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from service.dedupe import Claim, DedupeStore, MemoryDedupe, RedisDedupe, SqliteDedupe
from service.ratelimit import MemoryRateLimiter, RateLimiter, RedisRateLimiter, SqliteRateLimiter

__all__ = ["main"]


async def _timed(n: int, op: Callable[[int], Awaitable[object]], concurrency: int) -> float:
    """Microseconds per call of `op(i)` for i in range(n), `concurrency` at a time."""
    start = time.perf_counter()
    if concurrency == 1:
        for i in range(n):
            await op(i)
        return (time.perf_counter() - start) / n * 1e6
    for base in range(0, n, concurrency):
        await asyncio.gather(*(op(i) for i in range(base, min(n, base + concurrency))))
    return (time.perf_counter() - start) / n * 1e6


async def _claim_record(store: DedupeStore, n: int, concurrency: int, tag: str) -> float:
    async def op(i: int) -> None:
        key = f"{tag}-{i}\x1fnotify\x1fuser{i}@example.com"
        if await store.claim(key) is Claim.TAKEN:
            await store.record(key)

    return await _timed(n, op, concurrency)


async def _acquire(limiter: RateLimiter, n: int, concurrency: int) -> float:
    return await _timed(n, lambda i: limiter.acquire(f"user{i % 500}@example.com"), concurrency)


def _sqlite_batched(path: Path, n: int, batch: int) -> float:
    """Records committed `batch` at a time: the cost a write-behind buffer would have."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE IF NOT EXISTS sent (key TEXT PRIMARY KEY, expires_at REAL)")
    start = time.perf_counter()
    for base in range(0, n, batch):
        db.execute("BEGIN")
        db.executemany(
            "INSERT OR REPLACE INTO sent VALUES (?, ?)",
            ((f"b{batch}-{i}", time.time()) for i in range(base, min(n, base + batch))),
        )
        db.execute("COMMIT")
    db.close()
    return (time.perf_counter() - start) / n * 1e6


async def _run(n: int, url: str) -> None:
    prefix = f"herald-bench:{uuid.uuid4().hex[:8]}:"
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.db"
        stores: dict[str, Callable[[], DedupeStore]] = {
            "memory": lambda: MemoryDedupe(3600),
            "sqlite": lambda: SqliteDedupe(db, 3600),
            "redis": lambda: RedisDedupe(url, 3600, prefix=prefix + "sent:"),
        }
        limiters: dict[str, Callable[[], RateLimiter]] = {
            "memory": lambda: MemoryRateLimiter(10**9, 3600),
            "sqlite": lambda: SqliteRateLimiter(db, 10**9, 3600),
            "redis": lambda: RedisRateLimiter(url, 10**9, 3600, prefix=prefix + "rate:"),
        }
        print(
            f"{'backend':8} {'claim+record µs':>16} {'x64 µs':>8} {'acquire µs':>11} {'x64 µs':>8}"
        )
        for name in stores:
            store, limiter = stores[name](), limiters[name]()
            await store.open()
            seq = await _claim_record(store, n, 1, "s")
            par = await _claim_record(store, n, 64, "p")
            acq_seq = await _acquire(limiter, n, 1)
            acq_par = await _acquire(limiter, n, 64)
            print(f"{name:8} {seq:16.1f} {par:8.1f} {acq_seq:11.1f} {acq_par:8.1f}")
            await limiter.close()
            await store.close()
        print("\nsqlite record alone, committed in batches (WAL, synchronous=NORMAL):")
        for batch in (1, 10, 100):
            print(f"  batch {batch:>3}: {_sqlite_batched(db, n, batch):6.1f} µs per record")
    await _cleanup(url, prefix)


async def _cleanup(url: str, prefix: str) -> None:
    store = RedisDedupe(url, 1)
    keys = [k async for k in store.client.scan_iter(match=prefix + "*", count=1000)]
    for start in range(0, len(keys), 1000):
        await store.client.delete(*keys[start : start + 1000])
    await store.close()


def main() -> None:
    """Parse arguments and run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="operations per measurement")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/15", help="Redis URL")
    args = parser.parse_args()
    asyncio.run(_run(args.n, args.redis))


if __name__ == "__main__":
    main()
