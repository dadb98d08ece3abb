"""`herald topics create`: every topic Herald writes, and its input topics when missing.

The plan (`plan_topics`) is pure: config + what the cluster has → which topics, with
which settings. `create_topics` reads the cluster, applies the plan and reports one
`TopicOutcome` per topic. Settings chosen:

| topic                         | partitions     | retention.ms                          |
| ----------------------------- | -------------- | ------------------------------------- |
| each of `kafka.topics`        | `--partitions` | 7 days (only created when missing)    |
| `<input><dlq_suffix>`         | as its input   | 28 days: time to notice, fix, replay  |
| `<input><retry_suffix>`       | as its input   | 7 days, or 2 × attempts × max backoff |
| commands, decisions, status   | `--partitions` | 7 days                                |

Dead letters and retries get as many partitions as their input, so they scale with it.
`--partitions` defaults to the largest
partition count among the existing input topics, else 3. The replication factor is
`--replication-factor`, else min(3, brokers); at 3 or more the topic gets
`min.insync.replicas=2`, so a write Herald produced with `acks=all` survives losing a
broker and a second loss stops writes instead of losing them.

Existing topics are never altered (their partitions and settings are the operator's):
a second run creates nothing and reports every topic as existing. A broker that names no
controller (librdkafka's mock cluster behind `herald dev`) cannot create topics: that is
`TopicsUnsupported`, unless every topic is there already.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    IncompatibleBrokerVersion,
    KafkaConnectionError,
    KafkaError,
    TopicAlreadyExistsError,
    for_code,
)

from service.config import KafkaConfig, RetryConfig
from service.kafka import consumer_options, diagnose

__all__ = [
    "Cluster",
    "Status",
    "TopicOutcome",
    "TopicSpec",
    "TopicsError",
    "TopicsUnsupported",
    "create_topics",
    "plan_topics",
]

DAY_MS = 24 * 3600 * 1000
DLQ_RETENTION_MS = 28 * DAY_MS
RETENTION_MS = 7 * DAY_MS
DEFAULT_PARTITIONS = 3
_MAX_REPLICATION = 3
_REQUEST_TIMEOUT_MS = 15_000
_CREATE_TIMEOUT_MS = 10_000  # how long the controller may take; under the request's own


class TopicsError(Exception):
    """The cluster could not be read or asked to create topics (one line for the CLI)."""


class TopicsUnsupported(TopicsError):
    """The broker has no CreateTopics: librdkafka's mock cluster behind `herald dev`."""

    def __init__(self) -> None:
        super().__init__(
            "the broker does not support creating topics"
            " (the embedded broker of herald dev creates them on first use)"
        )


class Status(StrEnum):
    """What became of one planned topic."""

    CREATED = "created"
    EXISTS = "exists"
    WOULD_CREATE = "would create"
    FAILED = "failed"


@dataclass(frozen=True)
class Cluster:
    """What the plan needs to know about the cluster: topics → partition counts, brokers."""

    partitions: Mapping[str, int]
    brokers: int


@dataclass(frozen=True)
class TopicSpec:
    """One topic of the plan; `exists` ones are left as they are."""

    name: str
    partitions: int
    replication_factor: int
    configs: Mapping[str, str] = field(default_factory=dict)
    exists: bool = False

    def settings(self) -> str:
        """`4 partitions, rf 3, min.insync.replicas 2, retention 28d`."""
        parts = [_partitions(self.partitions), f"rf {self.replication_factor}"]
        if "min.insync.replicas" in self.configs:
            parts.append(f"min.insync.replicas {self.configs['min.insync.replicas']}")
        if "retention.ms" in self.configs:
            parts.append(f"retention {_duration(int(self.configs['retention.ms']))}")
        return ", ".join(parts)


@dataclass(frozen=True)
class TopicOutcome:
    """A planned topic and what happened to it (`error` when FAILED)."""

    spec: TopicSpec
    status: Status
    error: str = ""

    def line(self) -> str:
        """The line `herald topics create` prints for this topic."""
        if self.status is Status.EXISTS:
            return f"exists {self.spec.name} ({_partitions(self.spec.partitions)})"
        if self.status is Status.FAILED:
            return f"cannot create {self.spec.name}: {self.error}"
        return f"{self.status} {self.spec.name} ({self.spec.settings()})"


def plan_topics(
    kafka: KafkaConfig,
    retry: RetryConfig,
    cluster: Cluster,
    *,
    partitions: int | None = None,
    replication_factor: int | None = None,
) -> list[TopicSpec]:
    """Each input, its DLQ and retry topic; then commands, decisions and status."""
    existing = cluster.partitions
    default = partitions or max((existing.get(t, 0) for t in kafka.topics), default=0)
    default = default or DEFAULT_PARTITIONS
    rf = replication_factor or max(1, min(_MAX_REPLICATION, cluster.brokers))
    wanted: dict[str, tuple[int, int]] = {}  # name → (partitions, retention.ms); first wins
    for topic in kafka.topics:
        count = existing.get(topic) or default
        wanted.setdefault(topic, (count, RETENTION_MS))
        wanted.setdefault(topic + kafka.dlq_suffix, (count, DLQ_RETENTION_MS))
        wanted.setdefault(topic + kafka.retry_suffix, (count, _retry_retention_ms(retry)))
    for output in (kafka.commands_topic, kafka.decisions_topic, kafka.status_topic):
        if output:
            wanted.setdefault(output, (default, RETENTION_MS))
    return [
        _spec(name, count, rf, retention, existing) for name, (count, retention) in wanted.items()
    ]


