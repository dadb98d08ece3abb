"""Dedupe stores against their real backends, and the mailer waiting on a claim held elsewhere.

Redis tests run against the suite's own redis-server (the `redis_url` fixture), each
under a key prefix of its own that is deleted afterwards.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from service.dedupe import (
    Claim,
    DedupeStore,
    DedupeUnavailable,
    MemoryDedupe,
    RedisDedupe,
    SqliteDedupe,
    dedupe_key,
    dedupe_store,
)
from service.deliveries import Delivery, DeliveryLog, MemoryDeliveries
from tests.mailer_doubles import Recorder, email_request, mailer

BACKENDS = ["memory", "sqlite", "redis"]


@pytest.fixture(params=BACKENDS)
async def make_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Callable[..., DedupeStore]]:
    """Builds stores of one backend that share state (same file / same Redis prefix)."""
    prefix = request.getfixturevalue("redis_prefix") if request.param == "redis" else ""
    url = request.getfixturevalue("redis_url") if request.param == "redis" else ""
    memory: list[MemoryDedupe] = []
    made: list[DedupeStore] = []

    def make(ttl_s: float = 60, claim_ttl_s: float = 300) -> DedupeStore:
        store: DedupeStore
        if request.param == "memory":
            store = memory[0] if memory else MemoryDedupe(ttl_s, claim_ttl_s=claim_ttl_s)
            memory.append(store)
        elif request.param == "sqlite":
            store = SqliteDedupe(tmp_path / "d.db", ttl_s, claim_ttl_s=claim_ttl_s)
        else:
            store = RedisDedupe(url, ttl_s, claim_ttl_s=claim_ttl_s, prefix=prefix + "sent:")
        made.append(store)
        return store

    yield make
    for store in dict.fromkeys(made):
        await store.close()


# --- dedupe stores --------------------------------------------------------------------


def test_dedupe_key_ignores_address_case() -> None:
    key = dedupe_key("evt", "act", "Ada@Example.com")
    assert key == dedupe_key("evt", "act", "ada@example.com")


async def test_claim_record_release(make_store: Callable[..., DedupeStore]) -> None:
    store = make_store()
    await store.open()
    assert await store.claim("k") is Claim.TAKEN
    assert await store.claim("k") is Claim.HELD  # in flight, not sent
    await store.release("k")
    assert await store.claim("k") is Claim.TAKEN  # a failed send can be retried
    await store.record("k")
    assert await store.claim("k") is Claim.SENT
    await store.release("k")  # release never removes a sent record
    assert await store.claim("k") is Claim.SENT


async def test_concurrent_claims_have_one_winner(make_store: Callable[..., DedupeStore]) -> None:
    store = make_store()
    wins = await asyncio.gather(*(store.claim("race") for _ in range(20)))
    assert wins.count(Claim.TAKEN) == 1 and wins.count(Claim.HELD) == 19


async def test_a_crashed_holders_claim_expires(make_store: Callable[..., DedupeStore]) -> None:
    store = make_store(claim_ttl_s=0.05)
    assert await store.claim("k") is Claim.TAKEN  # ... its holder never records nor releases
    await asyncio.sleep(0.1)
    assert await store.claim("k") is Claim.TAKEN


async def test_sqlite_record_survives_reopen(tmp_path: Path) -> None:
    store = SqliteDedupe(tmp_path / "d.db", ttl_s=60)
    assert await store.claim("k") is Claim.TAKEN
    await store.record("k")
    await store.close()
    reopened = SqliteDedupe(tmp_path / "d.db", ttl_s=60)
    assert await reopened.claim("k") is Claim.SENT
    assert await reopened.claim("other") is Claim.TAKEN
    await reopened.close()


async def test_sqlite_and_memory_records_expire(tmp_path: Path) -> None:
    for store in (SqliteDedupe(tmp_path / "d.db", ttl_s=-1), MemoryDedupe(ttl_s=-1)):
        await store.record("k")
        assert await store.claim("k") is Claim.TAKEN
        await store.close()


async def test_redis_is_shared_by_instances(redis_prefix: str, redis_url: str) -> None:
    a = RedisDedupe(redis_url, 60, prefix=redis_prefix)
    b = RedisDedupe(redis_url, 60, prefix=redis_prefix)
    try:
        assert await a.claim("k") is Claim.TAKEN
        assert await b.claim("k") is Claim.HELD
        await b.release("k")  # not b's claim: a no-op
        assert await b.claim("k") is Claim.HELD
        await a.record("k")
        assert await b.claim("k") is Claim.SENT and await a.claim("k") is Claim.SENT
        assert await a.claim("k2") is Claim.TAKEN
        await a.release("k2")
        assert await b.claim("k2") is Claim.TAKEN
    finally:
        await a.close()
        await b.close()


async def test_redis_release_spares_a_claim_taken_over(redis_prefix: str, redis_url: str) -> None:
    slow = RedisDedupe(redis_url, 60, claim_ttl_s=0.05, prefix=redis_prefix)
    other = RedisDedupe(redis_url, 60, prefix=redis_prefix)
    try:
        assert await slow.claim("k") is Claim.TAKEN
        await asyncio.sleep(0.1)  # slow's lease ran out; other takes over
        assert await other.claim("k") is Claim.TAKEN
        await slow.release("k")
        assert await slow.claim("k") is Claim.HELD  # other's claim is still there
    finally:
        await slow.close()
        await other.close()


async def test_redis_keys_values_and_ttls(redis_prefix: str, redis_url: str) -> None:
    store = RedisDedupe(redis_url, 3600, prefix=redis_prefix)
    key = dedupe_key("evt-1", "notify", "ada@example.com")
    try:
        assert await store.claim(key) is Claim.TAKEN
        [name] = [k async for k in store.client.scan_iter(match=redis_prefix + "*")]
        # The random prefix and the hex digest may contain "ada" by chance; the address may not.
        assert b"ada@example.com" not in name and b"example" not in name
        assert len(name) == len(redis_prefix) + 64  # sha256, no PII
        claimed = await store.client.get(name)
        assert claimed.startswith(f"claimed:{store.instance_id}".encode())
        assert 0 < await store.client.pttl(name) <= 300_000
        await store.record(key)
        assert await store.client.get(name) == b"sent"
        assert 3590 < await store.client.ttl(name) <= 3600
    finally:
        await store.close()


@pytest.mark.parametrize(
    "url", ["redis://herald:s3cret@127.0.0.1:1/0", "http://herald:s3cret@127.0.0.1/0"]
)
async def test_redis_bad_url_fails_at_open_with_one_line(url: str) -> None:
    with pytest.raises(DedupeUnavailable) as failure:
        store = dedupe_store("redis", path="unused", url=url, ttl_s=60)
        try:
            await store.open()
        finally:
            await store.close()
    message = str(failure.value)
    assert "\n" not in message and "s3cret" not in message and "127.0.0.1" in message


async def test_dedupe_store_backends(tmp_path: Path) -> None:
    kinds = {
        "memory": MemoryDedupe,
        "sqlite": SqliteDedupe,
        "redis": RedisDedupe,
    }
    for backend, kind in kinds.items():
        store = dedupe_store(
            backend, path=str(tmp_path / "d.db"), url="redis://127.0.0.1:1/0", ttl_s=60
        )
        assert isinstance(store, kind)
        await store.close()
    with pytest.raises(ValueError):
        dedupe_store("etcd", path="", url="", ttl_s=60)


# --- a claim held by another sender -----------------------------------------------------


async def test_redis_holder_renews_its_claim_and_a_dead_ones_lapses(
    redis_prefix: str, redis_url: str
) -> None:
    holder = RedisDedupe(redis_url, 60, claim_ttl_s=0.3, prefix=redis_prefix)
    other = RedisDedupe(redis_url, 60, prefix=redis_prefix)
    await holder.open()  # starts renewing its claims every 0.1 s
    try:
        assert await holder.claim("k") is Claim.TAKEN
        await asyncio.sleep(0.7)  # more than two leases: alive, so still held
        assert await other.claim("k") is Claim.HELD
    finally:
        await holder.close()  # as if it died: nobody renews any more
    try:
        await asyncio.sleep(0.4)
        assert await other.claim("k") is Claim.TAKEN
    finally:
        await other.close()


@pytest.mark.parametrize("outcome", ["recorded", "released"])
async def test_mailer_waits_for_a_claim_held_elsewhere(outcome: str) -> None:
    """A claim held by another sender is neither sent over nor counted as sent: the
    mailer waits; a record makes it a duplicate, a release makes it this mailer's."""
    dedupe, transport = MemoryDedupe(60), Recorder()
    key = dedupe_key("e1", "notify", "ada@herald.test")
    assert await dedupe.claim(key) is Claim.TAKEN  # the other sender, mid-send
    sending = asyncio.create_task(
        mailer(dedupe, transport).send(email_request("e1", "ada@herald.test"))
    )
    await asyncio.sleep(0.3)
    assert not sending.done() and transport.sent == []
    await (dedupe.record(key) if outcome == "recorded" else dedupe.release(key))
    result = await asyncio.wait_for(sending, 5)
    if outcome == "recorded":
        assert (result, transport.sent) == ("duplicate", [])
    else:
        assert (result, transport.sent) == ("sent", [["ada@herald.test"]])


