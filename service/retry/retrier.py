"""One attempt of a retry item and its fate (the items: service/retry/item.py).

- sent, uncertain (never re-sent), duplicate, rate-limited → done;
- transient again → a new item with the next attempt number, or, after
  `retry.attempts`, a dead letter `SmtpRetriesExhausted` with the last reply;
- permanent → a dead letter with its reason;
- an outage (SMTP server or dedupe store down) → `Outage` raised: the scheduler makes
  the same item again in a few seconds, no attempt spent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from service.events import Event, MalformedEvent
from service.failures import EmailDeferred, EmailFailed, OutputFailed
from service.flows import event_view
from service.mail.mailer import Mailer
from service.mail.render import template_context
from service.mail.request import EmailRequest
from service.metrics import Metrics
from service.retry.item import Original, Record, RetryItem, retry_headers
from service.retry.policy import RetryPolicy

__all__ = ["Parser", "Retrier", "RetryOutputs", "request_from"]

log = logging.getLogger("herald.retries")

Parser = Callable[[bytes | None, Sequence[tuple[str, bytes]]], Event | None]


class RetryOutputs(Protocol):
    """Where a retry's next item, its dead letter and its status events go (Outputs)."""

    async def retry(self, original: Original, headers: list[tuple[str, bytes]]) -> str: ...

    async def dead_letter(self, record: Any, error: str, reason: str) -> str: ...

    async def flush(self) -> None: ...


def request_from(
    event: Event,
    email: Mapping[str, Any],
    action_id: str,
    secrets: Mapping[str, str],
    **options: Any,
) -> EmailRequest:
    """The email `email` (a retry item's or a delivery record's fields) of `event`,
    made again: the same template, recipient and data, the event as it was read."""
    context = template_context(event_view(event, secrets), secrets, email.get("data"))
    return EmailRequest(
        event_id=event.id,
        action_id=action_id,
        template=str(email.get("template")),
        to=email.get("to"),
        to_name=str(email.get("to_name") or ""),
        locale=email.get("locale"),
        context=context,
        sender=email.get("from"),
        reply_to=email.get("reply_to"),
        **options,
    )


@dataclass(kw_only=True, eq=False)
class Retrier:
    """Makes one attempt of a RetryItem and decides its fate."""

    parse: Parser
    #: The mailer and secrets of the current flows (a reload may change them).
    mailer: Callable[[], Mailer]
    secrets: Callable[[], dict[str, str]]
    outputs: RetryOutputs
    policy: RetryPolicy
    metrics: Metrics

    async def flush(self) -> None:
        """Status events acknowledged, delivery records written (before a commit)."""
        mailer = self.mailer()
        if mailer.deliveries is not None:
            await mailer.deliveries.flush()
        await self.outputs.flush()

    async def schedule(
        self, source: Record, request: EmailRequest, attempt: int, reason: str
    ) -> None:
        """Write `request`'s `attempt` to the retry topic, due after the policy's wait."""
        due = time.time() + self.policy.delay(attempt)
        original, headers = retry_headers(source, request, attempt, due, reason)
        topic = await self.outputs.retry(original, headers)
        self.metrics.smtp_retries.inc()
        await self.mailer().note(request, "deferred", smtp_reply=reason, next_attempt_at=due)
        log.info(
            "email retry scheduled",
            extra={
                "event_id": request.event_id,
                "action": request.action_id,
                "attempt": attempt,
                "due_in_s": round(due - time.time(), 1),
                "reason": reason,
                "retry_topic": topic,
            },
        )

    async def attempt(self, item: RetryItem) -> None:
        """Make the item's attempt. Raises Outage while the SMTP server or the store is down."""
        try:
            event = self.parse(item.original.value, item.original.headers)
        except MalformedEvent as exc:
            event, problem = None, str(exc)
        if event is None:
            problem = "the event can no longer be read"
            await self._dead_letter(item, "MalformedRetry", problem)
            return
        request = self._request(event, item)
        try:
            await self.mailer().send(request)
        except EmailDeferred as exc:
            if self.policy.exhausted(item.attempt):
                reason = f"gave up after {item.attempt} attempts: {exc.reason}"
                self.metrics.emails.labels(request.template, "retries_exhausted").inc()
                await self.mailer().note(
                    request, "failed", reason="SmtpRetriesExhausted", smtp_reply=exc.reason
                )
                await self._dead_letter(item, "SmtpRetriesExhausted", reason)
            else:
                try:
                    await self.schedule(item.original, request, item.attempt + 1, exc.reason)
                except OutputFailed as failed:
                    await self._dead_letter(item, failed.error, failed.reason)
        except EmailFailed as exc:
            await self._dead_letter(item, exc.error, exc.reason)

    def _request(self, event: Event, item: RetryItem) -> EmailRequest:
        original = item.original
        return request_from(
            event,
            item.email,
            item.action_id,
            self.secrets(),
            attempt=item.attempt,
            source=(original.topic, original.partition, original.offset),
        )

    async def _dead_letter(self, item: RetryItem, error: str, reason: str) -> None:
        topic = await self.outputs.dead_letter(item.original, error, reason)
        self.metrics.dlq.labels(error).inc()
        log.warning(
            "email retry dead-lettered",
            extra={
                "action": item.action_id,
                "attempt": item.attempt,
                "error": error,
                "reason": reason,
                "dlq_topic": topic,
            },
        )
