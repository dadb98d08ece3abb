"""SMTP delivery over a pool of persistent aiosmtplib connections.

This is the one place in Herald that reads SMTP reply codes: every failure leaves
here as a `DeliveryError` whose class is its fate.

- `PermanentError` (5xx replies, unusable addresses): never retried, dead-lettered.
- `TransientError` (4xx replies, timeouts, lost connections): retried with backoff.
- `DeliveryUncertain` (a timeout or a lost connection after the message was sent,
  before the server replied to it): the server may have the email, so it is recorded
  as sent and never re-sent automatically (RFC 1047).
- `ServerUnavailable` (no session could be set up at all: connection refused, connect
  timeout, TLS failure): transient, and a sign to pause consumption until the server
  is back rather than burn every event's retries.

The commands of one mail transaction (PIPELINING, the message after DATA) are in
`service.mail.smtp_session`; this module owns the connections and the classification.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Literal, Self, TypeVar

from aiosmtplib import (
    SMTP,
    SMTPConnectError,
    SMTPException,
    SMTPRecipientsRefused,
    SMTPResponseException,
)

from service.mail.smtp_session import (
    DataUnanswered,
    Envelope,
    NothingAccepted,
    data_payload,
    transaction,
)

__all__ = [
    "DeliveryError",
    "DeliveryUncertain",
    "PermanentError",
    "Security",
    "ServerUnavailable",
    "SmtpPool",
    "TransientError",
    "classify",
]

log = logging.getLogger(__name__)

Security = Literal["none", "starttls", "tls"]

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


def _envelope(sender: str, recipients: Sequence[str]) -> Envelope:
    """Refuse envelopes that could never be sent, before using a connection."""
    if not recipients:
        raise PermanentError("no recipients")
    try:
        return Envelope.of(sender, recipients)
    except ValueError as exc:
        raise PermanentError(str(exc)) from exc


class SmtpPool:
    """Up to `size` persistent SMTP connections, opened lazily and reused."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        security: Security = "none",
        username: str = "",
        password: str = "",
        timeout_s: float = 10,
        data_timeout_s: float = 600,
        size: int = 4,
        tls_context: ssl.SSLContext | None = None,
        local_hostname: str | None = None,
    ) -> None:
        if security not in ("none", "starttls", "tls"):
            raise ValueError(f"security must be none, starttls or tls, not {security!r}")
        if size < 1:
            raise ValueError("size must be at least 1")
        if data_timeout_s <= 0:
            raise ValueError("data_timeout_s must be greater than 0")
        self._host, self._port, self._security = host, port, security
        self._username, self._password = username, password
        self._timeout_s = timeout_s  # connect and every command...
        self._data_timeout_s = data_timeout_s  # ...but the reply to the message itself
        self._where = f"{host}:{port}"
        if tls_context is None and security != "none":
            tls_context = ssl.create_default_context()  # verifies certificates
        self._tls_context = tls_context
        # aiosmtplib would otherwise look the name up (in a thread) on every connect.
        self._local_hostname = local_hostname or socket.getfqdn()
        self._slots = asyncio.Semaphore(size)
        self._idle: list[SMTP] = []  # a stack: the most recently used is reused first
        self._closed = False
        self._client()  # aiosmtplib validates its options here: fail now, not at a send

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def send(
        self,
        sender: str,
        recipients: Sequence[str],
        message: bytes,
        *,
        data_sent: asyncio.Event | None = None,
        before: Callable[[], Awaitable[None]] | None = None,
    ) -> str:
        """Send prebuilt message bytes; return the server's reply to DATA.

        Waits for a free connection slot, then awaits `before` (which may raise to send
        nothing). A failed connection is closed, never reused;
        a reused one that the server had dropped before DATA is replaced and the email
        sent on a fresh connection. Raises only `DeliveryError` subclasses. `data_sent`
        is set once the message went out (a cancellation after it may leave it sent).
        """
        envelope = _envelope(sender, recipients)
        payload = data_payload(message)
        async with self._slots:
            if before is not None:
                await before()
            smtp, reused = await self._checkout()
            try:
                return await self._deliver(smtp, envelope, payload, reused, data_sent)
            except NothingAccepted:
                pass
            # The server had dropped the reused connection. It accepted nothing, so
            # one more try on a fresh connection cannot duplicate the email.
            smtp = await self._open()
            return await self._deliver(smtp, envelope, payload, False, data_sent)

    async def probe(self) -> bool:
        """Whether the server takes an SMTP session now (for readiness); never raises."""
        if self._closed:
            return False
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._probe()
        except Exception as exc:
            log.debug("SMTP probe of %s failed: %s", self._where, exc)
            return False
        return True

    async def close(self) -> None:
        """Close idle connections; connections in use close when their send ends."""
        self._closed = True
        idle, self._idle = self._idle, []
        await asyncio.gather(*(self._quit(smtp) for smtp in idle))

    async def _probe(self) -> None:
        """NOOP on an idle connection, else open one (kept if a slot is free)."""
        if self._slots.locked():
            # Every slot is busy sending: test with a throwaway session, don't queue.
            await self._quit(await self._open())
            return
        async with self._slots:
            smtp, reused = await self._checkout()
            if reused and not await self._alive(smtp):
                smtp = await self._open()
            self._checkin(smtp)

    async def _alive(self, smtp: SMTP) -> bool:
        """NOOP on an idle connection; a dead one is discarded."""
        try:
            await smtp.noop()
        except Exception:
            self._discard(smtp)
            return False
        except BaseException:
            self._discard(smtp)
            raise
        return True

    async def _deliver(
        self,
        smtp: SMTP,
        envelope: Envelope,
        payload: bytes,
        reused: bool,
        data_sent: asyncio.Event | None,
    ) -> str:
        """Run one transaction on `smtp`; keep the connection only if it succeeded."""
        try:
            reply = await transaction(
                smtp, envelope, payload, data_timeout=self._data_timeout_s, data_sent=data_sent
            )
        except NothingAccepted as failure:
            self._discard(smtp)
            if reused:
                raise
            raise self._error(failure.error) from failure.error
        except Exception as exc:
            self._discard(smtp)
            raise self._error(exc) from exc
        except BaseException:  # cancelled mid-transaction: the session state is unknown
            self._discard(smtp)
            raise
        self._checkin(smtp)
        return reply

    async def _checkout(self) -> tuple[SMTP, bool]:
        """An idle live connection (reused=True) or a new one; caller holds a slot."""
        if self._closed:
            raise ServerUnavailable(f"SMTP pool for {self._where} is closed")
        while self._idle:
            smtp = self._idle.pop()
            if smtp.is_connected:  # False once the server has closed it
                return smtp, True
            self._discard(smtp)
        return await self._open(), False

    def _client(self) -> SMTP:
        """A new, unconnected aiosmtplib client with the pool's settings."""
        return SMTP(
            hostname=self._host,
            port=self._port,
            username=self._username or None,  # aiosmtplib logs in unless None
            password=self._password or None,
            local_hostname=self._local_hostname,
            timeout=self._timeout_s,
            use_tls=self._security == "tls",
            # Explicit False: with None aiosmtplib upgrades whenever it is offered.
            start_tls=self._security == "starttls",
            tls_context=self._tls_context,
        )

    async def _open(self) -> SMTP:
        """Connect, STARTTLS and log in as configured, and learn the extensions (EHLO)."""
        smtp = self._client()
        try:
            await smtp.connect()
            # connect() says EHLO only for STARTTLS or AUTH; PIPELINING is known from it.
            await smtp._ehlo_or_helo_if_needed()
        except Exception as exc:
            self._discard(smtp)
            raise self._error(exc, connecting=True) from exc
        return smtp

    def _checkin(self, smtp: SMTP) -> None:
        """Return a connection to the idle stack, or close it if the pool is closed."""
        if self._closed or not smtp.is_connected:
            self._discard(smtp)
        else:
            self._idle.append(smtp)

    def _discard(self, smtp: SMTP) -> None:
        """Drop a connection without a goodbye: its state is unknown or broken."""
        smtp.close()

    async def _quit(self, smtp: SMTP) -> None:
        """Say QUIT politely, then close whatever happens."""
        try:
            await smtp.quit(timeout=min(self._timeout_s, 2.0))
        except Exception as exc:
            log.debug("QUIT to %s failed: %s", self._where, exc)
        finally:
            smtp.close()

    def _error(self, exc: BaseException, *, connecting: bool = False) -> DeliveryError:
        """Classify `exc`, making sure the password cannot leak through a reply."""
        error = classify(exc, self._where, connecting=connecting)
        if self._password and self._password in error.reason:
            return type(error)(error.reason.replace(self._password, "***"), code=error.code)
        return error
