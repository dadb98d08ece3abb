"""The `redis` rate limiter: one sorted set per address, `herald:rate:<sha256(address)>`,
scored by the Redis server's clock (instances' clocks may drift), trimmed and checked
atomically by a Lua script, expiring after `window_s` idle. Every instance on the same
server shares the limit.
"""

from __future__ import annotations

import itertools
import os

from service.ratelimit.protocol import Token, address_digest
from service.redis_client import redis_call, redis_client

__all__ = ["RedisRateLimiter"]

# KEYS[1] the address' log; ARGV window (ms), limit, a member unique to this call.
_ACQUIRE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('PEXPIRE', KEYS[1], window)
return 1
"""


class RedisRateLimiter:
    """Counts in Redis: every instance on the same server shares the limit."""

    def __init__(
        self, url: str, per_recipient: int, window_s: float, *, prefix: str = "herald:rate:"
    ) -> None:
        self.url = url
        self.limit = per_recipient
        self.window_ms = max(1, round(window_s * 1000))
        self.prefix = prefix
        self.client = redis_client(url)
        self._acquire = self.client.register_script(_ACQUIRE_LUA)
        self._member = f"{os.getpid()}:{os.urandom(4).hex()}:"
        self._serial = itertools.count()

    async def acquire(self, address: str) -> Token | None:
        """One atomic script: trim the address' log, count, add when under the limit."""
        member = f"{self._member}{next(self._serial)}"
        pending = self._acquire(
            keys=[self.prefix + address_digest(address)], args=[self.window_ms, self.limit, member]
        )
        result = await redis_call(pending, "cannot count in the redis rate limiter", self.url)
        return member if result else None

    async def refund(self, address: str, token: Token) -> None:
        """Remove the member `acquire` added (ZREM: a no-op once trimmed or expired)."""
        if not isinstance(token, str):
            return
        pending = self.client.zrem(self.prefix + address_digest(address), token)
        await redis_call(pending, "cannot give back a count in the redis rate limiter", self.url)

    async def close(self) -> None:
        """Close the connection pool."""
        await self.client.aclose()
