"""`herald dev` as a user runs it: demo emails arrive, one readable line per outcome (no
JSON, addresses masked), the demo's decision and metadata command, Ctrl-C stops it."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from aiokafka import AIOKafkaProducer

from tests.harness import EMAIL_FLOWS, EXAMPLES, ROOT

pytestmark = pytest.mark.integration

#: Every address in the demo events, which the console must only show masked.
_ADDRESSES = {
    address
    for path in EXAMPLES.glob("*.json")
    for address in re.findall(r'"email": "([^"]+)"', path.read_text())
}
_EMAIL = re.compile(r'^✉  to=[a-z]\*\*\*@example\.(?:com|org)  subject="[^"]+"  [\d.]+ kB  -> ')


def _run_dev(
    tmp_path: Path,
    done: Callable[[list[str]], bool],
    *args: str,
    started: Callable[[str], None] | None = None,
) -> tuple[int, str]:
    """`herald [args] dev` until `done(lines so far)` (30 s at most), then Ctrl-C; the exit
    code and everything it printed. `started(bootstrap)` runs once the banner is out."""
    outbox = tmp_path / "outbox"
    env = {**os.environ, "HERALD_HTTP__PORT": "0", "PYTHONUNBUFFERED": "1"}
    env.pop("HERALD_CONFIG", None)
    stderr = (tmp_path / "stderr").open("w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", *args, "dev", "--outbox", str(outbox)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )
    assert proc.stdout is not None
    stdout = proc.stdout
    lines: list[str] = []

    def read() -> None:  # in a thread: a silent process must not block the test
        for line in stdout:
            lines.append(line)

    reader = threading.Thread(target=read)
    reader.start()
    deadline = time.monotonic() + 30
    while not done(list(lines)) and time.monotonic() < deadline and proc.poll() is None:
        banner = next((line for line in lines if "Kafka (embedded) at " in line), None)
        if started is not None and banner is not None and _count(lines, "  stop:") == 1:
            started(banner.rsplit(" ", 1)[-1].strip())
            started = None
        time.sleep(0.05)
    time.sleep(0.3)  # anything that would follow the last expected line
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=20)
    finally:
        proc.kill()
        reader.join(timeout=5)
        stderr.seek(0)
        errors = stderr.read()
        stderr.close()
    output = "".join(lines)
    assert errors == "", errors  # warnings and errors are console lines on stdout too
    assert len(list(outbox.glob("*.eml"))) == len(EMAIL_FLOWS)
    return proc.returncode, output


def _count(lines: list[str], prefix: str) -> int:
    return sum(line.startswith(prefix) for line in lines)


def _assert_reads_well(output: str) -> list[str]:
    """No JSON, no traceback, no unmasked address; the ✉ lines of the demo's emails."""
    lines = output.splitlines()
    assert not [line for line in lines if line.lstrip().startswith("{")], output
    assert "Traceback" not in output
    assert not [a for a in _ADDRESSES if a in output], output
    assert "Kafka (embedded) at 127.0.0.1:" in output
    emails = [line for line in lines if line.startswith("✉")]
    assert len(emails) == len(EMAIL_FLOWS), output
    assert all(_EMAIL.match(line) for line in emails), emails
    assert not [line for line in lines if line.startswith("!")], output
    return lines


def test_dev_says_each_outcome_in_one_line_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    def done(lines: list[str]) -> bool:
        return (
            _count(lines, "✉") == len(EMAIL_FLOWS)
            and _count(lines, "⚖") == 1
            and _count(lines, "·  post-login") == 1
        )

    code, output = _run_dev(tmp_path, done)
    assert code == 0, output
    lines = _assert_reads_well(output)
    # The pre-registration event's decision, read back from the decisions topic, with the
    # metadata it sets (keys, not values).
    decisions = [line for line in lines if line.startswith("⚖")]
    assert decisions == [
        "⚖  decision  pre-user-registration user-1001: allow; sets user_metadata ui_color, "
        "use_verbose_messages; app_metadata is_new_user, reward_status  -> identity.decisions"
    ]
    # The login event yields no decision (no reply_to) and does nothing: one line says so.
    assert [line for line in lines if "post-login" in line] == [
        "·  post-login a***@example.com: allow (downtime disabled)"
    ]
    # The events whose email a ✉ line shows get no second line.
    assert [line for line in lines if line.startswith("·")] == [
        "·  post-login a***@example.com: allow (downtime disabled)"
    ]
    assert _count(lines, "⚙") == 0
    assert (
        f"herald dev stopped: {len(EMAIL_FLOWS)} email(s) captured in {tmp_path / 'outbox'}/, "
        "1 decision(s), 0 metadata command(s)" in output
    )


def _publish_with_reply_to(bootstrap: str, reply_to: str) -> None:
    """The demo's pre-registration event once more, from another user, with `reply_to`."""
    event = json.loads((EXAMPLES / "pre-user-registration.json").read_text())
    event["id"] = "evt-demo-0001-again"
    event["data"]["user"]["user_id"] = "user-2001"

    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(
                "identity.events",
                json.dumps(event).encode(),
                key=b"user-2001",
                headers=[("reply_to", reply_to.encode()), ("correlation_id", b"c-1")],
            )
        finally:
            await producer.stop()

    asyncio.run(send())


def test_dev_shows_a_denial_a_reply_to_decision_and_a_metadata_command(tmp_path: Path) -> None:
    doc = yaml.safe_load((ROOT / "config" / "herald.yaml").read_text())
    doc["flows"]["pre-user-registration"][0]["enabled"] = True  # refuse-signups
    doc["flows"]["post-login"].append(
        {
            "id": "remember-login",
            "action": "set_metadata",
            "user_metadata": {"last_city": "London", "stale": None},
            "app_metadata": {"logins": 3},
        }
    )
    config = tmp_path / "herald.yaml"
    config.write_text(yaml.safe_dump(doc))

    def done(lines: list[str]) -> bool:
        return (
            _count(lines, "✉") == len(EMAIL_FLOWS)
            and _count(lines, "⚖") == 2
            and _count(lines, "⚙") == 1
        )

    code, output = _run_dev(
        tmp_path,
        done,
        "--config",
        str(config),
        started=lambda bootstrap: _publish_with_reply_to(bootstrap, "dev.replies"),
    )
    assert code == 0, output
    lines = _assert_reads_well(output)
    # In any order: the events are on different partitions. A decision that went to the
    # event's `reply_to` topic is read back too.
    assert sorted(line for line in lines if line.startswith(("⚖", "⚙"))) == [
        "⚖  decision  pre-user-registration user-1001: deny (too_many_signups)"
        "  -> identity.decisions",
        "⚖  decision  pre-user-registration user-2001: deny (too_many_signups)  -> dev.replies",
        "⚙  metadata  user-1004: user_metadata last_city, -stale; app_metadata logins"
        "  -> identity.commands",
    ]
    # The ⚙ line tells the login event's outcome: no `· post-login` line besides it.
    assert not [line for line in lines if line.startswith("·")], output
    assert "2 decision(s), 1 metadata command(s)" in output
