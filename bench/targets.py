"""The two processes under test: `herald run` with a generated config, and the peer."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.procs import ROOT, Child, free_port, python

__all__ = [
    "BENCH_RETRY",
    "PASSWORD_CHANGED_FLOWS",
    "Target",
    "herald",
    "metric",
    "peer",
    "scrape_metrics",
    "wait_ready",
]

SENDER = "Example <no-reply@example.com>"
BENCH_RETRY = {"attempts": 5, "initial_backoff_s": 0.5, "max_backoff_s": 30}
PASSWORD_CHANGED_FLOWS: dict[str, list[dict[str, Any]]] = {
    "post-change-password": [
        {"id": "notify-password-change", "action": "send_email", "template": "password_changed"}
    ]
}
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass
class Target:
    """A started process under test and where its readiness can be asked."""

    kind: str
    child: Child
    http_port: int | None = None


def herald(
    workdir: Path,
    *,
    bootstrap: str,
    topic: str,
    smtp_port: int,
    pool_size: int,
    retry: dict[str, float] | None = None,
    exactly_once: bool = False,
    flows: dict[str, list[dict[str, Any]]] | None = None,
    commands_topic: str | None = None,
) -> Target:
    """Start `herald run` with the guarantees on: sqlite dedupe, retries, rate limit.

    `retry` is the `retry:` section (default `BENCH_RETRY`: nothing fails in the
    throughput runs, so the schedule does not matter there). `exactly_once` is
    `kafka.exactly_once`; `flows` the `flows:` section (default: post-change-password →
    the password_changed email); `commands_topic` is `kafka.commands_topic`.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    http_port = free_port()
    config = {
        "kafka": {
            "bootstrap_servers": bootstrap,
            "group_id": f"bench-herald-{uuid.uuid4().hex[:8]}",
            "topics": [topic],
            "auto_offset_reset": "earliest",
            **({"exactly_once": True} if exactly_once else {}),
            **({"commands_topic": commands_topic} if commands_topic else {}),
        },
        "smtp": {
            "host": "127.0.0.1",
            "port": smtp_port,
            "from": SENDER,
            "timeout_s": 10,
            "pool_size": pool_size,
        },
        "retry": dict(retry or BENCH_RETRY),
        "rate_limit": {"per_recipient": 20, "window_s": 3600},
        "dedupe": {"backend": "sqlite", "path": str(workdir / "herald.db")},
        "http": {"host": "127.0.0.1", "port": http_port},
        "log": {"level": "WARNING"},
        "templates_dir": str(ROOT / "templates"),
        "default_locale": "en",
        "secrets": {"SUPPORT_URL": "https://example.com/support"},
        "flows": flows or PASSWORD_CHANGED_FLOWS,
    }
    path = workdir / "herald.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    child = Child(python("-m", "service", "--config", str(path), "run"), workdir / "herald.log")
    child.start()
    return Target("herald", child, http_port)


def peer(workdir: Path, *, bootstrap: str, topic: str, smtp_port: int) -> Target:
    """Start the peer (bench/peer.py) with a group of its own."""
    workdir.mkdir(parents=True, exist_ok=True)
    args = python(
        "-m", "bench.peer",
        "--bootstrap", bootstrap,
        "--topic", topic,
        "--group", f"bench-peer-{uuid.uuid4().hex[:8]}",
        "--smtp", f"127.0.0.1:{smtp_port}",
        "--templates", str(ROOT / "templates"),
    )  # fmt: skip
    child = Child(args, workdir / "peer.log")
    child.start()
    return Target("peer", child)


async def wait_ready(target: Target, timeout: float = 30) -> float | None:
    """Seconds from process start to the first `GET /readyz` answering 200, or None.

    Herald caches its readiness answer for a second, so a 503 seen just before the
    partitions were assigned delays the 200 by up to that second.
    """
    if target.http_port is None:
        return None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and target.child.alive():
        if await _status(target.http_port, "/readyz") == 200:
            return time.monotonic() - target.child.started
        await asyncio.sleep(0.01)
    return None


Samples = list[tuple[str, dict[str, str], float]]


async def scrape_metrics(target: Target) -> Samples:
    """Herald's `GET /metrics`: (name, labels, value) per sample; [] if it does not answer."""
    if target.http_port is None:
        return []
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", target.http_port), 1
        )
    except (OSError, TimeoutError):
        return []
    try:
        request = "GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
        writer.write(request.encode())
        response = await asyncio.wait_for(reader.read(), 5)
    except (OSError, TimeoutError):
        return []
    finally:
        writer.close()
    samples: Samples = []
    for line in response.partition(b"\r\n\r\n")[2].decode(errors="replace").splitlines():
        if (match := _SAMPLE.match(line)) is not None:
            name, labels, value = match.groups()
            samples.append((name, dict(_LABEL.findall(labels or "")), float(value)))
    return samples


def metric(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels`."""
    return sum(
        value
        for sample, have, value in samples
        if sample == name and all(have.get(k) == v for k, v in labels.items())
    )


async def _status(port: int, path: str) -> int | None:
    """The status code of `GET path` on 127.0.0.1:port, None if it does not answer."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1)
    except (OSError, TimeoutError):
        return None
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
        line = await asyncio.wait_for(reader.readline(), 5)
        return int(line.split()[1])
    except (OSError, TimeoutError, ValueError, IndexError):
        return None
    finally:
        writer.close()
