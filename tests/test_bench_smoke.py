"""A tiny run of the benchmark machinery, so that `make bench` does not rot.

Herald and the peer each consume a few hundred events from the embedded broker (in its
own process) and send them to the builtin SMTP sink; the test only checks that every
email was counted. No timing is asserted: see BENCHMARKS.md for the real runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import ROOT

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


def test_latency_percentiles() -> None:
    from bench.latency import _percentile

    ordered = [float(i) for i in range(1, 101)]
    assert (_percentile(ordered, 50), _percentile(ordered, 99)) == (50.0, 99.0)
    assert _percentile([7.0], 99) == 7.0
