"""What an action asks the mailer for: one email of one event (`EmailRequest`), and its
addresses read the way the mailer reads them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from service.consumed import Position
from service.failures import EmailFailed
from service.mail.message import InvalidAddress, Mailbox, parse_mailbox

__all__ = ["EmailRequest", "mailbox"]


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
    #: Which attempt this is (scheduled retries: 2, 3, …).
    attempt: int = 1
    #: Where its event was read (a retry's original record); else the record in hand.
    source: Position | None = None
    #: A resend on purpose (`herald resend`): its own id, so its own claim and record.
    resend: str | None = None

    @property
    def user_id(self) -> str:
        user = self.context.get("user")
        return str(user.get("user_id") or "") if isinstance(user, Mapping) else ""

    def email_fields(self) -> dict[str, Any]:
        """What it takes to make this email again from its event (retry items, records)."""
        return {
            "template": self.template,
            "to": self.to,
            "to_name": self.to_name,
            "locale": self.locale,
            "from": self.sender,
            "reply_to": self.reply_to,
            "data": dict(self.context.get("data") or {}),
        }

    def expired(self) -> bool:
        """Whether the event's `data.expires_at` (ISO 8601) has passed."""
        event = self.context.get("event")
        data = event.get("data") if isinstance(event, Mapping) else None
        value = data.get("expires_at") if isinstance(data, Mapping) else None
        if not isinstance(value, str) or not value:
            return False
        try:
            at = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return False
        if at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
        return at <= datetime.now(UTC)


def mailbox(value: Any, name: Any, what: str) -> Mailbox:
    """The address `value` (with display name `name`) of the email's `what` (recipient,
    from, reply_to); EmailFailed when it is missing or invalid."""
    if not isinstance(value, str) or not value.strip():
        if what == "recipient":
            raise EmailFailed(
                "MissingAddress",
                "event has no recipient address (data.user.email is empty, or the "
                "action's `to` gave none)",
            )
        raise EmailFailed("MissingAddress", f"no {what} address")
    try:
        return parse_mailbox(value, name if isinstance(name, str) else "")
    except InvalidAddress as exc:
        raise EmailFailed("InvalidAddress", f"invalid {what} address: {exc}") from None
