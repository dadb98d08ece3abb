"""The one place that turns aiokafka's connection errors into the operator's words."""

from __future__ import annotations

import logging
import os
import ssl

from aiokafka.conn import create_conn
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from faststream.kafka.security import parse_security
from faststream.security import (
    SASLPlaintext,
    SASLScram256,
    SASLScram512,
)

from service.config import KafkaConfig
from service.failures import KafkaUnavailable
from service.kafka.options import security

#: FastStream's own wait for a handler at shutdown; Herald's drain (app.py) ends first.
GRACEFUL_TIMEOUT_S = 30.0
_BATCH_RECORDS = 500
_FETCH_MAX_WAIT_MS = 25
_SASL = {"PLAIN": SASLPlaintext, "SCRAM-SHA-256": SASLScram256, "SCRAM-SHA-512": SASLScram512}
_PROBE_TIMEOUT_MS = 5_000


#: What a Kafka client call raises when Kafka cannot be used: `diagnose` words it.
CONNECTION_ERRORS = (KafkaError, OSError, TimeoutError)


async def diagnose(cfg: KafkaConfig, exc: BaseException) -> KafkaUnavailable:
    """Why a client could not start, in the operator's words. aiokafka's bootstrap raises a
    bare "Unable to bootstrap" and only logs the cause, so that one is probed again."""
    if isinstance(exc, KafkaConnectionError) and exc.__cause__ is None:
        exc = await _probe(cfg) or exc
    return _classify(cfg, exc)


def _classify(cfg: KafkaConfig, exc: BaseException) -> KafkaUnavailable:
    """The mapper: aiokafka / ssl / socket errors → `KafkaUnavailable`."""
    if isinstance(exc, KafkaUnavailable):
        return exc
    at = f"at {cfg.bootstrap_servers}"
    if isinstance(exc, SaslAuthenticationFailed):
        return KafkaUnavailable(
            f"Kafka authentication failed {at} as {cfg.sasl_username!r} ({cfg.sasl_mechanism}):"
            " check kafka.sasl_username and kafka.sasl_password",
            "authentication_failed",
        )
    if isinstance(exc, UnsupportedSaslMechanismError):
        return KafkaUnavailable(f"Kafka {at} refused the SASL mechanism: {exc}", "sasl_mechanism")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return KafkaUnavailable(
            f"Kafka TLS certificate not trusted {at}: {exc.verify_message}"
            f" (kafka.ssl_cafile: {cfg.ssl_cafile or 'the system CAs'})",
            "tls_untrusted",
        )
    if isinstance(exc, ssl.SSLError):
        return KafkaUnavailable(f"Kafka TLS handshake failed {at}: {exc.reason}", "tls_failed")
    if isinstance(exc, OSError | TimeoutError | KafkaConnectionError):
        return KafkaUnavailable(f"cannot reach Kafka {at}: {_network_reason(exc)}", "unreachable")
    return KafkaUnavailable(f"Kafka {at}: {' '.join(str(exc).split())}", "kafka_error")


class _NoBootstrapErrors(logging.Filter):
    """Drops aiokafka's per-server "Unable connect to" line of a failed bootstrap: the
    caller reports that failure itself, once, in the operator's words (`diagnose`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith('Unable connect to "')


def quiet_bootstrap_errors() -> None:
    """Install `_NoBootstrapErrors` on aiokafka's logger (once)."""
    logger = logging.getLogger("aiokafka")
    if not any(isinstance(f, _NoBootstrapErrors) for f in logger.filters):
        logger.addFilter(_NoBootstrapErrors())


def _network_reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno).lower()
    return " ".join(str(exc).split()) or type(exc).__name__


async def _probe(cfg: KafkaConfig) -> BaseException | None:
    """Connect (TLS, SASL) to each bootstrap server as the clients do; the first error, or
    None when one accepts."""
    options = parse_security(security(cfg))
    first: BaseException | None = None
    for server in cfg.bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            conn = await create_conn(
                host.strip("[]"), int(port), request_timeout_ms=_PROBE_TIMEOUT_MS, **options
            )
        except (OSError, TimeoutError, KafkaError, ValueError) as exc:
            first = first or exc
            continue
        conn.close()
        return None
    return first
