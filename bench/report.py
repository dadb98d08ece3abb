"""Benchmark results: the printed tables and the generated section of BENCHMARKS.md."""

from __future__ import annotations

import os
import platform
import re
import statistics
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = [
    "LatencyResult",
    "PartialFailureResult",
    "RunResult",
    "as_json",
    "machine",
    "markdown",
    "partial_failure_markdown",
    "summary",
    "update_section",
]

PARTIAL_FAILURE_P99_MS = 100.0  # the target: p99 of the other 99% under greylisting


@dataclass
class RunResult:
    """One throughput run of Herald or the peer."""

    kind: str
    expected: int
    emails: int
    seconds: float  # first to last acceptance at the sink
    rate: float  # emails/s over that interval
    cpu_us: float | None  # process CPU per email over that interval
    peak_rss_mb: float
    ready_s: float | None  # process start to /readyz 200 (Herald only)
    first_email_s: float  # process start to the first acceptance
    exit_code: int | None

    @property
    def complete(self) -> bool:
        return self.emails >= self.expected


@dataclass
class LatencyResult:
    """Event time to SMTP acceptance at a steady rate."""

    rate: float
    seconds: float
    sent: int
    received: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    p50_first_quarter_ms: float  # falling behind shows as a growing latency
    p50_last_quarter_ms: float


@dataclass
class PartialFailureResult:
    """Steady load with 1 in `grey_every` recipients greylisted, next to the same load
    with nobody greylisted (`control`); `others` counts only the non-greylisted emails."""

    rate: float
    seconds: float
    grey_every: int
    retry: dict[str, float]
    control: LatencyResult  # same rate and length, no recipient greylisted
    others: LatencyResult  # the emails to non-greylisted recipients of the greylisted run
    greylisted: int  # measured events whose recipient was greylisted
    greylisted_warmup: int  # the same, in the warm-up before
    grey_delivered: int  # greylisted emails the sink accepted (0: it refuses them all)
    refusals: int  # 451 replies the sink gave at RCPT, warm-up and retries included
    deferred: int  # herald_emails_total{outcome="deferred"}: attempts that failed with 4xx
    retries_scheduled: int  # herald_smtp_retries_total: work items written to the retry topic
    pending: int  # herald_retries_pending at the end: read from the retry topic, not finished
    dead_letters: int  # herald_dlq_total at the end

    @property
    def complete(self) -> bool:
        """Every email to a non-greylisted recipient arrived, in both runs."""
        return (
            self.others.received >= self.others.sent and self.control.received >= self.control.sent
        )


def machine() -> dict[str, str]:
    """What the numbers were measured on."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return {
        "cpus": str(os.cpu_count()),
        "cpu": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "load": load,
    }


def summary(runs: list[RunResult]) -> dict[str, Any]:
    """Medians per kind and Herald's ratio to the peer."""
    out: dict[str, Any] = {}
    for kind in ("herald", "peer"):
        mine = [r for r in runs if r.kind == kind and r.complete]
        if not mine:
            continue
        out[kind] = {
            "rate": statistics.median(r.rate for r in mine),
            "cpu_us": _median([r.cpu_us for r in mine]),
            "peak_rss_mb": max(r.peak_rss_mb for r in mine),
            "ready_s": _median([r.ready_s for r in mine]),
            "first_email_s": statistics.median(r.first_email_s for r in mine),
        }
    if "herald" in out and "peer" in out:
        out["ratio"] = out["herald"]["rate"] / out["peer"]["rate"]
    return out


