"""An email's dedupe claim, from taking it to recording or releasing it.

The claim is what makes an email go out at most once per (event id, action id,
recipient): taken before the send, confirmed right before the SMTP transaction,
recorded once the server has the message, released only when the email was certainly
not delivered. The store being down is an outage (`StoreUnavailable`): sending without
it could send twice.
"""

from __future__ import annotations

import asyncio
import logging

from service.dedupe import Claim, DedupeStore, DedupeUnavailable
from service.failures import StoreUnavailable
from service.mail.request import EmailRequest

__all__ = ["ClaimLost", "Claims"]

#: The mailer's logger: these lines are part of one email's story.
log = logging.getLogger("service.mail.mailer")
#: How often a claim held by another sender is looked at again (first, then at most).
_HELD_POLL_S = (0.05, 1.0)


class ClaimLost(Exception):
    """Our claim lapsed and another sender holds it (or sent the email): do not send."""


class Claims:
    """The mailer's claims, in its dedupe store."""

    def __init__(self, store: DedupeStore) -> None:
        self.store = store

    async def claim(self, key: str) -> Claim:
        try:
            return await self.store.claim(key)
        except DedupeUnavailable as exc:
            # Sending without the store could send twice: wait for it instead.
            raise StoreUnavailable(str(exc)) from None

    async def await_holder(self, key: str, request: EmailRequest) -> Claim:
        """Another sender holds the claim (an instance that lost this partition in a
        rebalance, or died holding it): its email is not sent until it records it. Wait
        for its outcome (recorded: a duplicate; released, or its lease lapsed: ours now)
        rather than skip an email that may never go out. Holding nothing, this wait is
        safe to cancel."""
        log.info(
            "email claimed by another sender, waiting for its outcome",
            extra={"event_id": request.event_id, "action": request.action_id},
        )
        delay, most = _HELD_POLL_S
        while (claim := await self.claim(key)) is Claim.HELD:
            await asyncio.sleep(delay)
            delay = min(delay * 2, most)
        return claim

    async def still_ours(self, key: str) -> None:
        """With a connection in hand, right before the transaction: the claim may have
        lapsed while this process was frozen, and another instance sent the email."""
        try:
            ours = await self.store.confirm(key)
        except DedupeUnavailable as exc:
            raise StoreUnavailable(str(exc)) from None
        if not ours:
            raise ClaimLost(key)

    async def release(self, key: str) -> None:
        try:
            await self.store.release(key)
        except Exception as exc:  # the claim lease expires by itself
            log.warning("dedupe release failed", extra={"error": type(exc).__name__})

    async def record(self, key: str, request: EmailRequest) -> None:
        try:
            await self.store.record(key)
        except Exception as exc:
            # The server accepted the email: it is sent. Failing the event now would only
            # make a replay send it again, so log the widened window and carry on.
            log.error(
                "email sent but not recorded; a redelivery could send it again",
                extra={
                    "event_id": request.event_id,
                    "action": request.action_id,
                    "error": type(exc).__name__,
                },
            )

    async def record_anyway(self, key: str, request: EmailRequest) -> None:
        """Record an email handed to the server even if this task is cancelled meanwhile.

        Inline as a rule (the record follows the reply at once); only a cancellation
        that lands in it writes it again, shielded (records are idempotent)."""
        try:
            await self.record(key, request)
        except asyncio.CancelledError:
            await asyncio.shield(self.record(key, request))
            raise
