"""Kafka wiring: client settings, the FastStream broker and Herald's one subscriber."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import ssl
from typing import Any

from aiokafka import ConsumerRecord
from aiokafka.abc import ConsumerRebalanceListener
from faststream.kafka import KafkaBroker, Topic
from faststream.kafka.security import parse_security
from faststream.kafka.subscriber.usecase import BatchSubscriber
from faststream.middlewares import AckPolicy
from faststream.security import (
    BaseSecurity,
    SASLPlaintext,
    SASLScram256,
    SASLScram512,
)

from service.config import KafkaConfig

__all__ = [
    "GRACEFUL_TIMEOUT_S",
    "consumer_options",
    "declare_subscriber",
    "new_broker",
    "producer_options",
    "security",
]

#: How long SIGTERM waits for the batch in flight to finish and commit.
GRACEFUL_TIMEOUT_S = 30.0
_BATCH_RECORDS = 500
_FETCH_MAX_WAIT_MS = 25
_SASL = {"PLAIN": SASLPlaintext, "SCRAM-SHA-256": SASLScram256, "SCRAM-SHA-512": SASLScram512}


def security(cfg: KafkaConfig) -> BaseSecurity | None:
    """The FastStream security object for `kafka.security_protocol` and friends."""
    use_ssl = cfg.security_protocol in ("SSL", "SASL_SSL")
    context = ssl.create_default_context(cafile=cfg.ssl_cafile) if use_ssl else None
    if cfg.security_protocol.startswith("SASL"):
        sasl = _SASL[cfg.sasl_mechanism or "PLAIN"]
        return sasl(
            cfg.sasl_username,
            cfg.sasl_password.get_secret_value(),
            ssl_context=context,
            use_ssl=use_ssl,
        )
    if use_ssl:
        return BaseSecurity(ssl_context=context, use_ssl=True)
    return None


def producer_options(cfg: KafkaConfig) -> dict[str, Any]:
    """aiokafka producer keyword arguments: same servers and security as the consumer."""
    return {
        "bootstrap_servers": cfg.bootstrap_servers.split(","),
        "client_id": "herald",
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 5,
        **parse_security(security(cfg)),
    }


def consumer_options(cfg: KafkaConfig) -> dict[str, Any]:
    """aiokafka consumer keyword arguments for Herald's tools (`herald dlq replay`)."""
    return {
        "bootstrap_servers": cfg.bootstrap_servers.split(","),
        "client_id": "herald",
        **parse_security(security(cfg)),
    }


def new_broker(cfg: KafkaConfig) -> KafkaBroker:
    """The FastStream broker for `kafka:` (also used to generate the AsyncAPI document)."""
    return KafkaBroker(
        cfg.bootstrap_servers.split(","),
        security=security(cfg),
        client_id="herald",
        logger=logging.getLogger("faststream"),
        log_level=logging.DEBUG,  # per-message lines; Herald logs each outcome itself
        graceful_timeout=GRACEFUL_TIMEOUT_S,
    )


def declare_subscriber(
    broker: KafkaBroker, cfg: KafkaConfig, listener: ConsumerRebalanceListener | None = None
) -> BatchSubscriber:
    """Herald's one subscriber: every input topic, batches, commits only by hand."""
    return broker.subscriber(
        *(Topic(name, declare=False) for name in cfg.topics),
        group_id=cfg.group_id,
        auto_offset_reset=cfg.auto_offset_reset,
        batch=True,
        max_records=_BATCH_RECORDS,
        # An idle fetch returns after this long at most: a new event waits for the next
        # fetch, so this bounds the latency from publish to processing.
        fetch_max_wait_ms=_FETCH_MAX_WAIT_MS,
        ack_policy=AckPolicy.MANUAL,
        # `reply_to` is Herald's header for decisions (SPEC §6); FastStream would also
        # publish the handler's return value there, an empty record the caller cannot parse.
        no_reply=True,
        listener=listener,
        parser=_keep_raw_headers,
        decoder=_no_decode,
        description=f"Identity events ({cfg.format}); each trigger runs its flow.",
    )


async def _keep_raw_headers(records: tuple[ConsumerRecord, ...], original: Any) -> Any:
    """FastStream decodes every header as UTF-8 and fails on other bytes; Herald must
    keep them byte-exact for dead letters, so parse a header-safe copy, keep the raw."""
    safe = tuple(
        dataclasses.replace(r, headers=[(k, _utf8_or_empty(v)) for k, v in r.headers])
        for r in records
    )
    message = await original(safe)
    message.raw_message = records
    return message


def _utf8_or_empty(value: bytes | None) -> bytes:
    if not value:
        return b""
    with contextlib.suppress(UnicodeDecodeError):
        value.decode()
        return value
    return b""


async def _no_decode(message: Any, original: Any) -> None:
    """Herald parses record values itself (events.py); skip FastStream's JSON decode."""
    return None
