"""The delivery-record stores of every dedupe backend: write, update, find by event, user
or recipient, newest first, and forget after the TTL."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from service.dedupe import dedupe_key
from service.deliveries import Delivery, DeliveryStore, Query
from service.delivery_stores import RedisDeliveries, open_deliveries


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, redis_prefix: str, redis_url: str
) -> AsyncIterator[DeliveryStore]:
    if request.param == "redis":
        found: DeliveryStore = RedisDeliveries(redis_url, 60, prefix=redis_prefix)
    else:
        found = open_deliveries(request.param, path=str(tmp_path / "h.db"), url="", ttl_s=60)
    yield found
    await found.close()


def _record(n: int, *, event: str, user: str, to: str, at: float) -> Delivery:
    return Delivery(
        id=dedupe_key(event, "a", to),  # as the mailer makes them: the sqlite store relies on it
        event_id=event,
        action_id="a",
        template="welcome",
        to=to,
        user_id=user,
        status="sent",
        attempts=1,
        created_at=at,
        updated_at=at,
        email={"template": "welcome"},
    )


async def test_find_filters_and_orders_newest_first(store: DeliveryStore) -> None:
    now = time.time()
    await store.put(_record(1, event="e1", user="u1", to="Ada@herald.test", at=now - 3))
    await store.put(_record(2, event="e2", user="u1", to="bob@herald.test", at=now - 2))
    await store.put(_record(3, event="e3", user="u2", to="ada@herald.test", at=now - 1))
    await store.put(_record(4, event="e22", user="u3", to="cy@herald.test", at=now))
    assert [d.event_id for d in await store.find(Query(user_id="u1"))] == ["e2", "e1"]
    assert [d.event_id for d in await store.find(Query(to="ADA@herald.test"))] == ["e3", "e1"]
    assert [d.event_id for d in await store.find(Query(event_id="e2"))] == ["e2"]
    assert [d.event_id for d in await store.find(Query(event_id="e22"))] == ["e22"]
    assert [d.event_id for d in await store.find(Query())] == ["e22", "e3", "e2", "e1"]
    assert [d.event_id for d in await store.find(Query(limit=1))] == ["e22"]
    assert await store.find(Query(event_id="nope")) == []
    assert await store.find(Query(event_id="e")) == []


async def test_an_update_replaces_the_record_and_moves_it_up(store: DeliveryStore) -> None:
    now = time.time()
    first = _record(1, event="e1", user="u1", to="a@herald.test", at=now - 5)
    first.status = "deferred"
    await store.put(first)
    await store.put(_record(2, event="e2", user="u1", to="a@herald.test", at=now - 2))
    first.status, first.updated_at, first.attempts = "sent", now, 2
    await store.put(first)
    found = await store.find(Query(user_id="u1"))
    assert [(d.event_id, d.status, d.attempts) for d in found] == [
        ("e1", "sent", 2),
        ("e2", "sent", 1),
    ]
    got = await store.get(first.id)
    assert got is not None and got.email == {"template": "welcome"}


async def test_records_older_than_the_ttl_are_not_found(store: DeliveryStore) -> None:
    await store.put(_record(1, event="e1", user="u1", to="a@herald.test", at=time.time() - 120))
    assert await store.find(Query(event_id="e1")) == []
