"""Actions beyond email, end to end: metadata commands, deny / redirect decisions,
python actions, secrets, the decision webhook."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml

from service.config import Config
from service.devtools.broker import EmbeddedKafka
from service.devtools.smtp import RecordingSMTP
from service.kafka.outputs import COMMAND_TYPE, command_id
from tests.harness import (
    ROOT,
    Kafka,
    load_example,
    make_config,
    metric,
    running,
    unique,
    wait_until,
)

pytestmark = pytest.mark.integration

EXAMPLES = ROOT / "examples" / "actions"


def example_flows(name: str) -> dict[str, Any]:
    """The `flows` (and `secrets`) of an examples/actions/ config."""
    doc = yaml.safe_load((EXAMPLES / name).read_text())
    return {key: doc[key] for key in ("flows", "secrets") if key in doc}


def signup(**user: Any) -> dict[str, Any]:
    return load_example("pre-user-registration", **user)


async def decisions(client: Kafka, config: Config, count: int) -> list[dict[str, Any]]:
    records = await client.read(config.kafka.decisions_topic, count)
    return [orjson.loads(r.value) for r in records]


async def test_refuse_signups_example_denies_with_reply_to_and_correlation_id(
    kafka: EmbeddedKafka, smtp: RecordingSMTP, client: Kafka, tmp_path: Path
) -> None:
    config = make_config(kafka, smtp, tmp_path, **example_flows("refuse-signups.yaml"))
    reply_to = unique("replies")
    kafka.create_topic(reply_to, 1)
    event = signup()
    headers = [("reply_to", reply_to.encode()), ("correlation_id", b"corr-123")]
    async with running(config):
        await client.send(config.kafka.topics[0], event, headers=headers)
        await client.read(reply_to, 1)
        # The decision and nothing else: no framework reply after it.
        [reply] = await client.read(reply_to, 2, timeout=1.5)
    assert dict(reply.headers)["correlation_id"] == b"corr-123"
    assert reply.key == event["data"]["user"]["user_id"].encode()
    assert orjson.loads(reply.value) == {
        "event_id": event["id"],
        "trigger": "pre-user-registration",
        "decision": "deny",
        "reason": "too_many_signups",
        "user_message": "We're not accepting sign-ups at the moment. Please try again later.",
        "user_metadata": {},
        "app_metadata": {},
        "redirect": None,
    }


async def test_init_metadata_example_allows_with_metadata_on_the_decisions_topic(
    kafka: EmbeddedKafka, smtp: RecordingSMTP, client: Kafka, tmp_path: Path
) -> None:
    config = make_config(kafka, smtp, tmp_path, **example_flows("init-metadata.yaml"))
    event = signup()
    async with running(config):
        await client.send(config.kafka.topics[0], event)
        [decision] = await decisions(client, config, 1)
    assert decision["decision"] == "allow" and decision["event_id"] == event["id"]
    assert decision["user_metadata"] == {"ui_color": "default", "use_verbose_messages": False}
    assert decision["app_metadata"] == {"is_new_user": True, "reward_status": 0}
    assert await client.read(config.kafka.commands_topic, 1, timeout=1) == []


async def test_metadata_command_is_keyed_and_stable_across_redelivery(
    kafka: EmbeddedKafka, smtp: RecordingSMTP, client: Kafka, tmp_path: Path
) -> None:
    config = make_config(kafka, smtp, tmp_path, **example_flows("init-metadata.yaml"))
    event = load_example("post-user-registration")
    async with running(config):
        await client.send(config.kafka.topics[0], event)
        await client.send(config.kafka.topics[0], event)  # redelivered
        commands = await client.read(config.kafka.commands_topic, 2)
    assert len(commands) == 2
    first, second = (orjson.loads(c.value) for c in commands)
    assert first["id"] == second["id"] == command_id(event["id"])
    assert first["type"] == COMMAND_TYPE and first["specversion"] == "1.0"
    user_id = event["data"]["user"]["user_id"]
    assert all(c.key == user_id.encode() for c in commands)
    assert first["data"] == {
        "user_id": user_id,
        "user_metadata": {},
        "app_metadata": {"is_new_user": True, "onboarding_step": None},  # null deletes
    }


async def test_downtime_example_redirects_post_login(
    kafka: EmbeddedKafka, smtp: RecordingSMTP, client: Kafka, tmp_path: Path
) -> None:
    config = make_config(kafka, smtp, tmp_path, **example_flows("downtime-redirect.yaml"))
    reply_to = unique("replies")
    kafka.create_topic(reply_to, 1)
    with_reply = load_example("post-login")
    without_reply = load_example("post-login")
    async with running(config) as herald:
        await client.send(config.kafka.topics[0], without_reply)
        await client.send(
            config.kafka.topics[0], with_reply, headers=[("reply_to", reply_to.encode())]
        )
        [reply] = await client.read(reply_to, 1)
        await wait_until(lambda: _events(herald) >= 2, "both processed")
    body = orjson.loads(reply.value)
    assert body["decision"] == "redirect" and body["event_id"] == with_reply["id"]
    assert body["redirect"] == {
        "url": "https://status.example.com/downtime",
        "query": {"reason": "maintenance"},
    }
    # post-login publishes a decision only when asked (reply_to)
    assert await client.read(config.kafka.decisions_topic, 1, timeout=1) == []


async def test_password_change_example_sends_the_email(
    kafka: EmbeddedKafka, smtp: RecordingSMTP, client: Kafka, tmp_path: Path
) -> None:
    config = make_config(kafka, smtp, tmp_path, **example_flows("password-change-email.yaml"))
    event = load_example("post-change-password")
    async with running(config):
        await client.send(config.kafka.topics[0], event)
        [received] = await smtp.wait_for(1)
    assert received.rcpt_tos == [event["data"]["user"]["email"]]
    assert received.message["X-Herald-Template"] == "password_changed"


async def test_python_example_handlers_cover_the_seed_use_cases(
    kafka: EmbeddedKafka, smtp: RecordingSMTP, client: Kafka, tmp_path: Path
) -> None:
    flows = example_flows("python-actions.yaml")
    flows["secrets"] = {"SIGNUPS_CLOSED": "true", "DOWNTIME_URL": "https://status.herald.test/"}
    config = make_config(kafka, smtp, tmp_path, **flows)
    reply_to = unique("replies")
    kafka.create_topic(reply_to, 1)
    async with running(config):
        await client.send(config.kafka.topics[0], load_example("post-change-password"))
        await client.send(config.kafka.topics[0], signup())
        await client.send(
            config.kafka.topics[0],
            load_example("post-login"),
            headers=[("reply_to", reply_to.encode())],
        )
        await smtp.wait_for(1)
        [denied] = await decisions(client, config, 1)
        [redirected] = await client.read(reply_to, 1)
    assert denied["decision"] == "deny" and denied["reason"] == "too_many_signups"
    assert orjson.loads(redirected.value)["redirect"]["url"] == "https://status.herald.test/"


async def test_python_action_sets_metadata_reads_a_secret_and_sends_email(
    kafka: EmbeddedKafka, smtp: RecordingSMTP, client: Kafka, tmp_path: Path
) -> None:
    flows = {
        "post-user-registration": [
            {"id": "py", "action": "python", "handler": "tests.handlers:welcome_with_secret"}
        ]
    }
    config = make_config(kafka, smtp, tmp_path, flows=flows, secrets={"PLAN": "gold-plan"})
    event = load_example("post-user-registration")
    async with running(config):
        await client.send(config.kafka.topics[0], event)
        [received] = await smtp.wait_for(1)
        [command] = await client.read(config.kafka.commands_topic, 1)
    assert received.message["X-Herald-Template"] == "welcome"
    data = orjson.loads(command.value)["data"]
    assert data["app_metadata"] == {"plan": "gold-plan"}
    assert data["user_metadata"] == {"obsolete": None}


@pytest.mark.parametrize("handler", ["leaks_a_secret", "too_slow"])
async def test_failing_python_action_fails_closed_on_a_sync_trigger(
    kafka: EmbeddedKafka, smtp: RecordingSMTP, client: Kafka, tmp_path: Path, handler: str
) -> None:
    flows = {
        "pre-user-registration": [
            {"id": "meta", "action": "set_metadata", "app_metadata": {"a": 1}},
            {
                "id": "py",
                "action": "python",
                "handler": f"tests.handlers:{handler}",
                "timeout_s": 0.5,
            },
        ]
    }
    config = make_config(kafka, smtp, tmp_path, flows=flows, secrets={"API_KEY": "sk-live-abcdef"})
    async with running(config) as herald:
        await client.send(config.kafka.topics[0], signup())
        [decision] = await decisions(client, config, 1)
        assert metric(herald, "herald_actions_total", action="python", outcome="failed") == 1
    assert decision["decision"] == "deny" and decision["reason"] == "action_failed"
    assert b"sk-live-abcdef" not in orjson.dumps(decision)
    assert await client.read(config.kafka.topics[0] + ".dlq", 1, timeout=1) == []


@pytest.mark.parametrize(
    ("handler", "error"),
    [
        ("leaks_a_secret", b"RuntimeError"),
        ("too_slow", b"ActionTimeout"),
        ("redirects_on_signup", b"ActionNotAllowed"),
    ],
)
async def test_failing_python_action_dead_letters_on_an_async_trigger(
    kafka: EmbeddedKafka,
    smtp: RecordingSMTP,
    client: Kafka,
    tmp_path: Path,
    handler: str,
    error: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    flows = {
        "post-user-registration": [
            {
                "id": "py",
                "action": "python",
                "handler": f"tests.handlers:{handler}",
                "timeout_s": 0.5,
            },
        ]
    }
    config = make_config(kafka, smtp, tmp_path, flows=flows, secrets={"API_KEY": "sk-live-abcdef"})
    event = load_example("post-user-registration")
    async with running(config):
        await client.send(config.kafka.topics[0], event)
        [dead] = await client.read(config.kafka.topics[0] + ".dlq", 1)
    headers = dict(dead.headers)
    assert headers["x-herald-error"] == error
    assert dead.value == orjson.dumps(event)
    assert b"sk-live-abcdef" not in b"".join(v for _, v in dead.headers)
    logged = " ".join(str(r.__dict__) for r in caplog.records)
    assert "sk-live-abcdef" not in logged
    assert "action failed" in logged


async def test_decision_endpoint(kafka: EmbeddedKafka, smtp: RecordingSMTP, tmp_path: Path) -> None:
    config = make_config(kafka, smtp, tmp_path, **example_flows("refuse-signups.yaml"))
    event = signup()
    async with running(config) as herald, aiohttp.ClientSession() as http:
        base = f"http://{herald.http.address}/v1/decisions"
        async with http.post(f"{base}/pre-user-registration", json=event) as resp:
            assert resp.status == 200
            body = await resp.json()
        async with http.post(f"{base}/pre-user-registration", data=b"{nope") as resp:
            assert resp.status == 400
            assert "not valid JSON" in (await resp.json())["error"]
        missing = signup()
        del missing["data"]["user"]["user_id"]
        async with http.post(f"{base}/pre-user-registration", json=missing) as resp:
            assert resp.status == 400
            assert "data.user.user_id" in (await resp.json())["error"]
        async with http.post(f"{base}/post-login", json=event) as resp:
            assert resp.status == 400  # type does not match the trigger
        for trigger in ("post-change-password", "no-such-trigger"):
            async with http.post(f"{base}/{trigger}", json=event) as resp:
                assert resp.status == 404
    assert body["decision"] == "deny" and body["reason"] == "too_many_signups"
    assert body["event_id"] == event["id"]


def _events(herald: Any) -> float:
    return metric(herald, "herald_events_total")


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_every_example_config_passes_herald_check(name: str) -> None:
    from service.checks import check_config
    from service.config import load_config

    assert check_config(load_config(EXAMPLES / name, environ={})) == []
