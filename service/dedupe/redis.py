"""The `redis` dedupe backend, shared by every instance: `SET NX PX` claims (one Lua call
that also says sent or held), `SET EX` records, Lua compare-and-delete release and
compare-and-renew. Keys are `herald:sent:<sha256 of the key>`, so no address is stored
in clear. Leases are short (`REDIS_CLAIM_TTL_S`) and renewed every third of that while
their holder lives.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import os
import socket
import time
from collections.abc import Awaitable
from typing import TypeVar

from service.dedupe.protocol import REDIS_CLAIM_TTL_S, Claim
from service.redis_client import DedupeUnavailable, redis_call, redis_client

__all__ = ["RedisDedupe"]

_T = TypeVar("_T")
# Compare-and-delete: a claim that expired and was taken over is someone else's now.
_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


# Claim in one round trip: take the key, or say whether it was sent or is held.
_CLAIM_LUA = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
if redis.call('GET', KEYS[1]) == 'sent' then
  return 2
end
return 3
"""
# Compare-and-renew: extend only the leases that are still ours; 1 or 0 per key.
_RENEW_LUA = """
local renewed = {}
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[i + 1] then
    redis.call('PEXPIRE', key, ARGV[1])
    renewed[i] = 1
  else
    renewed[i] = 0
  end
end
return renewed
"""
# Still ours (renewed), or free again (taken back): 1; someone else's or sent: 0.
_CONFIRM_LUA = """
local found = redis.call('GET', KEYS[1])
if found == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not found then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
#: A lease closer than this to its end is confirmed with Redis before the send.
_CONFIRM_MARGIN_S = 5.0
_RENEW_CHUNK = 500

# The logger this backend always had (in JSON logs, `"logger": "service.dedupe"`).
log = logging.getLogger("service.dedupe")


class RedisDedupe:
    """Redis, shared by every instance: the once-only guarantee holds across them."""

    def __init__(
        self,
        url: str,
        ttl_s: float,
        *,
        claim_ttl_s: float = REDIS_CLAIM_TTL_S,
        prefix: str = "herald:sent:",
    ) -> None:
        self.url = url
        self.ttl_s = int(max(1, ttl_s))
        self.claim_ttl_ms = int(max(1, claim_ttl_s * 1000))
        self.prefix = prefix
        #: Written into claims, so an operator can see who holds one.
        self.instance_id = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        self.client = redis_client(url)
        self._claim = self.client.register_script(_CLAIM_LUA)
        self._release = self.client.register_script(_RELEASE_LUA)
        self._renew = self.client.register_script(_RENEW_LUA)
        self._confirm = self.client.register_script(_CONFIRM_LUA)
        self._tokens: dict[str, str] = {}
        #: When each claim's lease ends at the latest (monotonic), as far as we know.
        self._until: dict[str, float] = {}
        self._serial = itertools.count()
        self._renewer: asyncio.Task[None] | None = None

    async def open(self) -> None:
        """PING the server (a wrong URL or a server that is down fails here), then keep
        this instance's claims alive while it runs."""
        await self._call("connect to", self.client.ping())
        if self._renewer is None:
            self._renewer = asyncio.create_task(self._renew_forever(), name="claim-renewal")

    async def claim(self, key: str) -> Claim:
        """`SET key claimed:<instance> NX PX claim_ttl`, else whether it is sent or held."""
        token = f"claimed:{self.instance_id}:{next(self._serial)}"
        found = await self._call(
            "claim in", self._claim(keys=[self._key(key)], args=[token, self.claim_ttl_ms])
        )
        if found == 1:
            self._tokens[key] = token
            self._until[key] = time.monotonic() + self.claim_ttl_ms / 1000
            return Claim.TAKEN
        return Claim.SENT if found == 2 else Claim.HELD

    async def renew(self) -> int:
        """Extend the lease of every claim this instance still holds; how many were. A
        claim found lost (its lease lapsed, another instance took it) is forgotten."""
        held = list(self._tokens.items())
        renewed = 0
        for start in range(0, len(held), _RENEW_CHUNK):
            chunk = held[start : start + _RENEW_CHUNK]
            began = time.monotonic()
            flags = await self._call(
                "renew claims in",
                self._renew(
                    keys=[self._key(k) for k, _ in chunk],
                    args=[self.claim_ttl_ms, *(token for _, token in chunk)],
                ),
            )
            for (key, token), kept in zip(chunk, flags, strict=True):
                if kept:
                    self._until[key] = began + self.claim_ttl_ms / 1000
                    renewed += 1
                elif self._tokens.get(key) == token:
                    self._forget(key)
        return renewed

    async def confirm(self, key: str) -> bool:
        """Without a round trip while the lease has more than `_CONFIRM_MARGIN_S` left;
        else ask Redis (renewing it, or taking it back if it lapsed and nobody took it)."""
        token = self._tokens.get(key)
        if token is None:
            return False  # found lost by a renewal
        if time.monotonic() < self._until.get(key, 0.0) - _CONFIRM_MARGIN_S:
            return True
        began = time.monotonic()
        kept = await self._call(
            "confirm a claim in",
            self._confirm(keys=[self._key(key)], args=[token, self.claim_ttl_ms]),
        )
        if kept:
            self._until[key] = began + self.claim_ttl_ms / 1000
            return True
        self._forget(key)
        return False

    def _forget(self, key: str) -> None:
        self._tokens.pop(key, None)
        self._until.pop(key, None)

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.claim_ttl_ms / 3000)
            try:
                await self.renew()
            except DedupeUnavailable as exc:
                # The leases may lapse; a record written later still wins (SET, not NX).
                log.warning("claim renewal failed", extra={"error": str(exc)})

    async def record(self, key: str) -> None:
        """`SET key sent EX ttl_s`, whoever holds the claim."""
        await self._call("record in", self.client.set(self._key(key), "sent", ex=self.ttl_s))
        self._forget(key)

    async def release(self, key: str) -> None:
        """Delete the key only while it still holds our claim."""
        token = self._tokens.get(key)
        self._forget(key)
        if token is not None:
            await self._call("release in", self._release(keys=[self._key(key)], args=[token]))

    async def close(self) -> None:
        """Stop renewing claims and close the connection pool."""
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None
        await self.client.aclose()

    def _key(self, key: str) -> str:
        return self.prefix + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()

    async def _call(self, what: str, pending: Awaitable[_T]) -> _T:
        return await redis_call(pending, f"cannot {what} the redis dedupe store", self.url)
