"""Kafka wiring: client settings, the FastStream broker and Herald's one subscriber, and the
one place that turns aiokafka's connection errors into the operator's words."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.conn import create_conn
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
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
from service.events import present_headers
from service.outputs import MAX_REQUEST_BYTES

__all__ = [
    "GRACEFUL_TIMEOUT_S",
    "KafkaUnavailable",
    "committed_metadata",
    "consumer_options",
    "declare_subscriber",
    "diagnose",
    "isolation_level",
    "new_broker",
    "producer_options",
    "quiet_bootstrap_errors",
    "retry_consumer",
    "security",
]

#: FastStream's own wait for a handler at shutdown; Herald's drain (app.py) ends first.
GRACEFUL_TIMEOUT_S = 30.0
_BATCH_RECORDS = 500
_FETCH_MAX_WAIT_MS = 25
_SASL = {"PLAIN": SASLPlaintext, "SCRAM-SHA-256": SASLScram256, "SCRAM-SHA-512": SASLScram512}
_PROBE_TIMEOUT_MS = 5_000


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
        # Outputs checks a dead letter against this before sending it (SPEC §6).
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


def retry_consumer(cfg: KafkaConfig, listener: ConsumerRebalanceListener) -> AIOKafkaConsumer:
    """The consumer of the retry topics (service/retries.py): a group of its own, so the
    input consumer's rebalances do not move it; from the earliest offset, so a new group
    never skips a scheduled retry; commits only by hand."""
    consumer = AIOKafkaConsumer(
        group_id=cfg.group_id + cfg.retry_suffix,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        # A retry topic created after start-up (auto-created by the first retry) is seen
        # within this long.
        metadata_max_age_ms=10_000,
        isolation_level=isolation_level(cfg),
        **consumer_options(cfg),
    )
    consumer.subscribe([topic + cfg.retry_suffix for topic in cfg.topics], listener=listener)
    return consumer


def committed_metadata(
    cfg: KafkaConfig, group_id: str
) -> Callable[[Sequence[TopicPartition]], Awaitable[dict[TopicPartition, str]]]:
    """Reads the metadata strings committed with `group_id`'s offsets (what the retry
    scheduler finished above its committed offset, service/offsets.py)."""

    async def read(tps: Sequence[TopicPartition]) -> dict[TopicPartition, str]:
        admin = AIOKafkaAdminClient(**consumer_options(cfg))
        await admin.start()
        try:
            found = await admin.list_consumer_group_offsets(group_id, partitions=list(tps))
        finally:
            await admin.close()
        return {tp: meta.metadata or "" for tp, meta in found.items()}

    return read


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
    broker: KafkaBroker,
    cfg: KafkaConfig,
    listener: ConsumerRebalanceListener | None = None,
    *,
    max_poll_interval_s: float = 300.0,
) -> BatchSubscriber:
    """Herald's one subscriber: every input topic, batches, commits only by hand.
    `max_poll_interval_s` must exceed the longest batch (service/batches.py)."""
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
        max_poll_interval_ms=int(max_poll_interval_s * 1000),
        isolation_level=isolation_level(cfg),
        # `reply_to` is Herald's header for decisions (SPEC §6); FastStream would also
        # publish the handler's return value there, an empty record the caller cannot parse.
        no_reply=True,
        listener=listener,
        parser=_keep_raw_headers,
        decoder=_no_decode,
        description=f"Identity events ({cfg.format}); each trigger runs its flow.",
    )


async def _keep_raw_headers(records: tuple[ConsumerRecord, ...], original: Any) -> Any:
    """FastStream decodes every header as UTF-8 and fails on other bytes or a null value;
    Herald must keep them byte-exact for dead letters, so parse a header-safe copy (a null
    header left out: it counts as absent), keep the raw."""
    safe = tuple(
        dataclasses.replace(
            r, headers=[(k, _utf8_or_empty(v)) for k, v in present_headers(r.headers)]
        )
        for r in records
    )
    message = await original(safe)
    message.raw_message = records
    return message


def _utf8_or_empty(value: bytes) -> bytes:
    if not value:
        return b""
    with contextlib.suppress(UnicodeDecodeError):
        value.decode()
        return value
    return b""


async def _no_decode(message: Any, original: Any) -> None:
    """Herald parses record values itself (events.py); skip FastStream's JSON decode."""
    return None


class KafkaUnavailable(ConnectionError):
    """Kafka cannot be used now: `str()` is one line for the operator (never a secret),
    `kind` a stable tag (`authentication_failed`, `tls_untrusted`, `tls_failed`,
    `sasl_mechanism`, `unreachable`, `kafka_error`, `ssl_cafile`)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


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
