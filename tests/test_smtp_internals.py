"""The aiosmtplib internals `service.mail.aiosmtplib_internals` relies on, checked on the
installed aiosmtplib: each exists with the shape and behaviour the pipelined reply
reader expects, and the module refuses to load (never falls back) when one is missing.

A failure here after an aiosmtplib upgrade means: read the new `aiosmtplib/protocol.py`,
adapt `service/mail/aiosmtplib_internals.py`, then add the version to its
`TESTED_VERSIONS` and widen the pin in pyproject.toml.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path
from typing import Any, cast

import pytest
from aiosmtplib import SMTPResponse
from aiosmtplib.protocol import SMTPProtocol

from service.mail import aiosmtplib_internals
from service.mail.aiosmtplib_internals import (
    TESTED_VERSIONS,
    AiosmtplibInternalsChanged,
    normalize_message_line_endings,
    pipelining_works_on,
    verify,
)

ROOT = Path(__file__).resolve().parents[1]


def _minor(release: str) -> tuple[int, int]:
    major, minor, *_ = release.split(".")
    return int(major), int(minor)


def _connected() -> SMTPProtocol:
    """A protocol as aiosmtplib has it right after connecting (greeting awaited)."""
    protocol = SMTPProtocol(asyncio.get_running_loop())
    protocol.connection_made(asyncio.Transport())
    return protocol


# --- the version tested, and the pin --------------------------------------------------


def test_installed_aiosmtplib_is_a_tested_version() -> None:
    assert version("aiosmtplib") in TESTED_VERSIONS, (
        f"aiosmtplib {version('aiosmtplib')} is installed but the internals were tested"
        f" with {TESTED_VERSIONS}: re-check service/mail/aiosmtplib_internals.py"
    )


def test_pyproject_pins_aiosmtplib_to_the_tested_minor_versions() -> None:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    [pin] = [d for d in dependencies if d.startswith("aiosmtplib")]
    lowest = min(TESTED_VERSIONS, key=lambda v: tuple(int(p) for p in v.split(".")))
    major, minor = max(_minor(v) for v in TESTED_VERSIONS)
    assert pin == f"aiosmtplib>={lowest},<{major}.{minor + 1}"


# --- the internals' shape and behaviour ------------------------------------------------


async def test_buffer_is_a_bytearray_of_unparsed_bytes() -> None:
    protocol = _connected()
    assert isinstance(protocol._buffer, bytearray)
    protocol.data_received(b"250 2.1")  # an obvious partial reply: kept, not parsed
    assert protocol._buffer == bytearray(b"250 2.1")
    assert not protocol._response_waiter.done()  # type: ignore[union-attr]


async def test_response_waiter_is_a_future_while_connected_and_none_once_lost() -> None:
    protocol = SMTPProtocol(asyncio.get_running_loop())
    assert protocol._response_waiter is None  # not connected yet
    protocol.connection_made(asyncio.Transport())
    waiter = protocol._response_waiter
    assert isinstance(waiter, asyncio.Future) and not waiter.done()
    protocol.data_received(b"250 2.1.0 Ok\r\n")
    assert waiter.done() and waiter.result() == SMTPResponse(250, "2.1.0 Ok")
    assert await protocol.read_response(timeout=1) == SMTPResponse(250, "2.1.0 Ok")
    fresh = protocol._response_waiter
    assert isinstance(fresh, asyncio.Future) and fresh is not waiter and not fresh.done()
    protocol.connection_lost(None)
    with pytest.raises(Exception, match="Connection lost"):
        await protocol.read_response(timeout=1)
    assert protocol._response_waiter is None


async def test_data_received_drops_bytes_while_a_parsed_reply_waits() -> None:
    """The reason `ReplyReader` exists: without it the second reply of a group is lost.
    Should aiosmtplib keep such bytes one day, the reader may be unnecessary."""
    protocol = _connected()
    protocol.data_received(b"250 2.1.0 Ok\r\n")
    assert protocol._response_waiter is not None and protocol._response_waiter.done()
    protocol.data_received(b"250 2.1.5 Ok\r\n")
    assert protocol._buffer == bytearray()


async def test_read_response_from_buffer_takes_one_reply_off_the_front() -> None:
    protocol = _connected()
    assert protocol._read_response_from_buffer() is None  # nothing buffered
    protocol._buffer.extend(b"250-mx.test\r\n250 PIPELINING\r\n354 Go ahead\r\n250 2.")
    assert protocol._read_response_from_buffer() == SMTPResponse(250, "mx.test\nPIPELINING")
    assert protocol._buffer == bytearray(b"354 Go ahead\r\n250 2.")
    assert protocol._read_response_from_buffer() == SMTPResponse(354, "Go ahead")
    assert protocol._read_response_from_buffer() is None  # a partial reply stays
    assert protocol._buffer == bytearray(b"250 2.")


async def test_read_response_from_buffer_raises_on_a_malformed_reply() -> None:
    protocol = _connected()
    protocol._buffer.extend(b"hello\r\n")
    with pytest.raises(Exception, match="Malformed SMTP response"):
        protocol._read_response_from_buffer()


async def test_stdlib_loop_calls_the_instance_data_received_for_each_chunk() -> None:
    """`ReplyReader` replaces `data_received` on the instance mid-connection."""
    assert pipelining_works_on(asyncio.get_running_loop())
    sent = asyncio.Event()

    async def serve(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 hi\r\n")
        await sent.wait()
        writer.write(b"250 later\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    try:
        _, protocol = await loop.create_connection(lambda: SMTPProtocol(loop), "127.0.0.1", port)
        assert await protocol.read_response(timeout=2) == SMTPResponse(220, "hi")
        seen: list[bytes] = []
        protocol.data_received = seen.append  # type: ignore[method-assign,assignment]
        sent.set()
        for _ in range(200):
            if seen:
                break
            await asyncio.sleep(0.01)
        assert b"".join(seen) == b"250 later\r\n"
        del protocol.data_received
        if protocol.transport is not None:  # None once the server's close arrived
            protocol.transport.close()
    finally:
        server.close()
        await server.wait_closed()


def test_loops_other_than_the_stdlib_one_are_refused() -> None:
    """uvloop's transports bind `data_received` once: replacing it would do nothing."""
    assert not pipelining_works_on(cast(asyncio.AbstractEventLoop, object()))


