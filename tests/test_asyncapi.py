"""The AsyncAPI document: consumed and produced topics with schemas; docs/ is up to date."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from service.cli import main
from service.config import Config, load_config
from service.kafka.asyncapi import build_document, render_document

ROOT = Path(__file__).resolve().parent.parent
DOCUMENT = ROOT / "docs" / "asyncapi.json"


@pytest.fixture(scope="module")
def config() -> Config:
    return load_config(ROOT / "config" / "herald.yaml", environ={})


@pytest.fixture(scope="module")
def document(config: Config) -> dict[str, Any]:
    return build_document(config)


def channel(document: dict[str, Any], address: str) -> tuple[str, dict[str, Any]]:
    found = [(k, c) for k, c in document["channels"].items() if c["address"] == address]
    assert len(found) == 1, f"{address}: {list(document['channels'])}"
    return found[0]


def payload(document: dict[str, Any], address: str) -> dict[str, Any]:
    _, chan = channel(document, address)
    (ref,) = (m["$ref"] for m in chan["messages"].values())
    message = document["components"]["messages"][ref.rsplit("/", 1)[1]]
    schema_ref = message["payload"]["$ref"]
    return document["components"]["schemas"][schema_ref.rsplit("/", 1)[1]]  # type: ignore[no-any-return]


def test_committed_document_is_up_to_date(config: Config) -> None:
    assert DOCUMENT.read_text(encoding="utf-8") == render_document(config), (
        "docs/asyncapi.json is stale: run `make docs`"
    )


def test_consumed_and_produced_topics(document: dict[str, Any]) -> None:
    assert document["asyncapi"] == "3.0.0"
    assert document["info"]["title"] == "Herald"
    actions = {
        document["channels"][op["channel"]["$ref"].rsplit("/", 1)[1]]["address"]: op["action"]
        for op in document["operations"].values()
    }
    assert actions == {
        "identity.events": "receive",
        "identity.events.dlq": "send",
        "identity.commands": "send",
        "identity.decisions": "send",
        "identity.notifications": "send",
    }


def test_the_status_topic_carries_email_status_cloudevents(document: dict[str, Any]) -> None:
    status = payload(document, "identity.notifications")
    assert status["properties"]["type"]["const"] == "herald.email.status"
    assert set(status["required"]) >= {"id", "subject", "time", "data"}


def test_message_schemas(document: dict[str, Any]) -> None:
    event = payload(document, "identity.events")
    assert set(event["required"]) >= {"specversion", "id", "source", "type", "data"}
    command = payload(document, "identity.commands")
    assert command["properties"]["type"]["const"] == "identity.user.metadata_update"
    decision = payload(document, "identity.decisions")
    assert decision["properties"]["decision"]["enum"] == ["allow", "deny", "redirect"]
    _, dlq = channel(document, "identity.events.dlq")
    (ref,) = (m["$ref"] for m in dlq["messages"].values())
    headers = document["components"]["messages"][ref.rsplit("/", 1)[1]]["headers"]
    assert set(headers["required"]) == {
        "x-herald-error",
        "x-herald-reason",
        "x-herald-original-topic",
        "x-herald-original-partition",
        "x-herald-original-offset",
        "x-herald-failed-at",
    }


def test_provider_format_documents_its_own_input(config: Config) -> None:
    kafka = config.kafka.model_copy(update={"format": "auth0-log-stream", "topics": ["a", "b"]})
    document = build_document(config.model_copy(update={"kafka": kafka}))
    assert "log_id" in payload(document, "a")["properties"]
    assert {c["address"] for c in document["channels"].values()} >= {"a", "b", "a.dlq", "b.dlq"}


def test_command_writes_the_document(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], config: Config
) -> None:
    target = tmp_path / "asyncapi.json"
    main(["--config", str(ROOT / "config" / "herald.yaml"), "asyncapi", "--output", str(target)])
    assert capsys.readouterr().out == f"wrote {target}\n"
    assert orjson.loads(target.read_bytes())["asyncapi"] == "3.0.0"
