"""The `memory` rate limiter: one process' counts (`herald dev`, tests)."""

from __future__ import annotations

import math
import time
from collections import deque

from service.ratelimit.protocol import SWEEP_EVERY_S, Token, address_digest

__all__ = ["MemoryRateLimiter"]


class MemoryRateLimiter:
    """One process' counts: for tests and `herald dev`."""

    def __init__(self, per_recipient: int, window_s: float) -> None:
        self.limit = per_recipient
        self.window_s = window_s
        self._log: dict[str, deque[float]] = {}
        self._swept = time.monotonic()

    async def acquire(self, address: str) -> Token | None:
        """Count one email to `address` unless the window is full."""
        now = time.monotonic()
        self._sweep(now)
        sent = self._log.setdefault(address_digest(address), deque())
        while sent and sent[0] <= now - self.window_s:
            sent.popleft()
        if len(sent) >= self.limit:
            return None
        if sent and now <= sent[-1]:  # two counts in one clock tick: one token each
            now = math.nextafter(sent[-1], math.inf)
        sent.append(now)
        return now

    async def refund(self, address: str, token: Token) -> None:
        """Remove the count from the address' window, if it is still there."""
        sent = self._log.get(address_digest(address))
        if sent and isinstance(token, float) and token in sent:
            sent.remove(token)

    async def close(self) -> None:
        """Forget every count."""
        self._log.clear()

    def _sweep(self, now: float) -> None:
        """Drop addresses not mailed within the window, so the dict does not only grow."""
        if now - self._swept < SWEEP_EVERY_S:
            return
        self._swept = now
        self._log = {k: v for k, v in self._log.items() if v and v[-1] > now - self.window_s}
