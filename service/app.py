"""Herald's process: the one module that wires FastStream, aiokafka, SMTP and HTTP together.

`Herald` owns every resource; `start` opens them in order, `stop` closes them in reverse.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from service.actions import compile_flows
from service.batches import BatchRunner
from service.checks import check_config
from service.config import Config, ConfigError, load_config
from service.consumer import Processor
from service.dedupe import DedupeStore, open_dedupe
from service.flows import FlowEngine
from service.formats import parser_for
from service.http import HttpServer
from service.kafka import declare_subscriber, new_broker, producer_options
from service.mail.mailer import Mailer
from service.mail.render import Renderer
from service.mail.transport import SmtpPool
from service.metrics import Metrics
from service.outputs import Outputs
from service.ratelimit import RateLimiter, open_rate_limiter
from service.retry import RetryPolicy

__all__ = ["Herald"]

log = logging.getLogger("herald")

#: Sections whose change takes effect only after a restart (they own connections).
_RESTART_SECTIONS = ("kafka", "smtp", "dedupe", "rate_limit", "http")
_T = TypeVar("_T")
_START_ATTEMPTS = 6


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
        self.rate_limiter: RateLimiter | None = None
        self.producer: AIOKafkaProducer | None = None
        self.broker: KafkaBroker | None = None
        self.processor: Processor | None = None
        self.runner: BatchRunner | None = None
        self.http = HttpServer(self)

    async def start(self) -> None:
        """Open every resource, then start consuming."""
        cfg = self.config
        self.dedupe = open_dedupe(
            cfg.dedupe.backend, path=cfg.dedupe.path, url=cfg.dedupe.url, ttl_s=cfg.dedupe.ttl_s
        )
        await self.dedupe.open()  # a wrong dedupe.url fails here, before Kafka
        self.rate_limiter = open_rate_limiter(
            cfg.dedupe.backend,
            path=cfg.dedupe.path,
            url=cfg.dedupe.url,
            per_recipient=cfg.rate_limit.per_recipient,
            window_s=cfg.rate_limit.window_s,
        )
        self.producer = AIOKafkaProducer(**producer_options(cfg.kafka))
        await self.producer.start()
        self.processor = self._processor(self.dedupe, self.producer)
        await self.http.start()
        await self._start_consumer(self.processor)
        log.info("herald started", extra={"topics": cfg.kafka.topics, "http": self.http.address})

    async def stop(self) -> None:
        """Stop consuming (in-flight batches finish and commit), then close in reverse."""
        if self.runner is not None:
            self.runner.stopping.set()  # an outage wait ends now; the batch is redelivered
        if self.broker is not None:
            await self.broker.stop()
        await self.http.stop()
        if self.producer is not None:
            await self.producer.stop()
        await self.smtp.close()
        if self.rate_limiter is not None:
            await self.rate_limiter.close()
        if self.dedupe is not None:
            await self.dedupe.close()
        log.info("herald stopped")

    async def _start_consumer(self, processor: Processor) -> None:
        """Join the group; a refused join (a broker may refuse one) is retried with backoff."""
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(_START_ATTEMPTS),
            wait=wait_random_exponential(multiplier=0.5, max=8),
            retry=retry_if_exception_type(KafkaError),
            reraise=True,
            before_sleep=lambda state: log.warning(
                "consumer start failed, retrying",
                extra={
                    "attempt": state.attempt_number,
                    "error": repr(state.outcome.exception()) if state.outcome else None,
                },
            ),
        ):
            with attempt:
                self.broker = self._broker(processor)
                try:
                    await self.broker.start()
                except BaseException:
                    await self.broker.stop()
                    self.broker = None
                    raise

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
            rate_limiter=self.rate_limiter,
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
            parse=parser_for(cfg.kafka.format),
        )

    def _broker(self, processor: Processor) -> KafkaBroker:
        broker = new_broker(self.config.kafka)
        subscriber = declare_subscriber(broker, self.config.kafka, self.assignment)

        runner = self.runner = BatchRunner(
            processor,
            self.smtp.probe,
            self.metrics,
            initial_backoff_s=self.config.retry.initial_backoff_s,
            max_backoff_s=self.config.retry.max_backoff_s,
        )

        @subscriber
        async def handle(_: Any, message: KafkaMessage) -> None:
            await runner.handle(message)

        return broker


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
