"""What `kafka.exactly_once: true` costs, on Apache Kafka: Herald off against on, one session.

    python -m bench.eos [--events 10000] [--runs 3] [--partitions 16]
                        [--smtp auto|postfix|builtin] [--write]

The embedded broker of `bench.run` does not honour transactions, so this starts one real
KRaft broker (tests/services/kraft.py, from the jars `tests/services/install` caches) and
publishes N events for each workload, once, to a topic of `--partitions` partitions:

- **emails**: `bench.run`'s flow, post-change-password → the password_changed email;
- **emails + commands**: post-user-registration → the welcome email and a `set_metadata`
  command (`app_metadata: {is_new_user: true}`) written to Kafka for every event.

Then Herald runs `--runs` pairs per workload, exactly_once off and on (the order flips
every pair: off-on, on-off, …), each run in a fresh consumer group, with a fresh dedupe
file, against a fresh SMTP sink and (emails + commands) a fresh commands topic, which is
read back `read_committed` after the run: a run is complete when every email was
accepted and every command is there. Throughput and CPU as in `bench.run`; the broker's
CPU per email is sampled over the same interval. See BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench import commit_latency
from bench.events import EVENT_TYPE, REGISTERED_TYPE, publish_bulk
from bench.procs import ROOT, cpu_seconds
from bench.report import RunResult, machine, update_section
from bench.run import Sink, _measure, _smtp_sink
from bench.sinks import BuiltinSink, PostfixSink
from bench.targets import PASSWORD_CHANGED_FLOWS, herald, wait_ready
from tests.services.kraft import KafkaCluster, kafka_libs, kafka_version

__all__ = ["main"]

SECTION = "bench:eos"
_WARM_UP = "bench.eos.warm-up"


@dataclass(frozen=True)
class Workload:
    name: str
    event_type: str
    flows: dict[str, list[dict[str, Any]]]
    commands: bool  # every event also writes a metadata command


WORKLOADS = (
    Workload("emails", EVENT_TYPE, PASSWORD_CHANGED_FLOWS, commands=False),
    Workload(
        "emails + commands",
        REGISTERED_TYPE,
        {
            "post-user-registration": [
                {"id": "welcome", "action": "send_email", "template": "welcome"},
                {"id": "init", "action": "set_metadata", "app_metadata": {"is_new_user": True}},
            ]
        },
        commands=True,
    ),
)


@dataclass
class EosRun:
    """One Herald run: the throughput result, the commands read back, the broker's CPU."""

    workload: str
    exactly_once: bool
    result: RunResult
    commands: int | None  # committed metadata commands read back (None: the workload has none)
    distinct_commands: int | None
    markers: int | None  # offsets of the commands topic holding no committed command
    broker_cpu_us: float | None  # the broker's CPU per email, first to last acceptance
    log_lines: int  # lines in herald.log (level WARNING: every one a warning or an error)

    @property
    def complete(self) -> bool:
        commands_ok = self.commands is None or (self.distinct_commands or 0) >= self.result.expected
        return self.result.complete and commands_ok


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.eos", description=__doc__)
    p.add_argument("--events", type=int, default=10_000, help="events per run (10000)")
    p.add_argument("--runs", type=int, default=3, help="off/on pairs per workload (3)")
    p.add_argument("--partitions", type=int, default=16, help="partitions of the topic (16)")
    p.add_argument("--pool-size", type=int, default=8, help="Herald's smtp.pool_size (8)")
    p.add_argument("--smtp", choices=("auto", "postfix", "builtin"), default="auto")
    p.add_argument("--write", action="store_true", help="update the section in BENCHMARKS.md")
    return p.parse_args(argv)


class _BrokerCpu:
    """Samples the broker's CPU at the first acceptance and at each later one."""

    def __init__(self, pid: int, sink: Sink) -> None:
        self.pid, self.sink = pid, sink
        self.first: tuple[int, float] | None = None
        self.last: tuple[int, float] | None = None
        self.task = asyncio.create_task(self._sample())

    async def _sample(self) -> None:
        while True:
            count = self.sink.count
            if count and self.first is None:
                self.first = (count, cpu_seconds(self.pid))
            elif self.first is not None and count != (self.last or self.first)[0]:
                self.last = (count, cpu_seconds(self.pid))
            await asyncio.sleep(0.02)

    def us_per_email(self) -> float | None:
        self.task.cancel()
        if self.first is None or self.last is None:
            return None
        return (self.last[1] - self.first[1]) / (self.last[0] - self.first[0]) * 1e6


