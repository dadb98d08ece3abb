"""The `real_kafka` tier: Herald against Apache Kafka itself (KRaft JVMs, see
tests/services/kraft.py). Brokers are shared per session; each test gets its own topics
and group ids. Every test in this folder carries the `real_kafka` marker."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trustme

from tests.harness import Kafka
from tests.services.kraft import KafkaCluster, Scram

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(item.fspath).parents:
            item.add_marker(pytest.mark.real_kafka)


@pytest.fixture(scope="session")
def real_kafka() -> Iterator[KafkaCluster]:
    """One KRaft broker (RF 1) for the whole session."""
    with KafkaCluster(1) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def kafka_cluster() -> Iterator[KafkaCluster]:
    """Three KRaft nodes: RF 3, min.insync.replicas=2, for failover tests."""
    with KafkaCluster(3) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def scram() -> Scram:
    return Scram("herald", "s3cret-Scram-pw", trustme.CA())


@pytest.fixture(scope="session")
def secure_kafka(scram: Scram) -> Iterator[KafkaCluster]:
    """One broker that also listens with SASL_SSL (SCRAM-SHA-512, a trustme CA)."""
    with KafkaCluster(1, scram=scram) as cluster:
        yield cluster


@pytest.fixture
async def real_client(real_kafka: KafkaCluster) -> AsyncIterator[Kafka]:
    """A producer / reader on the single broker."""
    client = Kafka(real_kafka.bootstrap)
    await client.start()
    yield client
    await client.stop()
