"""Structured JSON logs: one object per line; addresses masked unless configured."""

from __future__ import annotations

import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

from service.addresses import mask_address

__all__ = ["JsonFormatter", "mask_address", "mask_addresses", "setup_logging"]

_ADDRESS = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9.-]+\.[A-Za-z]{2,})")
_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}


def mask_addresses(text: str) -> str:
    """Mask every address inside free text, such as an SMTP reply quoting the recipient."""
    return _ADDRESS.sub(lambda found: mask_address(found[0]), text)


class JsonFormatter(logging.Formatter):
    """Render a record and its `extra=` fields as one JSON line; mask addresses."""

    def __init__(self, mask: bool = True) -> None:
        super().__init__()
        self.mask = mask

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info and record.exc_info[1] is not None:
            # One line with the error class and text; tracebacks stay out of the log stream.
            exc = record.exc_info[1]
            entry["error"] = f"{type(exc).__name__}: {exc}"
        if self.mask:
            entry = {k: mask_addresses(v) if isinstance(v, str) else v for k, v in entry.items()}
        return orjson.dumps(entry, default=str).decode()


def setup_logging(
    level: str = "INFO",
    show_addresses: bool = False,
    handler: logging.Handler | None = None,
) -> None:
    """Send every logger to stderr as JSON lines at `level`; quiet chatty libraries.

    `handler` replaces the JSON lines on stderr (`herald dev`'s console)."""
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter(mask=not show_addresses))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiokafka", "faststream", "mail.log", "aiosmtpd"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
