"""CPU cost of Herald's per-email pipeline, without Kafka and without an SMTP server.

    python -m bench.pipeline_bench [--events 5000] [--runs 3] [--profile FILE] [--records]

Builds the real pipeline the way `herald run` does (`compile_flows`, `FlowEngine`,
`Mailer` with the shipped templates, SQLite dedupe store and rate limiter in a temporary
directory, tenacity retry policy, Prometheus metrics) around a transport that accepts
every message at once ("250 OK"), then runs `password_changed` events (the `bench.run`
mix: half `en`, half `de`) one at a time through `Processor.process` with outputs that
only count. Prints the CPU µs per event (process time, all threads; a busy machine
inflates it less than wall time) of each run, timed in blocks of 500 events: the median
block and the best block (the figure least disturbed by other work on a shared
machine), and the median wall-clock µs per event (which also counts time the event
loop spent blocked, e.g. in an fsync). Every run starts from a fresh database.
`--profile` writes a cProfile of one more run; `--records` adds delivery records (in the
same SQLite file) and status events (counted), flushed every 50 events as a batch is.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import logging
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml

from bench.events import make_event
from service.actions import compile_flows
from service.config import parse_config
from service.dedupe import SqliteDedupe
from service.deliveries import DeliveryLog
from service.delivery_stores import SqliteDeliveries
from service.flows import FlowEngine
from service.mail.mailer import Mailer
from service.mail.render import Renderer
from service.metrics import Metrics
from service.processor import Processor
from service.ratelimit import SqliteRateLimiter

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class FakeRecord:
    """A consumed record, as aiokafka hands it over."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)


class FakeTransport:
    """Accepts every message at once."""

    def __init__(self) -> None:
        self.sent = 0

    async def send(self, sender: str, recipients: list[str], message: bytes, **options: Any) -> str:
        self.sent += 1
        return "250 OK"


class FakeOutputs:
    """Counts what would be produced to Kafka."""

    def __init__(self) -> None:
        self.produced = 0

    async def metadata_command(self, *args: Any) -> None:
        self.produced += 1

    async def decision(self, *args: Any) -> None:
        self.produced += 1

    async def dead_letter(self, record: Any, error: str, reason: str) -> str:
        raise AssertionError(f"dead letter in the benchmark: {error}: {reason}")

    def status(self, key: bytes, value: bytes) -> None:
        self.produced += 1

    async def flush(self) -> None:
        return None


def _config(db: Path) -> Any:
    doc = {
        "kafka": {"bootstrap_servers": "127.0.0.1:9", "topics": ["identity.events"]},
        "smtp": {"host": "127.0.0.1", "port": 25, "from": "Herald <no-reply@example.com>"},
        "retry": {"attempts": 5, "initial_backoff_s": 0.5, "max_backoff_s": 30},
        "rate_limit": {"per_recipient": 20, "window_s": 3600},
        "dedupe": {"backend": "sqlite", "path": str(db)},
        "log": {"level": "WARNING"},
        "templates_dir": str(ROOT / "templates"),
        "default_locale": "en",
        "secrets": {"SUPPORT_URL": "https://example.com/support"},
        "flows": {
            "post-change-password": [
                {
                    "id": "notify-password-change",
                    "action": "send_email",
                    "template": "password_changed",
                }
            ]
        },
    }
    return parse_config(yaml.safe_dump(doc, sort_keys=False), "bench.yaml", environ={})


def _records(run: str, n: int) -> list[FakeRecord]:
    records = []
    for seq in range(n):
        event = make_event(run, seq)
        key = event["data"]["user"]["user_id"].encode()
        records.append(FakeRecord("identity.events", seq % 16, seq, key, orjson.dumps(event)))
    return records


BLOCK = 500
FLUSH_EVERY = 50


async def _one_run(
    workdir: Path, run: str, n: int, profile: Path | None = None, records: bool = False
) -> list[tuple[float, float]]:
    """(CPU, wall) µs per event of each block of `n` events through a fresh pipeline."""
    db = workdir / f"{run}.db"
    cfg = _config(db)
    metrics = Metrics()
    transport = FakeTransport()
    dedupe = SqliteDedupe(db, cfg.dedupe.ttl_s)
    limiter = SqliteRateLimiter(db, cfg.rate_limit.per_recipient, cfg.rate_limit.window_s)
    mailer = Mailer(
        renderer=Renderer(cfg.templates_dir, cfg.default_locale),
        transport=transport,
        dedupe=dedupe,
        default_sender=cfg.smtp.from_,
        metrics=metrics,
        rate_limiter=limiter,
    )
    outputs = FakeOutputs()
    if records:  # delivery records in the same file, status events counted
        mailer.deliveries = DeliveryLog(
            SqliteDeliveries(db, cfg.dedupe.ttl_s), publish=outputs.status
        )
    engine = FlowEngine(cfg, compile_flows(cfg, mailer), metrics)
    processor = Processor(engine, outputs, metrics)  # type: ignore[arg-type]
    # Warm-up: compile the templates of both locales, fill the caches.
    for record in _records(f"{run}-warm", 50):
        await processor.process(record)
    records = _records(run, n)
    sent_before = transport.sent
    profiler = cProfile.Profile() if profile else None
    if profiler:
        profiler.enable()
    blocks = []
    for base in range(0, n, BLOCK):
        block = records[base : base + BLOCK]
        start, wall = time.process_time(), time.perf_counter()
        for i, record in enumerate(block, 1):
            await processor.process(record)
            if i % FLUSH_EVERY == 0:
                await processor.flush()  # as a batch of the embedded broker's size does
        cpu_us = (time.process_time() - start) / len(block) * 1e6
        blocks.append((cpu_us, (time.perf_counter() - wall) / len(block) * 1e6))
    if profiler:
        profiler.disable()
    if profiler and profile:
        profiler.dump_stats(profile)
    sent = transport.sent - sent_before
    if sent != n:
        raise AssertionError(f"{sent} of {n} emails sent")
    await limiter.close()
    if mailer.deliveries is not None:
        await mailer.deliveries.store.close()
    await dedupe.close()
    return blocks


async def _run(n: int, runs: int, profile: Path | None, records: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        every: list[tuple[float, float]] = []
        for i in range(runs):
            blocks = await _one_run(workdir, f"run{i}", n, records=records)
            every += blocks
            print(f"run {i + 1}: {_summary(blocks)}")
        print(f"all runs: {_summary(every)} ({runs} x {n} events)")
        if profile:
            await _one_run(workdir, "profiled", n, profile, records)
            print(f"profile written to {profile}")


def _summary(blocks: list[tuple[float, float]]) -> str:
    cpu = [c for c, _ in blocks]
    wall = statistics.median(w for _, w in blocks)
    return (
        f"median block {statistics.median(cpu):6.1f}, best block {min(cpu):6.1f} "
        f"CPU µs/event; median block {wall:6.1f} wall µs/event"
    )


def main() -> None:
    """Parse arguments and run the benchmark."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=5000, help="events per run")
    parser.add_argument("--runs", type=int, default=3, help="runs (median reported)")
    parser.add_argument("--profile", type=Path, help="write a cProfile of one more run")
    parser.add_argument(
        "--records", action="store_true", help="with delivery records and status events"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(_run(args.events, args.runs, args.profile, args.records))


if __name__ == "__main__":
    main()
