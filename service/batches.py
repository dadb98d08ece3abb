"""One consumed batch to its fate: commit, rewind for redelivery, or pause for an outage.

The fates, decided here:
- every record finished or dead-lettered → commit;
- a dependency is down altogether (the SMTP server) → rewind the batch, wait until it
  answers again (readiness is false meanwhile), then let the consumer fetch again;
- an output could not be written (Kafka) → rewind, short pause, fetch again;
- the commit fails (a rebalance took the partitions) → the new owner redelivers the
  batch; the dedupe store keeps its emails from being sent twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from service.consumer import Processor
from service.failures import Outage
from service.metrics import Metrics

__all__ = ["BatchRunner", "Message"]

log = logging.getLogger("herald")

_REDELIVERY_PAUSE_S = 1.0
#: One wait for an outage stays well under the consumer's max poll interval, so the
#: consumer keeps its group membership while it waits.
_OUTAGE_WAIT_S = 30.0


class Message(Protocol):
    """A consumed batch that can be committed (ack) or rewound (nack)."""

    raw_message: Any

    async def ack(self) -> None: ...

    async def nack(self) -> None: ...


class BatchRunner:
    """Processes batches and decides commit / rewind / pause."""

    def __init__(
        self,
        processor: Processor,
        probe: Callable[[], Awaitable[bool]],
        metrics: Metrics,
        *,
        initial_backoff_s: float,
        max_backoff_s: float,
    ) -> None:
        self.processor = processor
        self.probe = probe
        self.metrics = metrics
        self.initial_backoff_s = max(initial_backoff_s, 0.05)
        self.max_backoff_s = max(max_backoff_s, self.initial_backoff_s)
        self.paused = False
        self.stopping = asyncio.Event()

    async def handle(self, message: Message) -> None:
        """Process one batch; commit only after every record finished."""
        try:
            await self.processor.process_batch(message.raw_message)
        except Outage as exc:
            await message.nack()
            await self._wait_out_outage(str(exc))
            return
        except Exception as exc:
            log.error("batch failed, will be redelivered", exc_info=exc)
            await message.nack()
            await self._sleep(_REDELIVERY_PAUSE_S)
            return
        await self._commit(message)

    async def _commit(self, message: Message) -> None:
        try:
            await message.ack()
        except (CommitFailedError, IllegalStateError) as exc:
            log.warning(
                "commit failed (partitions reassigned); the new owner redelivers the batch",
                extra={"error": type(exc).__name__},
            )
        except KafkaError as exc:
            log.warning("commit failed; the batch may be redelivered", exc_info=exc)

    async def _wait_out_outage(self, reason: str) -> None:
        """Poll the SMTP server with backoff until it answers, up to one wait period."""
        if not self.paused:
            self.paused = True
            self.metrics.paused.set(1)
            log.error("smtp server unreachable, consumption paused", extra={"reason": reason})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _OUTAGE_WAIT_S
        delay = self.initial_backoff_s
        while loop.time() < deadline and not self.stopping.is_set():
            await self._sleep(delay)
            if await self.probe():
                self.paused = False
                self.metrics.paused.set(0)
                log.warning("smtp server reachable again, consumption resumed")
                return
            delay = min(delay * 2, self.max_backoff_s)

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake up at once when Herald is stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)
