"""SMTP sinks that count accepted messages and when the first and the last were accepted.

- `PostfixSink` runs Postfix's `smtp-sink -c` (~20,000 msg/s on these machines) and
  reads its running counters (`mesg=N`, printed as each message's final "." arrives)
  from its stdout in a thread, timestamping each update.
- `BuiltinSink` is a small asyncio SMTP server in a thread of the benchmark process:
  for the smoke test (no Postfix needed) and for the latency runs, where it records the
  time each message was accepted by its `X-Herald-Event-Id`. Given `greylist`, it
  answers `451 4.7.1 Greylisted` at RCPT for every address starting with it, for as
  long as it runs (smtp-sink cannot refuse per recipient), and a DATA with no
  recipient accepted `554 5.5.1 Error: no valid recipients`, as Postfix does.

Both expose `count`, `first` and `last` (time.monotonic of the first and last
acceptance) and `port`.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

from bench.procs import cpu_seconds, free_port

__all__ = ["BuiltinSink", "PostfixSink", "find_smtp_sink"]

_MESG = re.compile(rb"mesg=(\d+)")
_EVENT_ID = b"\r\nX-Herald-Event-Id: "
_EHLO = b"250-bench-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 10485760\r\n"
_GREYLISTED = b"451 4.7.1 Greylisted\r\n"
_NO_RECIPIENTS = b"554 5.5.1 Error: no valid recipients\r\n"


def find_smtp_sink() -> str | None:
    """The path of Postfix's smtp-sink, if installed (it lives in /usr/sbin)."""
    found = shutil.which("smtp-sink")
    if found:
        return found
    return "/usr/sbin/smtp-sink" if Path("/usr/sbin/smtp-sink").exists() else None


class _Counter:
    """Accepted messages and the monotonic time of the first and the last."""

    def __init__(self) -> None:
        self.count = 0
        self.first = 0.0
        self.last = 0.0

    def _accepted(self, total: int) -> None:
        now = time.monotonic()
        if self.count == 0 and total > 0:
            self.first = now
        if total > self.count:
            self.count, self.last = total, now


class PostfixSink(_Counter):
    """`smtp-sink -c` on 127.0.0.1; counts from its running counters."""

    def __init__(self, binary: str) -> None:
        super().__init__()
        self.binary = binary
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None

    def start(self) -> int:
        """Start smtp-sink, wait until it accepts connections; returns the port."""
        self.port = free_port()
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        args = [self.binary, "-c", *user, f"127.0.0.1:{self.port}", "1000"]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self._reader = threading.Thread(target=self._read, name="smtp-sink-reader", daemon=True)
        self._reader.start()
        _wait_listening(self.port)
        return self.port

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.proc.pid) if self.proc else 0.0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        tail = b""
        while chunk := os.read(fd, 65536):
            # Counters are separated by "\r"; a chunk may end inside one.
            data = tail + chunk
            cut = data.rfind(b"\r")
            complete, tail = (data[:cut], data[cut:]) if cut >= 0 else (b"", data)
            counts = _MESG.findall(complete)
            if counts:
                self._accepted(int(counts[-1]))


class BuiltinSink(_Counter):
    """A minimal asyncio SMTP server; `accepted_at[event_id]` is a time.time().

    `greylist`: a prefix of addresses refused with 451 at RCPT; `refused[address]`
    counts the refusals.
    """

    def __init__(self, greylist: str | None = None) -> None:
        super().__init__()
        self.port = 0
        self.accepted_at: dict[str, float] = {}
        self.greylist = b"<" + greylist.lower().encode() if greylist else None
        self.refused: Counter[str] = Counter()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="smtp", daemon=True)
        self._server: asyncio.Server | None = None

    def start(self) -> int:
        """Listen on a free port of 127.0.0.1 in a background thread; returns the port."""
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._listen(), self._loop)
        self.port = future.result(10)
        return self.port

    def cpu_seconds(self) -> float:
        return 0.0  # shares the benchmark's process

    def stop(self) -> None:
        if self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def accept(self, message: bytes) -> None:
        """Called by a session for each message, when its final "." arrives."""
        self._accepted(self.count + 1)
        start = message.find(_EVENT_ID)
        if start >= 0:
            start += len(_EVENT_ID)
            event_id = message[start : message.find(b"\r\n", start)].decode("ascii", "replace")
            self.accepted_at[event_id] = time.time()

    def greylisted(self, line: bytes) -> bool:
        """Whether a RCPT command line names a greylisted address (counted if so)."""
        if self.greylist is None:
            return False
        start = line.find(b"<")
        if start < 0 or not line[start:].lower().startswith(self.greylist):
            return False
        address = line[start + 1 : line.find(b">", start)].decode("ascii", "replace")
        self.refused[address] += 1
        return True

    async def _listen(self) -> int:
        self._server = await self._loop.create_server(
            lambda: _Session(self), "127.0.0.1", 0, backlog=1000
        )
        return int(self._server.sockets[0].getsockname()[1])


class _Session(asyncio.Protocol):
    """One SMTP session: every command accepted but greylisted recipients, DATA read up to
    the final dot."""

    def __init__(self, sink: BuiltinSink) -> None:
        self.sink = sink
        self.buffer = bytearray()
        self.in_data = False
        self.recipients = 0  # accepted in the current transaction
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(b"220 bench-sink ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.transport is not None and self._step():
            pass

    def _step(self) -> bool:
        """Handle one command or one message from the buffer; False when more is needed."""
        assert self.transport is not None
        if self.in_data:
            end = self.buffer.find(b"\r\n.\r\n")
            if end < 0:
                return False
            self.sink.accept(bytes(self.buffer[2:end]))  # the CRLF put in front below
            del self.buffer[: end + 5]
            self.in_data = False
            self.transport.write(b"250 2.0.0 Ok: queued\r\n")
            return True
        end = self.buffer.find(b"\r\n")
        if end < 0:
            return False
        line = bytes(self.buffer[:end])
        verb = line[:4].upper()
        del self.buffer[: end + 2]
        if verb == b"RCPT":
            if self.sink.greylisted(line):
                self.transport.write(_GREYLISTED)
            else:
                self.recipients += 1
                self.transport.write(b"250 2.1.5 Ok\r\n")
        elif verb == b"DATA":
            if not self.recipients:
                self.transport.write(_NO_RECIPIENTS)
                return True
            self.in_data, self.recipients = True, 0
            self.buffer[:0] = b"\r\n"  # so that an empty message also ends in CRLF.CRLF
            self.transport.write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
        elif verb in (b"MAIL", b"RSET"):
            self.recipients = 0
            self.transport.write(b"250 2.0.0 Ok\r\n")
        elif verb == b"EHLO":
            self.transport.write(_EHLO)
        elif verb == b"QUIT":
            self.transport.write(b"221 2.0.0 Bye\r\n")
            self.transport.close()
            self.transport = None
        else:  # HELO, NOOP
            self.transport.write(b"250 2.0.0 Ok\r\n")
        return True


def _wait_listening(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"smtp-sink is not listening on port {port}")
