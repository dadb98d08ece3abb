"""No poison pill (README: Events, Outputs, Delivery guarantees): a record that fails for
itself is dead-lettered, and the next record of its lane (same key, so it can only run
once the bad one reached its end) is processed; only an outage rewinds the batch.

Every bad record below is followed by a password-change event on the same Kafka key; its
email arriving is what "the next user's email goes out" looks like.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import confluent_kafka
import orjson
import pytest
from aiokafka import AIOKafkaProducer, ConsumerRecord
from aiokafka.errors import (
    MessageSizeTooLargeError,
    TopicAuthorizationFailedError,
    UnknownTopicOrPartitionError,
)

from service.config import Config
from service.devtools.broker import EmbeddedKafka
from service.devtools.smtp import RecordingSMTP
from tests.harness import Kafka, load_example, make_config, metric, running, unique, wait_until

pytestmark = pytest.mark.integration

Headers = list[tuple[str, bytes | None]]
#: The producer's `max_request_size` (aiokafka's default; Herald sets the same).
MAX_REQUEST_BYTES = 1024 * 1024


def follower(lane: str) -> dict[str, Any]:
    """The event sent after the bad one, on the same key: its email must go out."""
    return load_example("post-change-password", user_id=f"next-{lane}", email=f"{lane}@herald.test")


def flows(trigger: str, handler: str) -> dict[str, Any]:
    return {trigger: [{"id": "py", "action": "python", "handler": f"tests.handlers:{handler}"}]}


def herald_headers(dead: ConsumerRecord, original: Headers, config: Config) -> dict[str, bytes]:
    """Check that `dead` carries `original` first, as sent (a null header still null), then
    Herald's own headers; return Herald's."""
    headers = [tuple(h) for h in dead.headers]
    assert headers[: len(original)] == original
    ours = dict(headers[len(original) :])
    assert all(name.startswith("x-herald-") for name in ours)
    assert ours["x-herald-original-topic"] == config.kafka.topics[0].encode()
    assert ours["x-herald-original-partition"].isdigit()
    assert ours["x-herald-original-offset"].isdigit()
    assert ours["x-herald-failed-at"].startswith(b"20")
    return ours


async def delivered(smtp: RecordingSMTP, *events: dict[str, Any]) -> None:
    received = await smtp.wait_for(len(events))
    assert sorted(r.message["X-Herald-Event-Id"] for r in received) == sorted(
        e["id"] for e in events
    )


# --- A Kafka header whose value is null counts as absent (README: Events) -------------------


@pytest.mark.parametrize("trigger", ["pre-user-registration", "post-login"])
async def test_a_null_reply_to_is_absent(
    kafka: EmbeddedKafka, smtp: RecordingSMTP, client: Kafka, tmp_path: Path, trigger: str
) -> None:
    """Without `reply_to` a sign-up's decision goes to the decisions topic and a login
    publishes none (README: Flows and actions, Outputs): a null `reply_to` is no different."""
    config = make_config(kafka, smtp, tmp_path)
    topic = config.kafka.topics[0]
    event, after = load_example(trigger), follower("reply")
    headers: Headers = [("reply_to", None), ("correlation_id", b"corr-1")]
    async with running(config) as herald:
        await client.send(topic, event, key=b"lane", headers=headers)
        await client.send(topic, after, key=b"lane")
        await delivered(smtp, after)
        decisions = await client.read(config.kafka.decisions_topic, 1, timeout=1)
        assert metric(herald, "herald_events_total", trigger=trigger, outcome="ok") == 1
    if trigger == "pre-user-registration":
        [decision] = decisions
        assert decision.key == event["data"]["user"]["user_id"].encode()
        assert orjson.loads(decision.value)["event_id"] == event["id"]
    else:
        assert decisions == []
    assert await client.read(topic + ".dlq", 1, timeout=1) == []


async def test_a_null_correlation_id_is_absent(
    kafka: EmbeddedKafka, smtp: RecordingSMTP, client: Kafka, tmp_path: Path
) -> None:
    """The decision goes to `reply_to` without a `correlation_id` header (none to copy)."""
    config = make_config(kafka, smtp, tmp_path)
    topic, reply_to = config.kafka.topics[0], unique("replies")
    kafka.create_topic(reply_to, 1)
    event, after = load_example("pre-user-registration"), follower("corr")
    headers: Headers = [("reply_to", reply_to.encode()), ("correlation_id", None)]
    async with running(config):
        await client.send(topic, event, key=b"lane", headers=headers)
        await client.send(topic, after, key=b"lane")
        await delivered(smtp, after)
        [reply] = await client.read(reply_to, 1)
    assert orjson.loads(reply.value)["event_id"] == event["id"]
    assert [name for name, _ in reply.headers] == []


def binary(event: dict[str, Any], **attributes: bytes | None) -> Headers:
    """CloudEvents binary-mode headers for `event`, with `attributes` changed."""
    headers: dict[str, bytes | None] = {
        "ce_specversion": b"1.0",
        "ce_id": event["id"].encode(),
        "ce_source": b"https://login.herald.test",
        "ce_type": b"identity.user.password_changed",
        "ce_subject": b"user-bin",
    }
    headers.update(attributes)
    return list(headers.items())


async def test_a_null_ce_type_in_binary_mode_is_dead_lettered_with_its_null_header(
    kafka: EmbeddedKafka, smtp: RecordingSMTP, client: Kafka, tmp_path: Path
) -> None:
    """A null `ce_type` is a missing `type`: malformed. The dead letter keeps every header
    as it came, the null one still null (byte-faithful, so a replay gives it back)."""
    config = make_config(kafka, smtp, tmp_path)
    topic = config.kafka.topics[0]
    event, after = load_example("post-change-password"), follower("cetype")
    headers = [*binary(event, ce_type=None), ("traceparent", None), ("binary", b"\xff\x00")]
    value = orjson.dumps(event["data"])
    async with running(config):
        await client.send(topic, value, key=b"lane", headers=headers)
        await client.send(topic, after, key=b"lane")
        await delivered(smtp, after)
        [dead] = await client.read(topic + ".dlq", 1)
    assert dead.key == b"lane" and dead.value == value
    ours = herald_headers(dead, headers, config)
    assert ours["x-herald-error"] == b"MalformedEvent"
    assert b"'type'" in ours["x-herald-reason"]


async def test_a_null_optional_ce_header_is_absent_and_the_email_goes_out(
    kafka: EmbeddedKafka, smtp: RecordingSMTP, client: Kafka, tmp_path: Path
) -> None:
    config = make_config(kafka, smtp, tmp_path)
    topic = config.kafka.topics[0]
    event = load_example("post-change-password", email="binary@herald.test")
    headers = binary(event, ce_subject=None, ce_time=None)
    async with running(config):
        await client.send(topic, orjson.dumps(event["data"]), key=b"lane", headers=headers)
        await delivered(smtp, event)
    assert await client.read(topic + ".dlq", 1, timeout=1) == []


# --- An output Herald cannot publish → OutputFailed (README: Outputs) -----------------------


@pytest.mark.parametrize(
    ("trigger", "handler", "output", "why"),
    [
        ("post-user-registration", "sets_a_set", "commands", b"not JSON serializable: set"),
        ("pre-user-registration", "sets_a_huge_int", "decisions", b"exceeds 64-bit range"),
    ],
)
async def test_metadata_json_cannot_encode_dead_letters_output_failed(
    kafka: EmbeddedKafka,
    smtp: RecordingSMTP,
    client: Kafka,
    tmp_path: Path,
    trigger: str,
    handler: str,
    output: str,
    why: bytes,
) -> None:
    """A python action's metadata goes out in the metadata command (or, for a sign-up, in
    the decision); a value JSON cannot encode fails at once, without retries."""
    config = make_config(kafka, smtp, tmp_path, flows=flows(trigger, handler))
    topic = config.kafka.topics[0]
    output_topic = getattr(config.kafka, f"{output}_topic")
    event, after = load_example(trigger), follower("json")
    headers: Headers = [("traceparent", b"00-abc-01")]
    async with running(config) as herald:
        await client.send(topic, event, key=b"lane", headers=headers)
        await client.send(topic, after, key=b"lane")
        await delivered(smtp, after)
        [dead] = await client.read(topic + ".dlq", 1)
        assert metric(herald, "herald_dlq_total", reason="OutputFailed") == 1
        assert metric(herald, "herald_events_total", trigger=trigger, outcome="dead_lettered") == 1
    assert dead.key == b"lane" and dead.value == orjson.dumps(event)
    ours = herald_headers(dead, headers, config)
    assert ours["x-herald-error"] == b"OutputFailed"
    assert b"cannot be serialized as JSON" in ours["x-herald-reason"]
    assert why in ours["x-herald-reason"]
    assert await client.read(output_topic, 1, timeout=1) == []


async def test_a_reply_to_topic_kafka_refuses_is_dead_lettered_within_30_s(
    kafka: EmbeddedKafka, smtp: RecordingSMTP, client: Kafka, tmp_path: Path
) -> None:
    """The embedded broker creates every topic a client asks for and takes any name (even
    `bad topic!` or 300 characters), so it is told to refuse two, as real Kafka does: one
    it does not know (UNKNOWN_TOPIC_OR_PARTITION: no auto-creation) and one Herald may not
    write (TOPIC_AUTHORIZATION_FAILED: ACLs). Both are retried for a while, then
    dead-lettered. A name Kafka's rules forbid is refused by Herald itself, at once."""
    config = make_config(kafka, smtp, tmp_path)
    topic = config.kafka.topics[0]
    missing, forbidden = unique("missing"), unique("forbidden")
    kafka.fail_topic(missing, UnknownTopicOrPartitionError.errno)
    kafka.fail_topic(forbidden, TopicAuthorizationFailedError.errno)
    cases = {
        b"lane-missing": (missing, b"is unknown to Kafka"),
        b"lane-forbidden": (forbidden, b"is not authorized for Herald"),
        b"lane-invalid": ("bad topic!", b"is not a valid Kafka topic name"),
    }
    signups = {lane: load_example("pre-user-registration") for lane in cases}
    afters = [follower(lane.decode()) for lane in cases]
    try:
        async with running(config):
            started = time.monotonic()
            for (lane, (reply_to, _)), after in zip(cases.items(), afters, strict=True):
                headers = [("reply_to", reply_to.encode()), ("correlation_id", b"c-1")]
                await client.send(topic, signups[lane], key=lane, headers=headers)
                await client.send(topic, after, key=lane)
            dead = await client.read(topic + ".dlq", len(cases), timeout=35)
            elapsed = time.monotonic() - started
            await delivered(smtp, *afters)
    finally:
        kafka.fail_topic(missing, 0)
        kafka.fail_topic(forbidden, 0)
    assert elapsed < 30, f"dead-lettered after {elapsed:.1f} s"
    assert sorted(d.key for d in dead) == sorted(cases)
    for record in dead:
        reply_to, why = cases[record.key]
        assert record.value == orjson.dumps(signups[record.key])
        ours = herald_headers(
            record, [("reply_to", reply_to.encode()), ("correlation_id", b"c-1")], config
        )
        assert ours["x-herald-error"] == b"OutputFailed"
        assert reply_to.encode() in ours["x-herald-reason"] and why in ours["x-herald-reason"]
    assert await client.read(config.kafka.decisions_topic, 1, timeout=1) == []