class _PausedTransport(Recorder):
    """Holds a connection slot, runs `meanwhile` (as if this process were frozen), then
    asks `before` whether to go on, as the SMTP pool does."""

    def __init__(self, meanwhile: Callable[[], Any]) -> None:
        super().__init__()
        self.meanwhile = meanwhile

    async def send(self, sender: str, recipients: list[str], message: bytes, **options: Any) -> str:
        await self.meanwhile()
        if options.get("before") is not None:
            await options["before"]()
        return await super().send(sender, recipients, message)


async def test_a_holder_whose_lease_lapsed_and_was_taken_over_does_not_send(
    redis_prefix: str, redis_url: str
) -> None:
    frozen = RedisDedupe(redis_url, 60, claim_ttl_s=0.2, prefix=redis_prefix)  # no renewal
    other = RedisDedupe(redis_url, 60, prefix=redis_prefix)
    request = email_request("e-frozen", "ada@herald.test")
    key = dedupe_key("e-frozen", "notify", "ada@herald.test")

    async def taken_over_meanwhile() -> None:
        await asyncio.sleep(0.3)  # the lease lapses
        assert await other.claim(key) is Claim.TAKEN
        await other.record(key)  # the other instance sent it

    transport = _PausedTransport(taken_over_meanwhile)
    try:
        outcome = await mailer(frozen, transport).send(request)
    finally:
        await frozen.close()
        await other.close()
    assert outcome == "duplicate"
    assert transport.sent == []


