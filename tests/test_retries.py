"""Scheduled retries (README: "Delivery guarantees"): a transient failure goes to the
retry topic and the batch moves on; nobody else waits for a greylisting recipient."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import orjson
import pytest

from service.devtools.broker import EmbeddedKafka
from service.devtools.smtp import RecordingSMTP
from service.retry.policy import RetryPolicy
from tests.harness import (
    GREY,
    GreylistingSMTP,
    HeraldProcess,
    Kafka,
    config_file,
    events,
    grey_event,
    load_example,
    make_config,
    metric,
    per_event,
    running,
    wait_until,
)

pytestmark = pytest.mark.integration


async def test_a_greylisted_recipient_holds_back_nobody(
    kafka: EmbeddedKafka, client: Kafka, tmp_path: Path
) -> None:
    retry = {"attempts": 8, "initial_backoff_s": 1, "max_backoff_s": 30}
    with GreylistingSMTP() as server:
        config = make_config(kafka, server, tmp_path, retry=retry)
        topic = config.kafka.topics[0]
        grey, others = grey_event(), events(40)
        async with running(config) as herald:
            await client.send(topic, grey)
            await wait_until(lambda: server.grey_refusals >= 1, "the first greylisting")
            started = time.monotonic()
            for event in others:
                await client.send(topic, event)
            await server.wait_for(len(others), timeout=30)
            others_s = time.monotonic() - started
            assert GREY not in [r for m in server.messages for r in m.rcpt_tos]
            await wait_until(lambda: server.grey_refusals >= 2, "a scheduled retry", 10)
            server.accept_grey = True  # the greylisting window is over
            await wait_until(lambda: GREY in _recipients(server), "the greylisted email", 30)
            await asyncio.sleep(0.3)
            deferred = metric(herald, "herald_emails_total", outcome="deferred")
    print(f"greylisting: 40 other emails in {others_s:.2f} s; {server.grey_refusals} refusals")
    counts = per_event(server)
    assert counts[grey["id"]] == 1
    assert all(counts[e["id"]] == 1 for e in others)
    assert others_s < 5
    assert deferred == server.grey_refusals


async def test_retries_run_out_into_a_dead_letter_with_the_last_reply(
    kafka: EmbeddedKafka, client: Kafka, tmp_path: Path
) -> None:
    retry = {"attempts": 3, "initial_backoff_s": 0.05, "max_backoff_s": 0.1}
    with GreylistingSMTP() as server:
        config = make_config(kafka, server, tmp_path, retry=retry)
        topic = config.kafka.topics[0]
        grey = grey_event()
        async with running(config):
            await client.send(topic, grey, headers=[("trace", b"t-1")])
            [dead] = await client.read(topic + ".dlq", 1, timeout=20)
    headers = dict(dead.headers)
    assert server.grey_refusals == 3
    assert headers["x-herald-error"] == b"SmtpRetriesExhausted"
    assert b"gave up after 3 attempts: 451 4.7.1 Greylisted" in headers["x-herald-reason"]
    assert headers["x-herald-original-topic"] == topic.encode()
    assert headers["trace"] == b"t-1"
    assert not any(name.startswith("x-herald-retry-") for name in headers)
    assert dead.value is not None and grey["id"].encode() in dead.value


async def test_a_scheduled_retry_survives_sigkill(
    kafka: EmbeddedKafka, client: Kafka, tmp_path: Path
) -> None:
    """The retry is on Kafka, not in memory: a new process picks it up and sends once."""
    retry = {"attempts": 5, "initial_backoff_s": 2, "max_backoff_s": 2}
    with GreylistingSMTP() as server:
        config = make_config(kafka, server, tmp_path, retry=retry)
        path = config_file(config, tmp_path / "herald.yaml")
        herald = HeraldProcess(path)
        await herald.start()
        grey = grey_event()
        await client.send(config.kafka.topics[0], grey)
        await herald.wait_log("email retry scheduled", timeout=20)
        herald.kill()
        assert await herald.stop() == -signal.SIGKILL
        server.accept_grey = True
        again = HeraldProcess(path)
        await again.start()
        await wait_until(lambda: GREY in _recipients(server), "the retried email", 30)
        await asyncio.sleep(0.5)
        assert await again.stop() == 0
    assert per_event(server) == {grey["id"]: 1}


async def test_the_oldest_retry_age_grows_while_it_waits_and_is_0_once_sent(
    kafka: EmbeddedKafka, client: Kafka, tmp_path: Path
) -> None:
    retry = {"attempts": 5, "initial_backoff_s": 2, "max_backoff_s": 2}
    with GreylistingSMTP() as server:
        config = make_config(kafka, server, tmp_path, retry=retry)
        async with running(config) as herald:
            assert metric(herald, "herald_retry_oldest_seconds") == 0
            await client.send(config.kafka.topics[0], grey_event())
            await wait_until(lambda: metric(herald, "herald_retries_pending") == 1, "read back")
            await asyncio.sleep(0.5)
            waiting = metric(herald, "herald_retry_oldest_seconds")
            await asyncio.sleep(0.5)
            later = metric(herald, "herald_retry_oldest_seconds")
            server.accept_grey = True
            await wait_until(lambda: GREY in _recipients(server), "the greylisted email", 30)
            await wait_until(lambda: metric(herald, "herald_retries_pending") == 0, "finished")
            after = metric(herald, "herald_retry_oldest_seconds")
    print(f"oldest retry: {waiting:.2f} s, then {later:.2f} s while waiting; {after} once sent")
    assert 0.5 <= waiting < 2.5
    assert later >= waiting + 0.4
    assert after == 0


def test_backoff_is_exponential_capped_and_jittered_upwards() -> None:
    policy = RetryPolicy(8, 0.5, 4)
    assert policy.schedule() == [0.5, 1, 2, 4, 4, 4, 4]
    for attempt, base in zip(range(2, 9), policy.schedule(), strict=True):
        for _ in range(50):
            assert base <= policy.delay(attempt) <= base * 1.2
    assert not policy.exhausted(7) and policy.exhausted(8)


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(0, 0.5, 30)
    with pytest.raises(ValueError):
        RetryPolicy(3, -1, 30)


def test_the_default_schedule_spreads_eight_attempts_over_twenty_minutes() -> None:
    waits = RetryPolicy().schedule()
    assert len(waits) == 7 and sum(waits) >= 20 * 60
    assert all(RetryPolicy().delay(n) >= w for n, w in zip(range(2, 9), waits, strict=True))


def _recipients(server: RecordingSMTP) -> list[str]:
    return [r for m in server.messages for r in m.rcpt_tos]


@pytest.mark.timeout(180)
async def test_a_long_outage_does_not_use_up_the_rate_limit(
    kafka: EmbeddedKafka, client: Kafka, tmp_path: Path
) -> None:
    """75 s without an SMTP server, `per_recipient: 2`: every rewind of the batch used to
    count one more send against the limit until the email was skipped as rate-limited.
    Only an email the server accepted counts now."""
    with RecordingSMTP() as first:
        port = first.port
        config = make_config(
            kafka,
            first,
            tmp_path,
            rate_limit={"per_recipient": 2, "window_s": 3600},
            retry={"max_backoff_s": 1},
        )
    event = load_example("post-change-password", email="ada@herald.test")
    async with running(config) as herald:
        await client.send(config.kafka.topics[0], event)
        await wait_until(lambda: metric(herald, "herald_consumption_paused") == 1, "paused")
        await asyncio.sleep(75)
        with RecordingSMTP(port=port) as back:
            await back.wait_for(1, timeout=60)
            await asyncio.sleep(0.5)
            limited = metric(herald, "herald_emails_total", outcome="rate_limited")
    assert per_event(back) == {event["id"]: 1}
    assert limited == 0


async def test_an_event_too_large_for_its_retry_item_is_dead_lettered(
    kafka: EmbeddedKafka, client: Kafka, tmp_path: Path
) -> None:
    """An event just under 1 MiB whose email fails transiently: its retry item (the event
    plus the retry headers) would exceed Kafka's request size. The event is dead-lettered
    as OutputFailed instead of rewinding its batch forever; the next one goes out."""
    with GreylistingSMTP() as server:
        config = make_config(kafka, server, tmp_path, retry={"attempts": 3})
        topic = config.kafka.topics[0]
        big = grey_event()
        big["data"]["user"]["app_metadata"] = {"pad": ""}  # type: ignore[index]
        size = len(orjson.dumps(big))
        big["data"]["user"]["app_metadata"] = {"pad": "x" * (1024 * 1024 - 200 - size)}  # type: ignore[index]
        after = load_example("post-change-password", user_id="user-grey")
        async with running(config):
            await client.send(topic, big)
            await client.send(topic, after)
            [dead] = await client.read(topic + ".dlq", 1, timeout=20)
            await server.wait_for(1, timeout=20)
    headers = dict(dead.headers)
    assert headers["x-herald-error"] == b"OutputFailed"
    assert b"retry item" in headers["x-herald-reason"]
    assert per_event(server) == {after["id"]: 1}
