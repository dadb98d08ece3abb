"""A TCP forwarder from a fixed loopback port to one of the mock cluster's random ports.

librdkafka's mock brokers listen where the system puts them; `EmbeddedKafka(port=...)`
puts one of these in front of each so that clients find the cluster at a known address.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import threading
from contextlib import suppress

__all__ = ["HOST", "Forwarder", "PortInUseError"]

HOST = "127.0.0.1"


class PortInUseError(OSError):
    """The fixed port asked for is already taken by another process."""

    def __init__(self, port: int) -> None:
        super().__init__(errno.EADDRINUSE, f"{HOST}:{port} is already in use")

    def __str__(self) -> str:
        return str(self.strerror)


class Forwarder:
    """A TCP forwarder from a fixed local port to the mock broker's random port."""

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self._target = target
        self._sock = self._bind(port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=f"kafka-fwd-{port}", daemon=True)
        self._ready = threading.Event()

    @staticmethod
    def _bind(port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # Lets a restarted `herald dev` reuse its port while old connections linger.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise PortInUseError(port) from None
            raise
        sock.listen(128)
        return sock

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(5)

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        self._sock.close()

    def _run(self) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        server = loop.run_until_complete(asyncio.start_server(self._serve, sock=self._sock))
        loop.call_soon(self._ready.set)
        loop.run_forever()
        server.close()
        tasks = asyncio.all_tasks(loop)
        for task in tasks:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            return
        for w in (writer, up_writer):
            with suppress(OSError):
                w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Shutdown cancels this task; ending it normally keeps asyncio from logging that.
        with suppress(asyncio.CancelledError):
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy bytes until EOF or error, then close the writing side."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()