class Session:
    """The broker, one pre-published topic per workload, a scratch directory."""

    def __init__(
        self, args: argparse.Namespace, cluster: KafkaCluster, workdir: Path, smtp_sink: str | None
    ) -> None:
        self.args, self.cluster, self.workdir = args, cluster, workdir
        self.smtp_sink = smtp_sink  # smtp-sink's path, None: the builtin sink
        self.tag = uuid.uuid4().hex[:8]
        self.topics: dict[str, str] = {}

    async def setup(self) -> None:
        """Create Kafka's internal topics, then each workload's topics, and publish."""
        self.cluster.create_topic(_WARM_UP)
        await _warm_up(self.cluster.bootstrap)
        for number, workload in enumerate(WORKLOADS):
            topic = f"bench.eos.{self.tag}.{number}"
            # What `herald topics create` makes for an input: its retry and dead-letter topics.
            names = [topic, topic + ".retry", topic + ".dlq"]
            self.cluster.create_topics(names, self.args.partitions)
            started = time.monotonic()
            await publish_bulk(
                self.cluster.bootstrap,
                topic,
                f"eos{number}",
                self.args.events,
                event_type=workload.event_type,
            )
            elapsed = time.monotonic() - started
            _say(
                f"published {self.args.events} {workload.event_type} events to {topic} "
                f"in {elapsed:.1f} s"
            )
            self.topics[workload.name] = topic

    async def run(self, workload: Workload, exactly_once: bool, index: int) -> EosRun:
        """One Herald run over the workload's topic, against a fresh sink."""
        commands = None
        if workload.commands:
            commands = f"bench.eos.{self.tag}.commands.{index:02d}"
            self.cluster.create_topic(commands, self.args.partitions)
        sink: Sink = PostfixSink(self.smtp_sink) if self.smtp_sink else BuiltinSink()
        workdir = self.workdir / f"{index:02d}-{'on' if exactly_once else 'off'}"
        target = herald(
            workdir,
            bootstrap=self.cluster.bootstrap,
            topic=self.topics[workload.name],
            smtp_port=sink.start(),
            pool_size=self.args.pool_size,
            exactly_once=exactly_once,
            flows=workload.flows,
            commands_topic=commands,
        )
        broker = self.cluster.nodes[0].proc
        assert broker is not None
        broker_cpu = _BrokerCpu(broker.pid, sink)
        ready = asyncio.create_task(wait_ready(target, timeout=60))
        try:
            result = await _measure(target, sink, self.args.events, None)
            result.ready_s = await asyncio.wait_for(ready, 65)
        finally:
            ready.cancel()
            broker_us = broker_cpu.us_per_email()
            result_exit = target.child.stop()
            sink.stop()
        result.exit_code = result_exit
        read = await _read_commands(self.cluster.bootstrap, commands, self.args.partitions)
        log = target.child.log.read_text(errors="replace").splitlines()
        run = EosRun(
            workload.name,
            exactly_once,
            result,
            *read,
            broker_us,
            sum(1 for line in log if line.strip()),
        )
        if not run.complete or run.log_lines or result_exit != 0:
            _say(
                f"run {index} ({workload.name}, exactly_once {exactly_once}): "
                f"{result.emails}/{result.expected} emails, commands {read[0]}, "
                f"exit {result_exit}; herald.log:\n{target.child.tail()}"
            )
        return run


async def _warm_up(bootstrap: str) -> None:
    """A group commit and a transaction, so that the broker creates `__consumer_offsets`
    and `__transaction_state` now, not in the first run of each setting."""
    topic, tp = _WARM_UP, TopicPartition(_WARM_UP, 0)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id="bench-warm-up")
    await producer.start()
    try:
        async with producer.transaction():
            await producer.send_and_wait(topic, b"warm-up")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id="bench-warm-up", enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.commit({tp: 1})
    finally:
        await consumer.stop()


