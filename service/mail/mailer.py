"""One email from render to acceptance: dedupe claim, rate limit, render, MIME, one send.

One attempt per call. A transient failure (a 4xx reply, a timeout, a dropped
connection) raises `EmailDeferred`: the caller schedules the next attempt on the retry
topic (service/retry/retrier.py) instead of waiting here, so one greylisting recipient never
holds back anyone else's email.

Once the message itself went out, only the server's reply says it was not accepted.
Without one (a timeout, a lost connection, this task cancelled meanwhile) the email is
`uncertain`: recorded like a sent one, so nothing re-sends it automatically (RFC 1047).
The claim is released only when the email was certainly not delivered.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from service.addresses import mask_address
from service.dedupe import Claim, DedupeStore, dedupe_key
from service.deliveries import DeliveryLog
from service.failures import (
    EmailDeferred,
    EmailFailed,
    PermanentlyRejected,
    SmtpUnavailable,
)
from service.mail.claims import ClaimLost, Claims
from service.mail.compose import compose_email
from service.mail.message import Mailbox, parse_mailbox
from service.mail.render import Renderer, TemplateError
from service.mail.request import EmailRequest, mailbox
from service.mail.smtp_errors import (
    DeliveryError,
    DeliveryUncertain,
    PermanentError,
    ServerUnavailable,
)
from service.metrics import LabelledCounter, Metrics
from service.ratelimit import RateLimiter, Token

__all__ = ["EmailRequest", "Mailer", "Transport"]

log = logging.getLogger(__name__)


class Transport(Protocol):
    """Something that hands prebuilt message bytes to an SMTP server, setting `data_sent`
    once the message went out (raising `DeliveryUncertain` if its reply never came), and
    awaiting `before` once it holds a connection slot."""

    async def send(
        self,
        sender: str,
        recipients: list[str],
        message: bytes,
        *,
        data_sent: asyncio.Event | None = None,
        before: Callable[[], Awaitable[None]] | None = None,
    ) -> str: ...


class Mailer:
    """Sends templated email at most once per (event id, action id, recipient)."""

    def __init__(
        self,
        *,
        renderer: Renderer,
        transport: Transport,
        dedupe: DedupeStore,
        default_sender: str,
        metrics: Metrics,
        rate_limiter: RateLimiter | None = None,
        deliveries: DeliveryLog | None = None,
    ) -> None:
        self.deliveries = deliveries
        self.renderer = renderer
        self.transport = transport
        self.dedupe = dedupe
        self._claims = Claims(dedupe)
        self.default_sender = parse_mailbox(default_sender)
        self.metrics = metrics
        self._emails = LabelledCounter(metrics.emails)
        self.rate_limiter = rate_limiter  # None: unlimited

    async def send(self, request: EmailRequest) -> str:
        """Make one attempt at one email; returns the outcome (`sent`, `uncertain`,
        `duplicate`, `rate_limited` or `expired`), or raises EmailDeferred (try again later),
        EmailFailed (never), SmtpUnavailable / StoreUnavailable (an outage: pause
        consumption)."""
        recipient = mailbox(request.to, request.to_name, "recipient")
        key = dedupe_key(request.event_id, request.action_id, recipient.address)
        if request.resend:
            key += "\x1f" + request.resend
        claim = await self._claims.claim(key)
        while True:
            if claim is Claim.HELD:
                claim = await self._claims.await_holder(key, request)
            if claim is Claim.SENT:
                self._emails.inc(request.template, "duplicate")
                return "duplicate"
            try:
                return await self._attempt(key, request, recipient)
            except ClaimLost:
                log.warning(
                    "email claim lapsed before the send and was taken over; not sending",
                    extra={"event_id": request.event_id, "action": request.action_id},
                )
                claim = await self._claims.claim(key)

    async def _attempt(self, key: str, request: EmailRequest, recipient: Mailbox) -> str:
        """Rate limit and send under our claim (`_deliver` records it), or release it."""
        token = None
        data_sent = asyncio.Event()  # set by the transport once the message went out
        if request.expired():
            message = "email skipped: its link expired"
            return await self._skipped(key, request, recipient, "expired", message)
        try:
            allowed, token = await self._within_limit(recipient)
            outcome = await self._deliver(key, request, recipient, data_sent) if allowed else None
        except BaseException as exc:
            if data_sent.is_set() and not isinstance(exc, Exception):
                # Cancelled (an action's timeout_s, a failing sibling, shutdown) while the
                # reply to the message was awaited: the server may have it. Recorded as
                # uncertain at once rather than shielding the wait, which would hold the
                # cancellation for up to smtp.data_timeout_s.
                self._uncertain(request, recipient, "cancelled while awaiting the reply")
                self._emails.inc(request.template, "uncertain")
                await self._claims.record_anyway(key, request)
                raise
            await self._claims.release(key)
            if token is not None and not isinstance(exc, PermanentlyRejected):
                # The server did not take it: it does not count against the limit.
                await self._refund(recipient, token)
            raise
        if outcome is None:
            message = "email skipped: recipient over its rate limit"
            return await self._skipped(key, request, recipient, "rate_limited", message)
        self._emails.inc(request.template, outcome)
        return outcome

    async def _deliver(
        self, key: str, request: EmailRequest, recipient: Mailbox, data_sent: asyncio.Event
    ) -> str:
        """Render, send and record: `sent`, or `uncertain` when the reply is missing."""
        try:
            rendered = self.renderer.render(request.template, request.locale, request.context)
        except TemplateError as exc:
            self._failed(request, "render_error")
            await self._note(key, request, recipient, "failed", reason=f"TemplateError: {exc}")
            raise EmailFailed("TemplateError", str(exc)) from None
        sender = mailbox(request.sender, "", "from") if request.sender else self.default_sender
        reply_to = mailbox(request.reply_to, "", "reply_to") if request.reply_to else None
        email = compose_email(
            sender=sender,
            recipient=recipient,
            rendered=rendered,
            event_id=request.event_id,
            template=request.template,
            reply_to=reply_to,
        )
        try:
            reply = await self.transport.send(
                sender.address,
                [recipient.address],
                email.data,
                data_sent=data_sent,
                before=functools.partial(self._claims.still_ours, key),
            )
        except DeliveryUncertain as exc:
            await self._claims.record_anyway(key, request)  # handed over: never again
            self._uncertain(request, recipient, exc.reason)
            await self._note(
                key,
                request,
                recipient,
                "uncertain",
                reason=exc.reason,
                message_id=email.message_id,
            )
            return "uncertain"  # kept from the rate limit: it was handed over
        except ServerUnavailable as exc:
            raise SmtpUnavailable(exc.reason) from None
        except PermanentError as exc:
            self._failed(request, "rejected")
            await self._note(
                key,
                request,
                recipient,
                "failed",
                reason="SmtpPermanentError",
                smtp_reply=exc.reason,
            )
            raise PermanentlyRejected("SmtpPermanentError", exc.reason) from None
        except DeliveryError as exc:
            self._failed(request, "deferred")  # its record is written with its next attempt
            raise EmailDeferred(exc.reason) from None
        # The record first: a crash after the server's reply is the window left.
        await self._claims.record_anyway(key, request)
        await self._note(
            key, request, recipient, "sent", smtp_reply=f"250 {reply}", message_id=email.message_id
        )
        return "sent"

    async def note(self, request: EmailRequest, status: str, **fields: Any) -> None:
        """A status change decided outside the mailer (a retry scheduled, retries run
        out, a failure made final)."""
        try:
            recipient = mailbox(request.to, request.to_name, "recipient")
        except EmailFailed:
            return
        key = dedupe_key(request.event_id, request.action_id, recipient.address)
        await self._note(key, request, recipient, status, **fields)

    async def _note(
        self, key: str, request: EmailRequest, recipient: Mailbox, status: str, **fields: Any
    ) -> None:
        if self.deliveries is None:
            return
        if request.resend:
            fields.setdefault("resend", True)
        await self.deliveries.note(
            record_id=key if not request.resend else f"{key}\x1f{request.resend}",
            event_id=request.event_id,
            action_id=request.action_id,
            template=request.template,
            to=recipient.address,
            user_id=request.user_id,
            status=status,
            email=request.email_fields(),
            source=request.source,
            attempts=request.attempt,
            **fields,
        )

    async def _within_limit(self, recipient: Mailbox) -> tuple[bool, Token | None]:
        """Whether the recipient is under its limit, and the count taken for this email
        (given back by `_refund` when the server does not accept it)."""
        if self.rate_limiter is None:
            return True, None
        token = await self.rate_limiter.acquire(recipient.address)
        return token is not None, token

    async def _refund(self, recipient: Mailbox, token: Token) -> None:
        assert self.rate_limiter is not None
        try:
            await self.rate_limiter.refund(recipient.address, token)
        except Exception as exc:  # the count lapses with its window
            log.warning("rate limit refund failed", extra={"error": type(exc).__name__})

    async def _skipped(
        self, key: str, request: EmailRequest, recipient: Mailbox, outcome: str, message: str
    ) -> str:
        """Skipped for good (not a failure, not dead-lettered): nothing was sent, so the
        claim is released rather than recorded."""
        await self._claims.release(key)
        self._emails.inc(request.template, outcome)
        log.info(
            message,
            extra={
                "event_id": request.event_id,
                "action": request.action_id,
                "template": request.template,
                "recipient": mask_address(recipient.address),
                "outcome": outcome,
            },
        )
        await self._note(key, request, recipient, "skipped", reason=outcome)
        return outcome

    def _uncertain(self, request: EmailRequest, recipient: Mailbox, reason: str) -> None:
        """Log an email that may have been delivered (the caller counts it): not sent again."""
        log.warning(
            "email uncertain: sent, but the server's reply never came; not sent again",
            extra={
                "event_id": request.event_id,
                "action": request.action_id,
                "template": request.template,
                "recipient": mask_address(recipient.address),
                "outcome": "uncertain",
                "reason": reason,
            },
        )

    def _failed(self, request: EmailRequest, outcome: str) -> None:
        self._emails.inc(request.template, outcome)
