"""The retry schedule for emails that failed transiently (`retry:` in the config).

Fates, as decided here: attempt 1 is made when the event is processed; after a transient
failure attempt n+1 is due `delay(n+1)` seconds later, until `attempts` tries were made;
then the email is dead-lettered (`SmtpRetriesExhausted`). The waits are not spent inside
a batch: the email is written to the retry topic with its due time (service/kafka/retries.py).

The wait before attempt n is `initial_backoff_s * 2**(n-2)`, capped at `max_backoff_s`,
stretched by up to 20% of jitter so that many emails failing together do not all come
back in the same second. The defaults (8 attempts, 10 s, 900 s) spread the tries over
at least 21 minutes: a greylisting server's window is usually 5–15 minutes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["RetryPolicy"]

_JITTER = 0.2


@dataclass(frozen=True)
class RetryPolicy:
    """Up to `attempts` tries per email, exponentially further apart."""

    attempts: int = 8
    initial_backoff_s: float = 10.0
    max_backoff_s: float = 900.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if self.initial_backoff_s < 0 or self.max_backoff_s < 0:
            raise ValueError("backoff times must not be negative")

    def exhausted(self, attempt: int) -> bool:
        """Whether `attempt` (1-based) was the last one allowed."""
        return attempt >= self.attempts

    def delay(self, attempt: int) -> float:
        """Seconds to wait before `attempt` (2 or more), jittered."""
        base = min(self.max_backoff_s, self.initial_backoff_s * 2 ** max(attempt - 2, 0))
        return base * (1 + _JITTER * random.random())

    def schedule(self) -> list[float]:
        """The waits before attempts 2..attempts, without jitter (for docs and checks)."""
        return [
            min(self.max_backoff_s, self.initial_backoff_s * 2 ** (n - 2))
            for n in range(2, self.attempts + 1)
        ]
