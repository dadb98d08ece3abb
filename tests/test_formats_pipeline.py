"""End to end per `kafka.format`: provider JSON on the embedded broker → email or dead letter."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from service.config import Config
from service.devtools.broker import EmbeddedKafka
from service.devtools.smtp import RecordingSMTP
from tests.harness import Kafka, make_config, running

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).parent / "fixtures"


def fixture(provider: str, name: str, **changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads((FIXTURES / provider / f"{name}.json").read_bytes())
    return {**data, **changes}


def with_format(config: Config, fmt: str) -> Config:
    return config.model_copy(update={"kafka": config.kafka.model_copy(update={"format": fmt})})


async def test_auth0_log_stream(
    kafka: EmbeddedKafka, smtp: RecordingSMTP, client: Kafka, tmp_path: Path
) -> None:
    config = with_format(make_config(kafka, smtp, tmp_path), "auth0-log-stream")
    topic = config.kafka.topics[0]
    signup = fixture("auth0", "ss", log_id=f"9002{uuid.uuid4().int}")
    change = fixture("auth0", "scp")  # the {"log_id", "data"} wrapper
    change["log_id"] = change["data"]["log_id"] = f"9002{uuid.uuid4().int}"
    unknown_user = fixture("auth0", "fu")
    async with running(config):
        await client.send(topic, unknown_user, key=b"auth0")  # skipped: no account
        await client.send(topic, signup, key=b"auth0")
        await client.send(topic, change, key=b"auth0")
        received = await smtp.wait_for(2)
    by_id = {r.message["X-Herald-Event-Id"]: r for r in received}
    welcome = by_id[signup["log_id"]]
    assert welcome.rcpt_tos == ["grace.hopper@example.com"]
    assert welcome.message["X-Herald-Template"] == "welcome"
    changed = by_id[change["log_id"]]
    assert changed.rcpt_tos == ["emmy.noether@example.com"]
    assert changed.message["X-Herald-Template"] == "password_changed"
    assert await client.read(topic + ".dlq", 1, timeout=1) == []


async def test_keycloak_event_and_one_without_an_address(
    kafka: EmbeddedKafka, smtp: RecordingSMTP, client: Kafka, tmp_path: Path
) -> None:
    config = with_format(make_config(kafka, smtp, tmp_path), "keycloak")
    topic = config.kafka.topics[0]
    no_email = fixture("keycloak", "update_password_no_email", id=str(uuid.uuid4()))
    reset = fixture("keycloak", "send_reset_password", id=str(uuid.uuid4()))
    async with running(config):
        await client.send(topic, no_email, key=b"kc")
        await client.send(topic, reset, key=b"kc")
        received = await smtp.wait_for(1)
        dead = await client.read(topic + ".dlq", 1)
    assert received[0].rcpt_tos == ["katherine.johnson@example.com"]
    assert received[0].message["X-Herald-Event-Id"] == reset["id"]
    assert received[0].message["X-Herald-Template"] == "password_reset"
    assert len(dead) == 1
    headers = dict(dead[0].headers)
    assert dead[0].value == orjson.dumps(no_email)
    assert headers["x-herald-error"] == b"MissingAddress"
    assert headers["x-herald-reason"].startswith(b"event has no recipient address")
    assert b"data.user.email is empty" in headers["x-herald-reason"]
