"""One email from render to acceptance: dedupe claim, render, MIME, pooled send, retry."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from service.dedupe import DedupeStore, dedupe_key
from service.mail.message import InvalidAddress, Mailbox, build_message, parse_mailbox
from service.mail.render import Renderer, TemplateError
from service.mail.transport import DeliveryError, PermanentError
from service.metrics import Metrics
from service.retry import RetryPolicy

__all__ = ["EmailFailed", "EmailRequest", "Mailer", "Transport"]

log = logging.getLogger(__name__)


class Transport(Protocol):
    """Something that hands prebuilt message bytes to an SMTP server."""

    async def send(self, sender: str, recipients: list[str], message: bytes) -> str: ...


class EmailFailed(Exception):
    """The email will not be sent; `error` names the class of failure for the DLQ."""

    def __init__(self, error: str, reason: str) -> None:
        super().__init__(reason)
        self.error = error
        self.reason = reason


@dataclass(frozen=True, slots=True)
class EmailRequest:
    """What a `send_email` action (or a python action's `api.email.send`) asks for."""

    event_id: str
    action_id: str
    template: str
    to: str | None
    to_name: str
    locale: str | None
    context: Mapping[str, Any]
    sender: str | None = None
    reply_to: str | None = None


class Mailer:
    """Sends templated email at most once per (event id, action id, recipient)."""

    def __init__(
        self,
        *,
        renderer: Renderer,
        transport: Transport,
        dedupe: DedupeStore,
        retry: RetryPolicy,
        default_sender: str,
        metrics: Metrics,
    ) -> None:
        self.renderer = renderer
        self.transport = transport
        self.dedupe = dedupe
        self.retry = retry
        self.default_sender = parse_mailbox(default_sender)
        self.metrics = metrics

    async def send(self, request: EmailRequest) -> str:
        """Send one email; returns the outcome (`sent` or `duplicate`) or raises EmailFailed."""
        recipient = _mailbox(request.to, request.to_name, "recipient")
        key = dedupe_key(request.event_id, request.action_id, recipient.address)
        if not await self.dedupe.claim(key):
            self.metrics.emails.labels(request.template, "duplicate").inc()
            return "duplicate"
        try:
            await self._deliver(request, recipient)
        except BaseException:
            await self.dedupe.release(key)
            raise
        await self.dedupe.record(key)
        self.metrics.emails.labels(request.template, "sent").inc()
        return "sent"

    async def _deliver(self, request: EmailRequest, recipient: Mailbox) -> None:
        try:
            rendered = self.renderer.render(request.template, request.locale, request.context)
        except TemplateError as exc:
            self._failed(request, "render_error")
            raise EmailFailed("TemplateError", str(exc)) from None
        sender = _mailbox(request.sender, "", "from") if request.sender else self.default_sender
        reply_to = _mailbox(request.reply_to, "", "reply_to") if request.reply_to else None
        email = build_message(
            sender=sender,
            recipient=recipient,
            subject=rendered.subject,
            text=rendered.text,
            html=rendered.html,
            reply_to=reply_to,
            headers={"X-Herald-Event-Id": request.event_id, "X-Herald-Template": request.template},
        )
        try:
            await self.retry.run(
                lambda: self.transport.send(sender.address, [recipient.address], email.data),
                on_retry=lambda attempt, err: self._retrying(request, attempt, err),
            )
        except PermanentError as exc:
            self._failed(request, "rejected")
            raise EmailFailed("SmtpPermanentError", exc.reason) from None
        except DeliveryError as exc:
            self._failed(request, "retries_exhausted")
            raise EmailFailed(
                "SmtpRetriesExhausted",
                f"gave up after {self.retry.attempts} attempts: {exc.reason}",
            ) from None

    def _retrying(self, request: EmailRequest, attempt: int, error: DeliveryError) -> None:
        self.metrics.smtp_retries.inc()
        log.warning(
            "smtp send failed, retrying",
            extra={
                "event_id": request.event_id,
                "action": request.action_id,
                "attempt": attempt,
                "reason": error.reason,
            },
        )

    def _failed(self, request: EmailRequest, outcome: str) -> None:
        self.metrics.emails.labels(request.template, outcome).inc()


def _mailbox(value: Any, name: Any, what: str) -> Mailbox:
    if not isinstance(value, str) or not value.strip():
        raise EmailFailed("MissingAddress", f"no {what} address")
    try:
        return parse_mailbox(value, name if isinstance(name, str) else "")
    except InvalidAddress as exc:
        raise EmailFailed("InvalidAddress", f"invalid {what} address: {exc}") from None