def test_normalize_message_line_endings_is_what_data_sends() -> None:
    assert normalize_message_line_endings(b"a\rb\nc\r\nd") == b"a\r\nb\r\nc\r\nd\r\n"
    assert normalize_message_line_endings(b"a\r\n") == b"a\r\n"


# --- loud failure when they change -----------------------------------------------------


def test_verify_accepts_the_installed_aiosmtplib() -> None:
    verify()


class _NoParser(SMTPProtocol):
    _read_response_from_buffer = None  # type: ignore[assignment]


class _ParserWithArgs(SMTPProtocol):
    def _read_response_from_buffer(self, limit: int) -> SMTPResponse | None:  # type: ignore[override]
        return None


class _NoBuffer(SMTPProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._buffer = b""  # type: ignore[assignment]


class _NoWaiter(SMTPProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        del self._response_waiter


@pytest.mark.parametrize(
    ("protocol_class", "problem"),
    [
        (_NoParser, "_read_response_from_buffer() is missing"),
        (_ParserWithArgs, "_read_response_from_buffer() takes arguments"),
        (_NoBuffer, "_buffer is no longer a bytearray"),
        (_NoWaiter, "_response_waiter is missing"),
    ],
)
def test_verify_names_what_changed(protocol_class: type[SMTPProtocol], problem: str) -> None:
    with pytest.raises(AiosmtplibInternalsChanged) as raised:
        verify(protocol_class)
    message = str(raised.value)
    assert problem in message
    assert all(tested in message for tested in TESTED_VERSIONS)
    assert isinstance(raised.value, RuntimeError)


@pytest.mark.parametrize("module", ["aiosmtplib_internals", "smtp_session", "transport"])
def test_importing_with_an_internal_missing_fails_instead_of_falling_back(module: str) -> None:
    """The service cannot start (silently sending one command per round trip, or
    losing replies) on an aiosmtplib whose internals changed."""
    code = (
        "import aiosmtplib.protocol as p\n"
        "del p.SMTPProtocol._read_response_from_buffer\n"
        f"import service.mail.{module}\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "AiosmtplibInternalsChanged: aiosmtplib internals changed:" in result.stderr
    assert "SMTPProtocol._read_response_from_buffer() is missing" in result.stderr


def test_the_module_is_the_only_user_of_aiosmtplib_internals() -> None:
    """No other module of Herald that uses aiosmtplib reaches into its private names."""
    private = (
        "._response_waiter",
        "._buffer",
        "._read_response_from_buffer",
        "._ehlo_or_helo_if_needed",
    )
    home = Path(aiosmtplib_internals.__file__).resolve()
    users = [p for p in (ROOT / "service").rglob("*.py") if "aiosmtplib" in p.read_text()]
    assert home in [p.resolve() for p in users]
    for path in users:
        if path.resolve() != home:
            assert not [name for name in private if name in path.read_text()], path
