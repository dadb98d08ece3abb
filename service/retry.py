"""Retry policy for transient delivery failures (tenacity).

Fates, as decided here: a `TransientError` is retried after an exponentially growing,
jittered wait until `attempts` are used up, then the last one is raised; a
`PermanentError`, a `ServerUnavailable` (an outage: the caller pauses consumption) or
anything else is raised at once, never retried.

Fast path: the first attempt is awaited directly. Almost every send succeeds on it, and
running it through tenacity's `AsyncRetrying` cost ~40 µs per email. Only a retryable
failure enters tenacity, which then owns the whole sequence: the failed first attempt is
handed to it as its attempt 1 (re-raised without calling `fn` again), so attempts are
counted, waited for and reported exactly as if tenacity had made the first call itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    retry_if_not_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from service.mail.transport import DeliveryError, ServerUnavailable, TransientError

__all__ = ["OnRetry", "RetryPolicy", "Sleep"]

T = TypeVar("T")

OnRetry = Callable[[int, DeliveryError], None]
"""Called as `on_retry(attempt_number, error)` after a failed attempt, before the wait."""

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class RetryPolicy:
    """Up to `attempts` tries; full-jitter exponential backoff capped at `max_backoff_s`.

    The wait before retry n is uniform in [0, min(max_backoff_s,
    initial_backoff_s * 2**(n-1))]: jitter keeps many failing sends from hitting a
    recovering server in lockstep.
    """

    attempts: int = 5
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    sleep: Sleep = field(default=asyncio.sleep, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if self.initial_backoff_s < 0 or self.max_backoff_s < 0:
            raise ValueError("backoff times must not be negative")

    async def run(self, fn: Callable[[], Awaitable[T]], on_retry: OnRetry | None = None) -> T:
        """Await `fn()` until it succeeds, fails permanently, or attempts run out."""
        try:
            return await fn()
        except TransientError as exc:
            if isinstance(exc, ServerUnavailable) or self.attempts == 1:
                raise
            first: TransientError | None = exc

        async def attempt() -> T:
            # A named coroutine function: tenacity awaits only what it sees as async.
            nonlocal first
            if first is not None:
                # Tenacity's attempt 1 is the one already made: same outcome, no new call.
                failed, first = first, None
                raise failed
            return await fn()

        return await self._retrying(on_retry)(attempt)

    def _retrying(self, on_retry: OnRetry | None) -> AsyncRetrying:
        return AsyncRetrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_random_exponential(multiplier=self.initial_backoff_s, max=self.max_backoff_s),
            # A server that cannot be reached at all is an outage, not this email's
            # failure: the caller pauses consumption instead of spending attempts.
            retry=retry_if_exception_type(TransientError)
            & retry_if_not_exception_type(ServerUnavailable),
            reraise=True,
            sleep=self.sleep,
            before_sleep=_notifier(on_retry),
        )


def _notifier(on_retry: OnRetry | None) -> Callable[[RetryCallState], None] | None:
    """Adapt `on_retry` to tenacity's `before_sleep` hook."""
    if on_retry is None:
        return None

    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        if isinstance(error, DeliveryError):
            on_retry(state.attempt_number, error)

    return before_sleep