async def _read_commands(
    bootstrap: str, topic: str | None, partitions: int
) -> tuple[int | None, int | None, int | None]:
    """Committed records of `topic`, their distinct command ids, and the offsets that
    hold none: transaction markers, one per partition a transaction wrote, and aborted
    records (0 without transactions). All None without a topic."""
    if topic is None:
        return None, None, None
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)  # the last stable offsets, read_committed
        count, ids, quiet = 0, set(), time.monotonic()
        deadline = quiet + 60
        while time.monotonic() < deadline and time.monotonic() - quiet < 5:
            batches = await consumer.getmany(timeout_ms=500, max_records=5000)
            for records in batches.values():
                count += len(records)
                ids.update(orjson.loads(r.value)["id"] for r in records if r.value)
                quiet = time.monotonic()
            positions = [await consumer.position(tp) for tp in tps]
            if all(at >= end[tp] for at, tp in zip(positions, tps, strict=True)):
                break
        return count, len(ids), sum(end.values()) - count
    finally:
        await consumer.stop()


async def run(
    args: argparse.Namespace, smtp_sink: str | None
) -> tuple[list[EosRun], dict[str, float]]:
    """Start the broker, publish, then the pairs: per pair, each workload off and on; then
    the commit latency of each way (bench/commit_latency.py)."""
    runs: list[EosRun] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="herald-eos-") as scratch, KafkaCluster(1) as cluster:
        _say(
            f"Apache Kafka {kafka_version()} up at {cluster.bootstrap} "
            f"in {time.monotonic() - started:.0f} s"
        )
        session = Session(args, cluster, Path(scratch), smtp_sink)
        await session.setup()
        for pair in range(args.runs):
            for workload in WORKLOADS:
                for exactly_once in (False, True) if pair % 2 == 0 else (True, False):
                    found = await session.run(workload, exactly_once, len(runs) + 1)
                    r = found.result
                    _say(
                        f"{workload.name}, exactly_once {'on' if exactly_once else 'off'}: "
                        f"{r.emails} emails, {r.rate:,.0f}/s, "
                        f"{_fmt(r.cpu_us, ',.0f')} µs CPU/email"
                    )
                    runs.append(found)
        latency = await commit_latency.measure(cluster.bootstrap)
    return runs, latency


# --- the report ---------------------------------------------------------------------


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _pct(value: float | None) -> str:
    if value is None:
        return "-"
    return "±0.0%" if round(value, 1) == 0 else f"{value:+.1f}%".replace("-", "−")


def _change(on: float | None, off: float | None) -> float | None:
    return None if on is None or not off else (on / off - 1) * 100


def _summary(runs: list[EosRun], workload: str) -> dict[str, Any]:
    """Medians of the complete runs, off and on; on against off per pair."""
    mine = [r for r in runs if r.workload == workload]
    out: dict[str, Any] = {}
    for on in (False, True):
        side = [r for r in mine if r.exactly_once is on]
        done = [r for r in side if r.complete]
        rates = [r.result.rate for r in done]
        out[on] = {
            "runs": len(side),
            "complete": len(done),
            "rate": statistics.median(rates) if rates else None,
            "spread": (max(rates) - min(rates)) / statistics.median(rates) * 100
            if len(rates) > 1
            else None,
            "cpu_us": _median([r.result.cpu_us for r in done]),
            "broker_us": _median([r.broker_cpu_us for r in done]),
            "ready_s": _median([r.result.ready_s for r in done]),
            "markers": _median([r.markers for r in done]),
            "events": done[0].result.expected if done else None,
        }
    offs = [r for r in mine if not r.exactly_once]
    ons = [r for r in mine if r.exactly_once]
    out["pairs"] = [
        (on.result.rate / off.result.rate - 1) * 100
        for off, on in zip(offs, ons, strict=False)
        if off.complete and on.complete and off.result.rate
    ]
    return out


