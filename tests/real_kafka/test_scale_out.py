"""Several `herald run` instances in one consumer group on real Kafka, sharing the redis
dedupe store: partitions spread over all of them, and a member killed mid-stream costs at
most the sends it had in flight (README: Delivery guarantees)."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from tests.harness import (
    HeraldProcess,
    Kafka,
    SlowSMTP,
    config_file,
    events,
    make_config,
    per_event,
    unique,
)
from tests.services.kraft import KafkaCluster

TOKEN = "scale-out-test-token-0123456789"
EVENTS = 3000
PARTITIONS = 12


def spread(herds: list[HeraldProcess]) -> list[int]:
    """Each instance's partitions, as its latest "partitions assigned" line says."""
    latest = [h.logged("partitions assigned")[-1:] for h in herds]
    return [line[0].get("partitions", 0) if line else 0 for line in latest]


async def settled_spread(herds: list[HeraldProcess], seconds: float) -> list[int]:
    """The spread once every instance holds partitions and they add up to all of them:
    an instance that held them all before the others joined logs its smaller share
    only when the rebalance reaches it."""
    deadline = time.monotonic() + seconds
    while not (all(now := spread(herds)) and sum(now) == PARTITIONS):
        assert time.monotonic() < deadline, f"partitions not spread over every instance: {now}"
        await asyncio.sleep(0.1)
    return now


def tails(herds: list[HeraldProcess]) -> str:
    """The last lines above debug of each instance, for a failure message."""
    return "; ".join(
        f"instance {i}: {[line for line in h.lines if line.get('level') != 'debug'][-8:]}"
        for i, h in enumerate(herds)
    )


@pytest.mark.timeout(240)
async def test_three_instances_a_kill_and_a_fourth_deliver_every_email(
    real_kafka: KafkaCluster, tmp_path: Path, redis_url: str
) -> None:
    with SlowSMTP() as server:
        base = make_config(  # type: ignore[arg-type]
            real_kafka, server, tmp_path, dedupe={"backend": "redis", "url": redis_url}
        )
        topic = unique("events")
        real_kafka.create_topics([topic], PARTITIONS)
        real_kafka.create_topic(topic + ".dlq", 1)
        config = base.model_copy(
            update={"kafka": base.kafka.model_copy(update={"topics": [topic]})}
        )
        path = config_file(config, tmp_path / "herald.yaml")
        herds = [HeraldProcess(path) for _ in range(3)]
        await asyncio.gather(*(h.start(timeout=60) for h in herds))
        first_spread = await settled_spread(herds, 60)

        batch = events(EVENTS)
        client = Kafka(real_kafka.bootstrap)
        await client.start()
        await client.send_many(topic, batch)
        await client.stop()

        await server.wait_for(EVENTS // 5, timeout=60)
        victim = herds[1]
        victim.kill()
        assert await victim.stop() == -signal.SIGKILL
        at_kill = len(per_event(server))
        fourth = HeraldProcess(path)
        await fourth.start(timeout=90)
        survivors = [herds[0], herds[2], fourth]

        deadline = time.monotonic() + 150
        while len(per_event(server)) < EVENTS:
            got = len(per_event(server))
            assert time.monotonic() < deadline, f"{got} of {EVENTS} delivered; " + tails(survivors)
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # late duplicates, if any, arrive before the count
        final_spread = await settled_spread(survivors, 30)
        waited = sum(
            len(h.logged("email claimed by another sender, waiting for its outcome"))
            for h in survivors
        )
        for herald in survivors:
            assert await herald.stop() == 0
        counts = per_event(server)
    duplicates = sum(counts.values()) - len(counts)
    print(
        f"scale-out: {len(counts)} emails of {EVENTS} over {PARTITIONS} partitions, "
        f"{duplicates} duplicates; partitions per instance {first_spread} → "
        f"{final_spread} after a SIGKILL at {at_kill} emails and a fourth instance; "
        f"{waited} emails waited for a claim the killed instance held"
    )
    assert set(counts) == {e["id"] for e in batch}
    # Only the killed instance's sends in flight (SMTP accepted, record not written) repeat.
    assert duplicates <= config.smtp.pool_size
    assert all(h.logged("event processed") for h in survivors)


async def test_two_instances_share_the_partitions_and_send_each_email_once(
    real_kafka: KafkaCluster, tmp_path: Path, redis_url: str
) -> None:
    """No kill: a rebalance alone (the second instance joining) sends nothing twice; and
    either instance answers `GET /v1/messages` for the emails the other one sent."""
    with SlowSMTP() as server:
        config = make_config(  # type: ignore[arg-type]
            real_kafka,
            server,
            tmp_path,
            dedupe={"backend": "redis", "url": redis_url},
            http={"host": "127.0.0.1", "port": 0, "token": TOKEN},
        )
        path = config_file(config, tmp_path / "herald.yaml")
        first, second = HeraldProcess(path), HeraldProcess(path)
        await first.start(timeout=60)
        batch = events(400)
        client = Kafka(real_kafka.bootstrap)
        await client.start()
        await client.send_many(config.kafka.topics[0], batch[:200])
        await second.start(timeout=60)  # joins mid-stream: a rebalance under load
        await client.send_many(config.kafka.topics[0], batch[200:])
        await client.stop()
        await server.wait_for(len(batch), timeout=60)
        await asyncio.sleep(0.5)
        spread = [h.logged("partitions assigned")[-1]["partitions"] for h in (first, second)]
        sample = batch[::20]
        answers = {
            (event["id"], n): await _statuses(herald, event["id"])
            for event in sample
            for n, herald in enumerate((first, second))
        }
        assert await first.stop() == 0
        assert await second.stop() == 0
        counts = per_event(server)
    assert set(counts) == {e["id"] for e in batch}
    assert max(counts.values()) == 1
    assert spread == [2, 2]
    assert first.logged("event processed") and second.logged("event processed")
    assert len(answers) == 2 * len(sample)
    assert set(answers.values()) == {(200, ("sent",))}


async def _statuses(herald: HeraldProcess, event_id: str) -> tuple[int, tuple[str, ...]]:
    """`GET /v1/messages?event_id=` of one instance: the HTTP status and the records'."""
    base = f"http://{herald.logged('http listening')[-1]['http']}"
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http,
        http.get(f"{base}/v1/messages", params={"event_id": event_id}) as response,
    ):
        body = await response.json()
    return response.status, tuple(m["status"] for m in body.get("messages", []))
