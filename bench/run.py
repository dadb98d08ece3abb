"""`make bench`: Herald against the peer, end to end, events on Kafka to emails accepted.

    python -m bench.run [--events 20000] [--runs 3] [--smtp auto|postfix|builtin]
                        [--no-latency] [--no-partial-failure] [--only-partial-failure]
                        [--profile DIR] [--write] [--json PATH]

The embedded broker runs in a process of its own; N events are published once to a
topic of `--partitions` partitions; then Herald and the peer take turns (`--runs`
pairs), each in a fresh consumer group, against a fresh SMTP sink that counts
acceptances. Throughput is measured between the first and the last acceptance; the
summary gives medians and Herald's ratio to the peer. Then the latency run (`--rate`
events/s for `--seconds`) and the partial-failure run (`--partial-rate` events/s for
`--seconds`, 1% of recipients answering 451, the other emails' latency; a control run
at the same rate first); `--no-latency` skips both, `--only-partial-failure` runs only
the latter. See BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from bench.broker import BrokerProcess
from bench.events import publish_bulk
from bench.latency import measure_floor, measure_latency, measure_partial_failure
from bench.procs import ROOT
from bench.profiling import Profiler
from bench.report import (
    LatencyResult,
    PartialFailureResult,
    RunResult,
    as_json,
    machine,
    markdown,
    partial_failure_markdown,
    update_section,
)
from bench.sinks import BuiltinSink, PostfixSink, find_smtp_sink
from bench.targets import Target, herald, peer, wait_ready

__all__ = ["main"]

_STALL_S = 30.0  # no new acceptance for this long ends a run as incomplete
_START_S = 60.0  # time allowed before the first acceptance
Sink = BuiltinSink | PostfixSink


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    p.add_argument("--events", type=int, default=20_000, help="events per run (20000)")
    p.add_argument("--runs", type=int, default=3, help="pairs of Herald and peer runs (3)")
    p.add_argument("--partitions", type=int, default=16, help="partitions of the topic (16)")
    p.add_argument("--pool-size", type=int, default=8, help="Herald's smtp.pool_size (8)")
    p.add_argument("--smtp", choices=("auto", "postfix", "builtin"), default="auto")
    p.add_argument("--no-peer", action="store_true", help="run Herald only")
    p.add_argument(
        "--no-latency", action="store_true", help="skip the latency and partial-failure runs"
    )
    p.add_argument("--no-partial-failure", action="store_true", help="skip the partial-failure run")
    p.add_argument(
        "--only-partial-failure",
        action="store_true",
        help="run only the partial-failure run (no throughput runs, no latency run)",
    )
    p.add_argument("--rate", type=float, default=500, help="latency run: events/s (500)")
    p.add_argument(
        "--seconds", type=float, default=20, help="latency and partial-failure runs: length (20)"
    )
    p.add_argument(
        "--warmup", type=float, default=3, help="latency and partial-failure runs: warm-up (3)"
    )
    p.add_argument(
        "--partial-rate", type=float, default=300, help="partial-failure run: events/s (300)"
    )
    p.add_argument("--profile", type=Path, help="one more Herald run under py-spy, into DIR")
    p.add_argument("--write", action="store_true", help="update the results in BENCHMARKS.md")
    p.add_argument("--json", type=Path, help="write all results to this file")
    return p.parse_args(argv)


class Bench:
    """One benchmark session: the broker, the pre-published topic, a scratch directory."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.broker = BrokerProcess()
        self.topic = f"bench.events.{uuid.uuid4().hex[:8]}"
        # The latency runs use the builtin sink: smtp-sink only for the throughput runs.
        self.smtp_sink = None if args.only_partial_failure else _smtp_sink(args.smtp)

    async def setup(self) -> None:
        """Start the broker; for the throughput runs, create the topics, publish the events."""
        self.broker.start()
        if self.args.only_partial_failure:
            return
        self.broker.create_topic(self.topic, self.args.partitions)
        self.broker.create_topic(self.topic + ".dlq", 1)
        started = time.monotonic()
        await publish_bulk(self.broker.bootstrap, self.topic, "bench", self.args.events)
        elapsed = time.monotonic() - started
        _say(f"published {self.args.events} events to {self.topic} in {elapsed:.1f} s")

    def new_sink(self) -> Sink:
        return PostfixSink(self.smtp_sink) if self.smtp_sink else BuiltinSink()

    def start(self, kind: str, index: int, port: int) -> Target:
        """Start Herald or the peer on the pre-published topic, sending to `port`."""
        workdir, bootstrap = self.workdir / f"{index:02d}-{kind}", self.broker.bootstrap
        if kind == "herald":
            return herald(
                workdir,
                bootstrap=bootstrap,
                topic=self.topic,
                smtp_port=port,
                pool_size=self.args.pool_size,
            )
        return peer(workdir, bootstrap=bootstrap, topic=self.topic, smtp_port=port)

    async def throughput(
        self, kind: str, index: int, profiler: Profiler | None = None
    ) -> RunResult:
        """One run of `kind` over all events, against a fresh sink."""
        sink = self.new_sink()
        target = self.start(kind, index, sink.start())
        ready = asyncio.create_task(wait_ready(target))
        try:
            result = await _measure(target, sink, self.args.events, profiler)
            result.ready_s = await asyncio.wait_for(ready, 35)
        finally:
            ready.cancel()
            exit_code = target.child.stop()
            sink.stop()
        result.exit_code = exit_code
        if not result.complete:
            _say(f"{kind} run incomplete ({result.emails}/{result.expected}):")
            _say(target.child.tail())
        return result

    def close(self) -> None:
        self.broker.stop()


