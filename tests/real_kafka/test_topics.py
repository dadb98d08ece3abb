"""`herald topics create` against Apache Kafka: what it prints, what the cluster then has
(partitions, replication, topic configs read back), and that a second run changes nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka.admin import ConfigResource, ConfigSource

from tests.harness import ROOT, unique
from tests.services.kraft import KafkaCluster

DAY_MS = 24 * 3600 * 1000


def write_config(path: Path, bootstrap: str, inputs: list[str]) -> dict[str, Any]:
    """A config whose every topic name is this test's own; returns its `kafka:` section."""
    kafka = {
        "bootstrap_servers": bootstrap,
        "topics": inputs,
        "commands_topic": unique("commands"),
        "decisions_topic": unique("decisions"),
        "status_topic": unique("status"),
    }
    path.write_text(yaml.safe_dump({"kafka": kafka}))
    return kafka


def topics_create(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "service", "--config", str(config), "topics", "create"]
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, cwd=ROOT, timeout=90, check=False
    )


def herald_topics(kafka: dict[str, Any]) -> list[str]:
    """Every topic the config names, in the order the command reports them."""
    names = [name for t in kafka["topics"] for name in (t, f"{t}.dlq", f"{t}.retry")]
    return [*names, kafka["commands_topic"], kafka["decisions_topic"], kafka["status_topic"]]


def partitions(cluster: KafkaCluster, names: list[str]) -> dict[str, int]:
    """Topic → partition count, for the `names` that exist."""
    topics = cluster.admin.list_topics(timeout=10).topics
    return {name: len(topics[name].partitions) for name in names if name in topics}


def replicas(cluster: KafkaCluster, name: str) -> set[int]:
    """The replica counts of the partitions of `name`."""
    topic = cluster.admin.list_topics(name, timeout=10).topics[name]
    return {len(p.replicas) for p in topic.partitions.values()}


def topic_config(cluster: KafkaCluster, name: str, key: str) -> tuple[str, bool]:
    """(value, set on the topic itself) for one topic config, read back from the broker."""
    futures = cluster.admin.describe_configs([ConfigResource("topic", name)])
    entry = next(iter(futures.values())).result(timeout=30)[key]
    return entry.value, entry.source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value


def test_dry_run_lists_the_plan_and_creates_nothing(
    real_kafka: KafkaCluster, tmp_path: Path
) -> None:
    events = unique("events")
    real_kafka.create_topic(events, 4)
    kafka = write_config(tmp_path / "herald.yaml", real_kafka.bootstrap, [events])
    result = topics_create(tmp_path / "herald.yaml", "--dry-run")
    assert (result.returncode, result.stderr) == (0, "")
    dlq, retry, commands, decisions, status = herald_topics(kafka)[1:]
    assert result.stdout.splitlines() == [
        f"exists {events} (4 partitions)",
        f"would create {dlq} (4 partitions, rf 1, retention 28d)",
        f"would create {retry} (4 partitions, rf 1, retention 7d)",
        f"would create {commands} (4 partitions, rf 1, retention 7d)",
        f"would create {decisions} (4 partitions, rf 1, retention 7d)",
        f"would create {status} (4 partitions, rf 1, retention 7d)",
    ]
    assert partitions(real_kafka, herald_topics(kafka)) == {events: 4}


def test_creates_every_topic_then_finds_them_all_and_changes_nothing(
    real_kafka: KafkaCluster, tmp_path: Path
) -> None:
    events, missing = unique("events"), unique("missing")
    real_kafka.create_topic(events, 4)
    kafka = write_config(tmp_path / "herald.yaml", real_kafka.bootstrap, [events, missing])
    names = herald_topics(kafka)

    first = topics_create(tmp_path / "herald.yaml", "--partitions", "2")

    assert (first.returncode, first.stderr) == (0, "")
    assert first.stdout.splitlines() == [
        f"exists {events} (4 partitions)",
        f"created {events}.dlq (4 partitions, rf 1, retention 28d)",
        f"created {events}.retry (4 partitions, rf 1, retention 7d)",
        f"created {missing} (2 partitions, rf 1, retention 7d)",
        f"created {missing}.dlq (2 partitions, rf 1, retention 28d)",
        f"created {missing}.retry (2 partitions, rf 1, retention 7d)",
        *(f"created {name} (2 partitions, rf 1, retention 7d)" for name in names[-3:]),
    ]
    counts = partitions(real_kafka, names)
    assert counts == {
        events: 4,
        f"{events}.dlq": 4,
        f"{events}.retry": 4,
        **{name: 2 for name in names[3:]},
    }
    assert topic_config(real_kafka, f"{events}.dlq", "retention.ms") == (str(28 * DAY_MS), True)
    for name in (f"{events}.retry", missing, kafka["commands_topic"], kafka["status_topic"]):
        assert topic_config(real_kafka, name, "retention.ms") == (str(7 * DAY_MS), True), name

    second = topics_create(tmp_path / "herald.yaml", "--partitions", "8")

    assert (second.returncode, second.stderr) == (0, "")
    assert second.stdout.splitlines() == [f"exists {n} ({counts[n]} partitions)" for n in names]
    assert partitions(real_kafka, names) == counts
    assert topic_config(real_kafka, f"{events}.dlq", "retention.ms") == (str(28 * DAY_MS), True)


def test_a_replication_factor_the_cluster_cannot_meet_is_one_line(
    real_kafka: KafkaCluster, tmp_path: Path
) -> None:
    events = unique("events")
    real_kafka.create_topic(events, 1)
    kafka = write_config(tmp_path / "herald.yaml", real_kafka.bootstrap, [events])
    result = topics_create(tmp_path / "herald.yaml", "--replication-factor", "3")
    assert result.returncode == 1
    assert result.stdout == f"exists {events} (1 partition)\n"
    [line] = result.stderr.splitlines()
    assert line.startswith(f"herald: cannot create {', '.join(herald_topics(kafka)[1:])}: ")
    assert "InvalidReplicationFactor" in line and "Traceback" not in result.stderr
    assert partitions(real_kafka, herald_topics(kafka)) == {events: 1}


def test_three_brokers_get_replication_three_and_min_insync_two(
    kafka_cluster: KafkaCluster, tmp_path: Path
) -> None:
    events = unique("events")  # missing too: created with --partitions
    kafka = write_config(tmp_path / "herald.yaml", kafka_cluster.bootstrap, [events])
    result = topics_create(tmp_path / "herald.yaml")
    assert (result.returncode, result.stderr) == (0, "")
    assert f"created {events}.dlq (3 partitions, rf 3, min.insync.replicas 2, retention 28d)" in (
        result.stdout.splitlines()
    )
    for name in herald_topics(kafka):
        assert replicas(kafka_cluster, name) == {3}, name
        # Set on the topic, not merely inherited from this cluster's broker default.
        assert topic_config(kafka_cluster, name, "min.insync.replicas") == ("2", True), name
