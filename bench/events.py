"""Realistic `identity.user.password_changed` events, published in bulk or at a steady rate
(`identity.user.registered` ones too, with `event_type=REGISTERED_TYPE`).

Users come from a fixed pool (en and de locales, names with umlauts), so the Kafka key
(the user id) repeats as in production and per-key ordering is exercised. Every event
carries its publish time in `time` (microseconds, UTC). A *grey* event goes to the
user's address with `GREY_PREFIX` in front (`grey-ada.17@example.com`), which the
greylisting sink refuses with 451.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

__all__ = ["EVENT_TYPE", "GREY_PREFIX", "REGISTERED_TYPE", "make_event", "pace", "publish_bulk"]

EVENT_TYPE = "identity.user.password_changed"
REGISTERED_TYPE = "identity.user.registered"  # post-user-registration
GREY_PREFIX = "grey-"
USERS = 5000
_FIRST = ["Ada", "Grace", "Alan", "Emmy", "Jörg", "Sophie", "Lukas", "Zoë", "Björn", "Marie"]
_LAST = ["Lovelace", "Hopper", "Turing", "Noether", "Müller", "Schröder", "Weiß", "Curie"]
_CITIES = [("Berlin", "DE"), ("München", "DE"), ("Göttingen", "DE"), ("London", "GB"), ("", "")]
_AGENTS = [
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0",
]


def _user(number: int) -> dict[str, Any]:
    """User `number` of the pool: stable name, address and locale."""
    rng = random.Random(number)
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    ascii_first = first.encode("ascii", "ignore").decode().lower() or "user"
    return {
        "user_id": f"user-{number}",
        "email": f"{ascii_first}.{number}@example.com",
        "email_verified": True,
        "name": f"{first} {last}",
        "given_name": first,
        "family_name": last,
        "locale": "de" if number % 2 else "en",
    }


def make_event(
    run: str,
    seq: int,
    now: float | None = None,
    *,
    grey: bool = False,
    event_type: str = EVENT_TYPE,
) -> dict[str, Any]:
    """Event `seq` of run `run`: a CloudEvent of `event_type` whose `time` is `now`
    (default: now); `grey`: its recipient's address starts with `GREY_PREFIX`."""
    rng = random.Random(seq)
    city, country = rng.choice(_CITIES)
    stamp = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    user = _user(rng.randrange(USERS))
    if grey:
        user["email"] = GREY_PREFIX + user["email"]
    return {
        "specversion": "1.0",
        "id": f"{run}-{seq}",
        "source": "https://login.example.com",
        "type": event_type,
        "time": stamp.isoformat(timespec="microseconds").replace("+00:00", "Z"),
        "subject": user["user_id"],
        "datacontenttype": "application/json",
        "data": {
            "user": user,
            "request": {
                "ip": f"203.0.113.{rng.randrange(1, 255)}",
                "user_agent": rng.choice(_AGENTS),
                "geoip": {"country_code": country, "city_name": city},
            },
            "connection": {"name": "Username-Password-Authentication", "strategy": "auth0"},
        },
    }


def _producer(bootstrap: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, acks=1)


async def publish_bulk(
    bootstrap: str, topic: str, run: str, count: int, *, event_type: str = EVENT_TYPE
) -> None:
    """Publish `count` events as fast as the broker takes them, keyed by user id."""
    producer = _producer(bootstrap)
    await producer.start()
    try:
        for start in range(0, count, 2000):
            futures = []
            for seq in range(start, min(count, start + 2000)):
                event = make_event(run, seq, event_type=event_type)
                key = event["subject"].encode()
                futures.append(await producer.send(topic, orjson.dumps(event), key=key))
            await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def pace(
    bootstrap: str,
    topic: str,
    run: str,
    *,
    rate: float,
    seconds: float,
    on_send: Callable[[str, float], None],
    grey_every: int = 0,
    on_grey: Callable[[str], None] | None = None,
) -> int:
    """Publish `rate` events per second for `seconds`; `on_send(id, time)` for each.

    The event's `time` is taken just before it is handed to the producer, so the
    latency measured from it includes the producer, the broker and the fetch. With
    `grey_every` = N, events N-1, 2N-1, … are grey (1 in N, spread evenly over the
    run), and `on_grey(id)` is called for each of them.
    """
    producer = _producer(bootstrap)
    await producer.start()
    sent, futures = 0, []
    started = time.monotonic()
    try:
        while (elapsed := time.monotonic() - started) < seconds:
            for _ in range(int(elapsed * rate) + 1 - sent):
                now = time.time()
                grey = grey_every > 0 and sent % grey_every == grey_every - 1
                event = make_event(run, sent, now, grey=grey)
                on_send(event["id"], now)
                if grey and on_grey is not None:
                    on_grey(event["id"])
                futures.append(
                    await producer.send(topic, orjson.dumps(event), key=event["subject"].encode())
                )
                sent += 1
            await asyncio.sleep(0.002)
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return sent
