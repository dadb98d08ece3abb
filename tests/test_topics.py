"""`herald topics create`: the plan (pure), its lines, and the command where no real Kafka
is needed (the embedded broker, an unreachable one). Real Kafka: tests/real_kafka."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from service.config import KafkaConfig, RetryConfig, parse_config
from service.devtools.broker import EmbeddedKafka
from service.kafka.topics import (
    DAY_MS,
    Cluster,
    Status,
    TopicOutcome,
    TopicSpec,
    plan_topics,
)
from tests.harness import ROOT, unique
from tests.services import free_port

KAFKA = KafkaConfig(
    topics=["events"],
    commands_topic="commands",
    decisions_topic="decisions",
    status_topic="status",
)
RETRY = RetryConfig(attempts=8, initial_backoff_s=10, max_backoff_s=900)


def plan(
    kafka: KafkaConfig = KAFKA, existing: dict[str, int] | None = None, brokers: int = 1, **kw: Any
) -> dict[str, TopicSpec]:
    specs = plan_topics(kafka, RETRY, Cluster(existing or {}, brokers), **kw)
    return {spec.name: spec for spec in specs}


def test_plan_lists_inputs_their_dlq_and_retry_then_the_shared_outputs() -> None:
    specs = plan(existing={"events": 4})
    assert list(specs) == [
        "events",
        "events.dlq",
        "events.retry",
        "commands",
        "decisions",
        "status",
    ]
    assert specs["events"].exists and not specs["events.dlq"].exists


def test_derived_topics_match_the_input_and_the_rest_follow_the_largest_input() -> None:
    kafka = KAFKA.model_copy(update={"topics": ["small", "big", "missing"]})
    specs = plan(kafka, existing={"small": 2, "big": 6})
    counts = {name: spec.partitions for name, spec in specs.items()}
    assert counts["small.dlq"] == counts["small.retry"] == 2
    assert counts["big.dlq"] == counts["big.retry"] == 6
    assert counts["missing"] == counts["missing.dlq"] == counts["commands"] == 6


def test_partitions_option_sizes_missing_inputs_and_shared_outputs_only() -> None:
    kafka = KAFKA.model_copy(update={"topics": ["events", "missing"]})
    specs = plan(kafka, existing={"events": 4}, partitions=2)
    assert specs["events.dlq"].partitions == specs["events.retry"].partitions == 4
    assert specs["missing"].partitions == specs["missing.retry"].partitions == 2
    assert specs["status"].partitions == 2


def test_an_empty_cluster_gets_three_partitions() -> None:
    assert {spec.partitions for spec in plan().values()} == {3}


def test_retention_dlq_28_days_retry_and_outputs_7_days() -> None:
    specs = plan()
    retention = {name: int(spec.configs["retention.ms"]) for name, spec in specs.items()}
    assert retention["events.dlq"] == 28 * DAY_MS
    for name in ("events", "events.retry", "commands", "decisions", "status"):
        assert retention[name] == 7 * DAY_MS, name


def test_retry_retention_outlasts_a_very_long_retry_schedule() -> None:
    slow = RetryConfig(attempts=20, initial_backoff_s=60, max_backoff_s=86_400)
    specs = plan_topics(KAFKA, slow, Cluster({}, 1))
    retry = next(s for s in specs if s.name == "events.retry")
    assert int(retry.configs["retention.ms"]) >= 2 * 20 * 86_400 * 1000


def test_replication_defaults_to_three_with_min_insync_two() -> None:
    for brokers, rf in ((1, 1), (2, 2), (3, 3), (5, 3)):
        for spec in plan(brokers=brokers).values():
            assert spec.replication_factor == rf
            assert spec.configs.get("min.insync.replicas") == ("2" if rf >= 3 else None)
    forced = plan(brokers=5, replication_factor=2)["events.dlq"]
    assert forced.replication_factor == 2 and "min.insync.replicas" not in forced.configs


def test_existing_topics_are_left_as_they_are() -> None:
    specs = plan(existing={"events.dlq": 1, "commands": 12, "events": 4})
    assert specs["events.dlq"] == TopicSpec("events.dlq", 1, 1, exists=True)
    assert specs["commands"].exists and specs["commands"].partitions == 12
    assert specs["events.retry"].partitions == 4  # the input's count, not the odd DLQ's


def test_status_topic_off_and_shared_names_are_planned_once() -> None:
    kafka = KAFKA.model_copy(update={"status_topic": None, "decisions_topic": "commands"})
    assert list(plan(kafka)) == ["events", "events.dlq", "events.retry", "commands"]


def test_config_has_retry_suffix_and_a_status_topic_that_can_be_turned_off() -> None:
    assert (KafkaConfig().retry_suffix, KafkaConfig().status_topic) == (
        ".retry",
        "identity.notifications",
    )
    for text in ("kafka:\n  status_topic: null\n", "kafka:\n  status_topic: ''\n"):
        assert parse_config(text, "herald.yaml", environ={}).kafka.status_topic is None


def test_outcome_lines() -> None:
    dlq = plan(brokers=3)["events.dlq"]
    assert TopicOutcome(dlq, Status.CREATED).line() == (
        "created events.dlq (3 partitions, rf 3, min.insync.replicas 2, retention 28d)"
    )
    assert TopicOutcome(dlq, Status.WOULD_CREATE).line().startswith("would create events.dlq (")
    existing = TopicSpec("events.dlq", 4, 1, exists=True)
    assert TopicOutcome(existing, Status.EXISTS).line() == "exists events.dlq (4 partitions)"


# --- the command, without a real Kafka --------------------------------------------------


def topics_create(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "service", "topics", "create", "--config", str(config)]
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, cwd=ROOT, timeout=60, check=False
    )


def write_config(path: Path, bootstrap: str, topic: str) -> Path:
    doc = {"kafka": {"bootstrap_servers": bootstrap, "topics": [topic]}}
    path.write_text(yaml.safe_dump(doc))
    return path


def test_the_embedded_broker_says_in_one_line_that_it_cannot_create_topics(
    kafka: EmbeddedKafka, tmp_path: Path
) -> None:
    topic = unique("events")
    kafka.create_topic(topic, 2)
    config = write_config(tmp_path / "herald.yaml", kafka.bootstrap, topic)
    for args in ((), ("--dry-run",)):
        result = topics_create(config, *args)
        assert (result.returncode, result.stdout) == (1, ""), args
        assert result.stderr == (
            "herald: the broker does not support creating topics"
            " (the embedded broker of herald dev creates them on first use)\n"
        )


def test_an_unreachable_broker_is_one_line(tmp_path: Path) -> None:
    bootstrap = f"127.0.0.1:{free_port()}"
    result = topics_create(write_config(tmp_path / "herald.yaml", bootstrap, "events"))
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == f"herald: cannot reach Kafka at {bootstrap}: connection refused\n"
