"""The one place that turns aiokafka's connection errors into the operator's words."""

from __future__ import annotations

import logging
import os
import ssl
import time
from collections.abc import Awaitable, Callable

from aiokafka.conn import create_conn
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from faststream.kafka.security import parse_security
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    wait_random_exponential,
)

from service.config import KafkaConfig
from service.failures import KafkaUnavailable
from service.kafka.options import security

_PROBE_TIMEOUT_MS = 5_000


log = logging.getLogger("herald")

#: While Kafka stays down for the same reason, it is logged again at most this often.
_REPEAT_LOG_S = 60.0
_CONNECT_MAX_BACKOFF_S = 30.0

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


class OutageLog:
    """Kafka connection failures, logged so that they do not flood the log: the first (and
    each new reason) at error level, the same reason again at most every `_REPEAT_LOG_S`."""

    def __init__(self, servers: str) -> None:
        self.servers = servers
        self.reason = ""
        self.logged_at = 0.0
        self.attempts = 0

    def report(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        if not isinstance(error, KafkaUnavailable):
            return
        self.attempts = state.attempt_number
        extra = {
            "kafka_error": error.kind,
            "bootstrap_servers": self.servers,
            "attempt": state.attempt_number,
            "retry_in_s": round(state.next_action.sleep, 1) if state.next_action else None,
        }
        now = time.monotonic()
        if str(error) != self.reason:
            level = logging.ERROR
        elif now - self.logged_at >= _REPEAT_LOG_S:
            level = logging.WARNING
        else:
            log.debug(str(error), extra=extra)
            return
        log.log(level, str(error), extra=extra)
        self.reason, self.logged_at = str(error), now

    def recovered(self) -> None:
        if self.attempts:
            log.info("kafka connected", extra={"after_attempts": self.attempts + 1})


async def connect_until_up(cfg: KafkaConfig, connect: Callable[[], Awaitable[None]]) -> None:
    """Run `connect` until it works, however long, with backoff: a refused login, an
    untrusted certificate, a broker down or refusing the join is retried (and logged by
    `OutageLog`); a bad setting that is not Kafka's answer (a missing `ssl_cafile`)
    raises at once."""
    quiet_bootstrap_errors()
    outage = OutageLog(cfg.bootstrap_servers)
    async for attempt in AsyncRetrying(
        wait=wait_random_exponential(multiplier=0.5, max=_CONNECT_MAX_BACKOFF_S),
        retry=retry_if_exception_type(KafkaUnavailable),
        before_sleep=outage.report,
    ):
        with attempt:
            try:
                await connect()
            except CONNECTION_ERRORS as exc:
                raise await diagnose(cfg, exc) from exc
    outage.recovered()
