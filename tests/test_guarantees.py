"""Delivery guarantees (README) under faults: redelivery, SMTP outage, SIGTERM, SIGKILL,
rate limit. (Several instances in one group: tests/real_kafka/test_scale_out.py; the
embedded broker's group joins are unreliable with more than one member.)"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import aiohttp
import pytest

from service.devtools.broker import EmbeddedKafka
from service.devtools.smtp import RecordingSMTP
from tests.harness import (
    HeraldProcess,
    Kafka,
    SlowSMTP,
    config_file,
    events,
    load_example,
    make_config,
    metric,
    per_event,
    running,
    wait_until,
)

pytestmark = pytest.mark.integration


async def test_same_event_three_times_sends_one_email(
    kafka: EmbeddedKafka, smtp: RecordingSMTP, client: Kafka, tmp_path: Path
) -> None:
    config = make_config(kafka, smtp, tmp_path)
    event = load_example("post-change-password")
    follow = load_example("post-change-password")
    async with running(config) as herald:
        for _ in range(3):
            await client.send(config.kafka.topics[0], event)
        await client.send(config.kafka.topics[0], follow)
        await smtp.wait_for(2)
        await wait_until(lambda: metric(herald, "herald_events_total") >= 4, "all four")
        assert metric(herald, "herald_emails_total", outcome="duplicate") == 2
    assert per_event(smtp) == {event["id"]: 1, follow["id"]: 1}


async def test_smtp_outage_pauses_and_loses_nothing(
    kafka: EmbeddedKafka, smtp: RecordingSMTP, client: Kafka, tmp_path: Path
) -> None:
    with RecordingSMTP() as first:
        port = first.port
        config = make_config(kafka, first, tmp_path, retry={"max_backoff_s": 0.2})
    batch = events(20)
    async with running(config) as herald, aiohttp.ClientSession() as http:
        for event in batch:
            await client.send(config.kafka.topics[0], event)
        await wait_until(lambda: metric(herald, "herald_consumption_paused") == 1, "paused")
        async with http.get(f"http://{herald.http.address}/readyz") as resp:
            assert resp.status == 503
        with RecordingSMTP(port=port) as back:
            await back.wait_for(20, timeout=30)
            await wait_until(lambda: metric(herald, "herald_consumption_paused") == 0, "resumed")

            async def ready() -> bool:
                async with http.get(f"http://{herald.http.address}/readyz") as resp:
                    return resp.status == 200

            await wait_until(ready, "ready again")
            assert per_event(back) == {e["id"]: 1 for e in batch}
    assert await client.read(config.kafka.topics[0] + ".dlq", 1, timeout=1) == []
    assert metric(herald, "herald_dlq_total") == 0


async def test_rate_limit_sends_two_of_five(
    kafka: EmbeddedKafka, smtp: RecordingSMTP, client: Kafka, tmp_path: Path
) -> None:
    config = make_config(kafka, smtp, tmp_path, rate_limit={"per_recipient": 2, "window_s": 600})
    same = [load_example("post-change-password", email="busy@herald.test") for _ in range(5)]
    other = load_example("post-change-password", email="calm@herald.test")
    async with running(config) as herald:
        for event in [*same, other]:
            await client.send(config.kafka.topics[0], event)
        await wait_until(lambda: metric(herald, "herald_events_total") >= 6, "all six")
        assert metric(herald, "herald_emails_total", outcome="rate_limited") == 3
    assert sorted(m.rcpt_tos[0] for m in smtp.messages) == ["busy@herald.test"] * 2 + [
        "calm@herald.test"
    ]
    assert await client.read(config.kafka.topics[0] + ".dlq", 1, timeout=1) == []


async def test_sigterm_mid_stream_exits_0_and_delivers_all_once(
    kafka: EmbeddedKafka, client: Kafka, tmp_path: Path
) -> None:
    with SlowSMTP() as server:
        config = make_config(kafka, server, tmp_path)
        path = config_file(config, tmp_path / "herald.yaml")
        batch = events(200)
        for event in batch:
            await client.send(config.kafka.topics[0], event)
        herald = HeraldProcess(path)
        await herald.start()
        await server.wait_for(20, timeout=30)
        herald.signal(signal.SIGTERM)
        assert await herald.stop() == 0
        assert 20 <= len(server.messages) < 200  # stopped mid-stream
        again = HeraldProcess(path)
        await again.start()
        await _wait_delivered(server, 200, again)
        assert await again.stop() == 0
        counts = per_event(server)
    assert set(counts) == {e["id"] for e in batch}
    assert max(counts.values()) == 1  # no duplicates


async def test_sigkill_mid_stream_then_restart_delivers_all_with_bounded_duplicates(
    kafka: EmbeddedKafka, client: Kafka, tmp_path: Path
) -> None:
    with SlowSMTP() as server:
        config = make_config(kafka, server, tmp_path)
        path = config_file(config, tmp_path / "herald.yaml")
        batch = events(300)
        for event in batch:
            await client.send(config.kafka.topics[0], event)
        herald = HeraldProcess(path)
        await herald.start()
        await server.wait_for(50, timeout=30)
        herald.kill()
        assert await herald.stop() == -signal.SIGKILL
        again = HeraldProcess(path)
        await again.start()
        await _wait_delivered(server, 300, again)
        await asyncio.sleep(0.5)  # let any redelivered duplicate arrive before counting
        assert await again.stop() == 0
        counts = per_event(server)
    duplicates = sum(counts.values()) - len(counts)
    print(f"sigkill duplicates: {duplicates}")
    assert set(counts) == {e["id"] for e in batch}
    # Only sends in flight at the kill (SMTP accepted, record not yet written) can repeat.
    assert duplicates <= config.smtp.pool_size


async def _wait_delivered(server: RecordingSMTP, count: int, herald: HeraldProcess) -> None:
    try:
        await server.wait_for(count, timeout=60)
    except TimeoutError:
        got = len(per_event(server))
        raise AssertionError(
            f"{got} of {count} delivered; log tail: {herald.lines[-15:]}"
        ) from None
