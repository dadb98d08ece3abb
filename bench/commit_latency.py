"""How long one output and its consumed offset take to commit: in a Kafka transaction
(`kafka.exactly_once`) against a plain produce followed by a consumer commit.

This is what a trickle of events pays per batch; the throughput runs drain a backlog in
large batches and hide it. Run by `bench.eos` on its broker.
"""

from __future__ import annotations

import statistics
import time
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

__all__ = ["measure"]

_WARM_UP = 5


async def measure(bootstrap: str, rounds: int = 40) -> dict[str, float]:
    """Median and p90 milliseconds of each way, `rounds` commits each, alternating."""
    name = f"bench.commit.{uuid.uuid4().hex[:8]}"
    plain = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    txn = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=name)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=name)
    await plain.start()
    await txn.start()
    await consumer.start()
    source = TopicPartition(name + ".in", 0)
    try:
        await plain.send_and_wait(source.topic, b"x")  # creates the topics
        await plain.send_and_wait(name + ".out", b"x")
        consumer.assign([source])
        await txn.begin_transaction()
        times: dict[str, list[float]] = {"transaction": [], "plain": []}
        for offset in range(1, rounds + _WARM_UP + 1):
            started = time.perf_counter()
            await (await txn.send(name + ".out", b"output"))
            await txn.send_offsets_to_transaction({source: offset}, name)
            await txn.commit_transaction()
            took_txn = time.perf_counter() - started
            await txn.begin_transaction()
            started = time.perf_counter()
            await plain.send_and_wait(name + ".out", b"output")
            await consumer.commit({source: offset})
            took_plain = time.perf_counter() - started
            if offset > _WARM_UP:
                times["transaction"].append(took_txn * 1000)
                times["plain"].append(took_plain * 1000)
        await txn.abort_transaction()
    finally:
        for client in (txn, plain, consumer):
            await client.stop()
    result = {}
    for way, values in times.items():
        values.sort()
        result[f"{way}_median_ms"] = statistics.median(values)
        result[f"{way}_p90_ms"] = values[int(len(values) * 0.9)]
    return result