async def _measure(
    target: Target, sink: Sink, expected: int, profiler: Profiler | None
) -> RunResult:
    """Wait until `expected` emails were accepted (or progress stalls); sample CPU."""
    child = target.child
    cpu_first, count_first, seen, progress = None, 0, 0, time.monotonic()
    while sink.count < expected and child.alive():
        now = time.monotonic()
        if sink.count != seen:
            seen, progress = sink.count, now
        elif now - progress > (_STALL_S if seen else _START_S):
            break
        if cpu_first is None and sink.count > 0:
            cpu_first, count_first = child.cpu_seconds(), sink.count
            if profiler is not None:
                profiler.attach(child.pid, sink.count)
        await asyncio.sleep(0.02)
    cpu_last, rss = child.cpu_seconds(), child.peak_rss_mb()
    interval = sink.last - sink.first
    counted = sink.count - count_first
    cpu_us = (cpu_last - cpu_first) / counted * 1e6 if cpu_first is not None and counted else None
    return RunResult(
        kind=target.kind,
        expected=expected,
        emails=sink.count,
        seconds=interval,
        rate=(sink.count - 1) / interval if interval > 0 else 0.0,
        cpu_us=cpu_us,
        peak_rss_mb=rss,
        ready_s=None,
        first_email_s=sink.first - child.started if sink.count else 0.0,
        exit_code=None,
    )


def _smtp_sink(choice: str) -> str | None:
    """The smtp-sink binary to use, or None for the builtin sink."""
    if choice == "builtin":
        return None
    found = find_smtp_sink() or _install_postfix()
    if found:
        return found
    if choice == "postfix":
        raise SystemExit("smtp-sink not found: apt-get install postfix (see BENCHMARKS.md)")
    _say("smtp-sink not available: using the builtin sink (slower, shares our process)")
    return None


