"""One rendered template as the message Herald sends: the one place its headers are chosen.

The mailer, `herald render` and the MIME benchmark all build their message here, so the
message `herald render` prints is the one the mailer would send.
"""

from __future__ import annotations

from service.mail.message import Mailbox, OutgoingEmail, build_message
from service.mail.render import Rendered

__all__ = ["compose_email"]


def compose_email(
    *,
    sender: Mailbox,
    recipient: Mailbox,
    rendered: Rendered,
    event_id: str,
    template: str,
    reply_to: Mailbox | None = None,
) -> OutgoingEmail:
    """The message of `rendered`, with the X- headers naming its event and template."""
    return build_message(
        sender=sender,
        recipient=recipient,
        subject=rendered.subject,
        text=rendered.text,
        html=rendered.html,
        reply_to=reply_to,
        headers={"X-Herald-Event-Id": event_id, "X-Herald-Template": template},
    )
