"""Secret redaction: the values under `secrets:` never reach reasons, logs or dead letters."""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["redact"]

_REDACTED = "***"


def redact(text: str, secrets: Mapping[str, str]) -> str:
    """Remove every secret value from `text` (reasons, log lines, dead letters)."""
    for value in secrets.values():
        if value and len(value) >= 4:
            text = text.replace(value, _REDACTED)
    return text
