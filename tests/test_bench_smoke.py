"""A tiny run of the benchmark machinery, so that `make bench` does not rot.

Herald and the peer each consume a few hundred events from the embedded broker (in its
own process) and send them to the builtin SMTP sink; the test only checks that every
email was counted. No timing is asserted: see BENCHMARKS.md for the real runs.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import ROOT
from tests.services.kraft import kafka_libs

EVENTS = 200


@pytest.mark.integration
@pytest.mark.timeout(90)
def test_bench_counts_every_email(tmp_path: Path) -> None:
    result_file = tmp_path / "bench.json"
    command = [
        sys.executable, "-m", "bench.run",
        "--events", str(EVENTS), "--runs", "1", "--partitions", "4",
        "--no-latency", "--smtp", "builtin", "--json", str(result_file),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=80)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    runs = json.loads(result_file.read_text())["runs"]
    assert [run["kind"] for run in runs] == ["herald", "peer"]
    assert all(run["emails"] == EVENTS for run in runs), runs
    assert runs[0]["exit_code"] == 0  # Herald stopped cleanly on SIGTERM


#: A run's row: workload, exactly_once, emails accepted, commands, transaction markers.
_EOS_ROW = re.compile(
    r"^\| \d+ \| (emails(?: \+ commands)?) \| (on|off) \| (\d+)/\d+ \| ([^|]*) \| ([^|]*) \|"
)


@pytest.mark.real_kafka
@pytest.mark.timeout(120)
def test_bench_eos_counts_every_email_and_command() -> None:
    """`bench.eos` on Apache Kafka, tiny: each workload off and on, every email and (emails +
    commands) every metadata command committed; with exactly_once, in transactions."""
    kafka_libs()  # skips (fails in CI) without the broker's jars
    command = [
        sys.executable, "-m", "bench.eos",
        "--events", str(EVENTS), "--runs", "1", "--partitions", "4", "--smtp", "builtin",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=110)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rows = [m.groups() for line in done.stdout.splitlines() if (m := _EOS_ROW.match(line))]
    assert [(w, eos) for w, eos, *_ in rows] == [
        ("emails", "off"), ("emails", "on"), ("emails + commands", "off"),
        ("emails + commands", "on"),
    ], done.stdout  # fmt: skip
    assert all(int(emails) == EVENTS for _, _, emails, _, _ in rows), done.stdout
    commands = {eos: (got.strip(), int(markers)) for w, eos, _, got, markers in rows if "+" in w}
    assert commands["off"] == (f"{EVENTS}/{EVENTS}", 0), done.stdout
    # With exactly_once the commands are in transactions: at least one marker per partition.
    assert commands["on"][0] == f"{EVENTS}/{EVENTS}" and commands["on"][1] >= 4, done.stdout


def test_latency_percentiles() -> None:
    from bench.latency import _percentile

    ordered = [float(i) for i in range(1, 101)]
    assert (_percentile(ordered, 50), _percentile(ordered, 99)) == (50.0, 99.0)
    assert _percentile([7.0], 99) == 7.0
