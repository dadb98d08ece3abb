"""Log masking and JSON formatting (service/logs.py)."""

from __future__ import annotations

import logging

import orjson

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
