"""In-process SMTP servers on aiosmtpd: a capture server for `herald dev`, a recorder for tests.

Each server runs aiosmtpd's threaded ``Controller``: its own event loop in its own
thread, so both can be started from synchronous code or from inside a running loop.
"""

from __future__ import annotations

import asyncio
import email
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from service.devtools.lifecycle import Started

__all__ = [
    "CaptureSMTP",
    "CapturedMessage",
    "Received",
    "RecordingSMTP",
    "summary_line",
]

log = logging.getLogger(__name__)

_OK = "250 2.0.0 OK: queued"
# aiosmtpd defaults its greeting name to socket.getfqdn(), which can block on DNS.
_SERVER_NAME = "herald-dev.localhost"


class _Controller(Controller):
    """aiosmtpd's threaded controller, able to listen on port 0 (a free port)."""

    def _create_server(self) -> Awaitable[asyncio.AbstractServer]:
        return self._bind()

    async def _bind(self) -> asyncio.AbstractServer:
        server = await self.loop.create_server(
            self._factory_invoker, host=self.hostname, port=self.port, ssl=self.ssl_context
        )
        # Read before start() returns: its readiness probe connects to self.port.
        self.port = server.sockets[0].getsockname()[1]
        return server


class _Server(Started):
    """Start/stop and context-manager plumbing shared by both servers."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._controller: _Controller | None = None

    def _handler(self) -> Any:
        return self

    def start(self) -> None:
        """Listen on ``host:port`` (port 0: a free one, then stored in ``.port``)."""
        if self._controller is not None:
            return
        controller = _Controller(
            self._handler(),
            hostname=self.host,
            port=self.port,
            ready_timeout=10,
            server_hostname=_SERVER_NAME,
        )
        controller.start()
        self._controller = controller
        self.port = controller.port

    def stop(self) -> None:
        """Stop listening and join the server thread."""
        if self._controller is not None:
            self._controller.stop()
            self._controller = None


@dataclass(frozen=True)
class CapturedMessage:
    """One message stored by :class:`CaptureSMTP`."""

    path: Path
    mail_from: str
    rcpt_tos: list[str]
    subject: str
    size: int


class CaptureSMTP(_Server):
    """Accepts every message and stores it as ``outbox/<UTC timestamp>-<seq>.eml``.

    ``on_message`` runs in the server's thread after the file is written; an exception
    from it is logged and the message is still accepted.
    """

    def __init__(
        self,
        outbox: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        on_message: Callable[[CapturedMessage], None] | None = None,
    ) -> None:
        super().__init__(host, port)
        self.outbox = Path(outbox)
        self.on_message = on_message
        self._seq = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """aiosmtpd hook: store the message, report it, accept it."""
        data = _content(envelope)
        captured = CapturedMessage(
            path=self._write(data),
            mail_from=envelope.mail_from or "",
            rcpt_tos=list(envelope.rcpt_tos),
            subject=_subject(data),
            size=len(data),
        )
        if self.on_message is not None:
            try:
                self.on_message(captured)
            except Exception:
                log.exception("on_message failed for %s", captured.path)
        return _OK

    def _write(self, data: bytes) -> Path:
        self.outbox.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        while True:
            self._seq += 1
            path = self.outbox / f"{stamp}-{self._seq:04d}.eml"
            try:
                # "x": never overwrite a file from an earlier run in the same second.
                with path.open("xb") as fh:
                    fh.write(data)
                return path
            except FileExistsError:
                continue


def summary_line(msg: CapturedMessage) -> str:
    """One line for the terminal, e.g. ``✉  to=a@x.org  subject="Hi"  1.2 kB  -> path``."""
    subject = msg.subject.replace("\\", "\\\\").replace('"', '\\"')
    line = (
        f'✉  to={",".join(msg.rcpt_tos)}  subject="{subject}"  '
        f"{_size(msg.size)}  -> {_display_path(msg.path)}"
    )
    return " ".join(line.splitlines())


@dataclass(frozen=True)
class Received:
    """One message accepted by :class:`RecordingSMTP`."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    message: EmailMessage


class RecordingSMTP(_Server):
    """Records accepted messages; DATA replies can be scripted to inject failures."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self._lock = threading.Lock()
        self._messages: list[Received] = []
        self._script: deque[str] = deque()
        self._fail_all: str | None = None

    @property
    def messages(self) -> list[Received]:
        """A snapshot of the messages accepted so far, oldest first."""
        with self._lock:
            return list(self._messages)

    def script(self, *replies: str) -> None:
        """Answer the next DATA commands with ``replies`` in order (a 2xx one records)."""
        with self._lock:
            self._script.extend(replies)

    def fail_all(self, reply: str | None) -> None:
        """Answer every DATA with ``reply`` until called with None."""
        with self._lock:
            self._fail_all = reply

    def reset(self) -> None:
        """Forget recorded messages, the script and ``fail_all``."""
        with self._lock:
            self._messages.clear()
            self._script.clear()
            self._fail_all = None

    async def wait_for(self, count: int, timeout: float = 10) -> list[Received]:
        """Wait until at least ``count`` messages were accepted; return them all."""
        deadline = time.monotonic() + timeout
        while len(messages := self.messages) < count:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"got {len(messages)} of {count} messages in {timeout} s")
            await asyncio.sleep(0.01)
        return messages

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """aiosmtpd hook: reply as scripted, record the message when the reply is 2xx."""
        with self._lock:
            reply = self._fail_all or (self._script.popleft() if self._script else _OK)
            if reply.startswith("2"):
                self._messages.append(_received(envelope))
        return reply


def _received(envelope: Envelope) -> Received:
    data = _content(envelope)
    message = email.message_from_bytes(data, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return Received(
        mail_from=envelope.mail_from or "",
        rcpt_tos=list(envelope.rcpt_tos),
        data=data,
        message=message,
    )


def _content(envelope: Envelope) -> bytes:
    content = envelope.original_content or envelope.content or b""
    return content if isinstance(content, bytes) else content.encode()


def _subject(data: bytes) -> str:
    """The decoded Subject header ('' when absent or unreadable)."""
    try:
        headers = BytesHeaderParser(policy=policy.default).parsebytes(data)
        return str(headers.get("subject", ""))
    except Exception:  # a broken header must not lose the message
        return ""


def _size(size: int) -> str:
    return f"{size} B" if size < 1000 else f"{size / 1000:.1f} kB"


def _display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
