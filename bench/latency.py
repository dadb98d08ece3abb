"""Latency: event time to SMTP acceptance while events arrive at a steady rate.

Herald runs against the builtin sink, which records the time each message's final
"." arrived, by the message's `X-Herald-Event-Id`. The paced producer (same process,
same clock) records each event's time just before handing it to the Kafka producer,
and puts the same time in the event's `time` field. A warm-up at the same rate comes
first and is not counted.

`measure_floor` runs the same paced load against a bare aiokafka consumer with
aiokafka's default fetch settings (Herald's): the part of the latency that the broker
and the fetch loop alone cost. On the embedded broker that part is large: it answers
a fetch that found no records only after `fetch_max_wait_ms` (500 ms), even when
records arrive in the meantime, where a real broker answers as soon as they do.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
import uuid
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer

from bench.broker import BrokerProcess
from bench.events import pace
from bench.report import LatencyResult
from bench.sinks import BuiltinSink
from bench.targets import herald, wait_ready

__all__ = ["measure_floor", "measure_latency"]


async def measure_latency(
    broker: BrokerProcess,
    workdir: Path,
    *,
    rate: float,
    seconds: float,
    warmup: float,
    partitions: int,
    pool_size: int,
) -> LatencyResult:
    """Run Herald on a fresh topic and measure p50 / p90 / p99 at `rate` events/s."""
    topic = f"bench.latency.{uuid.uuid4().hex[:8]}"
    broker.create_topic(topic, partitions)
    broker.create_topic(topic + ".dlq", 1)
    sink = BuiltinSink()
    port = sink.start()
    target = herald(
        workdir, bootstrap=broker.bootstrap, topic=topic, smtp_port=port, pool_size=pool_size
    )
    try:
        if await wait_ready(target) is None:
            raise RuntimeError(f"Herald did not become ready:\n{target.child.tail()}")
        await pace(broker.bootstrap, topic, "warm", rate=rate, seconds=warmup, on_send=_ignore)
        sent: dict[str, float] = {}
        run = f"lat-{uuid.uuid4().hex[:6]}"
        await pace(
            broker.bootstrap, topic, run, rate=rate, seconds=seconds, on_send=sent.__setitem__
        )
        await _wait_received(sink.accepted_at, sent, timeout=30)
    finally:
        target.child.stop()
        sink.stop()
    return _result(rate, seconds, sent, sink.accepted_at)


def _ignore(_: str, __: float) -> None:
    pass


async def measure_floor(
    broker: BrokerProcess, *, rate: float, seconds: float, partitions: int
) -> LatencyResult:
    """Event time to a bare aiokafka consumer's `getmany`, at `rate` events/s."""
    topic = f"bench.floor.{uuid.uuid4().hex[:8]}"
    broker.create_topic(topic, partitions)
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=broker.bootstrap,
        group_id=f"bench-floor-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    received: dict[str, float] = {}
    sent: dict[str, float] = {}
    reader = asyncio.create_task(_consume(consumer, received))
    try:
        while not consumer.assignment():
            await asyncio.sleep(0.05)
        await pace(
            broker.bootstrap, topic, "floor", rate=rate, seconds=seconds, on_send=sent.__setitem__
        )
        await _wait_received(received, sent, timeout=10)
    finally:
        reader.cancel()
        await consumer.stop()
    return _result(rate, seconds, sent, received)


async def _consume(consumer: AIOKafkaConsumer, received: dict[str, float]) -> None:
    while True:
        batches = await consumer.getmany(timeout_ms=200)
        now = time.time()
        for records in batches.values():
            for record in records:
                received[orjson.loads(record.value)["id"]] = now


async def _wait_received(
    received: dict[str, float], sent: dict[str, float], timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(i not in received for i in sent):
        await asyncio.sleep(0.1)


def _result(
    rate: float, seconds: float, sent: dict[str, float], accepted: dict[str, float]
) -> LatencyResult:
    in_order = [(accepted[i] - t) * 1000 for i, t in sent.items() if i in accepted]
    if not in_order:
        raise RuntimeError("nothing of the latency run arrived")
    latencies, quarter = sorted(in_order), max(1, len(in_order) // 4)
    return LatencyResult(
        rate=rate,
        seconds=seconds,
        sent=len(sent),
        received=len(latencies),
        p50_ms=_percentile(latencies, 50),
        p90_ms=_percentile(latencies, 90),
        p99_ms=_percentile(latencies, 99),
        max_ms=latencies[-1],
        p50_first_quarter_ms=statistics.median(in_order[:quarter]),
        p50_last_quarter_ms=statistics.median(in_order[-quarter:]),
    )


def _percentile(ordered: list[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]