# --- A dead letter the broker would refuse as too large (README: Outputs) -------------------


@pytest.mark.parametrize(
    ("size", "why"),
    [
        # The record fits the producer's limit, its dead letter (+ x-herald-*) does not.
        (MAX_REQUEST_BYTES - 256, b"not valid JSON"),
        (2 * MAX_REQUEST_BYTES, b"over the 1 MiB limit"),
    ],
)
async def test_a_dead_letter_too_large_for_kafka_lands_without_its_value(
    kafka: EmbeddedKafka, smtp: RecordingSMTP, client: Kafka, tmp_path: Path, size: int, why: bytes
) -> None:
    config = make_config(kafka, smtp, tmp_path)
    topic = config.kafka.topics[0]
    value = (b'{"specversion": "1.0", "id": "' + b"x" * size)[:size]
    headers: Headers = [("traceparent", b"00-abc-01"), ("binary", b"\xff\x00"), ("none", None)]
    after = follower("big")
    big = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, max_request_size=3 * size)
    await big.start()
    try:
        async with running(config):
            await big.send_and_wait(topic, value, key=b"lane", headers=headers)
            await client.send(topic, after, key=b"lane")
            await delivered(smtp, after)
            [dead] = await client.read(topic + ".dlq", 1)
    finally:
        await big.stop()
    assert dead.key == b"lane" and dead.value == b""
    ours = herald_headers(dead, headers, config)
    assert ours["x-herald-value-omitted"] == str(size).encode()
    assert ours["x-herald-error"] == b"MalformedEvent"
    assert why in ours["x-herald-reason"]


