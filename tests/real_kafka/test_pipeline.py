"""The core pipeline on Apache Kafka itself: `herald run` as a subprocess, real events in,
emails, dead letters, decisions and metadata commands out."""

from __future__ import annotations

from email.utils import parseaddr
from pathlib import Path

import orjson

from service.devtools.smtp import RecordingSMTP
from tests.harness import (
    EMAIL_FLOWS,
    HeraldProcess,
    Kafka,
    config_file,
    load_example,
    make_config,
    unique,
)
from tests.services.kraft import KafkaCluster

FLOWS = {
    **{
        trigger: [{"id": f"email-{template}", "action": "send_email", "template": template}]
        for trigger, template in EMAIL_FLOWS.items()
    },
    "post-user-registration": [
        {"id": "welcome", "action": "send_email", "template": "welcome"},
        {"id": "init", "action": "set_metadata", "app_metadata": {"is_new_user": True}},
    ],
    "pre-user-registration": [
        {"id": "init", "action": "set_metadata", "user_metadata": {"ui_color": "default"}},
    ],
}


async def start_herald(
    cluster: KafkaCluster, smtp: RecordingSMTP, tmp_path: Path
) -> tuple[HeraldProcess, str, str, str]:
    """`herald run` on its own topics; returns it with the input, commands, decisions topics."""
    config = make_config(cluster, smtp, tmp_path, flows=FLOWS)  # type: ignore[arg-type]
    herald = HeraldProcess(config_file(config, tmp_path / "herald.yaml"))
    await herald.start(timeout=60)
    kafka = config.kafka
    return herald, kafka.topics[0], kafka.commands_topic, kafka.decisions_topic


async def test_an_email_per_trigger_over_real_kafka(
    real_kafka: KafkaCluster, smtp: RecordingSMTP, real_client: Kafka, tmp_path: Path
) -> None:
    herald, topic, _, _ = await start_herald(real_kafka, smtp, tmp_path)
    events = {trigger: load_example(trigger, locale="en") for trigger in EMAIL_FLOWS}
    for event in events.values():
        await real_client.send(topic, event)
    received = await smtp.wait_for(len(events), timeout=30)
    assert await herald.stop() == 0
    by_event = {r.message["X-Herald-Event-Id"]: r for r in received}
    assert sorted(by_event) == sorted(e["id"] for e in events.values())
    for trigger, event in events.items():
        got = by_event[event["id"]]
        assert got.rcpt_tos == [event["data"]["user"]["email"]]
        assert parseaddr(got.message["To"])[1] == event["data"]["user"]["email"]
        assert got.message["X-Herald-Template"] == EMAIL_FLOWS[trigger]
    assert len(smtp.messages) == len(events)


async def test_a_malformed_record_is_dead_lettered_with_its_headers(
    real_kafka: KafkaCluster, smtp: RecordingSMTP, real_client: Kafka, tmp_path: Path
) -> None:
    herald, topic, _, _ = await start_herald(real_kafka, smtp, tmp_path)
    original = [("trace", b"\xff\x00raw"), ("ce_source", b"https://idp.test")]
    await real_client.send(topic, b"{not json", key=b"user-7", headers=original)
    after = load_example("post-change-password")
    await real_client.send(topic, after)
    [dead] = await real_client.read(topic + ".dlq", 1, timeout=30)
    await smtp.wait_for(1, timeout=30)
    assert await herald.stop() == 0
    assert (dead.key, dead.value) == (b"user-7", b"{not json")
    headers = dict(dead.headers)
    assert headers["trace"] == b"\xff\x00raw" and headers["ce_source"] == b"https://idp.test"
    assert headers["x-herald-error"] == b"MalformedEvent"
    assert b"not valid JSON" in headers["x-herald-reason"]
    assert headers["x-herald-original-topic"] == topic.encode()
    assert headers["x-herald-original-partition"].isdigit()
    assert headers["x-herald-original-offset"].isdigit()
    assert headers["x-herald-failed-at"].startswith(b"20")
    assert smtp.messages[0].message["X-Herald-Event-Id"] == after["id"]


async def test_a_decision_on_reply_to_and_a_metadata_command(
    real_kafka: KafkaCluster, smtp: RecordingSMTP, real_client: Kafka, tmp_path: Path
) -> None:
    herald, topic, commands, _ = await start_herald(real_kafka, smtp, tmp_path)
    reply_to = unique("replies")
    real_kafka.create_topic(reply_to, 1)
    signup = load_example("pre-user-registration")
    await real_client.send(
        topic, signup, headers=[("reply_to", reply_to.encode()), ("correlation_id", b"corr-9")]
    )
    registered = load_example("post-user-registration")
    await real_client.send(topic, registered)
    [command] = await real_client.read(commands, 1, timeout=30)
    await smtp.wait_for(1, timeout=30)
    # Exactly one record on the caller's topic: the decision, nothing else after it.
    [reply] = await real_client.read(reply_to, 2, timeout=3)
    assert await herald.stop() == 0

    assert dict(reply.headers)["correlation_id"] == b"corr-9"
    decision = orjson.loads(reply.value)
    assert decision["event_id"] == signup["id"]
    assert (decision["trigger"], decision["decision"]) == ("pre-user-registration", "allow")
    assert decision["user_metadata"] == {"ui_color": "default"}

    user_id = registered["data"]["user"]["user_id"]
    assert command.key == user_id.encode()
    body = orjson.loads(command.value)
    assert body["type"] == "identity.user.metadata_update"
    assert body["data"] == {
        "user_id": user_id,
        "user_metadata": {},
        "app_metadata": {"is_new_user": True},
    }
