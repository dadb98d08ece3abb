"""The Redis connection of the `redis` dedupe backend, shared by what it holds: the dedupe
store (service/dedupe/), the rate limiter (service/ratelimit/) and the delivery records
(service/delivery_stores.py).

`redis_client` builds a lazily connecting client with short timeouts; `redis_call` awaits
one command and turns any failure into `DedupeUnavailable`, one line without secrets
(`safe_url` drops the user and password from the URL).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar
from urllib.parse import urlsplit

from redis.asyncio import Redis, from_url
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

__all__ = ["DedupeUnavailable", "redis_call", "redis_client", "safe_url"]

_T = TypeVar("_T")
_REDIS_TIMEOUT_S = 5.0


class DedupeUnavailable(ConnectionError):
    """The dedupe backend cannot be reached; the message is one line, without secrets.

    Defined here, with the connection that raises it, so that the dedupe store, the rate
    limiter and the delivery records all raise it without importing one another; import
    it from `service.dedupe`."""


def redis_client(url: str) -> Redis:
    """A `redis.asyncio` client for `url`, connecting lazily, with short timeouts."""
    try:
        return from_url(
            url,
            socket_timeout=_REDIS_TIMEOUT_S,
            socket_connect_timeout=_REDIS_TIMEOUT_S,
            # A blip (failover, restart) is retried briefly before it fails the email.
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 3),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
            health_check_interval=30,
        )
    except ValueError as exc:
        raise DedupeUnavailable(f"invalid redis url {safe_url(url)}: {exc}") from None


async def redis_call(pending: Awaitable[_T], what: str, url: str) -> _T:
    """Await a redis command; its failures become one-line DedupeUnavailable errors."""
    try:
        return await pending
    except (RedisError, OSError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DedupeUnavailable(f"{what} at {safe_url(url)}: {reason}") from None


def safe_url(url: str) -> str:
    """`url` without its user and password, for messages and logs."""
    parts = urlsplit(url)
    if not parts.netloc:
        return url.rpartition("@")[2]
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