def _install_postfix() -> str | None:
    """Install Debian's postfix for smtp-sink (root only); Postfix itself is not started."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None
    _say("installing postfix for smtp-sink (apt-get)")
    preseed = "postfix postfix/main_mailer_type select No configuration\n"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command, stdin in (
        (["debconf-set-selections"], preseed.encode()),
        (["apt-get", "update"], b""),
        (["apt-get", "install", "-y", "postfix"], b""),
    ):
        subprocess.run(command, input=stdin, env=env, capture_output=True, check=False)
    return find_smtp_sink()


Latency = tuple[LatencyResult, LatencyResult]


@dataclass
class Session:
    """What one `bench.run` measured; None (or []) for what it skipped."""

    runs: list[RunResult]
    latency: Latency | None
    partial_failure: PartialFailureResult | None

    @property
    def complete(self) -> bool:
        """Every run counted every email it should have."""
        partial_ok = self.partial_failure is None or self.partial_failure.complete
        return all(r.complete for r in self.runs) and partial_ok


async def run(args: argparse.Namespace) -> Session:
    """The whole session: throughput pairs, then the optional profile, latency and
    partial-failure runs (`--only-partial-failure`: that one alone)."""
    info = machine()
    only_partial = args.only_partial_failure
    runs: list[RunResult] = []
    profile: str | None = None
    latency: Latency | None = None
    partial: PartialFailureResult | None = None
    with tempfile.TemporaryDirectory(prefix="herald-bench-") as scratch:
        bench = Bench(args, Path(scratch))
        try:
            await bench.setup()
            if not only_partial:
                runs = await _alternate(bench)
                profile = await _profiled_run(bench, args.profile) if args.profile else None
                latency = None if args.no_latency else await _latency(bench, Path(scratch))
            if only_partial or not (args.no_latency or args.no_partial_failure):
                partial = await _partial_failure(bench, Path(scratch))
        finally:
            bench.close()
    command = "make bench" if _is_default(args) else _command()
    sections = []
    if not only_partial:
        sections.append(("bench:results", markdown(runs, latency, info, command)))
    if partial is not None:
        normal = latency[0] if latency else None
        sections.append(
            ("bench:partial-failure", partial_failure_markdown(partial, normal, info, command))
        )
    for name, text in sections:
        print("\n" + text)
        if args.write:
            update_section(ROOT / "BENCHMARKS.md", name, text)
    if args.write and profile:
        update_section(ROOT / "BENCHMARKS.md", "bench:profile", profile)
    if args.json:
        args.json.write_text(json.dumps(as_json(runs, latency, partial), indent=2))
    return Session(runs, latency, partial)


async def _latency(bench: Bench, scratch: Path) -> Latency:
    args = bench.args
    _say(f"latency runs: {args.rate:.0f} events/s for {args.seconds:.0f} s, Herald and Kafka alone")
    herald_latency = await measure_latency(
        bench.broker,
        scratch / "latency",
        rate=args.rate,
        seconds=args.seconds,
        warmup=args.warmup,
        partitions=args.partitions,
        pool_size=args.pool_size,
    )
    floor = await measure_floor(
        bench.broker, rate=args.rate, seconds=args.seconds, partitions=args.partitions
    )
    return herald_latency, floor


async def _partial_failure(bench: Bench, scratch: Path) -> PartialFailureResult:
    args = bench.args
    _say(
        f"partial-failure runs: {args.partial_rate:.0f} events/s for {args.seconds:.0f} s, "
        "nobody greylisted, then 1% of recipients answering 451"
    )
    result = await measure_partial_failure(
        bench.broker,
        scratch / "partial-failure",
        rate=args.partial_rate,
        seconds=args.seconds,
        warmup=args.warmup,
        partitions=args.partitions,
        pool_size=args.pool_size,
    )
    others = result.others
    _say(
        f"the other emails: {others.received}/{others.sent}, p99 {others.p99_ms:.1f} ms "
        f"(control {result.control.p99_ms:.1f} ms); {result.greylisted} greylisted, "
        f"{result.grey_delivered} delivered, {result.pending} pending"
    )
    return result


async def _alternate(bench: Bench) -> list[RunResult]:
    kinds = ["herald"] if bench.args.no_peer else ["herald", "peer"]
    runs = []
    for index in range(bench.args.runs * len(kinds)):
        kind = kinds[index % len(kinds)]
        result = await bench.throughput(kind, index)
        _say(f"{kind}: {result.emails} emails, {result.rate:,.0f}/s")
        runs.append(result)
    return runs


async def _profiled_run(bench: Bench, outdir: Path) -> str | None:
    """One more Herald run, under py-spy from its first email on; not in the results."""
    profiler = Profiler(outdir)
    result = await bench.throughput("herald", 99, profiler)
    _say(f"profiled herald run: {result.emails} emails, {result.rate:,.0f}/s (not counted)")
    summary = profiler.finish(result.emails - profiler.emails_before)
    if summary is None:
        return None
    return (
        "Profiled Herald run of the results above (`--profile`: py-spy, non-blocking, "
        f"from the first email on; not counted in the results).\n\n{summary}"
    )


def _is_default(args: argparse.Namespace) -> bool:
    """Whether the measurement is `make bench`'s (output options aside)."""
    defaults, output = vars(parse_args([])), ("write", "json", "profile")
    return all(value == defaults[key] for key, value in vars(args).items() if key not in output)


def _command() -> str:
    """The command line, without the output options `--write` and `--json PATH`."""
    words, argv = [], iter(sys.argv[1:])
    for word in argv:
        if word == "--json":
            next(argv, None)
        elif word != "--write" and not word.startswith("--json="):
            words.append(word)
    return "python -m bench.run " + " ".join(shlex.quote(w) for w in words)


def _say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    """Entry point: exit 1 when a run did not count every email."""
    args = parse_args(argv)
    if not asyncio.run(run(args)).complete:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
