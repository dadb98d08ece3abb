"""SMTP error classification: every failure of a delivery becomes a `DeliveryError`
whose class is its fate.

This is the one place in Herald that reads SMTP reply codes.

- `PermanentError` (5xx replies, unusable addresses): never retried, dead-lettered.
- `TransientError` (4xx replies, timeouts, lost connections): retried with backoff.
- `DeliveryUncertain` (a timeout or a lost connection after the message was sent,
  before the server replied to it): the server may have the email, so it is recorded
  as sent and never re-sent automatically (RFC 1047).
- `ServerUnavailable` (no session could be set up at all: connection refused, connect
  timeout, TLS failure): transient, and a sign to pause consumption until the server
  is back rather than burn every event's retries.

The connection pool that raises them is `service.mail.transport`.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Sequence
from typing import TypeVar

from aiosmtplib import (
    SMTPConnectError,
    SMTPException,
    SMTPRecipientsRefused,
    SMTPResponseException,
)

from service.mail.smtp_session import DataUnanswered

__all__ = [
    "DeliveryError",
    "DeliveryUncertain",
    "PermanentError",
    "ServerUnavailable",
    "TransientError",
    "classify",
]

_E = TypeVar("_E", bound=BaseException)

_MAX_REASON = 500


class DeliveryError(Exception):
    """An email was not delivered; `reason` is one human-readable line."""

    def __init__(self, reason: str, *, code: int | None = None) -> None:
        self.reason = _one_line(reason)
        self.code = code
        super().__init__(self.reason)


class TransientError(DeliveryError):
    """May succeed later: 4xx replies, timeouts, lost connections."""


class PermanentError(DeliveryError):
    """Will fail again: 5xx replies, addresses that cannot be sent."""


class ServerUnavailable(TransientError):
    """No SMTP session could be set up at all (refused, timed out, TLS failed)."""


class DeliveryUncertain(DeliveryError):
    """The message was sent but its reply never came: the server may have accepted it."""


def classify(exc: BaseException, where: str, *, connecting: bool = False) -> DeliveryError:
    """Turn an aiosmtplib / network exception into a `DeliveryError`.

    `where` names the server (`host:port`) in messages about the connection;
    `connecting` says the failure happened while setting up a session, which makes
    any failure other than a server reply a `ServerUnavailable`.
    """
    if isinstance(exc, DeliveryError):
        return exc
    if isinstance(exc, DataUnanswered):
        return DeliveryUncertain(_unanswered_reason(exc.error, where))
    if isinstance(exc, SMTPRecipientsRefused):
        return _from_replies([(r.code, r.message) for r in exc.recipients])
    if isinstance(exc, SMTPResponseException):
        return _from_replies([(exc.code, exc.message)])
    if connecting or isinstance(exc, SMTPConnectError | ssl.SSLError):
        return ServerUnavailable(_connect_reason(exc, where))
    if isinstance(exc, TimeoutError):
        return TransientError(f"timed out waiting for {where}")
    if isinstance(exc, OSError):  # SMTPServerDisconnected is a ConnectionError
        return TransientError(f"connection to {where} lost: {_message(exc)}")
    if isinstance(exc, ValueError):  # aiosmtplib refusing an address it cannot send
        return PermanentError(f"invalid address: {exc}")
    if isinstance(exc, SMTPException):  # e.g. SMTPNotSupported
        return PermanentError(f"{where}: {exc.message}")
    return PermanentError(f"unexpected {type(exc).__name__}: {exc}")


def _from_replies(replies: Sequence[tuple[int, str]]) -> DeliveryError:
    """Classify by reply codes: permanent only if every reply is a 5xx."""
    reason = "; ".join(f"{code} {message}" for code, message in replies)
    codes = [code for code, _ in replies]
    if codes and all(500 <= code < 600 for code in codes):
        return PermanentError(reason, code=codes[0])
    # 4xx, or a reply aiosmtplib could not parse (code -1): worth another try.
    return TransientError(reason, code=codes[0] if codes else None)


def _unanswered_reason(exc: Exception, where: str) -> str:
    """Describe why the reply to a message that was sent is missing."""
    if isinstance(exc, TimeoutError):
        return f"timed out waiting for {where} to answer the message"
    if isinstance(exc, OSError):  # SMTPServerDisconnected is a ConnectionError
        return f"connection to {where} lost before it answered the message: {_message(exc)}"
    return f"unreadable reply from {where} to the message: {_message(exc)}"


def _connect_reason(exc: BaseException, where: str) -> str:
    """Describe why no session with `where` could be set up."""
    if _cause(exc, ConnectionRefusedError):
        return f"connection refused by {where}"
    if cert := _cause(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate of {where} rejected: {cert.verify_message}"
    if tls := _cause(exc, ssl.SSLError):
        return f"TLS handshake with {where} failed: {tls.reason or tls}"
    if _cause(exc, TimeoutError):
        return f"timed out connecting to {where}"
    if dns := _cause(exc, socket.gaierror):
        return f"cannot resolve {where}: {dns.strerror}"
    return f"cannot connect to {where}: {_message(exc)}"


def _cause(exc: BaseException | None, kind: type[_E]) -> _E | None:
    """The first exception of type `kind` along the `__cause__` chain, if any."""
    while exc is not None and not isinstance(exc, kind):
        exc = exc.__cause__  # aiosmtplib wraps the OSError it got as the cause
    return exc


def _message(exc: BaseException) -> str:
    """The most readable text an exception carries."""
    if isinstance(exc, SMTPException):
        return exc.message
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _one_line(text: str) -> str:
    """Collapse whitespace (multi-line replies) and cap the length."""
    line = " ".join(text.split())
    return line if len(line) <= _MAX_REASON else line[: _MAX_REASON - 1] + "…"
