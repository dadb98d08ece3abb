"""Herald's process: the one module that wires FastStream, aiokafka, SMTP and HTTP together.

`Herald` owns every resource; `start` opens them in order, `stop` closes them in reverse.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from aiokafka import AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from faststream.kafka import KafkaBroker, Topic
from faststream.kafka.annotations import KafkaMessage
from faststream.middlewares import AckPolicy

from service.actions import compile_flows
from service.checks import check_config
from service.config import Config, ConfigError, load_config
from service.consumer import Processor
from service.dedupe import DedupeStore, open_dedupe
from service.flows import FlowEngine
from service.http import HttpServer
from service.kafka import producer_options, security
from service.mail.mailer import Mailer
from service.mail.render import Renderer
from service.mail.transport import SmtpPool
from service.metrics import Metrics
from service.outputs import Outputs
from service.retry import RetryPolicy

__all__ = ["Herald"]

log = logging.getLogger("herald")

_BATCH_RECORDS = 500
#: Sections whose change takes effect only after a restart (they own connections).
_RESTART_SECTIONS = ("kafka", "smtp", "dedupe", "http")
_T = TypeVar("_T")
_REDELIVERY_PAUSE_S = 1.0


class _Assignment(ConsumerRebalanceListener):  # type: ignore[misc]
    """Tracks the partitions this instance owns, for readiness."""

    def __init__(self) -> None:
        self.partitions: set[TopicPartition] = set()

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        self.partitions -= set(revoked)

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        self.partitions |= set(assigned)
        log.info("partitions assigned", extra={"partitions": len(self.partitions)})


class Herald:
    """A running Herald: consumer, processor, outputs, SMTP pool and HTTP endpoints."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = Metrics()
        self.assignment = _Assignment()
        self.smtp = _smtp_pool(config)
        self.dedupe: DedupeStore | None = None
        self.producer: AIOKafkaProducer | None = None
        self.broker: KafkaBroker | None = None
        self.processor: Processor | None = None
        self.http = HttpServer(self)

    async def start(self) -> None:
        """Open every resource, then start consuming."""
        cfg = self.config
        self.dedupe = open_dedupe(
            cfg.dedupe.backend, path=cfg.dedupe.path, url=cfg.dedupe.url, ttl_s=cfg.dedupe.ttl_s
        )
        self.producer = AIOKafkaProducer(**producer_options(cfg.kafka))
        await self.producer.start()
        self.processor = self._processor(self.dedupe, self.producer)
        self.broker = self._broker(self.processor)
        await self.http.start()
        await self.broker.start()
        log.info("herald started", extra={"topics": cfg.kafka.topics, "http": self.http.address})

    async def stop(self) -> None:
        """Stop consuming (in-flight batches finish and commit), then close in reverse."""
        if self.broker is not None:
            await self.broker.stop()
        await self.http.stop()
        if self.producer is not None:
            await self.producer.stop()
        await self.smtp.close()
        if self.dedupe is not None:
            await self.dedupe.close()
        log.info("herald stopped")

    async def ready(self) -> tuple[bool, dict[str, bool]]:
        """Readiness: partitions assigned and the SMTP server reachable."""
        checks = {
            "partitions_assigned": bool(self.assignment.partitions),
            "smtp_reachable": await self.smtp.probe(),
        }
        return all(checks.values()), checks

    def reload(self, path: Path) -> bool:
        """SIGHUP: validate the new config and templates, then swap the flow engine.
        Events in flight finish on the engine they started with; an invalid config is
        logged with its problems and the running one kept."""
        try:
            cfg = load_config(path)
            problems = check_config(cfg)
            if problems:
                raise ConfigError(problems)
            engine = self._engine(cfg, self._require(self.dedupe))
        except (ConfigError, ImportError) as exc:
            problems = exc.problems if isinstance(exc, ConfigError) else [str(exc)]
            log.error("reload rejected, keeping the running config", extra={"problems": problems})
            return False
        restart = [s for s in _RESTART_SECTIONS if getattr(cfg, s) != getattr(self.config, s)]
        self._require(self.processor).engine = engine
        self.config = cfg
        log.info("config reloaded", extra={"restart_required_for": restart})
        return True

    @staticmethod
    def _require(resource: _T | None) -> _T:
        if resource is None:
            raise RuntimeError("Herald is not started")
        return resource

    def _engine(self, cfg: Config, dedupe: DedupeStore) -> FlowEngine:
        mailer = Mailer(
            renderer=Renderer(cfg.templates_dir, cfg.default_locale),
            transport=self.smtp,
            dedupe=dedupe,
            retry=RetryPolicy(
                cfg.retry.attempts, cfg.retry.initial_backoff_s, cfg.retry.max_backoff_s
            ),
            default_sender=cfg.smtp.from_,
            metrics=self.metrics,
        )
        return FlowEngine(cfg, compile_flows(cfg, mailer), self.metrics)

    def _processor(self, dedupe: DedupeStore, producer: AIOKafkaProducer) -> Processor:
        cfg = self.config
        engine = self._engine(cfg, dedupe)
        outputs = Outputs(
            producer,
            dlq_suffix=cfg.kafka.dlq_suffix,
            commands_topic=cfg.kafka.commands_topic,
            decisions_topic=cfg.kafka.decisions_topic,
        )
        return Processor(
            engine,
            outputs,
            self.metrics,
            concurrency=max(8, cfg.smtp.pool_size * 4),
            show_addresses=cfg.log.show_addresses,
        )

    def _broker(self, processor: Processor) -> KafkaBroker:
        cfg = self.config.kafka
        broker = KafkaBroker(
            cfg.bootstrap_servers.split(","),
            security=security(cfg),
            client_id="herald",
            logger=logging.getLogger("faststream"),
            log_level=logging.DEBUG,  # per-message lines; Herald logs each outcome itself
        )
        subscriber = broker.subscriber(
            *(Topic(name, declare=False) for name in cfg.topics),
            group_id=cfg.group_id,
            auto_offset_reset=cfg.auto_offset_reset,
            batch=True,
            max_records=_BATCH_RECORDS,
            ack_policy=AckPolicy.MANUAL,
            listener=self.assignment,
            parser=_keep_raw_headers,
            decoder=_no_decode,
        )

        @subscriber
        async def handle(_: Any, message: KafkaMessage) -> None:
            await _process_and_commit(processor, message)

        return broker


async def _process_and_commit(processor: Processor, message: Any) -> None:
    """Commit only after every record of the batch finished or was dead-lettered."""
    try:
        await processor.process_batch(message.raw_message)
    except Exception as exc:
        # An output could not be written (Kafka unreachable): rewind so the batch is
        # consumed again; the dedupe store keeps already-sent emails from repeating.
        log.error("batch failed, will be redelivered", exc_info=exc)
        await message.nack()
        await asyncio.sleep(_REDELIVERY_PAUSE_S)
        return
    await message.ack()


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


def _smtp_pool(config: Config) -> SmtpPool:
    smtp = config.smtp
    return SmtpPool(
        smtp.host,
        smtp.port,
        security=smtp.security,
        username=smtp.username,
        password=smtp.password.get_secret_value(),
        timeout_s=smtp.timeout_s,
        size=smtp.pool_size,
    )
