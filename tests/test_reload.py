"""`herald run` as operators run it: SIGHUP reloads config, SIGTERM stops cleanly."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from service.devtools.broker import EmbeddedKafka
from service.devtools.smtp import RecordingSMTP
from tests.harness import HeraldProcess, Kafka, load_example, make_config

pytestmark = pytest.mark.integration


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
