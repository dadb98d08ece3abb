"""Transactions take the partition of the record being consumed as service.consumed gives
it, a plain (topic, partition) pair."""

from __future__ import annotations

import pytest

from service.consumed import consuming, source_partition
from service.kafka.transactions import NotOwned, Transactions


async def test_an_output_for_a_partition_no_longer_owned_is_not_owned() -> None:
    transactions = Transactions({"bootstrap_servers": "127.0.0.1:9"}, timeout_ms=60_000)
    with consuming("identity.events", 3, 17):
        source = source_partition()
    assert source == ("identity.events", 3)
    with pytest.raises(NotOwned, match=r"identity\.events/3 is no longer assigned"):
        await transactions.enqueue_keyed(source, "identity.notifications", [(b"k", b"v")])
    with pytest.raises(NotOwned):
        await transactions.send(source, "identity.commands", b"v", b"k", None)
