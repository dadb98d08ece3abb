"""Integration-test helpers: a real Herald against the embedded broker and aiosmtpd."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar

import orjson
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiosmtpd.smtp import SMTP, Envelope, Session

from service.app import Herald
from service.config import Config, parse_config
from service.devtools.broker import EmbeddedKafka
from service.devtools.smtp import RecordingSMTP

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "events"
#: What Kubernetes sets in every pod of a namespace with a Service named `herald`.
KUBERNETES = {
    "HERALD_PORT": "tcp://10.0.0.11:8080",
    "HERALD_SERVICE_HOST": "10.0.0.11",
    "HERALD_SERVICE_PORT": "8080",
    "HERALD_PORT_8080_TCP": "tcp://10.0.0.11:8080",
    "HERALD_PORT_8080_TCP_PROTO": "tcp",
    "HERALD_PORT_8080_TCP_PORT": "8080",
    "HERALD_PORT_8080_TCP_ADDR": "10.0.0.11",
}
EMAIL_FLOWS = {
    "post-change-password": "password_changed",
    "post-user-registration": "welcome",
    "password-reset-requested": "password_reset",
    "email-verification-requested": "verify_email",
    "login-failed": "login_alert",
}


def unique(prefix: str) -> str:
    """A topic or group name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def make_config(kafka: EmbeddedKafka, server: RecordingSMTP, tmp: Path, **sections: Any) -> Config:
    """A config for one test: its own topic and group, the recording server, fast retries."""
    topic, commands, decisions = unique("events"), unique("commands"), unique("decisions")
    status = unique("status")
    kafka.create_topic(topic, 4)
    kafka.create_topic(topic + ".retry", 4)
    for output in (topic + ".dlq", commands, decisions, status):
        kafka.create_topic(output, 1)
    doc: dict[str, Any] = {
        "kafka": {
            "bootstrap_servers": kafka.bootstrap,
            "group_id": unique("herald"),
            "topics": [topic],
            "auto_offset_reset": "earliest",
            "commands_topic": commands,
            "decisions_topic": decisions,
            "status_topic": status,
        },
        "smtp": {
            "host": "127.0.0.1",
            "port": server.port,
            "from": "Herald Test <no-reply@herald.test>",
            "timeout_s": 5,
            "pool_size": 2,
        },
        "retry": {"attempts": 3, "initial_backoff_s": 0.01, "max_backoff_s": 0.05},
        "dedupe": {"backend": "sqlite", "path": str(tmp / "herald.db")},
        "http": {"host": "127.0.0.1", "port": 0},
        "templates_dir": str(ROOT / "templates"),
        "secrets": {"SUPPORT_URL": "https://support.herald.test/"},
        "flows": {
            trigger: [{"id": f"email-{template}", "action": "send_email", "template": template}]
            for trigger, template in EMAIL_FLOWS.items()
        },
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(doc.get(key), dict):
            doc[key] = {**doc[key], **value}
        else:
            doc[key] = value
    return parse_config(yaml.safe_dump(doc), "test.yaml", environ={})


@asynccontextmanager
async def running(config: Config) -> AsyncIterator[Herald]:
    """Herald started for real, stopped at the end; waits for its partitions."""
    herald = Herald(config)
    await herald.start()
    try:
        await wait_until(lambda: bool(herald.assignment.partitions), "partitions assigned")
        yield herald
    finally:
        await herald.stop()


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]], what: str, timeout: float = 15
) -> None:
    """Poll `condition` until true; fail naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if await result if isinstance(result, Awaitable) else result:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for: {what}")


def load_example(trigger: str, **changes: Any) -> dict[str, Any]:
    """A sample event from examples/events with a fresh id and `data.user` changes."""
    event = orjson.loads((EXAMPLES / f"{trigger}.json").read_bytes())
    event["id"] = unique("evt")
    event["data"]["user"].update(changes)
    return event


class Kafka:
    """Produce and read topics of the embedded broker as a client would."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.producer = AIOKafkaProducer(bootstrap_servers=bootstrap)

    async def start(self) -> None:
        await self.producer.start()

    async def stop(self) -> None:
        await self.producer.stop()

    async def send(
        self,
        topic: str,
        value: bytes | dict[str, Any] | None,
        *,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        if isinstance(value, dict):
            value = orjson.dumps(value)
            key = key or value_key(value)
        await self.producer.send_and_wait(topic, value, key=key, headers=headers or [])

    async def send_many(self, topic: str, values: list[dict[str, Any]]) -> None:
        """Produce many events at once (keyed by user id), then wait for every ack."""
        futures = []
        for value in values:
            raw = orjson.dumps(value)
            futures.append(await self.producer.send(topic, raw, key=value_key(raw)))
        await asyncio.gather(*futures)

    async def read(
        self, topic: str, count: int, timeout: float = 15, *, committed_only: bool = False
    ) -> list[ConsumerRecord]:
        """Wait for `count` records on `topic` (all partitions, from the start); with
        `committed_only`, as a `read_committed` consumer sees them."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            isolation_level="read_committed" if committed_only else "read_uncommitted",
        )
        await consumer.start()
        try:
            partitions = await _partitions(consumer, topic)
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            return await _collect(consumer, count, timeout)
        finally:
            await consumer.stop()


def value_key(value: bytes) -> bytes | None:
    data = orjson.loads(value)
    try:
        return str(data["data"]["user"]["user_id"]).encode()
    except (KeyError, TypeError):
        return None


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    deadline = time.monotonic() + 10
    while not (found := consumer.partitions_for_topic(topic)):
        if time.monotonic() > deadline:
            raise AssertionError(f"topic {topic} does not exist")
        await consumer._client.force_metadata_update()
        await asyncio.sleep(0.05)
    return [TopicPartition(topic, p) for p in sorted(found)]


async def _collect(consumer: AIOKafkaConsumer, count: int, timeout: float) -> list[ConsumerRecord]:
    records: list[ConsumerRecord] = []
    deadline = time.monotonic() + timeout
    while len(records) < count and time.monotonic() < deadline:
        batch = await consumer.getmany(timeout_ms=100)
        for part in batch.values():
            records.extend(part)
    return records


class HeraldProcess:
    """`python -m service run` with its JSON log lines collected."""

    #: Every process started and not yet reaped; the `reap_herald_processes` fixture
    #: kills what a failing test left behind.
    alive: ClassVar[set[HeraldProcess]] = set()

    def __init__(self, config_path: Path, env: dict[str, str] | None = None) -> None:
        self.config_path = config_path
        self.env = env or {}
        self.lines: list[dict[str, Any]] = []
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, timeout: float = 20) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "service",
            "--config",
            str(self.config_path),
            "run",
            cwd=ROOT,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "HERALD_LOG__LEVEL": "INFO", **self.env},
        )
        HeraldProcess.alive.add(self)
        self._reader = asyncio.create_task(self._read())
        try:
            await self.wait_log("partitions assigned", timeout=timeout)
        except TimeoutError:
            raise AssertionError(f"herald did not get partitions; its log: {self.lines}") from None

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        async for raw in self.proc.stderr:
            try:
                self.lines.append(orjson.loads(raw))
            except orjson.JSONDecodeError:
                self.lines.append({"msg": raw.decode(errors="replace")})

    async def wait_log(self, message: str, count: int = 1, timeout: float = 20) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                found = [line for line in self.lines if line.get("msg") == message]
                if len(found) >= count:
                    return found[-1]
                await asyncio.sleep(0.02)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def stop(self) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(self.proc.wait(), 20)
        finally:
            self.reap()
        await self._reader
        return code

    def reap(self) -> None:
        """Kill the process if it still runs (a test that failed half-way)."""
        HeraldProcess.alive.discard(self)
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()

    def logged(self, message: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("msg") == message]

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()


def config_file(config: Config, path: Path) -> Path:
    """Write `config` as YAML for a `herald run` subprocess."""
    doc = config.model_dump(mode="json", by_alias=True)
    doc["smtp"]["password"] = ""
    doc["kafka"]["sasl_password"] = ""
    doc["http"]["token"] = config.http.token.get_secret_value()
    path.write_text(yaml.safe_dump(doc))
    return path


class SlowSMTP(RecordingSMTP):
    """A recording server that takes `delay` seconds per message, so work is in flight."""

    delay = 0.01

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        await asyncio.sleep(self.delay)
        return await super().handle_DATA(server, session, envelope)


GREY = "grey@herald.test"


class GreylistingSMTP(RecordingSMTP):
    """Answers `451 4.7.1 Greylisted` at RCPT for `GREY` until `accept_grey` is set."""

    accept_grey = False
    grey_refusals = 0

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address == GREY and not self.accept_grey:
            self.grey_refusals += 1
            return "451 4.7.1 Greylisted, please try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"


def grey_event() -> dict[str, object]:
    return load_example("post-change-password", user_id="user-grey", email=GREY)


def per_event(server: RecordingSMTP) -> Counter[str]:
    """Emails received per `X-Herald-Event-Id`."""
    return Counter(str(m.message["X-Herald-Event-Id"]) for m in server.messages)


def events(count: int) -> list[dict[str, Any]]:
    """`count` password-change events of `count` different users."""
    return [
        load_example("post-change-password", user_id=f"user-{i}", email=f"u{i}@herald.test")
        for i in range(count)
    ]


def metric(herald: Any, name: str, **labels: str) -> float:
    """The sum of a Prometheus sample over the series matching `labels`."""
    total = 0.0
    for family in herald.metrics.registry.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total
