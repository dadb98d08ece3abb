"""An embedded Kafka-protocol broker: librdkafka's mock cluster, driven through ctypes.

The ``confluent-kafka`` wheel bundles librdkafka, whose mock cluster speaks the real
Kafka wire protocol over loopback TCP (produce, fetch, metadata, consumer groups,
offset commits). It lives entirely in memory and runs in librdkafka's own threads, so
it can share a process with an asyncio application.
"""

from __future__ import annotations

import ctypes
import threading

from service.devtools.forwarder import HOST, Forwarder, PortInUseError
from service.devtools.librdkafka import BrokerError, err2str, load_library, new_handle, optional
from service.devtools.lifecycle import Started

__all__ = ["BrokerError", "EmbeddedKafka", "PortInUseError"]

# librdkafka creates auto-created topics with this many partitions; the mock cluster
# has no public setting to change it.
_AUTO_CREATE_PARTITIONS = 4
_PRODUCE_API_KEY = 0


class EmbeddedKafka(Started):
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
        self._forwarders: list[Forwarder] = []
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
            raise BrokerError(f"cannot create topic {name!r}: {err2str(lib, err)}")

    def fail_topic(self, name: str, error: int) -> None:
        """Answer metadata requests for ``name`` with Kafka error code ``error`` (0 clears
        it): 3 is a topic the cluster does not know (a real broker without auto-creation),
        29 one the client may not use (ACLs). The mock cluster itself auto-creates every
        topic a client asks for and accepts any name, so this is how to refuse one."""
        with self._lock:
            lib, mc = self._require_started()
            set_error = optional(lib, "rd_kafka_mock_topic_set_error")
            if set_error is None:
                raise BrokerError("this librdkafka cannot fail a topic")
            set_error(mc, name.encode(), error)

    def fail_next_produce(self, error: int, count: int = 1) -> None:
        """The next ``count`` produce requests to the cluster, from any client, fail with
        Kafka error code ``error`` (10: the broker refuses the message as too large)."""
        with self._lock:
            lib, mc = self._require_started()
            push = optional(lib, "rd_kafka_mock_push_request_errors_array")
            if push is None:
                raise BrokerError("this librdkafka cannot fail produce requests")
            push(mc, _PRODUCE_API_KEY, count, (ctypes.c_int * count)(*[error] * count))

    def stop(self) -> None:
        """Stop the cluster; all topics, offsets and groups are lost."""
        with self._lock:
            self._stop_locked()

    def _require_started(self) -> tuple[ctypes.CDLL, int]:
        if self._lib is None or self._mc is None:
            raise BrokerError("embedded Kafka is not started")
        return self._lib, self._mc

    def _start_locked(self) -> None:
        self._lib = lib = load_library()
        self._rk = new_handle(lib)
        self._mc = lib.rd_kafka_mock_cluster_new(self._rk, self.num_brokers)
        if not self._mc:
            raise BrokerError("librdkafka could not create the mock cluster")
        set_delay = optional(lib, "rd_kafka_mock_group_initial_rebalance_delay_ms")
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
        set_host_port = optional(lib, "rd_kafka_mock_broker_set_host_port")
        if set_host_port is None:
            raise BrokerError("this librdkafka cannot advertise a fixed port")
        addresses = []
        for index, listener in enumerate(listeners):
            host, _, real_port = listener.rpartition(":")
            forwarder = Forwarder(port + index, (host, int(real_port)))
            self._forwarders.append(forwarder)
            forwarder.start()
            set_host_port(self._mc, index + 1, HOST.encode(), port + index)
            addresses.append(f"{HOST}:{port + index}")
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
