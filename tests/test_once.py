"""Once means once, end to end through a real Herald: an email cancelled mid-send (a
failing sibling, an action's `timeout_s`) and then replayed from the DLQ reaches its
recipient once; a batch rewound during an SMTP outage while it holds records of two
partitions commits nothing past a record it did not process.

The slow servers here keep the message as soon as it arrives and only then take their
time to answer, as a real one that queued the email but is slow to say so: the worst
case for a duplicate, since a copy Herald gave up on was delivered all the same."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiosmtpd.smtp import SMTP, Envelope, Session
from faststream.kafka import KafkaMessage

from service.cli import main
from service.config import Config
from service.devtools.broker import EmbeddedKafka
from service.devtools.smtp import RecordingSMTP
from service.kafka import declare_subscriber, new_broker
from service.kafka.batches import BatchRunner
from tests.harness import (
    Kafka,
    config_file,
    events,
    load_example,
    make_config,
    metric,
    per_event,
    running,
    unique,
    wait_until,
)

pytestmark = pytest.mark.integration

SLOW = "slow@herald.test"
REFUSED = "refused@herald.test"


class RefusesOneSlowOnOther(RecordingSMTP):
    """550 at RCPT for `REFUSED`; keeps the message for `SLOW`, then takes `delay`
    seconds to answer 250 to its final dot. Each refusal first waits (up to `hold`
    seconds) for a new message for `SLOW`, so that it lands while that reply is awaited;
    the wait runs out when no such message comes (Herald found it sent already)."""

    delay = 1.5
    hold = 2.0

    def __init__(self) -> None:
        super().__init__()
        self.slow_in = 0  # messages for SLOW so far
        self.refusals = 0
        self._slow_seen = 0

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address == REFUSED:
            deadline = time.monotonic() + self.hold
            while self.slow_in == self._slow_seen and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            self._slow_seen = self.slow_in
            self.refusals += 1
            return "550 5.1.1 Mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        reply = await super().handle_DATA(server, session, envelope)
        if SLOW in envelope.rcpt_tos:
            self.slow_in += 1
            await asyncio.sleep(self.delay)
        return reply


def to(server: RecordingSMTP, address: str) -> list[bytes]:
    """The messages `address` received (their bytes)."""
    return [m.data for m in server.messages if address in m.rcpt_tos]


async def replay(path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """`herald dlq replay` (in a thread: the command runs its own event loop); its last line."""
    capsys.readouterr()
    await asyncio.to_thread(main, ["--config", str(path), "dlq", "replay"])
    return capsys.readouterr().out.splitlines()[-1]


def python_flow(handler: str, **options: Any) -> dict[str, Any]:
    action = {"id": "py", "action": "python", "handler": f"tests.handlers:{handler}", **options}
    return {"post-user-registration": [action]}


def on_topic(config: Config, topic: str) -> Config:
    """`config` consuming `topic` only (make_config's own topic has 4 partitions)."""
    kafka = config.kafka.model_copy(update={"topics": [topic]})
    return config.model_copy(update={"kafka": kafka})


def _events(herald: Any) -> float:
    return metric(herald, "herald_events_total")


def _emails(herald: Any, outcome: str) -> float:
    return metric(herald, "herald_emails_total", outcome=outcome)


# --- 1. a sibling cancelled by a permanent failure, then a DLQ replay -----------------


async def test_1_cancelled_sibling_then_dlq_replay_sends_one_copy(
    kafka: EmbeddedKafka, client: Kafka, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A python action sends two emails at once: the 550 at RCPT of one cancels the other
    while its reply after the data is awaited. That one is uncertain (recorded), so the
    replay finds it sent and only the refused one fails again."""
    with RefusesOneSlowOnOther() as server:
        config = make_config(kafka, server, tmp_path, flows=python_flow("refused_and_slow"))
        topic = config.kafka.topics[0]
        path = config_file(config, tmp_path / "herald.yaml")
        event = load_example("post-user-registration")
        async with running(config) as herald:
            await client.send(topic, event)
            [first] = await client.read(topic + ".dlq", 1)
            assert await replay(path, capsys) == f"replayed 1 dead letter(s) from {topic}.dlq"
            dead = await client.read(topic + ".dlq", 2)  # the replayed event, processed
            await asyncio.sleep(3)  # past the slow reply: any second copy is in by now
            uncertain, duplicates = _emails(herald, "uncertain"), _emails(herald, "duplicate")
            received = to(server, SLOW)
    print(f"1: copies {len(received)}, uncertain {uncertain}, duplicate {duplicates}")
    assert len(received) == 1, f"1: {len(received)} copies of the cancelled email"
    assert server.messages[0].message["X-Herald-Event-Id"] == event["id"], "1: event id"
    assert (uncertain, duplicates) == (1, 1), f"1: uncertain {uncertain}, dup {duplicates}"
    assert to(server, REFUSED) == [] and server.refusals == 2, "1: refused twice, never kept"
    assert len(dead) == 2, f"1: {len(dead)} dead letters"
    for letter in dead:
        headers = dict(letter.headers)
        assert letter.value == orjson.dumps(event), "1: the dead letter is the event"
        assert headers["x-herald-error"] == b"SmtpPermanentError", f"1: {headers}"
        assert b"550 5.1.1" in headers["x-herald-reason"], f"1: {headers}"
    assert dict(first.headers)["x-herald-original-topic"] == topic.encode()


# --- 2. an action past its timeout_s, then a DLQ replay -------------------------------


async def test_2_timed_out_action_then_dlq_replay_sends_one_copy(
    kafka: EmbeddedKafka, client: Kafka, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`timeout_s: 0.5`, 2 s for the 250 after the data: ActionTimeout cancels the send
    while the reply is awaited; the replayed event finds the email recorded."""
    with RefusesOneSlowOnOther() as server:
        server.delay = 2.0
        flows = {
            "post-user-registration": [
                {"id": "mail", "action": "send_email", "template": "welcome", "timeout_s": 0.5}
            ]
        }
        config = make_config(kafka, server, tmp_path, flows=flows)
        topic = config.kafka.topics[0]
        path = config_file(config, tmp_path / "herald.yaml")
        event = load_example("post-user-registration", email=SLOW)
        async with running(config) as herald:
            await client.send(topic, event)
            [dead] = await client.read(topic + ".dlq", 1)
            assert await replay(path, capsys) == f"replayed 1 dead letter(s) from {topic}.dlq"
            await wait_until(lambda: _events(herald) == 2, "2: the replayed event processed")
            await asyncio.sleep(3)  # past the slow reply: any second copy is in by now
            uncertain, duplicates = _emails(herald, "uncertain"), _emails(herald, "duplicate")
            processed = metric(herald, "herald_events_total", outcome="ok")
            again = await client.read(topic + ".dlq", 2, timeout=1)
    received = to(server, SLOW)
    print(f"2: copies {len(received)}, uncertain {uncertain}, duplicate {duplicates}")
    assert len(received) == 1, f"2: {len(received)} copies of the timed-out email"
    assert server.messages[0].message["X-Herald-Event-Id"] == event["id"], "2: event id"
    assert (uncertain, duplicates, processed) == (1, 1, 1), f"2: {uncertain}, {duplicates}"
    assert len(again) == 1, f"2: {len(again)} dead letters (the replay must not fail)"
    headers = dict(dead.headers)
    assert dead.value == orjson.dumps(event), "2: the dead letter is the event"
    assert headers["x-herald-error"] == b"ActionTimeout", f"2: {headers}"
    assert headers["x-herald-reason"] == b"action 'mail' ran past its timeout of 0.5s", "2"


# --- 3. a rewound batch that holds records of two partitions --------------------------


async def test_3_two_partition_rewind_commits_nothing_past_an_unprocessed_record(
    kafka: EmbeddedKafka, client: Kafka, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """60 events on a 2-partition topic, produced while the SMTP server is down: the
    first batch holds both partitions and is rewound. A rewind of only the partition of
    the batch's first record (FastStream < 0.7.8's batch nack) skips the other one's
    events, and the next commit goes past them."""
    topic = unique("events2p")
    kafka.create_topic(topic, 2)
    kafka.create_topic(topic + ".retry", 2)
    kafka.create_topic(topic + ".dlq", 1)
    with RecordingSMTP() as first:
        port = first.port
        config = on_topic(make_config(kafka, first, tmp_path, retry={"max_backoff_s": 0.2}), topic)
    batch = events(60)
    await client.send_many(topic, batch)
    partitions = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
    ends = await _end_offsets(client, partitions)
    assert all(ends[tp] > 0 for tp in partitions), f"3: both partitions hold events: {ends}"

    batches: list[frozenset[int]] = []  # the partitions of each batch Herald consumed
    original = BatchRunner.handle

    async def spy(self: BatchRunner, message: Any, *args: Any, **kwargs: Any) -> None:
        batches.append(frozenset(r.partition for r in message.raw_message))
        await original(self, message, *args, **kwargs)

    monkeypatch.setattr(BatchRunner, "handle", spy)
    async with running(config) as herald:
        await wait_until(lambda: metric(herald, "herald_consumption_paused") == 1, "3: paused")
        await asyncio.sleep(0.5)
        during = await _committed(config, partitions)
        with RecordingSMTP(port=port) as back:
            await back.wait_for(len(batch), timeout=30)
            await wait_until(lambda: metric(herald, "herald_consumption_paused") == 0, "resumed")
            await wait_until(
                lambda: metric(herald, "herald_events_total", outcome="ok") >= len(batch),
                "3: every event processed",
            )
            await asyncio.sleep(0.5)  # room for a duplicate, were one coming
            counts = per_event(back)
            recipients = sorted(r for m in back.messages for r in m.rcpt_tos)
    committed = await _committed(config, partitions)
    # The first batch came while the server was down: it was rewound, none of it done.
    assert batches[0] == {0, 1}, f"3: the rewound batch did not hold both partitions: {batches}"
    assert during == {tp: None for tp in partitions}, f"3: committed while paused: {during}"
    missing = {e["id"] for e in batch} - set(counts)
    duplicates = sum(counts.values()) - len(counts)
    print(f"3: end offsets {_by_partition(ends)}, committed {_by_partition(committed)},")
    print(f"3: batches {[sorted(b) for b in batches]}, {len(missing)} missing, {duplicates} dup")
    assert (len(missing), duplicates) == (0, 0), f"3: {len(missing)} missing, {duplicates} dup"
    assert recipients == sorted(e["data"]["user"]["email"] for e in batch), "3: recipients"
    assert committed == ends, f"3: committed {committed}, end offsets {ends}"
    assert await client.read(topic + ".dlq", 1, timeout=1) == [], "3: nothing dead-lettered"


async def test_3_faststream_batch_nack_rewinds_every_partition(
    kafka: EmbeddedKafka, smtp: RecordingSMTP, client: Kafka, tmp_path: Path
) -> None:
    """FastStream's batch nack on Herald's subscriber (service/kafka.py), against the
    embedded broker: a batch of two partitions, nacked, comes back from the first offset
    of each partition. FastStream < 0.7.8 rewound only the first record's partition;
    pyproject.toml pins >= 0.7.8 (service/kafka/batches.py now seeks each partition itself)."""
    topic = unique("nack2p")
    kafka.create_topic(topic, 2)
    config = on_topic(make_config(kafka, smtp, tmp_path), topic)
    await client.send_many(topic, events(20))
    broker = new_broker(config.kafka)
    subscriber = declare_subscriber(broker, config.kafka)
    deliveries: list[tuple[ConsumerRecord, ...]] = []

    @subscriber
    async def handle(_: Any, message: KafkaMessage) -> None:
        deliveries.append(tuple(message.raw_message))
        await (message.nack() if len(deliveries) == 1 else message.ack())

    await broker.start()
    try:
        await wait_until(lambda: len(deliveries) >= 2, "3: the nacked batch redelivered")
    finally:
        await broker.stop()
    first, second = (_first_offsets(d) for d in deliveries[:2])
    assert set(first) == {0, 1}, f"3: the first batch did not hold both partitions: {first}"
    assert second == first == {0: 0, 1: 0}, f"3: redelivered from {second}, not {first}"


def _by_partition(offsets: dict[TopicPartition, Any]) -> dict[int, Any]:
    return {tp.partition: offset for tp, offset in sorted(offsets.items())}


def _first_offsets(records: Sequence[ConsumerRecord]) -> dict[int, int]:
    firsts: dict[int, int] = {}
    for record in records:
        firsts[record.partition] = min(record.offset, firsts.get(record.partition, record.offset))
    return firsts


async def _end_offsets(
    client: Kafka, partitions: list[TopicPartition]
) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=client.bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        return dict(await consumer.end_offsets(partitions))
    finally:
        await consumer.stop()


async def _committed(
    config: Config, partitions: list[TopicPartition]
) -> dict[TopicPartition, int | None]:
    """The group's committed offsets (None: nothing committed), read with the admin client."""
    admin = AIOKafkaAdminClient(bootstrap_servers=config.kafka.bootstrap_servers)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(
            config.kafka.group_id, partitions=partitions
        )
    finally:
        await admin.close()
    return {tp: offsets[tp].offset if offsets[tp].offset >= 0 else None for tp in partitions}