def _spec(
    name: str, count: int, rf: int, retention_ms: int, existing: Mapping[str, int]
) -> TopicSpec:
    if name in existing:
        return TopicSpec(name, existing[name], rf, exists=True)
    configs = {"retention.ms": str(retention_ms)}
    if rf >= _MAX_REPLICATION:
        configs["min.insync.replicas"] = "2"
    return TopicSpec(name, count, rf, configs)


def _retry_retention_ms(retry: RetryConfig) -> int:
    """Longer than any retry schedule can last: every wait is at most `max_backoff_s`."""
    longest_ms = int(retry.attempts * retry.max_backoff_s * 1000)
    return max(RETENTION_MS, 2 * longest_ms)


def _partitions(count: int) -> str:
    return "1 partition" if count == 1 else f"{count} partitions"


def _duration(ms: int) -> str:
    for unit, size in (("d", DAY_MS), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms >= size and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


async def create_topics(
    kafka: KafkaConfig,
    retry: RetryConfig,
    *,
    partitions: int | None = None,
    replication_factor: int | None = None,
    dry_run: bool = False,
) -> list[TopicOutcome]:
    """Create the planned topics that are missing (none with `dry_run`); one outcome each."""
    with _kafka_errors(kafka):
        admin = AIOKafkaAdminClient(
            **consumer_options(kafka), request_timeout_ms=_REQUEST_TIMEOUT_MS
        )
        try:
            try:
                await admin.start()
            except (KafkaConnectionError, OSError) as exc:
                raise TopicsError(str(await diagnose(kafka, exc))) from None
            cluster, has_controller = await _read_cluster(admin)
            plan = plan_topics(
                kafka, retry, cluster, partitions=partitions, replication_factor=replication_factor
            )
            missing = [spec for spec in plan if not spec.exists]
            if missing and not has_controller:
                raise TopicsUnsupported()
            created = {} if dry_run or not missing else await _create(admin, missing)
        finally:
            await admin.close()
    return [_outcome(spec, created, dry_run) for spec in plan]


@contextmanager
def _kafka_errors(kafka: KafkaConfig) -> Iterator[None]:
    """The one place this command turns client and broker errors into `TopicsError`."""
    servers = kafka.bootstrap_servers
    try:
        yield
    except KafkaConnectionError:
        raise TopicsError(f"cannot reach Kafka at {servers}") from None
    except TimeoutError:
        raise TopicsError(f"Kafka at {servers} did not answer in time") from None
    except IncompatibleBrokerVersion:  # no CreateTopics in the broker's ApiVersions
        raise TopicsUnsupported() from None
    except KafkaError as exc:
        raise TopicsError(f"Kafka at {servers}: {exc}") from None
    except OSError as exc:  # a socket error, or an unreadable ssl_cafile
        raise TopicsError(f"cannot reach Kafka at {servers}: {exc}") from None


async def _read_cluster(admin: AIOKafkaAdminClient) -> tuple[Cluster, bool]:
    """Topics and brokers, and whether a controller is named (the mock names none)."""
    described = await admin.describe_cluster()
    # Every topic, not just ours: a Metadata request that names a missing topic lets a
    # broker with auto.create.topics.enable create it, with the broker's defaults.
    topics = await admin.describe_topics()
    partitions = {t["topic"]: len(t["partitions"]) for t in topics if t["error_code"] == 0}
    brokers = {b["node_id"] for b in described["brokers"]}
    return Cluster(partitions, len(brokers)), described.get("controller_id") in brokers


async def _create(admin: AIOKafkaAdminClient, specs: list[TopicSpec]) -> dict[str, TopicOutcome]:
    """Create `specs` in one request; the outcome of each by name."""
    new = [
        NewTopic(s.name, s.partitions, s.replication_factor, topic_configs=dict(s.configs))
        for s in specs
    ]
    response = await admin.create_topics(new, timeout_ms=_CREATE_TIMEOUT_MS)
    answers = {name: (code, rest) for name, code, *rest in response.topic_errors}
    return {s.name: _answer(s, *answers.get(s.name, (None, []))) for s in specs}


def _answer(spec: TopicSpec, code: int | None, rest: list[Any]) -> TopicOutcome:
    if code is None:
        return TopicOutcome(spec, Status.FAILED, "the broker did not answer for this topic")
    error = for_code(code)
    if code == 0:
        return TopicOutcome(spec, Status.CREATED)
    if error is TopicAlreadyExistsError:  # another creator got there first: fine
        return TopicOutcome(spec, Status.EXISTS)
    message = rest[0] if rest and rest[0] else error.description
    return TopicOutcome(spec, Status.FAILED, f"{error.__name__}: {' '.join(str(message).split())}")


def _outcome(spec: TopicSpec, created: Mapping[str, TopicOutcome], dry_run: bool) -> TopicOutcome:
    if spec.exists:
        return TopicOutcome(spec, Status.EXISTS)
    if dry_run:
        return TopicOutcome(spec, Status.WOULD_CREATE)
    return created[spec.name]
