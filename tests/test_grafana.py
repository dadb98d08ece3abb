"""The Grafana dashboard (docs/grafana/herald.json) graphs only what Herald exports: every
metric its queries name is in a running Herald's `/metrics`, with samples; and the
consumer-lag gauge it graphs goes up while events wait and back to 0 once they are done."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka import TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from service.devtools.broker import EmbeddedKafka
from service.devtools.smtp import RecordingSMTP
from service.kafka.lag import update_lag
from service.metrics import Metrics
from tests.harness import (
    ROOT,
    Kafka,
    events,
    load_example,
    make_config,
    metric,
    running,
    wait_until,
)

DASHBOARD = ROOT / "docs" / "grafana" / "herald.json"
_NAME = re.compile(r"herald_[a-z_]+")
#: A sample name's suffix → the metric types it may belong to ("" → the family itself).
_SUFFIXES = {
    "_bucket": {"histogram"},
    "_sum": {"histogram", "summary"},
    "_count": {"histogram", "summary"},
    "_total": {"counter"},
}


def _dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' collapsed panels included; rows themselves are not graphs."""
    for panel in panels:
        if panel.get("type") == "row":
            yield from _panels(panel.get("panels", []))
        else:
            yield panel


def _queries(doc: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in _panels(doc["panels"]) for t in p.get("targets", [])]
    for variable in doc.get("templating", {}).get("list", []):
        query = variable.get("query")
        exprs.append(query["query"] if isinstance(query, dict) else str(query or ""))
    return exprs


def _family(name: str) -> tuple[str, str]:
    """`herald_emails_total` → (`herald_emails`, `_total`); a gauge's name → (name, "")."""
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix), suffix
    return name, ""


def test_dashboard_is_importable_and_every_panel_queries_something() -> None:
    doc = _dashboard()
    assert 36 <= doc["schemaVersion"] <= 41
    assert [i["name"] for i in doc["__inputs"]] == ["DS_PROMETHEUS"]
    assert doc["__inputs"][0]["pluginId"] == "prometheus"
    panels = list(_panels(doc["panels"]))
    assert len(panels) >= 8
    rows = [p for p in doc["panels"] if p.get("type") == "row"]
    ids = [p["id"] for p in [*rows, *panels]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in panels:
        title = panel["title"]
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", title
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys(), title
        assert panel.get("targets"), f"panel without a target: {title}"
        for target in panel["targets"]:
            assert target["expr"].strip(), f"empty query in {title}"
            assert _NAME.search(target["expr"]), f"no Herald metric in {title}: {target['expr']}"
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", title
    graphed = {_family(n)[0] for q in _queries(doc) for n in _NAME.findall(q)}
    wanted = {
        "herald_emails",
        "herald_events",
        "herald_dlq",
        "herald_actions",
        "herald_consumer_lag",
        "herald_retries_pending",
        "herald_retry_oldest_seconds",
        "herald_consumption_paused",
        "herald_event_duration_seconds",
    }
    assert wanted <= graphed, wanted - graphed


@pytest.mark.integration
async def test_every_metric_the_dashboard_queries_is_exported(
    kafka: EmbeddedKafka, smtp: RecordingSMTP, client: Kafka, tmp_path: Path
) -> None:
    queried = sorted({n for q in _queries(_dashboard()) for n in _NAME.findall(q)})
    config = make_config(kafka, smtp, tmp_path)
    topic = config.kafka.topics[0]
    async with running(config) as herald, aiohttp.ClientSession() as http:
        await client.send(topic, load_example("post-change-password"))
        await client.send(topic, b"not json", key=b"poison")  # a dead letter: herald_dlq
        await smtp.wait_for(1)
        await wait_until(lambda: metric(herald, "herald_events_total") >= 2, "both events")
        await wait_until(lambda: metric(herald, "herald_dlq_total") >= 1, "the dead letter")
        await wait_until(lambda: bool(_lag(herald)), "the lag, set once the batch settled")
        async with http.get(f"http://{herald.http.address}/metrics") as resp:
            assert resp.status == 200
            body = await resp.text()
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", body, re.MULTILINE))
    families = {f.name: f for f in text_string_to_metric_families(body)}
    samples = {s.name for f in families.values() for s in f.samples}
    print(f"dashboard queries {len(queried)} metrics: {', '.join(queried)}")
    for name in queried:
        family, suffix = _family(name)
        assert family in families, f"{name}: Herald exports no {family}"
        kind = families[family].type
        assert f"{family}{'_total' if kind == 'counter' else ''}" in types, f"# TYPE of {name}"
        assert kind in _SUFFIXES.get(suffix, {"gauge"}), f"{name} is not a {kind}'s sample name"
        assert name in samples, f"{name}: exported, but no sample after an event"


@pytest.mark.integration
async def test_consumer_lag_counts_waiting_events_and_is_0_once_they_are_done(
    kafka: EmbeddedKafka, client: Kafka, tmp_path: Path
) -> None:
    with RecordingSMTP() as first:  # closed again: an SMTP outage from the start
        port = first.port
        config = make_config(kafka, first, tmp_path, retry={"max_backoff_s": 0.2})
    batch = events(12)
    async with running(config) as herald:
        await client.send_many(config.kafka.topics[0], batch)
        await wait_until(lambda: metric(herald, "herald_consumption_paused") == 1, "paused")
        await wait_until(lambda: metric(herald, "herald_consumer_lag") > 0, "lag during the outage")
        during = metric(herald, "herald_consumer_lag")
        with RecordingSMTP(port=port) as back:
            await back.wait_for(len(batch), timeout=30)
            assigned = {(tp.topic, str(tp.partition)) for tp in herald.assignment.partitions}

            def caught_up() -> bool:
                lag = _lag(herald)
                return set(lag) == assigned and not any(lag.values())

            await wait_until(caught_up, "lag 0 on every assigned partition")
            after = _lag(herald)
    print(f"consumer lag: {during:.0f} records during the outage; after: {after}")
    assert during <= len(batch)
    assert len(after) == 4


def _lag(herald: Any) -> dict[tuple[str, str], float]:
    """`herald_consumer_lag` by (topic, partition); `herald` a Herald or its Metrics."""
    registry = getattr(herald, "metrics", herald).registry
    return {
        (s.labels["topic"], s.labels["partition"]): s.value
        for family in registry.collect()
        for s in family.samples
        if s.name == "herald_consumer_lag"
    }


class _Consumer:
    """What `update_lag` asks of an aiokafka consumer: assignment, highwater, position."""

    def __init__(self, ends: dict[int, int | None], positions: dict[int, int]) -> None:
        self.ends, self.positions = ends, positions

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition("events", p) for p in self.ends}

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.ends[tp.partition]

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[tp.partition]


async def test_lag_series_follow_the_assignment() -> None:
    metrics = Metrics()
    gauge = metrics.consumer_lag
    await update_lag(_Consumer({0: 10, 1: 5, 2: None}, {0: 4, 1: 5, 2: 0}), gauge)
    # partition 2 not fetched yet: its end is unknown, so it has no series
    assert _lag(metrics) == {("events", "0"): 6, ("events", "1"): 0}
    await update_lag(_Consumer({1: 9, 2: 3}, {1: 7, 2: 0}), gauge)  # 0 revoked, 2 fetched
    assert _lag(metrics) == {("events", "1"): 2, ("events", "2"): 3}
    await update_lag(_Consumer({}, {}), gauge)
    assert _lag(metrics) == {}
