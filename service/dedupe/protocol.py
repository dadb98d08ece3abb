"""What every dedupe backend does: claim a key, record it as sent, or release it.

`dedupe_key` is the once-only key of one email; `Claim` is what a claim found; `Leases`
are the in-process claims (memory, sqlite) that expire like Redis' `PX` claims. The
backends raise `DedupeUnavailable` (service/redis_client.py) when they cannot be reached.
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Protocol

__all__ = [
    "CLAIM_TTL_S",
    "PURGE_EVERY_S",
    "REDIS_CLAIM_TTL_S",
    "Claim",
    "DedupeStore",
    "Leases",
    "dedupe_key",
]

#: How long an in-process claim holds without a record: longer than one email's send.
CLAIM_TTL_S = 300.0
#: A Redis claim's lease; its holder renews it every third of this while it lives.
REDIS_CLAIM_TTL_S = 30.0
#: How often the memory and sqlite stores drop their expired records.
PURGE_EVERY_S = 3600.0


class Claim(StrEnum):
    """What `claim` found."""

    TAKEN = "taken"  # the key is ours: send, then record or release
    SENT = "sent"  # already sent: a duplicate
    HELD = "held"  # another sender holds it and has not finished: wait for its outcome


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


class Leases:
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
