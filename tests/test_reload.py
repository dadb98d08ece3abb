"""`herald run` as operators run it: SIGHUP reloads config, SIGTERM stops cleanly."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from service.devtools.broker import EmbeddedKafka
from service.devtools.smtp import RecordingSMTP
from tests.harness import ROOT, Kafka, load_example, make_config

pytestmark = pytest.mark.integration


class HeraldProcess:
    """`python -m service run` with its JSON log lines collected."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.lines: list[dict[str, Any]] = []
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "service",
            "--config",
            str(self.config_path),
            "run",
            cwd=ROOT,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "HERALD_LOG__LEVEL": "INFO"},
        )
        self._reader = asyncio.create_task(self._read())
        await self.wait_log("partitions assigned")

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        async for raw in self.proc.stderr:
            try:
                self.lines.append(orjson.loads(raw))
            except orjson.JSONDecodeError:
                self.lines.append({"msg": raw.decode(errors="replace")})

    async def wait_log(self, message: str, count: int = 1, timeout: float = 20) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                found = [line for line in self.lines if line.get("msg") == message]
                if len(found) >= count:
                    return found[-1]
                await asyncio.sleep(0.02)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def stop(self) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.proc.wait(), 20)
        await self._reader
        return code


def write_config(path: Path, doc: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(doc))


async def test_sighup_turns_refuse_signups_on_and_keeps_the_old_config_when_broken(
    kafka: EmbeddedKafka, smtp: RecordingSMTP, client: Kafka, tmp_path: Path
) -> None:
    flows = {
        "pre-user-registration": [
            {
                "id": "refuse-signups",
                "action": "deny",
                "enabled": False,
                "reason": "too_many_signups",
            }
        ]
    }
    config = make_config(kafka, smtp, tmp_path, flows=flows)
    doc = config.model_dump(mode="json", by_alias=True)
    doc["smtp"]["password"] = ""
    doc["kafka"]["sasl_password"] = ""
    path = tmp_path / "herald.yaml"
    write_config(path, doc)
    topic = config.kafka.topics[0]
    herald = HeraldProcess(path)
    await herald.start()
    try:
        await client.send(topic, load_example("pre-user-registration"))
        await client.read(config.kafka.decisions_topic, 1)
        doc["flows"]["pre-user-registration"][0]["enabled"] = True
        write_config(path, doc)
        herald.signal(signal.SIGHUP)
        await herald.wait_log("config reloaded")
        await client.send(topic, load_example("pre-user-registration"))
        await client.read(config.kafka.decisions_topic, 2)
        path.write_text("flows:\n  pre-user-registration:\n    - action: nonsense\n")
        herald.signal(signal.SIGHUP)
        rejected = await herald.wait_log("reload rejected, keeping the running config")
        await client.send(topic, load_example("pre-user-registration"))
        records = await client.read(config.kafka.decisions_topic, 3)
    finally:
        code = await herald.stop()
    assert [orjson.loads(r.value)["decision"] for r in records] == ["allow", "deny", "deny"]
    assert any("herald.yaml:3" in p for p in rejected["problems"])
    assert code == 0
