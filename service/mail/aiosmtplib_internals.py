"""Every use Herald makes of aiosmtplib's private internals, and nothing else.

Why they are used: aiosmtplib's `SMTPProtocol` expects one reply per write. Bytes that
arrive while a parsed reply waits to be picked up are dropped (on Python 3.11 waking
the reader takes two turns of the loop), so reading the replies to pipelined commands
(RFC 2920: MAIL, every RCPT and DATA in one write) through its public `read_response`
would lose all but the first. aiosmtplib has no public way to read several replies to
one write, so `ReplyReader` reaches into the protocol:

- `SMTPProtocol._response_waiter`: the future the next parsed reply is set on (None
  once the connection is lost); `data_received` drops bytes while it is done.
- `SMTPProtocol._buffer`: the `bytearray` of received bytes not yet parsed.
- `SMTPProtocol._read_response_from_buffer()`: parses one complete reply off the front
  of `_buffer` and removes it, or returns None if no complete reply is buffered.
- `SMTPProtocol.data_received`, replaced on the instance while a group is read: the
  stdlib event loop's transports look it up for each chunk they read (uvloop binds it
  once, so `pipelining_works_on` refuses any loop but the stdlib's).
- `aiosmtplib.protocol.normalize_message_line_endings`: not underscored, but neither
  documented nor in the module's `__all__`; it decides what `data()` would send.

Tested with aiosmtplib 5.1.3 (`TESTED_VERSIONS`); pyproject.toml pins the 5.1 series
from that release on. Importing this module raises `AiosmtplibInternalsChanged` if any
of the internals is missing or has another shape: Herald never falls back silently.
`tests/test_smtp_internals.py` checks their shape and behaviour on the installed
aiosmtplib. To upgrade: read the new `aiosmtplib/protocol.py`, run that test file and
tests/test_transport.py, then add the version here and widen the pin.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Self

from aiosmtplib import SMTPResponse
from aiosmtplib.protocol import SMTPProtocol, normalize_message_line_endings

__all__ = [
    "TESTED_VERSIONS",
    "AiosmtplibInternalsChanged",
    "ReplyReader",
    "normalize_message_line_endings",
    "pipelining_works_on",
    "verify",
]

#: The aiosmtplib releases these internals were read in and tested with.
TESTED_VERSIONS = ("5.1.3",)


class AiosmtplibInternalsChanged(RuntimeError):
    """The installed aiosmtplib lacks an internal Herald relies on."""

    def __init__(self, problem: str) -> None:
        super().__init__(
            f"aiosmtplib internals changed: {problem}. Herald's pipelined SMTP reader"
            f" (service/mail/aiosmtplib_internals.py) was tested with aiosmtplib"
            f" {', '.join(TESTED_VERSIONS)}; install one of those or adapt that module."
        )


def verify(protocol_class: type[SMTPProtocol] = SMTPProtocol) -> None:
    """Raise `AiosmtplibInternalsChanged` unless `protocol_class` has every internal
    `ReplyReader` uses, in the shape it expects. Run when this module is imported."""
    for name in ("_read_response_from_buffer", "data_received"):
        method = getattr(protocol_class, name, None)
        if not callable(method):
            raise AiosmtplibInternalsChanged(f"SMTPProtocol.{name}() is missing")
        if name == "_read_response_from_buffer" and len(inspect.signature(method).parameters) != 1:
            raise AiosmtplibInternalsChanged(f"SMTPProtocol.{name}() takes arguments now")
    if not callable(normalize_message_line_endings):
        raise AiosmtplibInternalsChanged("protocol.normalize_message_line_endings is missing")
    loop = asyncio.new_event_loop()  # a protocol needs one; nothing runs on it
    try:
        protocol = protocol_class(loop)
    finally:
        loop.close()
    if not isinstance(getattr(protocol, "_buffer", None), bytearray):
        raise AiosmtplibInternalsChanged("SMTPProtocol._buffer is no longer a bytearray")
    if not hasattr(protocol, "_response_waiter"):
        raise AiosmtplibInternalsChanged("SMTPProtocol._response_waiter is missing")


def pipelining_works_on(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether `ReplyReader` sees every chunk read on `loop` (the stdlib loop's
    transports call `data_received` afresh for each; uvloop's do not)."""
    return isinstance(loop, asyncio.BaseEventLoop)


class ReplyReader:
    """Reads the replies to a group of pipelined commands in order, losing none.

    While the group is read, bytes that arrive while a parsed reply waits to be picked
    up are kept in the protocol's buffer, and each read takes a reply already buffered
    before waiting for more. Use as a context manager around the group.
    """

    def __init__(self, protocol: SMTPProtocol) -> None:
        self._protocol = protocol
        self._deliver = protocol.data_received

    def __enter__(self) -> Self:
        self._protocol.data_received = self._received  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc_info: object) -> None:
        del self._protocol.data_received  # the class's method again

    def _received(self, data: bytes) -> None:
        waiter = self._protocol._response_waiter
        if waiter is not None and waiter.done():
            self._protocol._buffer.extend(data)  # picked up by the next read()
        else:
            self._deliver(data)

    async def read(self, timeout: float | None) -> SMTPResponse:
        """The next reply of the group."""
        buffered = self._protocol._read_response_from_buffer()
        if buffered is not None:
            return buffered
        return await self._protocol.read_response(timeout=timeout)


verify()
