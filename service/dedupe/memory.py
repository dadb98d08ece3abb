"""The `memory` dedupe backend: one process, forgets on exit (`herald dev`, tests)."""

from __future__ import annotations

import time

from service.dedupe.protocol import CLAIM_TTL_S, PURGE_EVERY_S, Claim, Leases

__all__ = ["MemoryDedupe"]


class MemoryDedupe:
    """Process-local store: for tests and `herald dev`; forgets everything on exit."""

    def __init__(self, ttl_s: float, *, claim_ttl_s: float = CLAIM_TTL_S) -> None:
        self.ttl_s = ttl_s
        self._sent: dict[str, float] = {}
        self._claims = Leases(claim_ttl_s)
        self._purged = time.monotonic()

    async def open(self) -> None:
        """Nothing to check."""

    async def claim(self, key: str) -> Claim:
        """Reserve `key`, or say that it was sent or is claimed."""
        if self._sent.get(key, 0.0) > time.time():
            return Claim.SENT
        return Claim.TAKEN if self._claims.take(key) else Claim.HELD

    async def record(self, key: str) -> None:
        """Remember `key` as sent."""
        self._sent[key] = time.time() + self.ttl_s
        self._claims.drop(key)
        if time.monotonic() - self._purged > PURGE_EVERY_S:
            now, self._purged = time.time(), time.monotonic()
            self._sent = {k: t for k, t in self._sent.items() if t > now}

    async def release(self, key: str) -> None:
        """Drop the claim on `key`."""
        self._claims.drop(key)

    async def confirm(self, key: str) -> bool:
        return True

    async def close(self) -> None:
        """Forget everything."""
        self._sent.clear()
