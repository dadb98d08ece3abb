"""`herald dev` as a user runs it: demo emails arrive, Ctrl-C stops it cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.harness import EMAIL_FLOWS, ROOT

pytestmark = pytest.mark.integration


def test_dev_delivers_the_demo_events_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    env = {**os.environ, "HERALD_HTTP__PORT": "0", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "dev", "--outbox", str(outbox)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 30
    while sum("✉" in line for line in lines) < len(EMAIL_FLOWS) and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=20)
    output = "".join(lines) + rest
    assert proc.returncode == 0, output
    assert "Kafka (embedded) at 127.0.0.1:" in output
    assert output.count("✉") == len(EMAIL_FLOWS)
    assert len(list(outbox.glob("*.eml"))) == len(EMAIL_FLOWS)
    assert f"herald dev stopped: {len(EMAIL_FLOWS)} email(s) captured" in output
