"""One SMTP mail transaction on an open aiosmtplib session, with as little work per email
as the protocol allows.

- Envelope addresses are checked and quoted once per distinct address (cached).
- With PIPELINING (RFC 2920) MAIL, every RCPT and DATA go out in one write and their
  replies are read in order (by `aiosmtplib_internals.ReplyReader`, the one place
  Herald touches aiosmtplib's private internals); without it, one round trip each.
- The message goes out in one write, dot-stuffed with `bytes.replace`: Herald's
  messages already end their lines with CRLF, which aiosmtplib's `data()` would
  establish again with a regex over the whole message, then dot-stuff with another.

Failures are aiosmtplib's own exceptions (`SMTPSenderRefused`, `SMTPRecipientsRefused`,
`SMTPDataError`, `SMTPServerDisconnected`, timeouts), which the transport classifies;
`NothingAccepted` wraps those that prove the server cannot have taken the email, and
`DataUnanswered` those after the message went out that leave it unknown whether it did.

The reply to the final "." has a timeout of its own (`data_timeout`): RFC 5321
§4.5.3.2.6 gives the server 10 minutes for it, and giving up sooner is how mail gets
delivered twice (RFC 1047). Every other reply waits `smtp.timeout`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiosmtplib import (
    SMTP,
    SMTPDataError,
    SMTPRecipientRefused,
    SMTPRecipientsRefused,
    SMTPResponse,
    SMTPSenderRefused,
    SMTPServerDisconnected,
)

from service.addresses import InvalidAddress, parse_mailbox
from service.mail.aiosmtplib_internals import (
    ReplyReader,
    normalize_message_line_endings,
    pipelining_works_on,
)
from service.mail.message import WireMessage

__all__ = ["DataUnanswered", "Envelope", "NothingAccepted", "data_payload", "transaction"]

log = logging.getLogger(__name__)

_OK, _WILL_FORWARD, _START_INPUT, _CLOSING = 250, 251, 354, 421


class NothingAccepted(Exception):
    """The session broke before the message was sent: the server cannot have taken it."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class DataUnanswered(Exception):
    """The message was sent but no reply to it was read (a timeout, a lost connection, an
    unreadable reply): the server may have accepted it."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


@functools.lru_cache(maxsize=4096)
def _path(address: str) -> bytes:
    """`<address>` as sent in MAIL FROM / RCPT TO; ValueError if it cannot be sent."""
    try:  # the rule `herald check` and the mailer use; `Name <addr>` gives `<addr>`
        return b"<" + parse_mailbox(address).address.encode("ascii") + b">"
    except InvalidAddress as exc:
        raise ValueError(f"invalid address: {exc}") from None


@dataclass(frozen=True, slots=True)
class Envelope:
    """A checked sender and recipients with their MAIL and RCPT commands (no CRLF)."""

    sender: str
    recipients: tuple[str, ...]
    mail: bytes
    rcpts: tuple[bytes, ...]

    @classmethod
    def of(cls, sender: str, recipients: Sequence[str]) -> Envelope:
        """Check and quote the addresses; ValueError names the first unusable one."""
        return cls(
            sender,
            tuple(recipients),
            b"MAIL FROM:" + _path(sender),
            tuple(b"RCPT TO:" + _path(recipient) for recipient in recipients),
        )

    def pipelined(self) -> bytes:
        """MAIL, every RCPT and DATA as one group of command lines."""
        return b"\r\n".join((self.mail, *self.rcpts, b"DATA\r\n"))


def data_payload(message: bytes) -> bytes:
    """What follows DATA: the message dot-stuffed, ending in CRLF, then ".\\r\\n".

    The same bytes as aiosmtplib's `data()` sends. A message with a bare CR or LF is
    first normalized the way aiosmtplib does it. Herald's own messages (`WireMessage`)
    need neither: two scans of ~10 KB saved per email.
    """
    if type(message) is WireMessage:
        return message + b".\r\n"
    crlf = message.count(b"\r\n")
    if message.count(b"\n") != crlf or message.count(b"\r") != crlf:
        message = normalize_message_line_endings(message)
    stuffed = message.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    if not stuffed.endswith(b"\r\n"):
        stuffed += b"\r\n"
    return stuffed + b".\r\n"


@dataclass(slots=True)
class _Replies:
    """The replies to MAIL, RCPT and DATA received so far, and why the rest are missing."""

    mail: SMTPResponse | None = None
    rcpts: list[SMTPResponse] = field(default_factory=list)
    data: SMTPResponse | None = None
    lost: SMTPServerDisconnected | None = None


def _can_pipeline(smtp: SMTP) -> bool:
    """Whether the server offers PIPELINING and the reply reader works on this loop."""
    return smtp.supports_extension("pipelining") and pipelining_works_on(asyncio.get_running_loop())


async def _pipelined(smtp: SMTP, envelope: Envelope) -> _Replies:
    """Write MAIL, RCPT and DATA at once (RFC 2920), then read all their replies."""
    replies = _Replies()
    protocol = smtp.protocol
    if protocol is None:
        replies.lost = SMTPServerDisconnected("Server not connected")
        return replies
    with ReplyReader(protocol) as reader:
        try:
            protocol.write(envelope.pipelined())
            replies.mail = await reader.read(smtp.timeout)
            for _ in envelope.rcpts:
                replies.rcpts.append(await reader.read(smtp.timeout))
            replies.data = await reader.read(smtp.timeout)
        except SMTPServerDisconnected as exc:
            replies.lost = exc
    return replies


async def _one_by_one(smtp: SMTP, envelope: Envelope) -> _Replies:
    """MAIL, RCPT and DATA one round trip each, stopping where the transaction failed."""
    replies = _Replies()
    try:
        replies.mail = await smtp.execute_command(envelope.mail)
        if replies.mail.code != _OK:
            return replies
        for command in envelope.rcpts:
            replies.rcpts.append(await smtp.execute_command(command))
            if replies.rcpts[-1].code == _CLOSING:
                return replies
        if any(reply.code in (_OK, _WILL_FORWARD) for reply in replies.rcpts):
            replies.data = await smtp.execute_command(b"DATA")
    except SMTPServerDisconnected as exc:
        replies.lost = exc
    return replies


def _check(envelope: Envelope, replies: _Replies) -> None:
    """Raise unless the server waits for the message; in the order the commands went.

    421 (the server closing the session, as on an idle timeout) and a lost connection
    are `NothingAccepted`; other refusals raise as aiosmtplib's `sendmail` would.
    """
    mail = replies.mail
    if mail is None:
        raise NothingAccepted(replies.lost or SMTPServerDisconnected("Connection lost"))
    if mail.code != _OK:
        sender_refused = SMTPSenderRefused(mail.code, mail.message, envelope.sender)
        raise NothingAccepted(sender_refused) if mail.code == _CLOSING else sender_refused
    refused = [
        SMTPRecipientRefused(reply.code, reply.message, recipient)
        for reply, recipient in zip(replies.rcpts, envelope.recipients, strict=False)
        if reply.code not in (_OK, _WILL_FORWARD)
    ]
    if closing := next((r for r in refused if r.code == _CLOSING), None):
        raise NothingAccepted(closing)
    if len(refused) == len(envelope.recipients):
        raise SMTPRecipientsRefused(refused)
    if replies.data is None:
        raise NothingAccepted(replies.lost or SMTPServerDisconnected("Connection lost"))
    if replies.data.code != _START_INPUT:
        data_refused = SMTPDataError(replies.data.code, replies.data.message)
        raise NothingAccepted(data_refused) if replies.data.code == _CLOSING else data_refused
    if refused:
        codes = ", ".join(str(r.code) for r in refused)
        log.warning(
            "%d of %d recipients refused (%s)", len(refused), len(envelope.recipients), codes
        )


async def transaction(
    smtp: SMTP,
    envelope: Envelope,
    payload: bytes,
    *,
    data_timeout: float | None,
    data_sent: asyncio.Event | None = None,
) -> str:
    """MAIL, RCPT, DATA and the message (from `data_payload`) on an open session.

    Returns the server's reply to the message, awaited up to `data_timeout` seconds.
    `data_sent` is set once the message is written: from then on the server may have
    the email. After any failure the session's state is unknown (a DATA may be waiting
    for its message): the caller must close it.
    """
    if _can_pipeline(smtp):
        replies = await _pipelined(smtp, envelope)
    else:
        replies = await _one_by_one(smtp, envelope)
    _check(envelope, replies)
    protocol = smtp.protocol
    if protocol is None or not protocol.is_connected:
        raise NothingAccepted(SMTPServerDisconnected("Connection lost"))
    protocol.write(payload)  # from here on the server may have accepted the email
    if data_sent is not None:
        data_sent.set()
    try:
        reply = await protocol.read_response(timeout=data_timeout)
    except Exception as exc:  # only a reply the server gave says what became of it
        raise DataUnanswered(exc) from exc
    if reply.code != _OK:
        raise SMTPDataError(reply.code, reply.message)
    return reply.message
