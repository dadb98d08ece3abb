"""`herald dlq replay`: dead letters back to their topic, once; a dry run changes nothing."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import orjson
import pytest
import yaml

from service.cli import main
from service.config import Config
from service.devtools.broker import EmbeddedKafka
from service.devtools.smtp import RecordingSMTP
from service.kafka.dlq import dlq_topic_for, replay
from tests.harness import Kafka, load_example, make_config, running, unique

pytestmark = pytest.mark.integration


def write_config(tmp_path: Path, config: Config) -> Path:
    """The Kafka part of `config` as a file, for the command line."""
    kafka = config.kafka
    doc = {
        "kafka": {
            "bootstrap_servers": kafka.bootstrap_servers,
            "group_id": kafka.group_id,
            "topics": kafka.topics,
        }
    }
    path = tmp_path / "herald.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


async def cli(*argv: str) -> None:
    """`herald …` in a thread: the command runs its own event loop."""
    await asyncio.to_thread(main, list(argv))


async def test_replay_delivers_a_dead_lettered_email_once(
    kafka: EmbeddedKafka,
    smtp: RecordingSMTP,
    client: Kafka,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = make_config(kafka, smtp, tmp_path)
    topic = config.kafka.topics[0]
    dlq = topic + ".dlq"
    path = write_config(tmp_path, config)
    event = load_example("post-change-password")
    smtp.script("550 5.1.1 Mailbox unavailable")
    async with running(config):
        await client.send(topic, event, key=b"user-1", headers=[("traceparent", b"00-ab-01")])
        assert len(await client.read(dlq, 1)) == 1
        capsys.readouterr()

        await cli("--config", str(path), "dlq", "replay", "--dry-run")
        listed = capsys.readouterr().out.splitlines()
        assert len(listed) == 2, listed
        assert topic in listed[0] and event["id"] in listed[0]
        assert "SmtpPermanentError" in listed[0] and "550 5.1.1" in listed[0]
        assert listed[1] == f"dry run: would replay 1 dead letter(s) from {dlq}"
        assert len(await client.read(topic, 2, timeout=1)) == 1  # nothing produced

        await cli("--config", str(path), "dlq", "replay")
        assert capsys.readouterr().out.splitlines()[-1] == f"replayed 1 dead letter(s) from {dlq}"
        received = await smtp.wait_for(1)
        records = await client.read(topic, 2)

        await cli("--config", str(path), "dlq", "replay")  # committed: nothing again
        assert capsys.readouterr().out.splitlines() == [f"replayed 0 dead letter(s) from {dlq}"]
    assert received[0].message["X-Herald-Event-Id"] == event["id"]
    again = records[-1]
    assert (again.key, again.value) == (b"user-1", orjson.dumps(event))
    assert list(again.headers) == [("traceparent", b"00-ab-01")]  # x-herald-* dropped


async def test_limit_and_resume(
    kafka: EmbeddedKafka, client: Kafka, smtp: RecordingSMTP, tmp_path: Path
) -> None:
    config = make_config(kafka, smtp, tmp_path)
    topic = config.kafka.topics[0]
    dlq = dlq_topic_for(config.kafka, None)
    for n in range(3):
        await client.send(dlq, orjson.dumps({"n": n}), key=b"k", headers=_dead_letter(topic))
    await client.send(dlq, b"orphan", key=b"k", headers=[("x-herald-error", b"X")])
    lines: list[str] = []
    first = await replay(config.kafka, dlq, limit=2, emit=lines.append)
    assert (first.replayed, first.skipped) == (2, 0)
    rest = await replay(config.kafka, dlq, emit=lines.append)
    assert (rest.replayed, rest.skipped) == (1, 1)
    assert "skipped" in lines[-1]
    values = [r.value for r in await client.read(topic, 3)]
    assert values == [orjson.dumps({"n": n}) for n in range(3)]


def test_topic_option_names_the_input_topic(
    kafka: EmbeddedKafka, smtp: RecordingSMTP, tmp_path: Path
) -> None:
    config = make_config(kafka, smtp, tmp_path)
    assert dlq_topic_for(config.kafka, "other.events") == "other.events.dlq"
    assert dlq_topic_for(config.kafka, "other.events.dlq") == "other.events.dlq"
    assert dlq_topic_for(config.kafka, None) == config.kafka.topics[0] + ".dlq"


async def test_unknown_topic_and_unreachable_broker_are_one_line(
    kafka: EmbeddedKafka,
    smtp: RecordingSMTP,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = make_config(kafka, smtp, tmp_path)
    path = write_config(tmp_path, config)
    with pytest.raises(SystemExit) as exit_info:
        await cli("--config", str(path), "dlq", "replay", "--topic", unique("missing"))
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path.write_text(yaml.safe_dump({"kafka": {"bootstrap_servers": f"127.0.0.1:{port}"}}))
    with pytest.raises(SystemExit) as exit_info:
        await cli("--config", str(path), "dlq", "replay")
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith(f"herald: cannot reach Kafka at 127.0.0.1:{port}")
    assert err.count("\n") == 1 and "Traceback" not in err


def _dead_letter(topic: str) -> list[tuple[str, bytes]]:
    return [
        ("x-herald-error", b"SmtpRetriesExhausted"),
        ("x-herald-reason", b"gave up after 3 attempts"),
        ("x-herald-original-topic", topic.encode()),
        ("x-herald-original-partition", b"0"),
        ("x-herald-original-offset", b"0"),
        ("x-herald-failed-at", b"2026-11-26T10:00:00.000+00:00"),
    ]
