"""SMTP delivery over a pool of persistent aiosmtplib connections.

`SmtpPool.send` raises only `DeliveryError`s, whose class is the email's fate; they
are made by `service.mail.smtp_errors` (the one place that reads SMTP reply codes).
The commands of one mail transaction (PIPELINING, the message after DATA) are in
`service.mail.smtp_session`; this module owns the connections.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Literal, Self

from aiosmtplib import SMTP, SMTPHeloError

from service.config import SmtpConfig
from service.mail.smtp_errors import (
    DeliveryError,
    PermanentError,
    ServerUnavailable,
    classify,
)
from service.mail.smtp_session import (
    Envelope,
    NothingAccepted,
    data_payload,
    transaction,
)

__all__ = ["Security", "SmtpPool"]

log = logging.getLogger(__name__)

Security = Literal["none", "starttls", "tls"]


async def _greet(smtp: SMTP) -> None:
    """EHLO, or HELO if the server refuses it, unless the session has greeted already.

    What aiosmtplib's commands do before their first use, with its public calls.
    """
    if not smtp.is_ehlo_or_helo_needed:
        return
    try:
        await smtp.ehlo()
    except SMTPHeloError:
        if not smtp.is_connected:
            raise
        await smtp.helo()


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

    @classmethod
    def for_config(cls, smtp: SmtpConfig, *, size: int | None = None) -> SmtpPool:
        """The pool `smtp:` describes (`size` defaults to `smtp.pool_size`)."""
        return cls(
            smtp.host,
            smtp.port,
            security=smtp.security,
            username=smtp.username,
            password=smtp.password.get_secret_value(),
            timeout_s=smtp.timeout_s,
            data_timeout_s=smtp.data_timeout_s,
            size=smtp.pool_size if size is None else size,
        )

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
            await _greet(smtp)
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
