"""Shared fixtures: the embedded Kafka-protocol broker, a recording SMTP server and the
suite's own redis-server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis

from service.devtools.broker import EmbeddedKafka
from service.devtools.smtp import RecordingSMTP
from tests.harness import HeraldProcess, Kafka
from tests.services.redis import RedisServer


@pytest.fixture(scope="session")
def kafka() -> Iterator[EmbeddedKafka]:
    with EmbeddedKafka() as broker:
        yield broker


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A redis-server started for this session on a free port (DB 0, empty)."""
    with RedisServer() as server:
        yield server.url


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix no other test uses; every key under it is deleted afterwards."""
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=2)
    prefix = f"herald-test:{uuid.uuid4().hex}:"
    yield prefix
    keys = list(client.scan_iter(match=prefix + "*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(scope="session")
def smtp_server() -> Iterator[RecordingSMTP]:
    with RecordingSMTP() as server:
        yield server


@pytest.fixture
def smtp(smtp_server: RecordingSMTP) -> RecordingSMTP:
    smtp_server.reset()
    return smtp_server


@pytest.fixture(autouse=True)
def reap_herald_processes() -> Iterator[None]:
    """No `herald run` subprocess outlives its test."""
    yield
    for process in list(HeraldProcess.alive):
        process.reap()


@pytest.fixture
async def client(kafka: EmbeddedKafka) -> AsyncIterator[Kafka]:
    kafka_client = Kafka(kafka.bootstrap)
    await kafka_client.start()
    yield kafka_client
    await kafka_client.stop()
