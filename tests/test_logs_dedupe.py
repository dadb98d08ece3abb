"""Log masking and formatting; the dedupe stores' claim / record / release contract."""

from __future__ import annotations

import logging
from pathlib import Path

import orjson

from service.dedupe import MemoryDedupe, SqliteDedupe, dedupe_key
from service.logs import JsonFormatter, mask_address, mask_addresses


def test_mask_address() -> None:
    assert mask_address("ada@example.com") == "a***@example.com"
    assert mask_address("nonsense") == "***"
    assert mask_addresses("550 <bob@x.org> rejected") == "550 <b***@x.org> rejected"


def test_json_formatter_one_line_with_extras_and_no_traceback() -> None:
    try:
        raise ValueError("boom\nline two")
    except ValueError as exc:
        record = logging.LogRecord(
            "herald", logging.ERROR, "f", 1, "failed", None, (type(exc), exc, None)
        )
    record.event_id = "evt-1"
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = orjson.loads(line)
    assert entry["event_id"] == "evt-1" and entry["level"] == "error"
    assert entry["error"].startswith("ValueError: boom")


async def test_memory_dedupe_claim_record_release() -> None:
    store = MemoryDedupe(ttl_s=60)
    key = dedupe_key("evt", "act", "Ada@Example.com")
    assert key == dedupe_key("evt", "act", "ada@example.com")
    assert await store.claim(key)
    assert not await store.claim(key)  # in flight
    await store.release(key)
    assert await store.claim(key)  # a failed send can be retried
    await store.record(key)
    assert not await store.claim(key)


async def test_sqlite_dedupe_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    store = SqliteDedupe(path, ttl_s=60)
    assert await store.claim("k")
    await store.record("k")
    await store.close()
    reopened = SqliteDedupe(path, ttl_s=60)
    assert not await reopened.claim("k")
    assert await reopened.claim("other")
    await reopened.close()


async def test_sqlite_dedupe_expires(tmp_path: Path) -> None:
    store = SqliteDedupe(tmp_path / "d.db", ttl_s=-1)
    await store.record("k")
    assert await store.claim("k")
    await store.close()
