"""An embedded Kafka-protocol broker: librdkafka's mock cluster, driven through ctypes.

The ``confluent-kafka`` wheel bundles librdkafka, whose mock cluster speaks the real
Kafka wire protocol over loopback TCP (produce, fetch, metadata, consumer groups,
offset commits). It lives entirely in memory and runs in librdkafka's own threads, so
it can share a process with an asyncio application.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import socket
import threading
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from types import TracebackType
from typing import Any, Self

__all__ = ["BrokerError", "EmbeddedKafka", "PortInUseError"]

_HOST = "127.0.0.1"
_RD_KAFKA_PRODUCER = 0
# librdkafka creates auto-created topics with this many partitions; the mock cluster
# has no public setting to change it.
_AUTO_CREATE_PARTITIONS = 4
_REQUIRED: dict[str, tuple[Any, list[Any]]] = {
    "rd_kafka_conf_new": (ctypes.c_void_p, []),
    "rd_kafka_conf_destroy": (None, [ctypes.c_void_p]),
    "rd_kafka_conf_set": (
        ctypes.c_int,
        [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t],
    ),
    "rd_kafka_new": (
        ctypes.c_void_p,
        [ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t],
    ),
    "rd_kafka_destroy": (None, [ctypes.c_void_p]),
    "rd_kafka_err2str": (ctypes.c_char_p, [ctypes.c_int]),
    "rd_kafka_mock_cluster_new": (ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_int]),
    "rd_kafka_mock_cluster_destroy": (None, [ctypes.c_void_p]),
    "rd_kafka_mock_cluster_bootstraps": (ctypes.c_char_p, [ctypes.c_void_p]),
    "rd_kafka_mock_topic_create": (
        ctypes.c_int,
        [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_int],
    ),
}
_OPTIONAL: dict[str, tuple[Any, list[Any]]] = {
    "rd_kafka_mock_group_initial_rebalance_delay_ms": (
        None,
        [ctypes.c_void_p, ctypes.c_int32],
    ),
    "rd_kafka_mock_broker_set_host_port": (
        None,
        [ctypes.c_void_p, ctypes.c_int32, ctypes.c_char_p, ctypes.c_int],
    ),
    "rd_kafka_mock_topic_set_error": (None, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]),
    "rd_kafka_mock_push_request_errors_array": (
        None,
        [ctypes.c_void_p, ctypes.c_int16, ctypes.c_size_t, ctypes.POINTER(ctypes.c_int)],
    ),
}
_PRODUCE_API_KEY = 0


class BrokerError(RuntimeError):
    """The embedded broker could not be loaded, started or changed."""


class PortInUseError(OSError):
    """The fixed port asked for is already taken by another process."""

    def __init__(self, port: int) -> None:
        super().__init__(errno.EADDRINUSE, f"{_HOST}:{port} is already in use")

    def __str__(self) -> str:
        return str(self.strerror)


def _library_candidates() -> list[Path]:
    """Paths where a wheel of confluent-kafka keeps its bundled librdkafka."""
    import confluent_kafka  # deferred: only needed to locate the wheel

    package = Path(confluent_kafka.__file__).parent
    dirs = [package.parent / "confluent_kafka.libs", package / ".dylibs", package]
    found: list[Path] = []
    for directory in dirs:
        for pattern in ("librdkafka*.so*", "librdkafka*.dylib"):
            found.extend(sorted(directory.glob(pattern)))
    return found


def _load_library() -> ctypes.CDLL:
    """Load librdkafka (the wheel's copy first) and declare the functions we call."""
    import ctypes.util

    paths = [str(p) for p in _library_candidates()]
    system = ctypes.util.find_library("rdkafka")
    paths += [system] if system else []
    if not paths:
        raise BrokerError("librdkafka not found: is confluent-kafka installed?")
    lib = ctypes.CDLL(paths[0])
    for name, (restype, argtypes) in (_REQUIRED | _OPTIONAL).items():
        try:
            func = getattr(lib, name)
        except AttributeError:
            if name in _REQUIRED:
                raise BrokerError(f"{paths[0]} has no {name}: librdkafka too old") from None
            continue
        func.restype, func.argtypes = restype, argtypes
    return lib


def _optional(lib: ctypes.CDLL, name: str) -> Callable[..., Any] | None:
    """The C function ``name`` when this librdkafka exports it, else None."""
    return getattr(lib, name, None)


class _Forwarder:
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
            sock.bind((_HOST, port))
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


class EmbeddedKafka:
    """An in-memory Kafka-protocol cluster on 127.0.0.1 (librdkafka's mock cluster).

    ``port`` fixes the address of broker 1 (broker *n* gets ``port + n - 1``) through a
    small TCP forwarder; otherwise librdkafka picks random ports. ``default_partitions``
    is the partition count of :meth:`create_topic` when none is given: topics that
    clients auto-create always get librdkafka's built-in 4.
    """

    def __init__(
        self, num_brokers: int = 1, default_partitions: int = 4, port: int | None = None
    ) -> None:
        if num_brokers < 1 or default_partitions < 1:
            raise ValueError("num_brokers and default_partitions must be at least 1")
        self.num_brokers = num_brokers
        self.default_partitions = default_partitions
        self.port = port
        self._lock = threading.Lock()
        self._lib: ctypes.CDLL | None = None
        self._rk: int | None = None
        self._mc: int | None = None
        self._forwarders: list[_Forwarder] = []
        self._bootstrap: str | None = None

    @property
    def bootstrap(self) -> str:
        """The ``host:port[,host:port…]`` list to give Kafka clients."""
        if self._bootstrap is None:
            raise BrokerError("embedded Kafka is not started")
        return self._bootstrap

    @property
    def auto_create_partitions(self) -> int:
        """Partition count of topics created implicitly by clients."""
        return _AUTO_CREATE_PARTITIONS

    def start(self) -> str:
        """Start the cluster and return its bootstrap address."""
        with self._lock:
            if self._bootstrap is not None:
                return self._bootstrap
            try:
                self._start_locked()
            except BaseException:
                self._stop_locked()
                raise
            assert self._bootstrap is not None
            return self._bootstrap

    def create_topic(self, name: str, partitions: int | None = None) -> None:
        """Create ``name`` with ``partitions`` (default ``default_partitions``)."""
        count = self.default_partitions if partitions is None else partitions
        if count < 1:
            raise ValueError("partitions must be at least 1")
        with self._lock:
            lib, mc = self._require_started()
            replicas = min(3, self.num_brokers)
            err = lib.rd_kafka_mock_topic_create(mc, name.encode(), count, replicas)
        if err:
            raise BrokerError(f"cannot create topic {name!r}: {_err2str(lib, err)}")

    def fail_topic(self, name: str, error: int) -> None:
        """Answer metadata requests for ``name`` with Kafka error code ``error`` (0 clears
        it): 3 is a topic the cluster does not know (a real broker without auto-creation),
        29 one the client may not use (ACLs). The mock cluster itself auto-creates every
        topic a client asks for and accepts any name, so this is how to refuse one."""
        with self._lock:
            lib, mc = self._require_started()
            set_error = _optional(lib, "rd_kafka_mock_topic_set_error")
            if set_error is None:
                raise BrokerError("this librdkafka cannot fail a topic")
            set_error(mc, name.encode(), error)

    def fail_next_produce(self, error: int, count: int = 1) -> None:
        """The next ``count`` produce requests to the cluster, from any client, fail with
        Kafka error code ``error`` (10: the broker refuses the message as too large)."""
        with self._lock:
            lib, mc = self._require_started()
            push = _optional(lib, "rd_kafka_mock_push_request_errors_array")
            if push is None:
                raise BrokerError("this librdkafka cannot fail produce requests")
            push(mc, _PRODUCE_API_KEY, count, (ctypes.c_int * count)(*[error] * count))

    def stop(self) -> None:
        """Stop the cluster; all topics, offsets and groups are lost."""
        with self._lock:
            self._stop_locked()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _require_started(self) -> tuple[ctypes.CDLL, int]:
        if self._lib is None or self._mc is None:
            raise BrokerError("embedded Kafka is not started")
        return self._lib, self._mc

    def _start_locked(self) -> None:
        self._lib = lib = _load_library()
        self._rk = _new_handle(lib)
        self._mc = lib.rd_kafka_mock_cluster_new(self._rk, self.num_brokers)
        if not self._mc:
            raise BrokerError("librdkafka could not create the mock cluster")
        set_delay = _optional(lib, "rd_kafka_mock_group_initial_rebalance_delay_ms")
        if set_delay is not None:
            # A real broker waits 3 s for more members before the first rebalance.
            set_delay(self._mc, 0)
        listeners = lib.rd_kafka_mock_cluster_bootstraps(self._mc).decode()
        if self.port is None:
            self._bootstrap = listeners
        else:
            self._bootstrap = self._forward(lib, listeners.split(","), self.port)

    def _forward(self, lib: ctypes.CDLL, listeners: list[str], port: int) -> str:
        """Put a forwarder on ``port + i`` in front of broker ``i + 1`` and advertise it."""
        set_host_port = _optional(lib, "rd_kafka_mock_broker_set_host_port")
        if set_host_port is None:
            raise BrokerError("this librdkafka cannot advertise a fixed port")
        addresses = []
        for index, listener in enumerate(listeners):
            host, _, real_port = listener.rpartition(":")
            forwarder = _Forwarder(port + index, (host, int(real_port)))
            self._forwarders.append(forwarder)
            forwarder.start()
            set_host_port(self._mc, index + 1, _HOST.encode(), port + index)
            addresses.append(f"{_HOST}:{port + index}")
        return ",".join(addresses)

    def _stop_locked(self) -> None:
        for forwarder in self._forwarders:
            forwarder.stop()
        self._forwarders.clear()
        if self._lib is not None:
            # The cluster holds a reference to the handle: destroy it first.
            if self._mc:
                self._lib.rd_kafka_mock_cluster_destroy(self._mc)
            if self._rk:
                self._lib.rd_kafka_destroy(self._rk)
        self._mc = self._rk = None
        self._bootstrap = None


def _new_handle(lib: ctypes.CDLL) -> int:
    """Create the quiet producer handle that owns the mock cluster."""
    conf = lib.rd_kafka_conf_new()
    errstr = ctypes.create_string_buffer(512)
    # The handle never connects anywhere: keep librdkafka from logging about it.
    for key, value in (("client.id", "herald-embedded-kafka"), ("log_level", "3")):
        if lib.rd_kafka_conf_set(conf, key.encode(), value.encode(), errstr, len(errstr)):
            lib.rd_kafka_conf_destroy(conf)
            raise BrokerError(f"librdkafka config {key}: {errstr.value.decode()}")
    rk = lib.rd_kafka_new(_RD_KAFKA_PRODUCER, conf, errstr, len(errstr))
    if not rk:
        lib.rd_kafka_conf_destroy(conf)  # rd_kafka_new owns conf only on success
        raise BrokerError(f"librdkafka: {errstr.value.decode()}")
    return int(rk)


def _err2str(lib: ctypes.CDLL, err: int) -> str:
    text = lib.rd_kafka_err2str(err)
    return text.decode() if text else f"error {err}"
