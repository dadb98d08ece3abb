"""`kafka.exactly_once: true` on Apache Kafka: a `read_committed` reader sees each decision
and metadata command once, even when Herald is SIGKILLed mid-stream and restarted."""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from service.config import Config
from tests.harness import (
    HeraldProcess,
    Kafka,
    SlowSMTP,
    config_file,
    load_example,
    make_config,
    per_event,
)
from tests.real_kafka.test_pipeline import FLOWS
from tests.services.kraft import KafkaCluster

COUNT = 300


class _Slow(SlowSMTP):
    delay = 0.02  # the stream lasts a few seconds, so the kill lands in the middle


def _events() -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    pre = [
        load_example("pre-user-registration", user_id=f"pre-{i}", email=f"pre{i}@herald.test")
        for i in range(COUNT)
    ]
    post = [
        load_example("post-user-registration", user_id=f"new-{i}", email=f"new{i}@herald.test")
        for i in range(COUNT)
    ]
    return pre, post


def _exactly_once_config(
    cluster: KafkaCluster, server: SlowSMTP, tmp_path: Path, **sections: Any
) -> Config:
    """make_config's, with `kafka.exactly_once: true` and `FLOWS`."""
    config = make_config(cluster, server, tmp_path, flows=FLOWS, **sections)  # type: ignore[arg-type]
    kafka = config.kafka.model_copy(update={"exactly_once": True})
    return config.model_copy(update={"kafka": kafka})


async def _exactly(client: Kafka, topic: str, committed_only: bool = True) -> list[dict]:
    """Every record of `topic` (waits for one more than expected, to catch a duplicate)."""
    records = await client.read(topic, COUNT + 1, timeout=8, committed_only=committed_only)
    return [orjson.loads(r.value) for r in records]


async def test_sigkill_mid_stream_with_exactly_once_each_decision_and_command_once(
    real_kafka: KafkaCluster, real_client: Kafka, tmp_path: Path
) -> None:
    with _Slow() as server:
        config = _exactly_once_config(real_kafka, server, tmp_path)
        kafka = config.kafka
        path = config_file(config, tmp_path / "herald.yaml")
        pre, post = _events()
        interleaved = [e for pair in zip(pre, post, strict=True) for e in pair]
        await real_client.send_many(kafka.topics[0], interleaved)
        herald = HeraldProcess(path)
        await herald.start(timeout=60)
        await server.wait_for(COUNT // 3, timeout=60)
        herald.kill()
        await herald.stop()
        at_kill = len(server.messages)
        again = HeraldProcess(path)
        await again.start(timeout=60)
        await server.wait_for(COUNT, timeout=90)
        decisions = await _exactly(real_client, kafka.decisions_topic)
        commands = await _exactly(real_client, kafka.commands_topic)
        assert await again.stop() == 0
        emails = per_event(server)
    everything = await _exactly(real_client, kafka.decisions_topic, committed_only=False)
    every_command = await _exactly(real_client, kafka.commands_topic, committed_only=False)
    by_decision = Counter(d["event_id"] for d in decisions)
    by_command = Counter(c["id"] for c in commands)
    print(
        f"exactly_once: killed after {at_kill} emails; read_committed sees {len(decisions)}"
        f" decisions and {len(commands)} commands; read_uncommitted {len(everything)} and"
        f" {len(every_command)} (aborted transactions included);"
        f" email duplicates {sum(emails.values()) - len(emails)}"
    )
    assert len(decisions) == COUNT and set(by_decision) == {e["id"] for e in pre}
    assert max(by_decision.values()) == 1
    assert len(commands) == COUNT and len(by_command) == COUNT
    assert {c["data"]["user_id"] for c in commands} == {f"new-{i}" for i in range(COUNT)}
    assert set(emails) == {e["id"] for e in post}
    # Emails are effectively once through the dedupe store: only a send the server had
    # accepted when the process died, before its record, can repeat (pool_size 2).
    assert sum(emails.values()) - len(emails) <= config.smtp.pool_size


async def test_a_frozen_instance_is_fenced_when_it_wakes_and_nothing_is_doubled(
    real_kafka: KafkaCluster, real_client: Kafka, tmp_path: Path, redis_url: str
) -> None:
    """SIGSTOP an instance mid-batch past its session timeout: a second one takes its
    partitions, and its producers fence the frozen one's. SIGCONT: whatever the zombie
    still tries to commit is refused; a read_committed reader sees each output once."""
    with _Slow() as server:
        # The instances share claims in redis.
        config = _exactly_once_config(
            real_kafka, server, tmp_path, dedupe={"backend": "redis", "url": redis_url}
        )
        kafka = config.kafka
        path = config_file(config, tmp_path / "herald.yaml")
        pre, post = _events()
        interleaved = [e for pair in zip(pre, post, strict=True) for e in pair]
        await real_client.send_many(kafka.topics[0], interleaved)
        zombie = HeraldProcess(path)
        await zombie.start(timeout=60)
        await server.wait_for(COUNT // 4, timeout=60)
        zombie.signal(signal.SIGSTOP)
        frozen_at = len(server.messages)
        successor = HeraldProcess(path)
        await successor.start(timeout=60)  # after the zombie's session timed out
        await server.wait_for(COUNT, timeout=90)
        zombie.signal(signal.SIGCONT)
        await zombie.wait_log("partitions assigned", count=2, timeout=60)  # back in the group
        decisions = await _exactly(real_client, kafka.decisions_topic)
        commands = await _exactly(real_client, kafka.commands_topic)
        assert await zombie.stop() == 0
        assert await successor.stop() == 0
        emails = per_event(server)
    fenced = zombie.logged("transaction fenced: another instance owns the partition now")
    lapsed = zombie.logged("email claim lapsed before the send and was taken over; not sending")
    print(
        f"zombie: frozen after {frozen_at} emails, {len(fenced)} fenced commit(s) and"
        f" {len(lapsed)} lapsed claim(s) not sent on waking;"
        f" read_committed sees {len(decisions)} decisions, {len(commands)} commands;"
        f" email duplicates {sum(emails.values()) - len(emails)}"
    )
    assert len(decisions) == COUNT and len({d["event_id"] for d in decisions}) == COUNT
    assert len(commands) == COUNT and len({c["id"] for c in commands}) == COUNT
    assert set(emails) == {e["id"] for e in post}
    # Emails the zombie had handed to the server when it froze may be sent again once its
    # lease lapsed: per connection one on the wire and one accepted whose record was not
    # written yet (a connection takes the next email before the last one's record is
    # written). Those it had only claimed are not.
    assert sum(emails.values()) - len(emails) <= 2 * config.smtp.pool_size
