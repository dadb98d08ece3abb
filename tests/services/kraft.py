"""Real Apache Kafka for the `real_kafka` tier: KRaft brokers as JVM subprocesses.

Each node runs `kafka.Kafka` in combined mode (broker and controller) from the jars that
`tests/services/install` cached under `.cache/kafka/<version>/libs`, on free loopback
ports, with a capped heap and its log in the cluster's temporary folder. A cluster of
three is a real quorum: RF 3, `min.insync.replicas=2`, leaders that move when a node dies.

Optionally a node also listens with SASL_SSL (SCRAM-SHA-512, a certificate from a
`trustme` CA); the PLAINTEXT listener stays for the tests' own clients.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Self

import pytest
import trustme
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic
from cryptography.hazmat.primitives import serialization

from tests.services import free_port

__all__ = ["KafkaCluster", "Scram", "kafka_libs"]

ROOT = Path(__file__).resolve().parents[2]
_POM = Path(__file__).with_name("pom.xml")
_LOG4J = Path(__file__).with_name("log4j2.properties")
_HEAP = os.environ.get("HERALD_TEST_KAFKA_HEAP", "320m")
_HOW = (
    "run tests/services/install (needs Java 17+ and Maven:"
    " apt-get install openjdk-17-jre-headless maven)"
)


def kafka_version() -> str:
    """The broker version the pom pins."""
    found = re.search(r"<kafka.version>([^<]+)</kafka.version>", _POM.read_text())
    assert found, "tests/services/pom.xml names no kafka.version"
    return found.group(1)


def kafka_libs() -> Path:
    """The cached broker classpath; fails in CI, skips elsewhere, when it is missing."""
    libs = ROOT / ".cache" / "kafka" / kafka_version() / "libs"
    java = _java()
    if java and (libs / ".complete").exists():
        return libs
    what = "Java is not installed" if not java else f"the Kafka {kafka_version()} jars are missing"
    message = f"real Kafka tier: {what}: {_HOW}"
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _java() -> str | None:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    return shutil.which("java")


@dataclasses.dataclass(frozen=True)
class Scram:
    """A SASL_SSL listener: one SCRAM-SHA-512 user and the CA that signed the broker."""

    username: str
    password: str
    ca: trustme.CA


@dataclasses.dataclass
class _Node:
    node_id: int
    port: int
    controller_port: int
    secure_port: int | None
    home: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def properties(self) -> Path:
        return self.home / "server.properties"

    @property
    def log(self) -> Path:
        return self.home / "broker.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class KafkaCluster:
    """`size` KRaft nodes on loopback; `bootstrap` lists their PLAINTEXT listeners."""

    def __init__(self, size: int = 1, *, scram: Scram | None = None) -> None:
        self.size = size
        self.scram = scram
        self._dir = tempfile.TemporaryDirectory(prefix="herald-kafka-")
        root = Path(self._dir.name)
        self._tls = root / "tls"
        self.nodes = [
            _Node(
                node_id=i,
                port=free_port(),
                controller_port=free_port(),
                secure_port=free_port() if scram else None,
                home=root / f"node-{i}",
            )
            for i in range(1, size + 1)
        ]
        self.bootstrap = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)
        self.secure_bootstrap = ",".join(f"127.0.0.1:{n.secure_port}" for n in self.nodes)
        self._admin: AdminClient | None = None

    # --- life cycle ---------------------------------------------------------------

    def start(self, timeout: float = 90) -> None:
        """Format every node's storage, start them all and wait for the quorum."""
        libs = kafka_libs()
        self._classpath = f"{libs}/*"
        if self.scram:
            self._write_tls(self.scram)
        for node in self.nodes:
            node.home.mkdir(parents=True)
            node.properties.write_text(self._properties(node))
        self._format()
        for node in self.nodes:
            self._launch(node)
        self.wait_ready(timeout)

    def stop(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL) and delete their data."""
        for node in self.nodes:
            if node.running:
                assert node.proc is not None
                node.proc.send_signal(signal.SIGTERM)
        for node in self.nodes:
            self._reap(node, 30)
        self._dir.cleanup()

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop_node(self, node_id: int, timeout: float = 60) -> None:
        """A clean shutdown of one node (SIGTERM, its data kept)."""
        node = self.node(node_id)
        assert node.proc is not None
        node.proc.send_signal(signal.SIGTERM)
        self._reap(node, timeout)

    def kill_node(self, node_id: int) -> None:
        """SIGKILL one node: no controlled shutdown, as when a machine dies."""
        node = self.node(node_id)
        assert node.proc is not None
        node.proc.kill()
        node.proc.wait()

    def start_node(self, node_id: int, timeout: float = 90) -> None:
        """Start a stopped node on its old ports and data; wait until it serves again."""
        self._launch(self.node(node_id))
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 90) -> None:
        """Until every running node is a registered, unfenced broker."""
        expected = {n.node_id for n in self.nodes if n.running}
        deadline = time.monotonic() + timeout
        while True:
            for node in self.nodes:
                if (
                    node.proc is not None
                    and node.proc.poll() is not None
                    and node.node_id in expected
                ):
                    raise RuntimeError(f"kafka node {node.node_id} exited: {self.log_tail(node)}")
            try:
                brokers = set(self.admin.list_topics(timeout=2).brokers)
            except KafkaException:
                brokers = set()
            if expected <= brokers:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"kafka brokers {sorted(expected - brokers)} not ready")
            time.sleep(0.2)

    # --- topics and leaders ------------------------------------------------------

    @property
    def admin(self) -> AdminClient:
        if self._admin is None:
            self._admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        return self._admin

    def create_topic(
        self, name: str, partitions: int = 1, config: dict[str, str] | None = None
    ) -> None:
        """Create `name` with RF = cluster size; wait until every partition has a leader."""
        self.create_topics([name], partitions, config)

    def create_topics(
        self, names: Iterable[str], partitions: int = 1, config: dict[str, str] | None = None
    ) -> None:
        topics = [NewTopic(n, partitions, min(self.size, 3), config=config or {}) for n in names]
        for future in self.admin.create_topics(topics, operation_timeout=30).values():
            future.result(timeout=60)
        for topic in topics:
            self._wait_leaders(topic.topic, partitions)

    def leader(self, topic: str, partition: int) -> int:
        """The node that leads `topic`/`partition` now (-1 while there is none)."""
        meta = self.admin.list_topics(topic, timeout=10).topics[topic]
        return int(meta.partitions[partition].leader)

    def leaders(self, topic: str) -> dict[int, int]:
        """Partition → leading node for every partition of `topic`."""
        meta = self.admin.list_topics(topic, timeout=10).topics[topic]
        return {p: int(m.leader) for p, m in meta.partitions.items()}

    def _wait_leaders(self, topic: str, partitions: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with_leader = [p for p, leader in self.leaders(topic).items() if leader >= 0]
            if len(with_leader) == partitions:
                return
            time.sleep(0.1)
        raise RuntimeError(f"topic {topic} has partitions without a leader")

    def node(self, node_id: int) -> _Node:
        return self.nodes[node_id - 1]

    def log_tail(self, node: _Node, lines: int = 20) -> str:
        if not node.log.exists():
            return "(no log)"
        return "\n".join(node.log.read_text(errors="replace").splitlines()[-lines:])

    # --- internals ----------------------------------------------------------------

    def _launch(self, node: _Node) -> None:
        java = _java()
        assert java is not None
        command = [
            java,
            f"-Xmx{_HEAP}",
            "-Xms64m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",  # C1 only: much less CPU at start-up on 2 cores
            "-XX:-UsePerfData",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={_LOG4J}",
            "-cp",
            self._classpath,
            "kafka.Kafka",
            str(node.properties),
        ]
        with node.log.open("ab") as log:
            node.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)

    def _format(self) -> None:
        java = _java()
        assert java is not None
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        scram = []
        if self.scram:
            user = f"SCRAM-SHA-512=[name={self.scram.username},password={self.scram.password}]"
            scram = ["--add-scram", user]
        procs = [
            subprocess.Popen(
                [
                    java,
                    "-Xmx128m",
                    "-XX:TieredStopAtLevel=1",
                    f"-Dlog4j2.configurationFile={_LOG4J}",
                    "-cp",
                    self._classpath,
                    "kafka.tools.StorageTool",
                    "format",
                    f"--cluster-id={cluster_id}",  # an id may start with "-"
                    "-c",
                    str(node.properties),
                    *scram,
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            for node in self.nodes
        ]
        for proc in procs:
            out, _ = proc.communicate(timeout=60)
            if proc.returncode != 0:
                raise RuntimeError(f"kafka storage format failed: {out.decode(errors='replace')}")

    def _reap(self, node: _Node, timeout: float) -> None:
        if node.proc is None:
            return
        try:
            node.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            node.proc.kill()
            node.proc.wait()

    def _write_tls(self, scram: Scram) -> None:
        self._tls.mkdir(parents=True, exist_ok=True)
        cert = scram.ca.issue_cert("127.0.0.1", "localhost")
        # One PEM file with the private key and the chain; Kafka reads only PKCS#8 keys
        # (trustme writes SEC1 "EC PRIVATE KEY").
        key = serialization.load_pem_private_key(cert.private_key_pem.bytes(), password=None)
        pkcs8 = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        chain = b"".join(blob.bytes() for blob in cert.cert_chain_pems)
        (self._tls / "broker.pem").write_bytes(pkcs8 + chain)

    def _properties(self, node: _Node) -> str:
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes)
        replicas = min(self.size, 3)
        listeners = [f"PLAINTEXT://127.0.0.1:{node.port}"]
        protocols = ["PLAINTEXT:PLAINTEXT", "CONTROLLER:PLAINTEXT"]
        if node.secure_port:
            listeners.append(f"SASL_SSL://127.0.0.1:{node.secure_port}")
            protocols.append("SASL_SSL:SASL_SSL")
        props = {
            "process.roles": "broker,controller",
            "node.id": node.node_id,
            "controller.quorum.voters": voters,
            "listeners": ",".join([*listeners, f"CONTROLLER://127.0.0.1:{node.controller_port}"]),
            "advertised.listeners": ",".join(listeners),
            "listener.security.protocol.map": ",".join(protocols),
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": node.home / "data",
            "num.partitions": 1,
            "default.replication.factor": replicas,
            "min.insync.replicas": 2 if replicas >= 3 else 1,
            "offsets.topic.replication.factor": replicas,
            "offsets.topic.num.partitions": 4,
            "transaction.state.log.replication.factor": replicas,
            "transaction.state.log.min.isr": 2 if replicas >= 3 else 1,
            "transaction.state.log.num.partitions": 4,
            "group.initial.rebalance.delay.ms": 0,
            # Notice a dead node within seconds, not the defaults' ~10-20 s.
            "broker.heartbeat.interval.ms": 500,
            "broker.session.timeout.ms": 3000,
            "controller.quorum.election.timeout.ms": 1000,
            "controller.quorum.fetch.timeout.ms": 2000,
            "num.network.threads": 2,
            "num.io.threads": 2,
            "background.threads": 2,
            "log.cleaner.enable": "false",
        }
        if node.secure_port:
            props |= {
                "sasl.enabled.mechanisms": "SCRAM-SHA-512",
                "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": (
                    "org.apache.kafka.common.security.scram.ScramLoginModule required;"
                ),
                "ssl.keystore.type": "PEM",
                "ssl.keystore.location": self._tls / "broker.pem",
            }
        return "".join(f"{key}={value}\n" for key, value in props.items())
