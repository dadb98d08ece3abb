"""Per-recipient rate limit: at most `rate_limit.per_recipient` emails per `window_s` to
one address (README, "Delivery guarantees": rate limits count sends, not attempts).

A *sliding window log*: an email may go out when fewer than `per_recipient` emails went
to the same address in the last `window_s` seconds. Unlike a fixed window it never lets
twice the limit through around a window boundary, and it stays cheap because at most
`per_recipient` timestamps are kept per address.

What counts: emails handed to the SMTP server, not attempts. `acquire` is called once per
email that is about to be handed over (after the dedupe claim said "not yet sent"); it
counts the email and returns a token, or None when the window is full. Duplicates and
rate-limited emails do not count. When the server did not accept the email (a transient
failure, an outage), the caller gives the count back with `refund(address, token)`, so a
retried or redelivered email is counted once, when it finally goes out. A permanent
rejection (5xx) keeps its count: the server was reached, and a flood of failing events
must not bypass the limit. A refund of a token that expired or was already given back is
a no-op.

The counters live in the dedupe backend, so instances that share a Redis share the limit.
One module each:

- `protocol` — `RateLimiter`, `Token`, `address_digest`.
- `memory` — per process.
- `sqlite` — one process' file, the dedupe database's `rate_log` table.
- `redis` — one sorted set per address, shared by every instance on the server.

Addresses are compared case-insensitively and stored only as SHA-256 digests.
"""

from __future__ import annotations

from service.backends import Backends
from service.ratelimit.memory import MemoryRateLimiter
from service.ratelimit.protocol import RateLimiter, Token, address_digest
from service.ratelimit.redis import RedisRateLimiter
from service.ratelimit.sqlite import SqliteRateLimiter

__all__ = [
    "MemoryRateLimiter",
    "RateLimiter",
    "RedisRateLimiter",
    "SqliteRateLimiter",
    "Token",
    "address_digest",
    "open_rate_limiter",
]

_LIMITERS: Backends[RateLimiter] = Backends(
    "rate limit", MemoryRateLimiter, SqliteRateLimiter, RedisRateLimiter
)


def open_rate_limiter(
    backend: str, *, path: str, url: str, per_recipient: int, window_s: float
) -> RateLimiter | None:
    """The limiter kept in the `dedupe.backend` store; None when `per_recipient` is 0."""
    if per_recipient <= 0:
        return None
    return _LIMITERS.create(backend, path, url, per_recipient, window_s)