async def test_a_dead_letter_the_broker_refuses_as_too_large_lands_without_its_value(
    kafka: EmbeddedKafka, smtp: RecordingSMTP, client: Kafka, tmp_path: Path
) -> None:
    """A broker's `message.max.bytes` may be below the producer's limit: its refusal is
    answered by one more try without the value. The records are produced before Herald
    starts, so the refused produce request is the dead letter's."""
    config = make_config(kafka, smtp, tmp_path)
    topic = config.kafka.topics[0]
    value, headers, after = b"not json", [("traceparent", b"00-abc-01")], follower("refused")
    await client.send(topic, value, key=b"lane", headers=headers)
    await client.send(topic, after, key=b"lane")
    kafka.fail_next_produce(MessageSizeTooLargeError.errno)
    async with running(config):
        await delivered(smtp, after)
        dead = await client.read(topic + ".dlq", 2, timeout=2)
    [record] = dead
    assert record.key == b"lane" and record.value == b""
    ours = herald_headers(record, headers, config)
    assert ours["x-herald-value-omitted"] == str(len(value)).encode()
    assert ours["x-herald-error"] == b"MalformedEvent"


async def test_a_record_with_neither_key_nor_value_is_dead_lettered(
    kafka: EmbeddedKafka, smtp: RecordingSMTP, client: Kafka, tmp_path: Path
) -> None:
    """Kafka carries such a record; aiokafka will not produce one, so its dead letter gets
    an empty value. Both records go to partition 0: without a key they share one lane."""
    config = make_config(kafka, smtp, tmp_path)
    topic = config.kafka.topics[0]
    after = follower("nothing")
    producer = confluent_kafka.Producer({"bootstrap.servers": kafka.bootstrap})
    producer.produce(topic, value=None, key=None, partition=0, headers=[("traceparent", b"t")])
    producer.produce(topic, value=orjson.dumps(after), partition=0)
    assert producer.flush(10) == 0
    async with running(config):
        await delivered(smtp, after)
        [dead] = await client.read(topic + ".dlq", 1)
    assert dead.key is None and dead.value == b""
    ours = herald_headers(dead, [("traceparent", b"t")], config)
    assert ours["x-herald-error"] == b"MalformedEvent"
    assert ours["x-herald-reason"] == b"record has no value"