def _reading(workload: str, s: dict[str, Any]) -> str:
    off, on, pairs = s[False], s[True], s["pairs"]
    if off["rate"] is None or on["rate"] is None:
        return (
            f"- **{workload}**: no comparison: {off['complete']}/{off['runs']} runs off and "
            f"{on['complete']}/{on['runs']} on were complete."
        )
    cost = _change(on["rate"], off["rate"])
    assert cost is not None
    spreads = [x for x in (off["spread"], on["spread"]) if x is not None]
    noise = max(spreads, default=0.0)
    if not spreads:
        verdict = "one run of each setting: no spread to judge the noise by"
    elif pairs and min(pairs) < 0 < max(pairs):
        verdict = "some pairs faster with it on, some slower: no cost that these runs can tell"
    elif abs(cost) <= noise:
        verdict = f"within the spread of the runs of one setting ({noise:.0f}%)"
    elif cost < 0:
        verdict = f"slower in every pair, beyond the spread of one setting's runs ({noise:.0f}%)"
    else:
        verdict = f"faster with it on in every pair, beyond the spread ({noise:.0f}%)"
    span = f"; per pair {_pct(min(pairs))} … {_pct(max(pairs))}" if pairs else ""
    cpu = _change(on["cpu_us"], off["cpu_us"])
    broker = _change(on["broker_us"], off["broker_us"])
    incomplete = sum(side["runs"] - side["complete"] for side in (off, on))
    return (
        f"- **{workload}**: {on['rate']:,.0f} emails/s with exactly_once against "
        f"{off['rate']:,.0f} without, **{_pct(cost)}**{span}: {verdict}. CPU per email: "
        f"Herald {_fmt(off['cpu_us'], ',.0f')} → {_fmt(on['cpu_us'], ',.0f')} µs "
        f"({_pct(cpu)}), the broker {_fmt(off['broker_us'], ',.0f')} → "
        f"{_fmt(on['broker_us'], ',.0f')} µs ({_pct(broker)})."
        + _transactions(on["markers"], on["events"])
        + (f" {incomplete} incomplete run(s) left out of the medians." if incomplete else "")
    )


def _transactions(markers: float | None, events: int | None) -> str:
    """How many commands one transaction marker stands for (one marker per partition a
    transaction wrote to), with exactly_once on."""
    if not markers or not events:
        return ""
    return (
        f" With it on, a run's {events:,} commands came with {markers:,.0f} transaction "
        f"markers (median): ~{events / markers:,.0f} commands per partition per transaction."
    )