def markdown(
    runs: list[RunResult],
    latency: tuple[LatencyResult, LatencyResult] | None,
    info: dict[str, str],
    command: str,
) -> str:
    """The generated results section."""
    sums = summary(runs)
    lines = [
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC with `{command}` on "
        f"{info['cpus']} x {info['cpu']}, Python {info['python']}, Linux {info['kernel']} "
        f"(load average at start: {info['load']}).",
        "",
        "| run | emails | emails/s | CPU µs/email | peak RSS MB | ready s | first email s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for index, run in enumerate(runs, 1):
        lines.append(
            f"| {index}. {run.kind} | {run.emails}/{run.expected} | {run.rate:,.0f} | "
            f"{_fmt(run.cpu_us, '.0f')} | {run.peak_rss_mb:.0f} | {_fmt(run.ready_s, '.2f')} | "
            f"{run.first_email_s:.2f} |"
        )
    lines.append("")
    for kind in ("herald", "peer"):
        if kind in sums:
            s = sums[kind]
            lines.append(
                f"- **{kind}** (median): {s['rate']:,.0f} emails/s, "
                f"{_fmt(s['cpu_us'], ',.0f')} µs CPU/email, peak RSS {s['peak_rss_mb']:.0f} MB"
                + (f", ready {s['ready_s']:.2f} s" if s["ready_s"] is not None else "")
            )
    if "ratio" in sums:
        lines.append(f"- **Herald / peer: {sums['ratio']:.1f}x**")
    if latency is not None:
        herald, floor = latency
        lines.append(f"- **Latency**, event time to SMTP acceptance: {_latency(herald)}")
        lines.append(f"- Kafka alone (bare aiokafka consumer, same load): {_latency(floor)}")
    return "\n".join(lines)


def partial_failure_markdown(
    result: PartialFailureResult,
    normal: LatencyResult | None,
    info: dict[str, str],
    command: str,
) -> str:
    """The generated section on latency under partial failure."""
    others, control = result.others, result.control
    retry = result.retry
    schedule = (
        f"{retry['attempts']:.0f} attempts, {retry['initial_backoff_s']:g} s initial "
        f"backoff, {retry['max_backoff_s']:g} s max"
    )
    grey_total = result.greylisted + result.greylisted_warmup
    met = "met" if others.p99_ms <= PARTIAL_FAILURE_P99_MS else "**not met**"
    lines = [
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC with `{command}` on "
        f"{info['cpus']} x {info['cpu']}, Python {info['python']}, Linux {info['kernel']} "
        f"(load average at start: {info['load']}). Herald's retry schedule: {schedule}.",
        "",
        "| run | events/s | s | emails measured | delivered | p50 ms | p90 ms | p99 ms "
        "| max ms | greylisted emails |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    rows: list[tuple[str, LatencyResult, str]] = []
    if normal is not None:
        rows.append(("normal case: the latency run (Results)", normal, "-"))
    rows.append(("control: nobody greylisted", control, "0"))
    rows.append(
        (f"1 in {result.grey_every} greylisted: **the other emails**", others,
         f"{result.greylisted} (+{result.greylisted_warmup} warm-up)")
    )  # fmt: skip
    for name, lat, grey in rows:
        lines.append(
            f"| {name} | {lat.rate:.0f} | {lat.seconds:.0f} | {lat.sent} | {lat.received} | "
            f"{lat.p50_ms:.1f} | {lat.p90_ms:.1f} | {lat.p99_ms:.1f} | {lat.max_ms:.1f} | "
            f"{grey} |"
        )
    lines += [
        "",
        f"- **Target: p99 of the other emails ≤ {PARTIAL_FAILURE_P99_MS:.0f} ms: {met}** "
        f"({others.p99_ms:.1f} ms; control at the same rate {control.p99_ms:.1f} ms"
        + (f", normal case at {normal.rate:.0f} events/s {normal.p99_ms:.1f} ms" if normal else "")
        + f"). p50 of the first / last quarter: {others.p50_first_quarter_ms:.1f} / "
        f"{others.p50_last_quarter_ms:.1f} ms.",
        f"- **Greylisted emails**: {grey_total} sent ({result.greylisted} measured + "
        f"{result.greylisted_warmup} warm-up), {result.grey_delivered} delivered; "
        f"the sink answered 451 {result.refusals} times; Herald counted {result.deferred} "
        f"deferred attempts and wrote {result.retries_scheduled} retries to the retry topic; "
        f"at the end {result.pending} were pending in its retry scheduler and "
        f"{result.dead_letters} dead-lettered.",
    ]
    return "\n".join(lines)


def as_json(
    runs: list[RunResult],
    latency: tuple[LatencyResult, LatencyResult] | None,
    partial_failure: PartialFailureResult | None = None,
) -> dict[str, Any]:
    """Everything, for `--json`."""
    return {
        "runs": [asdict(r) for r in runs],
        "summary": summary(runs),
        "latency": asdict(latency[0]) if latency else None,
        "kafka_floor": asdict(latency[1]) if latency else None,
        "partial_failure": asdict(partial_failure) if partial_failure else None,
        "machine": machine(),
    }


def _latency(result: LatencyResult) -> str:
    return (
        f"{result.rate:.0f} events/s for {result.seconds:.0f} s, "
        f"{result.received}/{result.sent} arrived: p50 {result.p50_ms:.1f} ms, "
        f"p90 {result.p90_ms:.1f} ms, p99 {result.p99_ms:.1f} ms, max {result.max_ms:.1f} ms "
        f"(p50 of the first / last quarter: {result.p50_first_quarter_ms:.1f} / "
        f"{result.p50_last_quarter_ms:.1f} ms)"
    )


def update_section(path: Path, name: str, body: str) -> None:
    """Replace the text between `<!-- NAME:start -->` and `<!-- NAME:end -->` in `path`."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = path.read_text() if path.exists() else ""
    block = f"{start}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip() + f"\n\n{block}\n"
    path.write_text(text)


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)
