"""`herald dev`: embedded broker, capture SMTP server and Herald in one process."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections import Counter
from pathlib import Path

from service.app import Herald
from service.config import Config
from service.devtools.broker import EmbeddedKafka
from service.devtools.smtp import CapturedMessage, CaptureSMTP, summary_line
from service.logs import setup_logging
from service.preview import DEFAULT_PORT, PreviewServer
from service.publish import publish_files

__all__ = ["dev_config", "run_dev"]

EXAMPLES = Path("examples/events")
_PARTITIONS = 4


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
    """Run until Ctrl-C; print one line per captured email and a tally at the end."""
    setup_logging(config.log.level, config.log.show_addresses)
    tally: Counter[str] = Counter()

    def captured(msg: CapturedMessage) -> None:
        tally["emails"] += 1
        print(summary_line(msg), flush=True)

    with EmbeddedKafka() as kafka, CaptureSMTP(outbox, on_message=captured) as smtp:
        for topic in _topics(config):
            kafka.create_topic(topic, _PARTITIONS)
        herald = Herald(dev_config(config, bootstrap=kafka.bootstrap, smtp_port=smtp.port))
        await herald.start()
        preview = PreviewServer(config, EXAMPLES)
        try:
            preview_url = await preview.start("127.0.0.1", DEFAULT_PORT, any_port=True)
            _banner(kafka.bootstrap, smtp.port, outbox, herald.http.address, preview_url)
            if demo:
                await _publish_demo(herald.config)
            await _until_interrupted()
        finally:
            await preview.stop()
            await herald.stop()
    print(f"\nherald dev stopped: {tally['emails']} email(s) captured in {outbox}/", flush=True)


def _topics(config: Config) -> list[str]:
    k = config.kafka
    return [*k.topics, *(t + k.dlq_suffix for t in k.topics), k.commands_topic, k.decisions_topic]


def _banner(bootstrap: str, smtp_port: int, outbox: Path, http: str, preview: str) -> None:
    print(
        f"herald dev: Kafka (embedded) at {bootstrap}\n"
        f"            SMTP capture at 127.0.0.1:{smtp_port}, writing to {outbox}/\n"
        f"            HTTP at http://{http}  (/healthz /readyz /metrics)\n"
        f"            template preview at {preview}\n"
        f"  publish:  HERALD_KAFKA__BOOTSTRAP_SERVERS={bootstrap} herald publish FILE.json\n"
        f"  stop:     Ctrl-C",
        flush=True,
    )


async def _publish_demo(config: Config) -> None:
    files = sorted(EXAMPLES.glob("*.json"))
    if not files:
        print(f"(no demo events: {EXAMPLES}/ has no .json files)", file=sys.stderr)
        return
    count = await publish_files(config.kafka, config.kafka.topics[0], files)
    print(f"published {count} demo event(s) from {EXAMPLES}/", flush=True)


async def _until_interrupted() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
