"""SIGTERM: start no more records, finish or cancel what is in flight, commit what finished,
exit 0; a restart delivers the rest, each email once."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

from aiokafka import TopicPartition
from aiosmtpd.smtp import SMTP, Envelope, Session

from service.app import DRAIN_S
from service.devtools.broker import EmbeddedKafka
from service.devtools.smtp import RecordingSMTP
from service.kafka.batches import Progress
from tests.harness import (
    HeraldProcess,
    Kafka,
    SlowSMTP,
    config_file,
    events,
    load_example,
    make_config,
    per_event,
    wait_until,
)

STUCK = "stuck@herald.test"


class _Slower(SlowSMTP):
    delay = 0.2  # with pool_size 2: ~10 emails/s, so 200 events are a 20 s batch


class _StuckAtRcpt(RecordingSMTP):
    """Never answers RCPT for `STUCK` (before any data went out) while `stuck` is set."""

    stuck = True

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        while address == STUCK and self.stuck:
            await asyncio.sleep(0.1)
        envelope.rcpt_tos.append(address)
        return "250 OK"


async def _stop_timed(herald: HeraldProcess) -> tuple[int, float]:
    started = time.monotonic()
    herald.signal(signal.SIGTERM)
    code = await herald.stop()
    return code, time.monotonic() - started


async def test_sigterm_during_a_long_batch_hands_back_the_rest_and_a_restart_sends_each_once(
    kafka: EmbeddedKafka, client: Kafka, tmp_path: Path
) -> None:
    with _Slower() as server:
        config = make_config(kafka, server, tmp_path)
        path = config_file(config, tmp_path / "herald.yaml")
        batch = events(200)
        await client.send_many(config.kafka.topics[0], batch)
        herald = HeraldProcess(path)
        await herald.start()
        await server.wait_for(20, timeout=30)
        code, took = await _stop_timed(herald)
        sent_before = len(server.messages)
        print(f"SIGTERM → exit {code} in {took:.2f} s, {sent_before} of 200 sent")
        assert code == 0
        # Nothing was cancelled: the sends in flight (pool_size 2) finished, the rest was
        # handed back without waiting for the drain.
        assert took < DRAIN_S, f"exit took {took:.2f} s"
        assert not herald.logged("shutdown: cancelling the records still in flight")
        handed = herald.logged("batch handed back")
        assert handed and handed[-1]["handed_back"] > 0, herald.lines[-5:]
        assert sent_before < 200
        again = HeraldProcess(path)
        await again.start()
        await server.wait_for(200, timeout=60)
        await asyncio.sleep(0.5)  # a duplicate would arrive now
        assert await again.stop() == 0
        counts = per_event(server)
    assert set(counts) == {e["id"] for e in batch}
    assert max(counts.values()) == 1, f"{sum(counts.values()) - len(counts)} duplicates"


async def test_sigterm_with_a_send_stuck_before_data_cancels_it_after_the_drain_and_exits_0(
    kafka: EmbeddedKafka, client: Kafka, tmp_path: Path
) -> None:
    with _StuckAtRcpt() as server:
        # The stuck command outlasts the drain, not the SMTP timeout.
        config = make_config(kafka, server, tmp_path, smtp={"timeout_s": 60})
        path = config_file(config, tmp_path / "herald.yaml")
        stuck = load_example("post-change-password", user_id="user-stuck", email=STUCK)
        others = events(10)
        await client.send_many(config.kafka.topics[0], [stuck, *others])
        herald = HeraldProcess(path)
        await herald.start()
        await server.wait_for(10, timeout=30)
        code, took = await _stop_timed(herald)
        print(f"SIGTERM with a stuck send → exit {code} in {took:.2f} s (drain {DRAIN_S:g} s)")
        assert code == 0
        assert DRAIN_S <= took < DRAIN_S + 8, f"exit took {took:.2f} s"
        assert herald.logged("shutdown: cancelling the records still in flight")
        assert [m.rcpt_tos for m in server.messages].count([STUCK]) == 0
        server.stuck = False
        again = HeraldProcess(path)
        await again.start()
        await wait_until(lambda: per_event(server)[stuck["id"]] >= 1, "the stuck email", 30)
        await asyncio.sleep(0.5)
        assert await again.stop() == 0
        counts = per_event(server)
    assert counts[stuck["id"]] == 1  # its claim was released: it had not been sent
    assert all(counts[e["id"]] == 1 for e in others), counts


def _record(partition: int, offset: int) -> object:
    class R:
        topic, key, value, headers = "t", None, b"", []

    r = R()
    r.partition, r.offset = partition, offset  # type: ignore[attr-defined]
    return r


def test_progress_commits_each_partition_up_to_its_first_unfinished_record() -> None:
    records = [_record(0, o) for o in (5, 6, 7)] + [_record(1, o) for o in (10, 11)]
    progress = Progress(records)  # type: ignore[arg-type]
    for r in (records[0], records[2], records[3], records[4]):
        progress.finished(r)  # type: ignore[arg-type]
    p0, p1 = TopicPartition("t", 0), TopicPartition("t", 1)
    assert progress.position(p0) == 6  # 6 did not finish: 7 is consumed again with it
    assert progress.position(p1) == 12
    assert not progress.done(p0) and progress.done(p1) and not progress.complete
    assert progress.counts() == (4, 1)