async def test_a_holder_whose_lease_lapsed_unclaimed_takes_it_back_and_sends_once(
    redis_prefix: str, redis_url: str
) -> None:
    frozen = RedisDedupe(redis_url, 60, claim_ttl_s=0.2, prefix=redis_prefix)
    other = RedisDedupe(redis_url, 60, prefix=redis_prefix)
    key = dedupe_key("e-back", "notify", "ada@herald.test")
    transport = _PausedTransport(lambda: asyncio.sleep(0.3))
    try:
        outcome = await mailer(frozen, transport).send(email_request("e-back", "ada@herald.test"))
        assert await other.claim(key) is Claim.SENT
    finally:
        await frozen.close()
        await other.close()
    assert outcome == "sent"
    assert transport.sent == [["ada@herald.test"]]


async def test_the_dedupe_record_comes_before_the_delivery_record() -> None:
    """A crash between the server's reply and the dedupe record is the window that can
    send twice: the delivery record and status event wait until after it."""
    dedupe = MemoryDedupe(60)
    seen: list[tuple[str, Claim]] = []

    class Deliveries(MemoryDeliveries):
        async def put(self, delivery: Delivery) -> None:
            seen.append((delivery.status, await dedupe.claim(delivery.id)))
            await super().put(delivery)

    request = email_request("evt-order", "ada@example.com")
    sender = mailer(dedupe, Recorder(), deliveries=DeliveryLog(Deliveries(60)))
    assert await sender.send(request) == "sent"
    assert seen == [("sent", Claim.SENT)]