def markdown(
    runs: list[EosRun],
    info: dict[str, str],
    end_load: str,
    command: str,
    args: argparse.Namespace,
    sink: str,
) -> str:
    lines = [
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC with `{command}` on "
        f"{info['cpus']} x {info['cpu']}, Python {info['python']}, Linux {info['kernel']} "
        f"(load average at start: {info['load']}; at the end: {end_load}). Apache Kafka "
        f"{kafka_version()}, one KRaft node (broker and controller) on the same machine; "
        f"{args.events:,} events per workload on {args.partitions} partitions; {sink}; "
        f"Herald at {info['code']}.",
        "",
        "| run | workload | exactly_once | emails | commands | markers | emails/s "
        "| Herald CPU µs/email | broker CPU µs/email | ready s | log lines |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for index, r in enumerate(runs, 1):
        res = r.result
        rate = f"{res.rate:,.0f}" if r.complete else "incomplete"
        commands = "-" if r.commands is None else f"{r.distinct_commands}/{res.expected}"
        if r.commands is not None and r.commands != r.distinct_commands:
            commands += f" ({r.commands} records)"
        lines.append(
            f"| {index} | {r.workload} | {'on' if r.exactly_once else 'off'} | "
            f"{res.emails}/{res.expected} | {commands} | {_fmt(r.markers, 'd')} | {rate} | "
            f"{_fmt(res.cpu_us, ',.0f')} | "
            f"{_fmt(r.broker_cpu_us, ',.0f')} | {_fmt(res.ready_s, '.2f')} | {r.log_lines} |"
        )
    lines += [
        "",
        "| workload | emails/s off | emails/s on | on vs off | Herald CPU µs/email off / on "
        "| broker CPU µs/email off / on | ready s off / on |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    summaries = {w.name: _summary(runs, w.name) for w in WORKLOADS}
    for name, s in summaries.items():
        off, on = s[False], s[True]
        lines.append(
            f"| {name} | {_rate(off)} | {_rate(on)} | "
            f"{_bold(_pct(_change(on['rate'], off['rate'])))} | "
            f"{_fmt(off['cpu_us'], ',.0f')} / {_fmt(on['cpu_us'], ',.0f')} | "
            f"{_fmt(off['broker_us'], ',.0f')} / {_fmt(on['broker_us'], ',.0f')} | "
            f"{_fmt(off['ready_s'], '.2f')} / {_fmt(on['ready_s'], '.2f')} |"
        )
    lines.append("")
    lines += [_reading(name, s) for name, s in summaries.items()]
    return "\n".join(lines)


def _bold(text: str) -> str:
    return text if text == "-" else f"**{text}**"


def _rate(side: dict[str, Any]) -> str:
    if side["rate"] is None:
        return "incomplete"
    note = "" if side["complete"] == side["runs"] else f" ({side['complete']}/{side['runs']})"
    return f"{side['rate']:,.0f}{note}"


def _command(args: argparse.Namespace) -> str:
    if {k: v for k, v in vars(args).items() if k != "write"} == {
        k: v for k, v in vars(parse_args([])).items() if k != "write"
    }:
        return "make bench"
    words = [w for w in sys.argv[1:] if w != "--write"]
    return " ".join(["python -m bench.eos", *words])


def _code() -> tuple[str, str]:
    """The commit Herald runs from, with the files of service/ that differ from it, and a
    digest of service/ as it is on disk (others may edit the working tree meanwhile)."""

    def git(*words: str) -> str:
        done = subprocess.run(["git", *words], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.rstrip()

    changed = git("status", "--porcelain", "--", "service").splitlines()
    files = ", ".join(line[3:] for line in changed)
    where = git("rev-parse", "--short", "HEAD") or "unknown commit"
    where += f" + uncommitted changes to {files}" if files else ""
    digest = hashlib.sha1()
    for path in sorted((ROOT / "service").rglob("*.py")):
        digest.update(path.read_bytes())
    return where, digest.hexdigest()


def _say(message: str) -> None:
    print(f"[bench.eos] {message}", file=sys.stderr, flush=True)


def _require_kafka() -> None:
    """Exit with one line when the broker's jars (or Java) are missing."""
    try:
        kafka_libs()
    except (pytest.skip.Exception, pytest.fail.Exception) as exc:
        raise SystemExit(f"bench.eos: {exc.msg}") from None


def main(argv: list[str] | None = None) -> None:
    """Entry point: exit 1 when a run was incomplete."""
    args = parse_args(argv)
    _require_kafka()
    info = machine()
    code, before = _code()
    smtp_sink = _smtp_sink(args.smtp)
    runs, latency = asyncio.run(run(args, smtp_sink))
    end_load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    if _code()[1] != before:
        code += " (**service/ changed during the session**: the runs may not compare)"
        _say("service/ changed on disk during the session: the runs may not compare")
    info["code"] = code
    sink = "Postfix's smtp-sink" if smtp_sink else "the builtin SMTP sink"
    text = markdown(runs, info, end_load, _command(args), args, sink)
    text += (
        "\n\nOne output and its offset, committed 40 times each way on the same broker"
        " (`bench/commit_latency.py`): in a transaction"
        f" {latency['transaction_median_ms']:.1f} ms median"
        f" (p90 {latency['transaction_p90_ms']:.1f}), as a plain produce and consumer commit"
        f" {latency['plain_median_ms']:.1f} ms (p90 {latency['plain_p90_ms']:.1f}): what a"
        " trickle of events pays per batch."
    )
    print("\n" + text)
    if args.write:
        update_section(ROOT / "BENCHMARKS.md", SECTION, text)
    if not all(r.complete for r in runs):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
