"""The embedded Kafka broker and the SMTP servers of service.devtools, against real clients."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from service.devtools.broker import EmbeddedKafka, PortInUseError
from service.devtools.smtp import CapturedMessage, CaptureSMTP, RecordingSMTP, summary_line

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def kafka() -> Iterator[EmbeddedKafka]:
    with EmbeddedKafka() as broker:
        yield broker


@pytest.fixture
async def producer(kafka: EmbeddedKafka) -> AsyncIterator[AIOKafkaProducer]:
    client = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap)
    await client.start()
    yield client
    await client.stop()


@pytest.fixture
def recorder() -> Iterator[RecordingSMTP]:
    with RecordingSMTP() as server:
        yield server


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _mail(to: str = "ada@example.com", subject: str = "Hello") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "herald@example.com"
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content("Hi Ada\n")
    return msg


async def _consume(bootstrap: str, topic: str, count: int, group: str) -> list[bytes]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        values: list[bytes] = []
        while len(values) < count:
            batches = await consumer.getmany(timeout_ms=5000)
            assert batches, f"no messages after {len(values)}"
            values += [m.value for msgs in batches.values() for m in msgs if m.value]
        await consumer.commit()
        committed = [await consumer.committed(tp) for tp in consumer.assignment()]
        assert sum(c or 0 for c in committed) == count
        return values
    finally:
        await consumer.stop()


async def test_created_topic_has_its_partitions_and_serves_a_group(
    kafka: EmbeddedKafka, producer: AIOKafkaProducer
) -> None:
    kafka.create_topic("identity.events", 12)
    sent = [f"event-{i}".encode() for i in range(60)]
    for i, value in enumerate(sent):
        await producer.send("identity.events", value, key=str(i).encode())
    await producer.flush()

    metadata = await producer.client.fetch_all_metadata()
    assert len(metadata.partitions_for_topic("identity.events") or ()) == 12
    received = await _consume(kafka.bootstrap, "identity.events", len(sent), "herald")
    assert sorted(received) == sorted(sent)


async def test_unknown_topic_is_auto_created(
    kafka: EmbeddedKafka, producer: AIOKafkaProducer
) -> None:
    record = await producer.send_and_wait("auto.created", b"x")
    assert record.offset == 0
    partitions = await producer.partitions_for("auto.created")
    assert len(partitions) == kafka.auto_create_partitions


def test_create_topic_default_partitions_and_errors() -> None:
    broker = EmbeddedKafka(default_partitions=2)
    with pytest.raises(RuntimeError, match="not started"):
        broker.create_topic("t")
    with broker:
        broker.create_topic("t")
        with pytest.raises(RuntimeError, match="already exists"):
            broker.create_topic("t", 3)


async def test_fixed_port_forwards_and_advertises_it() -> None:
    port = _free_port()
    with EmbeddedKafka(port=port) as broker:
        assert broker.bootstrap == f"127.0.0.1:{port}"
        broker.create_topic("fixed", 3)
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait("fixed", b"through the forwarder")
            brokers = producer.client.cluster.brokers()
            assert {(b.host, b.port) for b in brokers} == {("127.0.0.1", port)}
        finally:
            await producer.stop()
        assert await _consume(broker.bootstrap, "fixed", 1, "g") == [b"through the forwarder"]


def test_fixed_port_in_use_is_a_one_line_oserror() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(PortInUseError) as info:
            EmbeddedKafka(port=port).start()
    assert isinstance(info.value, OSError)
    assert str(info.value) == f"127.0.0.1:{port} is already in use"


async def test_capture_smtp_writes_eml_and_reports(tmp_path: Path) -> None:
    seen: list[CapturedMessage] = []
    outbox = tmp_path / "var" / "outbox"
    with CaptureSMTP(outbox, on_message=seen.append) as server:
        assert server.port
        subject = "Ihr Passwort wurde geändert"
        await aiosmtplib.send(_mail(subject=subject), hostname="127.0.0.1", port=server.port)

    [msg] = seen
    assert msg.path.parent == outbox
    assert msg.path.name.endswith("-0001.eml")
    assert msg.path.read_bytes().startswith(b"From: herald@example.com")
    assert (msg.mail_from, msg.rcpt_tos, msg.subject) == (
        "herald@example.com",
        ["ada@example.com"],
        subject,
    )
    assert msg.size == msg.path.stat().st_size
    line = summary_line(msg)
    assert f'to=ada@example.com  subject="{subject}"' in line
    assert line.endswith(f"-> {msg.path}")


def test_summary_line_stays_on_one_line() -> None:
    msg = CapturedMessage(Path("a.eml"), "f@x", ["a@x", "b@x"], 'Evil\r\n"Bcc": x', 1500)
    line = summary_line(msg)
    assert "\n" not in line and "\r" not in line
    assert 'to=a@x,b@x  subject="Evil \\"Bcc\\": x"  1.5 kB  -> a.eml' in line


async def test_recording_smtp_scripted_421_then_250(recorder: RecordingSMTP) -> None:
    recorder.script("421 4.3.0 Try again later", "250 OK")
    with pytest.raises(aiosmtplib.SMTPResponseException) as info:
        await aiosmtplib.send(_mail(), hostname="127.0.0.1", port=recorder.port)
    assert info.value.code == 421
    assert recorder.messages == []

    await aiosmtplib.send(_mail(), hostname="127.0.0.1", port=recorder.port)
    [received] = await recorder.wait_for(1)
    assert received.rcpt_tos == ["ada@example.com"]
    assert received.message["Subject"] == "Hello"
    assert len(recorder.messages) == 1


async def test_recording_smtp_fail_all_until_cleared(recorder: RecordingSMTP) -> None:
    recorder.fail_all("550 5.1.1 No such user")
    for _ in range(2):
        with pytest.raises(aiosmtplib.SMTPResponseException) as info:
            await aiosmtplib.send(_mail(), hostname="127.0.0.1", port=recorder.port)
        assert info.value.code == 550
    recorder.fail_all(None)
    await aiosmtplib.send(_mail(), hostname="127.0.0.1", port=recorder.port)
    assert len(await recorder.wait_for(1)) == 1
    with pytest.raises(TimeoutError):
        await recorder.wait_for(2, timeout=0.05)
