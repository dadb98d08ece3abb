"""Herald's process: wires Kafka (service/kafka/), the flows, SMTP and HTTP together.

`Herald` owns every resource; `start` opens them in order, `stop` closes them in reverse.
The HTTP endpoints come up before Kafka: while Kafka refuses or cannot be reached, the
connection is retried with backoff, `/healthz` answers and `/readyz` says 503.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TypeVar

from service.actions import compile_flows
from service.checks import check_config
from service.config import Config, ConfigError, load_config
from service.dedupe import DedupeStore, dedupe_store
from service.deliveries import DeliveryLog
from service.delivery_stores import open_deliveries
from service.flows import FlowEngine
from service.formats import parser_for
from service.http import HttpServer
from service.kafka import (
    KafkaBroker,
    KafkaProducer,
    committed_metadata,
    connect_until_up,
    consumer_broker,
    producer_options,
    retry_consumer,
    started_producer,
)
from service.kafka.assignment import Assignment
from service.kafka.batches import BATCH_BUDGET_S, BatchRunner
from service.kafka.outputs import Outputs
from service.kafka.retries import RetryScheduler
from service.kafka.transactions import Transactions
from service.mail.mailer import Mailer
from service.mail.render import Renderer
from service.mail.transport import SmtpPool
from service.metrics import Metrics
from service.processor import Processor
from service.ratelimit import RateLimiter, open_rate_limiter
from service.retry.policy import RetryPolicy
from service.retry.protocols import RetryGroup
from service.retry.retrier import Retrier

__all__ = ["Herald"]

log = logging.getLogger("herald")

#: Sections whose change takes effect only after a restart (they own connections).
_RESTART_SECTIONS = ("kafka", "smtp", "dedupe", "rate_limit", "http")
_T = TypeVar("_T")
#: How often a dependency that is down (SMTP server, dedupe store) is probed: first, at most.
_PROBE_BACKOFF_S = (0.5, 5.0)
#: SIGTERM gives the records and retries in flight this long to finish, then cancels them.
DRAIN_S = 10.0
#: Kafka's default cap on a transaction's timeout (`transaction.max.timeout.ms`).
_MAX_TRANSACTION_S = 900.0


class Herald:
    """A running Herald: consumer, processor, outputs, SMTP pool and HTTP endpoints."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = Metrics()
        self.assignment = Assignment(config.kafka.group_id)
        self.smtp = SmtpPool.for_config(config.smtp)
        self.transactions: Transactions | None = None
        self.deliveries: DeliveryLog | None = None
        self.dedupe: DedupeStore | None = None
        self.rate_limiter: RateLimiter | None = None
        self.producer: KafkaProducer | None = None
        self.broker: KafkaBroker | None = None
        self.processor: Processor | None = None
        self.runner: BatchRunner | None = None
        self.retrier: Retrier | None = None
        self.scheduler: RetryScheduler | None = None
        self.http = HttpServer(
            config.http,
            ready=self.ready,
            metrics=self.metrics.render,
            decider=lambda: self.processor,
            records=lambda: self.deliveries.store if self.deliveries else None,
            show_addresses=lambda: self.config.log.show_addresses,
        )

    async def start(self) -> None:
        """Open every resource, then start consuming."""
        cfg = self.config
        self.dedupe = dedupe_store(
            cfg.dedupe.backend, path=cfg.dedupe.path, url=cfg.dedupe.url, ttl_s=cfg.dedupe.ttl_s
        )
        await self.dedupe.open()  # a wrong dedupe.url fails here, before Kafka
        self.deliveries = DeliveryLog(
            open_deliveries(
                cfg.dedupe.backend, path=cfg.dedupe.path, url=cfg.dedupe.url, ttl_s=cfg.dedupe.ttl_s
            ),
            show_addresses=cfg.log.show_addresses,
        )
        self.rate_limiter = open_rate_limiter(
            cfg.dedupe.backend,
            path=cfg.dedupe.path,
            url=cfg.dedupe.url,
            per_recipient=cfg.rate_limit.per_recipient,
            window_s=cfg.rate_limit.window_s,
        )
        await self.http.start()
        log.info("http listening", extra={"http": self.http.address})
        await self._connect_kafka(self.dedupe)
        log.info("herald started", extra={"topics": cfg.kafka.topics, "http": self.http.address})

    async def stop(self) -> None:
        """Start no more work; let what is in flight finish for `DRAIN_S`, then cancel it;
        commit what finished (the rest is consumed again); only then close, in reverse."""
        draining = []
        if self.runner is not None:
            draining.append(self.runner.stop(DRAIN_S))
        if self.scheduler is not None:
            draining.append(self.scheduler.stop(DRAIN_S))
        await asyncio.gather(*draining)
        if self.broker is not None:
            await self.broker.stop()
        await self.http.stop()
        if self.transactions is not None:
            await self.transactions.close()
        if self.producer is not None:
            await self.producer.stop()
        await self.smtp.close()
        if self.rate_limiter is not None:
            await self.rate_limiter.close()
        if self.deliveries is not None:
            await self.deliveries.store.close()
        if self.dedupe is not None:
            await self.dedupe.close()
        log.info("herald stopped")

    async def _connect_kafka(self, dedupe: DedupeStore) -> None:
        """Start the producer, then join the group. A failure (a refused login, an untrusted
        certificate, a broker down or refusing the join) is retried with backoff until it
        works, however long: readiness stays false meanwhile. A bad setting that is not
        Kafka's answer (a missing `ssl_cafile`) raises at once."""
        options = producer_options(self.config.kafka)
        if self.config.kafka.exactly_once and self.transactions is None:
            timeout_s = min(self._max_poll_interval_s() + 60, _MAX_TRANSACTION_S)
            self.transactions = Transactions(options, timeout_ms=int(timeout_s * 1000))
            self.assignment.transactions = self.transactions

        async def connect() -> None:
            if self.producer is None:
                self.producer = await started_producer(options)
            if self.processor is None:
                self.processor = self._processor(dedupe, self.producer)
            await self._start_consumer(self.processor)
            await self._start_retries()

        await connect_until_up(self.config.kafka, connect)

    async def _start_retries(self) -> None:
        if self.scheduler is not None or self.retrier is None:
            return
        kafka = self.config.kafka
        group_id = kafka.group_id + kafka.retry_suffix
        group = RetryGroup(group_id, self.transactions, committed_metadata(kafka, group_id))
        scheduler = RetryScheduler(
            lambda listener: retry_consumer(kafka, listener), self.retrier, self.metrics, group
        )
        await scheduler.start()
        self.scheduler = scheduler

    async def _start_consumer(self, processor: Processor) -> None:
        if self.broker is not None:  # joined on an earlier attempt; the retries did not
            return
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
        if self.processor is not None:  # else Kafka is not connected yet: built from cfg
            self.processor.engine = engine
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
            default_sender=cfg.smtp.from_,
            metrics=self.metrics,
            rate_limiter=self.rate_limiter,
            deliveries=self.deliveries,
        )
        return FlowEngine(cfg, compile_flows(cfg, mailer), self.metrics, mailer)

    def _processor(self, dedupe: DedupeStore, producer: KafkaProducer) -> Processor:
        cfg = self.config
        engine = self._engine(cfg, dedupe)
        outputs = Outputs(
            producer,
            dlq_suffix=cfg.kafka.dlq_suffix,
            retry_suffix=cfg.kafka.retry_suffix,
            commands_topic=cfg.kafka.commands_topic,
            decisions_topic=cfg.kafka.decisions_topic,
            transactions=self.transactions,
            status_topic=cfg.kafka.status_topic,
        )
        if self.deliveries is not None:
            self.deliveries.publish = outputs.status
        processor: Processor | None = None

        def current_engine() -> FlowEngine:
            # After SIGHUP the processor runs a new engine; retries follow it.
            return processor.engine if processor is not None else engine

        self.retrier = Retrier(
            parse=parser_for(cfg.kafka.format),
            mailer=lambda: current_engine().mailer,
            secrets=lambda: current_engine().secrets,
            outputs=outputs,
            policy=RetryPolicy(
                cfg.retry.attempts, cfg.retry.initial_backoff_s, cfg.retry.max_backoff_s
            ),
            metrics=self.metrics,
        )
        processor = Processor(
            engine,
            outputs,
            self.metrics,
            concurrency=max(8, cfg.smtp.pool_size * 4),
            show_addresses=cfg.log.show_addresses,
            parse=parser_for(cfg.kafka.format),
            retrier=self.retrier,
        )
        return processor

    def _max_poll_interval_s(self) -> float:
        """Longer than any batch: its budget, then the records in flight, each at most a
        few SMTP steps and the wait for the final reply (`smtp.data_timeout_s`)."""
        smtp = self.config.smtp
        return max(300.0, BATCH_BUDGET_S + smtp.data_timeout_s + 10 * smtp.timeout_s)

    def _broker(self, processor: Processor) -> KafkaBroker:
        runner = self.runner = self.assignment.runner = BatchRunner(
            processor,
            self.smtp.probe,
            self.metrics,
            # Probing a dependency that is down: not the emails' retry schedule.
            initial_backoff_s=_PROBE_BACKOFF_S[0],
            max_backoff_s=_PROBE_BACKOFF_S[1],
            transactions=self.transactions,
        )
        return consumer_broker(
            self.config.kafka,
            self.assignment,
            runner.handle,
            max_poll_interval_s=self._max_poll_interval_s(),
        )
