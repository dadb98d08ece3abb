"""Brokers that go away under a running `herald run`: nothing lost, nothing doubled, and
Herald recovers by itself (README: Delivery guarantees)."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import (
    GreylistingSMTP,
    HeraldProcess,
    Kafka,
    SlowSMTP,
    config_file,
    events,
    grey_event,
    make_config,
    per_event,
)
from tests.services.kraft import KafkaCluster

EVENTS = 1000


@pytest.fixture
def own_broker() -> Iterator[KafkaCluster]:
    """A single broker for one test, which may stop and start it."""
    with KafkaCluster(1) as cluster:
        yield cluster


@pytest.fixture
def slow_smtp() -> Iterator[SlowSMTP]:
    """~5 ms per message, so the stream is still flowing when a broker goes away."""
    with SlowSMTP() as server:
        server.delay = 0.005
        yield server


async def wait_emails(server: SlowSMTP, count: int, herald: HeraldProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(per_event(server)) < count:
        if time.monotonic() > deadline:
            tail = [line for line in herald.lines if line.get("level") != "debug"][-15:]
            got = len(per_event(server))
            raise AssertionError(f"{got} of {count} delivered; log tail: {tail}")
        await asyncio.sleep(0.05)


async def settle_and_count(server: SlowSMTP, herald: HeraldProcess) -> tuple[int, int]:
    """Stop Herald after a moment for late duplicates; (distinct events, duplicates)."""
    await asyncio.sleep(1.0)
    assert await herald.stop() == 0
    counts = per_event(server)
    return len(counts), sum(counts.values()) - len(counts)


async def test_broker_restart_mid_stream_loses_and_doubles_nothing(
    own_broker: KafkaCluster, slow_smtp: SlowSMTP, tmp_path: Path
) -> None:
    config = make_config(own_broker, slow_smtp, tmp_path)  # type: ignore[arg-type]
    herald = HeraldProcess(config_file(config, tmp_path / "herald.yaml"))
    await herald.start(timeout=60)
    batch = events(EVENTS)
    client = Kafka(own_broker.bootstrap)
    await client.start()
    await client.send_many(config.kafka.topics[0], batch)
    await client.stop()

    await wait_emails(slow_smtp, 300, herald, timeout=60)
    own_broker.stop_node(1)
    at_stop = len(per_event(slow_smtp))
    await asyncio.sleep(5)  # the broker is down; Herald must neither exit nor drop work
    assert herald.proc is not None and herald.proc.returncode is None
    started = time.monotonic()
    own_broker.start_node(1)
    await wait_emails(slow_smtp, EVENTS, herald, timeout=120)
    recovered_s = time.monotonic() - started
    delivered, duplicates = await settle_and_count(slow_smtp, herald)
    print(
        f"broker restart: {delivered} emails of {EVENTS}, {duplicates} duplicates, "
        f"{at_stop} sent before the stop, all delivered {recovered_s:.1f} s after the restart"
    )
    assert set(per_event(slow_smtp)) == {e["id"] for e in batch}
    assert (delivered, duplicates) == (EVENTS, 0)


async def test_leader_failover_mid_stream_loses_and_doubles_nothing(
    kafka_cluster: KafkaCluster, slow_smtp: SlowSMTP, tmp_path: Path
) -> None:
    config = make_config(kafka_cluster, slow_smtp, tmp_path)  # type: ignore[arg-type]
    topic = config.kafka.topics[0]
    herald = HeraldProcess(config_file(config, tmp_path / "herald.yaml"))
    await herald.start(timeout=60)
    batch = events(EVENTS)
    client = Kafka(kafka_cluster.bootstrap)
    await client.start()
    await client.send_many(topic, batch)
    await client.stop()

    await wait_emails(slow_smtp, 300, herald, timeout=60)
    leaders = kafka_cluster.leaders(topic)
    busiest = max(set(leaders.values()), key=list(leaders.values()).count)
    kafka_cluster.kill_node(busiest)
    killed_at = time.monotonic()
    try:
        await wait_emails(slow_smtp, EVENTS, herald, timeout=120)
        recovered_s = time.monotonic() - killed_at
        new_leaders = kafka_cluster.leaders(topic)
        delivered, duplicates = await settle_and_count(slow_smtp, herald)
    finally:
        kafka_cluster.start_node(busiest)  # the next test gets three nodes again
    led = sorted(p for p, n in leaders.items() if n == busiest)
    print(
        f"leader failover: killed node {busiest} (leader of partitions {led}); "
        f"{delivered} emails of {EVENTS}, {duplicates} duplicates, "
        f"all delivered {recovered_s:.1f} s after the kill"
    )
    assert all(new_leaders[p] not in (busiest, -1) for p in led)
    assert set(per_event(slow_smtp)) == {e["id"] for e in batch}
    assert (delivered, duplicates) == (EVENTS, 0)


async def test_a_scheduled_retry_survives_sigkill_on_real_kafka(
    real_kafka: KafkaCluster, tmp_path: Path
) -> None:
    """The retry lives on the retry topic: SIGKILL after it was scheduled, start again,
    and the email goes out once, when the server takes it."""
    with GreylistingSMTP() as server:
        config = make_config(  # type: ignore[arg-type]
            real_kafka,
            server,
            tmp_path,
            retry={"attempts": 5, "initial_backoff_s": 2, "max_backoff_s": 2},
        )
        path = config_file(config, tmp_path / "herald.yaml")
        herald = HeraldProcess(path)
        await herald.start(timeout=60)
        event = grey_event()
        client = Kafka(real_kafka.bootstrap)
        await client.start()
        await client.send(config.kafka.topics[0], event)
        await client.stop()
        await herald.wait_log("email retry scheduled", timeout=30)
        herald.kill()
        assert await herald.stop() == -signal.SIGKILL
        server.accept_grey = True
        again = HeraldProcess(path)
        await again.start(timeout=60)
        deadline = time.monotonic() + 60
        while not server.messages:
            assert time.monotonic() < deadline, "the retried email never arrived"
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        assert await again.stop() == 0
    assert per_event(server) == {event["id"]: 1}
    assert server.grey_refusals == 1
