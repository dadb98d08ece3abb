"""aiokafka client settings from `kafka.*`: servers, security (SASL, TLS), the
producer's and consumer's options."""

from __future__ import annotations

import ssl
from typing import Any, Literal

from faststream.kafka.security import parse_security
from faststream.security import (
    BaseSecurity,
    SASLPlaintext,
    SASLScram256,
    SASLScram512,
)

from service.config import KafkaConfig
from service.failures import KafkaUnavailable
from service.kafka.outputs import MAX_REQUEST_BYTES

_SASL = {"PLAIN": SASLPlaintext, "SCRAM-SHA-256": SASLScram256, "SCRAM-SHA-512": SASLScram512}


def security(cfg: KafkaConfig) -> BaseSecurity | None:
    """The FastStream security object for `kafka.security_protocol` and friends."""
    use_ssl = cfg.security_protocol in ("SSL", "SASL_SSL")
    context = _ssl_context(cfg.ssl_cafile) if use_ssl else None
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


def _ssl_context(cafile: str | None) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=cafile)
    except OSError as exc:  # missing, unreadable, or not PEM (an ssl.SSLError)
        reason = str(exc.reason if isinstance(exc, ssl.SSLError) else exc.strerror or exc)
        message = f"kafka.ssl_cafile {cafile}: {reason.lower()}"
        raise KafkaUnavailable(message, "ssl_cafile") from None


def producer_options(cfg: KafkaConfig) -> dict[str, Any]:
    """aiokafka producer keyword arguments: same servers and security as the consumer."""
    return {
        "bootstrap_servers": cfg.bootstrap_servers.split(","),
        "client_id": "herald",
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 5,
        # Outputs checks a dead letter against this before sending it (README: Outputs).
        "max_request_size": MAX_REQUEST_BYTES,
        **parse_security(security(cfg)),
    }


def consumer_options(cfg: KafkaConfig) -> dict[str, Any]:
    """aiokafka consumer keyword arguments for Herald's tools (`herald dlq replay`)."""
    return {
        "bootstrap_servers": cfg.bootstrap_servers.split(","),
        "client_id": "herald",
        **parse_security(security(cfg)),
    }


def isolation_level(cfg: KafkaConfig) -> Literal["read_committed", "read_uncommitted"]:
    """With `exactly_once`, Herald reads only committed records (its own retry items are
    written in transactions, and so may be the producers' events)."""
    return "read_committed" if cfg.exactly_once else "read_uncommitted"
