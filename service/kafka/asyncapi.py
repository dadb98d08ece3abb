"""Herald's AsyncAPI document: the topics it consumes and produces, with message schemas.

Built from the same broker and subscriber declaration as the running app
(`service.app`), plus publisher declarations for the outputs of README: Outputs. The
document is regenerated with `herald asyncapi --output docs/asyncapi.json`
(`make docs`); a test fails when the committed one is stale.
"""

from __future__ import annotations

import importlib.metadata
import json
from typing import Any

from faststream.kafka import KafkaBroker
from faststream.specification import AsyncAPI

from service.config import Config
from service.kafka import declare_subscriber, new_broker
from service.schemas import (
    Auth0LogEvent,
    CloudEvent,
    DeadLetterHeaders,
    Decision,
    EmailStatus,
    KeycloakEvent,
    MetadataUpdate,
)

__all__ = ["build_document", "render_document"]

_DESCRIPTION = (
    "Herald runs Auth0-style Actions on identity events: templated email, user "
    "metadata, and allow / deny / redirect decisions for synchronous triggers."
)
_DLQ_DESCRIPTION = (
    "Events that could not be processed: the original key, value and headers, plus "
    "the x-herald-* headers naming the error, the reason and where the record came from."
)


def build_document(config: Config) -> dict[str, Any]:
    """The AsyncAPI 3.0 document for `config`'s topics, as JSON-ready data."""
    broker = new_broker(config.kafka)
    _declare_input(broker, config)
    _declare_outputs(broker, config)
    spec = AsyncAPI(
        broker,
        title="Herald",
        version=_version(),
        description=_DESCRIPTION,
        schema_version="3.0.0",
    ).to_specification()
    document: dict[str, Any] = spec.to_jsonable()
    _add_dead_letter_headers(document, config)
    return document


def render_document(config: Config) -> str:
    """`build_document` as stable, indented JSON text (what docs/asyncapi.json holds)."""
    # Sorted: FastStream keeps publishers in a set, whose order varies between runs.
    return json.dumps(build_document(config), indent=2, ensure_ascii=False, sort_keys=True) + "\n"


def _declare_input(broker: KafkaBroker, config: Config) -> None:
    """The app's subscriber, with a handler whose signature documents one record."""
    subscriber = declare_subscriber(broker, config.kafka)
    fmt = config.kafka.format
    if fmt == "auth0-log-stream":

        @subscriber
        async def auth0_event(event: Auth0LogEvent) -> None:
            """An Auth0 log event."""

    elif fmt == "keycloak":

        @subscriber
        async def keycloak_event(event: KeycloakEvent) -> None:
            """A Keycloak event."""

    else:

        @subscriber
        async def identity_event(event: CloudEvent) -> None:
            """A CloudEvents 1.0 identity event."""


def _declare_outputs(broker: KafkaBroker, config: Config) -> None:
    kafka = config.kafka
    for topic in kafka.topics:
        broker.publisher(
            topic + kafka.dlq_suffix,
            title=f"{topic}{kafka.dlq_suffix}:DeadLetter",
            description=_DLQ_DESCRIPTION,
            schema=CloudEvent if kafka.format == "cloudevents" else dict[str, Any],
        )
    broker.publisher(
        kafka.commands_topic,
        title=f"{kafka.commands_topic}:MetadataUpdate",
        description="User metadata changes of one event, keyed by user id.",
        schema=MetadataUpdate,
    )
    broker.publisher(
        kafka.decisions_topic,
        title=f"{kafka.decisions_topic}:Decision",
        description=(
            "Decisions of synchronous triggers, keyed by user id. An input record with a "
            "`reply_to` header gets its decision on that topic instead, with the input's "
            "`correlation_id` header copied."
        ),
        schema=Decision,
    )
    if kafka.status_topic:
        broker.publisher(
            kafka.status_topic,
            title=f"{kafka.status_topic}:EmailStatus",
            description=(
                "Each change of an email's delivery record (sent, deferred, uncertain, "
                "failed, skipped), keyed by user id; recipients masked unless "
                "log.show_addresses."
            ),
            schema=EmailStatus,
        )


def _add_dead_letter_headers(document: dict[str, Any], config: Config) -> None:
    """FastStream has no way to declare message headers: add them to the DLQ messages."""
    headers = DeadLetterHeaders.model_json_schema(by_alias=True)
    for name, message in document.get("components", {}).get("messages", {}).items():
        if any(name.startswith(t + config.kafka.dlq_suffix) for t in config.kafka.topics):
            message["headers"] = headers


def _version() -> str:
    try:
        return importlib.metadata.version("herald")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"
