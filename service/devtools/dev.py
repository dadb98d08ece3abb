"""`herald dev`: embedded broker, capture SMTP server and Herald in one process."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import re
import signal
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer

from service.addresses import mask_address
from service.app import Herald
from service.config import Config
from service.devtools.broker import EmbeddedKafka
from service.devtools.console import ConsoleHandler, command_line, decision_line
from service.devtools.smtp import CapturedMessage, CaptureSMTP, summary_line
from service.kafka.publish import publish_files
from service.logs import setup_logging
from service.preview import DEFAULT_PORT, PreviewServer

__all__ = ["dev_config", "run_dev"]

EXAMPLES = Path("examples/events")
_PARTITIONS = 4

log = logging.getLogger("herald.dev")


def dev_config(config: Config, *, bootstrap: str, smtp_port: int) -> Config:
    """The user's config pointed at the embedded broker and the capture server."""
    kafka = config.kafka.model_copy(
        update={
            "bootstrap_servers": bootstrap,
            "auto_offset_reset": "earliest",
            "security_protocol": "PLAINTEXT",
            "sasl_mechanism": None,
        }
    )
    smtp = config.smtp.model_copy(
        update={"host": "127.0.0.1", "port": smtp_port, "security": "none", "username": ""}
    )
    # The embedded broker forgets everything on exit, so the dedupe store must too.
    dedupe = config.dedupe.model_copy(update={"backend": "memory"})
    return config.model_copy(update={"kafka": kafka, "smtp": smtp, "dedupe": dedupe})


async def run_dev(config: Config, *, outbox: Path, demo: bool) -> None:
    """Run until Ctrl-C: one readable line per outcome (each captured email, each decision
    and metadata command read back from Kafka, retries, failures, warnings), then a tally."""
    mask = not config.log.show_addresses
    console = ConsoleHandler(sys.stdout, mask=mask)
    setup_logging(config.log.level, config.log.show_addresses, handler=console)
    say = console.say
    tally: Counter[str] = Counter()

    def captured(msg: CapturedMessage) -> None:
        tally["emails"] += 1
        if mask:
            msg = dataclasses.replace(msg, rcpt_tos=[mask_address(a) for a in msg.rcpt_tos])
        say(summary_line(msg))

    with EmbeddedKafka() as kafka, CaptureSMTP(outbox, on_message=captured) as smtp:
        for topic in _topics(config):
            kafka.create_topic(topic, _PARTITIONS)
        herald = Herald(dev_config(config, bootstrap=kafka.bootstrap, smtp_port=smtp.port))
        await herald.start()
        preview = PreviewServer(config, EXAMPLES)
        outputs = await _watch_outputs(config, kafka.bootstrap, say, tally)
        try:
            preview_url = await preview.start("127.0.0.1", DEFAULT_PORT, any_port=True)
            banner = _banner(kafka.bootstrap, smtp.port, outbox, herald.http.address, preview_url)
            console.say(banner, tidy=False)
            if demo:
                await _publish_demo(herald.config, say)
            await _until_interrupted()
        finally:
            await preview.stop()
            await herald.stop()
            await _stop(outputs)
    console.say(
        f"\nherald dev stopped: {tally['emails']} email(s) captured in {outbox}/, "
        f"{tally['decisions']} decision(s), {tally['commands']} metadata command(s)",
        tidy=False,
    )


async def _watch_outputs(
    config: Config, bootstrap: str, say: Callable[[str], None], tally: Counter[str]
) -> asyncio.Task[None] | None:
    """Read Herald's decisions and metadata commands back from the embedded broker and say
    each in one line. Decisions go to the decisions topic or to an event's `reply_to`
    topic, so every topic is read but Herald's inputs and its own bookkeeping (dead
    letters, retries, status events); a new topic is noticed within a second."""
    k = config.kafka
    ignored = [*k.topics, *(t + k.dlq_suffix for t in k.topics)]
    ignored += [t + k.retry_suffix for t in k.topics]
    if k.status_topic:
        ignored.append(k.status_topic)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        client_id="herald-dev",
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        metadata_max_age_ms=1000,
    )
    consumer.subscribe(pattern=f"^(?!(?:{'|'.join(map(re.escape, ignored))})$).*")
    try:
        await consumer.start()
    except Exception as exc:
        log.warning("decisions and metadata commands are not shown", extra={"error": repr(exc)})
        return None

    async def watch() -> None:
        # Without a group, aiokafka starts every partition over from the earliest offset
        # whenever the assignment changes (a new topic): each record is said once.
        read: dict[tuple[str, int], int] = {}
        try:
            async for record in consumer:
                where = (record.topic, record.partition)
                if record.offset < read.get(where, 0):
                    continue
                read[where] = record.offset + 1
                user = (record.key or b"").decode(errors="replace")
                try:
                    body: Any = json.loads(record.value or b"")
                except ValueError:
                    body = None
                if record.topic == k.commands_topic:
                    tally["commands"] += 1
                    say(command_line(body if isinstance(body, dict) else {}, user, record.topic))
                elif isinstance(body, dict) and "decision" in body and "trigger" in body:
                    tally["decisions"] += 1
                    say(decision_line(body, user, record.topic))
                elif record.topic == k.decisions_topic:
                    log.warning("not a decision", extra={"topic": record.topic})
        finally:
            await consumer.stop()

    task = asyncio.create_task(watch(), name="herald-dev-outputs")
    task.add_done_callback(_watch_ended)
    return task


def _watch_ended(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("decisions and metadata commands no longer shown", exc_info=task.exception())


async def _stop(task: asyncio.Task[None] | None) -> None:
    if task is None or task.done():
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _topics(config: Config) -> list[str]:
    k = config.kafka
    derived = [t + suffix for t in k.topics for suffix in (k.dlq_suffix, k.retry_suffix)]
    outputs = [k.commands_topic, k.decisions_topic, *([k.status_topic] if k.status_topic else [])]
    return [*k.topics, *derived, *outputs]


def _banner(bootstrap: str, smtp_port: int, outbox: Path, http: str, preview: str) -> str:
    return (
        f"herald dev: Kafka (embedded) at {bootstrap}\n"
        f"            SMTP capture at 127.0.0.1:{smtp_port}, writing to {outbox}/\n"
        f"            HTTP at http://{http}  (/healthz /readyz /metrics)\n"
        f"            template preview at {preview}\n"
        f"  publish:  HERALD_KAFKA__BOOTSTRAP_SERVERS={bootstrap} herald publish FILE.json\n"
        f"  stop:     Ctrl-C"
    )


async def _publish_demo(config: Config, say: Callable[[str], None]) -> None:
    files = sorted(EXAMPLES.glob("*.json"))
    if not files:
        say(f"(no demo events: {EXAMPLES}/ has no .json files)")
        return
    say(f"publishing {len(files)} demo event(s) from {EXAMPLES}/ ...")
    await publish_files(config.kafka, config.kafka.topics[0], files)


async def _until_interrupted() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
