"""Kafka client settings shared by the consumer (FastStream) and Herald's producer."""

from __future__ import annotations

import ssl
from typing import Any

from faststream.kafka.security import parse_security
from faststream.security import (
    BaseSecurity,
    SASLPlaintext,
    SASLScram256,
    SASLScram512,
)

from service.config import KafkaConfig

__all__ = ["consumer_options", "producer_options", "security"]

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
