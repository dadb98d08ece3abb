"""What every rate limiter does: count an email to an address, or give the count back.

`Token` is what a count returns for its refund; `address_digest` is the key an address
is counted under (no address is stored in clear).
"""

from __future__ import annotations

import hashlib
from typing import Protocol, TypeAlias

__all__ = ["SWEEP_EVERY_S", "RateLimiter", "Token", "address_digest"]

#: How often the memory and sqlite limiters drop what left the window.
SWEEP_EVERY_S = 600.0

#: What `acquire` counted, for `refund` to give back: opaque to callers and always truthy.
#: The time that was logged (memory: monotonic, sqlite: wall clock; unique per address)
#: or the member added to the Redis sorted set (unique per call).
Token: TypeAlias = float | str


def address_digest(address: str) -> str:
    """The key an address is counted under: SHA-256 of its lower-cased form."""
    return hashlib.sha256(address.strip().lower().encode("utf-8", "surrogatepass")).hexdigest()


class RateLimiter(Protocol):
    """Counts emails per recipient address over a sliding window."""

    async def acquire(self, address: str) -> Token | None:
        """Count one email to `address` and return its token; None (not counted) if the
        window is full."""

    async def refund(self, address: str, token: Token) -> None:
        """Give back the one count `token` stands for (the server did not take the email);
        a no-op if it expired or was given back already."""

    async def close(self) -> None:
        """Free the limiter's resources."""
