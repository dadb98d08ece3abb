"""Latency: event time to SMTP acceptance while events arrive at a steady rate.

Herald runs against the builtin sink, which records the time each message's final
"." arrived, by the message's `X-Herald-Event-Id`. The paced producer (same process,
same clock) records each event's time just before handing it to the Kafka producer,
and puts the same time in the event's `time` field. A warm-up at the same rate comes
first and is not counted.

`measure_partial_failure` is the latency under partial failure: the same paced load
(`--partial-rate`, 300 events/s) where 1 event in 100 goes to a greylisted recipient,
whom the builtin sink answers `451 4.7.1 Greylisted` at RCPT for the whole run, and
Herald runs with its real retry schedule (8 attempts from 10 s to 900 s: the
greylisted emails go to the retry topic and stay pending). Its latency counts only
the other emails; a control run at the same rate with nobody greylisted comes first.

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
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer

from bench.broker import BrokerProcess
from bench.events import GREY_PREFIX, pace
from bench.report import LatencyResult, PartialFailureResult
from bench.sinks import BuiltinSink
from bench.targets import Samples, Target, herald, metric, scrape_metrics, wait_ready

__all__ = [
    "GREY_EVERY",
    "REAL_RETRY",
    "measure_floor",
    "measure_latency",
    "measure_partial_failure",
]

GREY_EVERY = 100  # 1% of the recipients greylisted
REAL_RETRY = {"attempts": 8, "initial_backoff_s": 10, "max_backoff_s": 900}  # Herald's defaults


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
    run = await _paced_herald(
        broker, workdir, rate=rate, seconds=seconds, warmup=warmup,
        partitions=partitions, pool_size=pool_size,
    )  # fmt: skip
    return _result(rate, seconds, run.sent, run.sink.accepted_at)


async def measure_partial_failure(
    broker: BrokerProcess,
    workdir: Path,
    *,
    rate: float,
    seconds: float,
    warmup: float,
    partitions: int,
    pool_size: int,
    grey_every: int = GREY_EVERY,
    retry: dict[str, float] | None = None,
) -> PartialFailureResult:
    """Latency of the other emails while 1 in `grey_every` recipients answers 451 throughout.

    Two Herald runs, each on a fresh topic against a fresh builtin sink, with the retry
    schedule `retry` (default `REAL_RETRY`): a control run with nobody greylisted, then
    the greylisted one. Warm-up and measured events alike have greylisted recipients.
    """
    retry = dict(retry or REAL_RETRY)
    control, grey = [
        await _paced_herald(
            broker, workdir / name, rate=rate, seconds=seconds, warmup=warmup,
            partitions=partitions, pool_size=pool_size, grey_every=every, retry=retry,
        )
        for name, every in (("control", 0), ("greylisted", grey_every))
    ]  # fmt: skip
    others = {i: t for i, t in grey.sent.items() if i not in grey.grey}
    accepted = grey.sink.accepted_at
    samples = grey.samples
    return PartialFailureResult(
        rate=rate,
        seconds=seconds,
        grey_every=grey_every,
        retry=retry,
        control=_result(rate, seconds, control.sent, control.sink.accepted_at),
        others=_result(rate, seconds, others, accepted),
        greylisted=len(grey.grey),
        greylisted_warmup=len(grey.warm_grey),
        grey_delivered=sum(i in accepted for i in grey.grey | grey.warm_grey),
        refusals=sum(grey.sink.refused.values()),
        deferred=int(metric(samples, "herald_emails_total", outcome="deferred")),
        retries_scheduled=int(metric(samples, "herald_smtp_retries_total")),
        pending=int(metric(samples, "herald_retries_pending")),
        dead_letters=int(metric(samples, "herald_dlq_total")),
    )


@dataclass
class _Paced:
    """One paced Herald run: what was sent when, which were greylisted, what arrived."""

    sink: BuiltinSink
    sent: dict[str, float] = field(default_factory=dict)  # measured event id → time sent
    grey: set[str] = field(default_factory=set)  # measured ids with a greylisted recipient
    warm_grey: set[str] = field(default_factory=set)  # warm-up ids with one
    samples: Samples = field(default_factory=list)  # Herald's metrics at the end


async def _paced_herald(
    broker: BrokerProcess,
    workdir: Path,
    *,
    rate: float,
    seconds: float,
    warmup: float,
    partitions: int,
    pool_size: int,
    grey_every: int = 0,
    retry: dict[str, float] | None = None,
) -> _Paced:
    """Herald on a fresh topic: a warm-up, then `seconds` at `rate` events/s, measured.

    Waits for every email to a recipient not greylisted, and for every greylisted one
    to be pending in Herald's retry scheduler; then reads Herald's metrics and stops it.
    """
    topic = f"bench.latency.{uuid.uuid4().hex[:8]}"
    broker.create_topic(topic, partitions)
    broker.create_topic(topic + ".dlq", 1)
    broker.create_topic(topic + ".retry", partitions)
    run = _Paced(BuiltinSink(greylist=GREY_PREFIX if grey_every else None))
    port = run.sink.start()
    target = herald(
        workdir, bootstrap=broker.bootstrap, topic=topic, smtp_port=port,
        pool_size=pool_size, retry=retry,
    )  # fmt: skip
    try:
        if await wait_ready(target) is None:
            raise RuntimeError(f"Herald did not become ready:\n{target.child.tail()}")
        await pace(
            broker.bootstrap, topic, "warm", rate=rate, seconds=warmup, on_send=_ignore,
            grey_every=grey_every, on_grey=run.warm_grey.add,
        )  # fmt: skip
        await pace(
            broker.bootstrap, topic, f"lat-{uuid.uuid4().hex[:6]}", rate=rate,
            seconds=seconds, on_send=run.sent.__setitem__, grey_every=grey_every,
            on_grey=run.grey.add,
        )  # fmt: skip
        others = {i: t for i, t in run.sent.items() if i not in run.grey}
        await _wait_received(run.sink.accepted_at, others, timeout=30)
        await _wait_retries_pending(target, run, timeout=15)
    finally:
        target.child.stop()
        run.sink.stop()
    return run


async def _wait_retries_pending(target: Target, run: _Paced, timeout: float) -> None:
    """Until each greylisted email was deferred and its retry read back from the retry
    topic (or dead-lettered); `run.samples` are the last metrics read."""
    greylisted = len(run.grey) + len(run.warm_grey)
    deadline = time.monotonic() + timeout
    while True:
        run.samples = samples = await scrape_metrics(target)
        deferred = metric(samples, "herald_emails_total", outcome="deferred")
        settled = metric(samples, "herald_retries_pending") + metric(samples, "herald_dlq_total")
        if (deferred >= greylisted and settled >= greylisted) or time.monotonic() > deadline:
            return
        await asyncio.sleep(0.1)


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
