"""A tiny run of `make bench`'s partial-failure run, so that it does not rot.

Herald gets a second of paced events of which 1 in 100 goes to a recipient the builtin
sink greylists (451 at RCPT); the test checks only that every other email arrived and
that the greylisted ones were deferred, not delivered or dead-lettered. No timing is
asserted: see BENCHMARKS.md for the real runs.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bench.sinks import BuiltinSink
from tests.harness import ROOT


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_partial_failure_run_defers_only_the_greylisted(tmp_path: Path) -> None:
    result_file = tmp_path / "bench.json"
    command = [
        sys.executable, "-m", "bench.run", "--only-partial-failure",
        "--seconds", "1", "--warmup", "0.5", "--partial-rate", "200", "--partitions", "4",
        "--json", str(result_file),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=50)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    saved = json.loads(result_file.read_text())
    assert saved["runs"] == [] and saved["latency"] is None
    result = saved["partial_failure"]
    others, control = result["others"], result["control"]
    assert others["received"] == others["sent"] > 0
    assert control["received"] == control["sent"] > 0
    greylisted = result["greylisted"] + result["greylisted_warmup"]
    assert result["greylisted"] >= 1
    assert result["grey_delivered"] == 0
    assert result["refusals"] >= greylisted
    assert result["deferred"] >= greylisted
    assert result["dead_letters"] == 0
    assert result["retry"]["initial_backoff_s"] >= 10  # still pending at the end


def test_builtin_sink_greylists_by_prefix() -> None:
    sink = BuiltinSink(greylist="grey-")
    port = sink.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            replies = sock.makefile("rb")
            assert replies.readline().startswith(b"220")
            sock.sendall(b"EHLO test\r\n")
            while not replies.readline().startswith(b"250 "):
                pass
            # Pipelined, as Herald sends them: a greylisted recipient, then DATA.
            sock.sendall(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<Grey-b@example.com>\r\nDATA\r\n")
            codes = [replies.readline()[:3] for _ in range(3)]
            assert codes == [b"250", b"451", b"554"]
            sock.sendall(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
            codes = [replies.readline()[:3] for _ in range(3)]
            assert codes == [b"250", b"250", b"354"]
            sock.sendall(b"Subject: hi\r\nX-Herald-Event-Id: e-1\r\n\r\nbody\r\n.\r\n")
            assert replies.readline().startswith(b"250")
    finally:
        sink.stop()
    assert sink.refused == {"Grey-b@example.com": 1}
    assert sink.count == 1 and list(sink.accepted_at) == ["e-1"]
