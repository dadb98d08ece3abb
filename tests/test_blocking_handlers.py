"""A plain `def` python handler runs in a worker thread: blocking code in it stalls no
other event, `timeout_s` holds, and once its action ended its `api` refuses everything."""

from __future__ import annotations

import asyncio
import functools
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from service.devtools.broker import EmbeddedKafka
from service.devtools.smtp import RecordingSMTP
from service.python_actions import is_async_handler
from tests import handlers
from tests.harness import (
    HeraldProcess,
    Kafka,
    config_file,
    events,
    load_example,
    make_config,
    metric,
    per_event,
    running,
    wait_until,
)

pytestmark = pytest.mark.integration


def python_flow(handler: str, **options: Any) -> dict[str, Any]:
    """post-user-registration runs `tests.handlers:<handler>`; the other triggers keep
    make_config's email flows."""
    action = {"id": "py", "action": "python", "handler": f"tests.handlers:{handler}", **options}
    return {"post-user-registration": [action]}


class Heartbeat:
    """A task on the event loop that wakes every 10 ms and notes how late it woke."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []  # (woke at, lag in s)
        self._task: asyncio.Task[None] | None = None

    async def _beat(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.01)
            now = time.monotonic()
            self.samples.append((now, now - before - 0.01))

    def __enter__(self) -> Heartbeat:
        self._task = asyncio.get_running_loop().create_task(self._beat())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()

    def between(self, start: float, end: float) -> list[float]:
        return [lag for at, lag in self.samples if start <= at <= end]


async def test_a_blocking_sync_handler_times_out_and_blocks_no_other_event(
    kafka: EmbeddedKafka, smtp: RecordingSMTP, client: Kafka, tmp_path: Path
) -> None:
    config = make_config(
        kafka, smtp, tmp_path, flows=python_flow("sleeps_two_seconds", timeout_s=0.5)
    )
    topic = config.kafka.topics[0]
    blocked = load_example("post-user-registration", user_id="user-blocked")
    # Password changes of ten other users (a send_email flow each): five produced with
    # the blocking event (most likely the same batch), five once its handler blocks.
    others = events(10)
    together, later = others[:5], others[5:]
    async with running(config) as herald:
        with Heartbeat() as heartbeat:
            await client.send_many(topic, [blocked, *together])
            await wait_until(lambda: "started" in handlers.SEEN.get(blocked["id"], {}), "start")
            seen = handlers.SEEN[blocked["id"]]
            started = seen["started"]
            # Sent only once the handler blocks its thread: they can get through only if
            # the event loop keeps running meanwhile.
            await client.send_many(topic, later)
            first = await smtp.wait_for(len(together))
            first_after = time.monotonic() - started
            await wait_until(
                lambda: (
                    metric(herald, "herald_actions_total", action="python", outcome="failed") == 1
                ),
                "the python action failed",
            )
            failed_after = time.monotonic() - started
            received = await smtp.wait_for(len(others))
            delivered_after = time.monotonic() - started
            await wait_until(lambda: "returned" in seen, "the handler returned", timeout=5)
            lags = heartbeat.between(started, seen["returned"])
        [dead] = await client.read(topic + ".dlq", 1)

    slept = seen["returned"] - started
    assert seen["thread"].startswith("herald-action"), seen["thread"]
    assert slept >= 1.9, f"the handler slept {slept:.2f} s"
    assert failed_after < 1.5, (
        f"ActionTimeout (timeout_s 0.5) came {failed_after:.2f} s after the handler started; "
        f"the handler slept {slept:.2f} s"
    )
    assert dict(dead.headers)["x-herald-error"] == b"ActionTimeout"
    assert dead.value == orjson.dumps(blocked)
    assert sorted(r for m in received for r in m.rcpt_tos) == sorted(
        e["data"]["user"]["email"] for e in others
    )
    assert delivered_after < slept, (
        f"the other users' {len(others)} emails arrived {delivered_after:.2f} s after the "
        f"blocking handler started, it returned after {slept:.2f} s"
    )
    assert len(lags) >= 50, f"{len(lags)} heartbeats in the {slept:.2f} s the handler slept"
    assert max(lags) < 0.5, (
        f"event loop lag up to {max(lags):.3f} s while the handler slept {slept:.2f} s "
        f"({len(lags)} heartbeats)"
    )
    print(
        f"\n{len(first)} emails after {first_after:.3f} s, ActionTimeout after "
        f"{failed_after:.3f} s, all {len(others)} other emails after {delivered_after:.3f} s;"
        f" handler slept {slept:.3f} s; max loop lag {max(lags) * 1000:.1f} ms"
        f" over {len(lags)} heartbeats"
    )


async def test_a_sync_handler_sends_email_and_sets_metadata(
    kafka: EmbeddedKafka, smtp: RecordingSMTP, client: Kafka, tmp_path: Path
) -> None:
    config = make_config(kafka, smtp, tmp_path, flows=python_flow("welcomes_from_a_thread"))
    event = load_example("post-user-registration", user_id="user-threaded")
    async with running(config):
        await client.send(config.kafka.topics[0], event)
        [received] = await smtp.wait_for(1)
        [command] = await client.read(config.kafka.commands_topic, 1)
    seen = handlers.SEEN[event["id"]]
    assert seen["thread"].startswith("herald-action"), seen["thread"]
    assert seen["outcome"] == "sent", seen  # the Future's result, in the handler's thread
    user = event["data"]["user"]
    assert received.rcpt_tos == [user["email"]]
    assert received.message["X-Herald-Template"] == "welcome"
    assert received.message["X-Herald-Event-Id"] == event["id"]
    assert user["email"].encode() in received.data
    data = orjson.loads(command.value)["data"]
    assert data == {"user_id": user["user_id"], "user_metadata": {}, "app_metadata": {"x": 1}}


async def test_a_timed_out_sync_handler_can_change_nothing_afterwards(
    kafka: EmbeddedKafka, smtp: RecordingSMTP, client: Kafka, tmp_path: Path
) -> None:
    config = make_config(
        kafka, smtp, tmp_path, flows=python_flow("acts_after_its_timeout", timeout_s=0.5)
    )
    topic = config.kafka.topics[0]
    zombie = load_example("post-user-registration", user_id="user-zombie")
    async with running(config):
        await client.send(topic, zombie)
        [dead] = await client.read(topic + ".dlq", 1)
        seen = handlers.SEEN[zombie["id"]]
        await wait_until(lambda: "acted" in seen, "the handler's late calls", timeout=5)
        await asyncio.sleep(3)  # Herald still running: time enough for a send to go out
        late = per_event(smtp)[zombie["id"]]
        # The pipeline did work meanwhile: a later event's email goes out.
        [after] = events(1)
        await client.send(topic, after)
        await smtp.wait_for(1)
        commands = await client.read(config.kafka.commands_topic, 1, timeout=1)
    assert dict(dead.headers)["x-herald-error"] == b"ActionTimeout"
    assert late == 0, f"{late} email(s) for the timed-out action within 3 s of its late calls"
    assert per_event(smtp) == {after["id"]: 1}
    assert commands == [], "a metadata command for a dead-lettered event"
    calls = ("api.email.send", "api.user.set_app_metadata", "api.user.set_user_metadata")
    assert len(seen["errors"]) == len(calls), seen["errors"]
    for call, error in zip(calls, seen["errors"], strict=True):
        assert error.startswith(f"ActionEnded: {call}: the action has ended"), error
    print(
        f"\nlate calls {seen['acted'] - seen['started']:.2f} s after the handler started: "
        + "; ".join(seen["errors"])
    )


async def _coroutine_handler(event: Any, api: Any) -> None:
    return None


def _plain_handler(event: Any, api: Any) -> None:
    return None


class _AsyncCallable:
    async def __call__(self, event: Any, api: Any) -> None:
        return None


class _SyncCallable:
    def __call__(self, event: Any, api: Any) -> None:
        return None


@pytest.mark.parametrize(
    ("handler", "on_loop"),
    [
        (_coroutine_handler, True),
        (functools.partial(_coroutine_handler), True),
        (_AsyncCallable(), True),
        (functools.partial(_AsyncCallable()), True),
        (_plain_handler, False),
        (functools.partial(_plain_handler), False),
        (_SyncCallable(), False),
        (print, False),
    ],
)
def test_which_handlers_run_on_the_loop(handler: Any, on_loop: bool) -> None:
    assert is_async_handler(handler) is on_loop


async def test_sigterm_does_not_wait_for_a_handler_thread_that_never_returns(
    kafka: EmbeddedKafka, smtp: RecordingSMTP, client: Kafka, tmp_path: Path
) -> None:
    config = make_config(kafka, smtp, tmp_path, flows=python_flow("never_returns", timeout_s=0.5))
    herald = HeraldProcess(config_file(config, tmp_path / "herald.yaml"))
    await herald.start()
    await client.send(config.kafka.topics[0], load_example("post-user-registration"))
    await herald.wait_log("event dead-lettered", timeout=20)  # ActionTimeout; thread blocks on
    started = time.monotonic()
    code = await herald.stop()
    took = time.monotonic() - started
    print(f"SIGTERM with a handler thread blocked for 120 s: exit {code} in {took:.2f} s")
    assert code == 0
    assert took < 10, f"exit took {took:.2f} s"
    assert herald.logged("exiting while python handlers still run in their threads")