# --- An outage rewinds the batch instead -------------------------------------------


async def test_when_the_dead_letter_cannot_be_written_the_batch_is_rewound_not_skipped(
    kafka: EmbeddedKafka,
    smtp: RecordingSMTP,
    client: Kafka,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An output fails for the record, and its dead letter fails too: that is Kafka's
    fault, not the record's. Nothing is committed or skipped (the next record of the lane
    waits); once the DLQ topic can be written, the dead letter lands, once."""
    config = make_config(kafka, smtp, tmp_path, flows=flows("post-user-registration", "sets_a_set"))
    topic = config.kafka.topics[0]
    event, after = load_example("post-user-registration"), follower("outage")
    kafka.fail_topic(topic + ".dlq", TopicAuthorizationFailedError.errno)
    try:
        async with running(config) as herald:
            await client.send(topic, event, key=b"lane")
            await client.send(topic, after, key=b"lane")
            rewound = "batch failed, will be redelivered"
            await wait_until(
                lambda: sum(r.getMessage() == rewound for r in caplog.records) >= 2, "2 rewinds"
            )
            assert smtp.messages == []
            assert metric(herald, "herald_dlq_total") == 0
            kafka.fail_topic(topic + ".dlq", 0)
            await delivered(smtp, after)
            dead = await client.read(topic + ".dlq", 2, timeout=2)
    finally:
        kafka.fail_topic(topic + ".dlq", 0)
    [record] = dead
    assert record.value == orjson.dumps(event)
    assert dict(record.headers)["x-herald-error"] == b"OutputFailed"
    assert len(smtp.messages) == 1
