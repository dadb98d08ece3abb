"""`herald publish`: produce events from JSON files, keyed by user id as README: Events asks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from service.config import KafkaConfig
from service.kafka import diagnose, producer_options

__all__ = ["event_key", "publish_files", "read_events"]


def read_events(path: Path) -> list[dict[str, Any]]:
    """One event per file, or a JSON array of events; a clear ValueError otherwise."""
    try:
        data = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise ValueError(f"{path}: file not found") from None
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    events = data if isinstance(data, list) else [data]
    if not all(isinstance(e, dict) for e in events):
        raise ValueError(f"{path}: expected a JSON object or an array of objects")
    return events


def event_key(event: dict[str, Any]) -> bytes | None:
    """The user id (`data.user.user_id`): the key that keeps one user's events in order."""
    user = (event.get("data") or {}).get("user") if isinstance(event.get("data"), dict) else None
    user_id = user.get("user_id") if isinstance(user, dict) else None
    return str(user_id).encode() if user_id is not None else None


async def publish_files(cfg: KafkaConfig, topic: str, paths: list[Path]) -> int:
    """Produce every event of every file to `topic`; returns how many were acknowledged."""
    events = [event for path in paths for event in read_events(path)]
    producer = AIOKafkaProducer(**producer_options(cfg), request_timeout_ms=10_000)
    try:
        await producer.start()
        for event in events:
            await producer.send_and_wait(topic, orjson.dumps(event), key=event_key(event))
    except (KafkaError, OSError, TimeoutError) as exc:
        raise await diagnose(cfg, exc) from None
    finally:
        await producer.stop()
    return len(events)
