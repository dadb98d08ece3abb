"""Everything that imports aiokafka or FastStream: client settings (`options`), the broker
and subscriber (`subscriber`), what a batch's records come to (`batches`), what Herald
writes (`outputs`, `transactions`), dead-letter replay (`dlq`), `herald publish`,
`herald topics` and the AsyncAPI document. The core sees small protocols only."""

from aiokafka import AIOKafkaProducer as KafkaProducer
from faststream.kafka import KafkaBroker

from service.kafka.errors import (
    CONNECTION_ERRORS,
    KafkaUnavailable,
    OutageLog,
    connect_until_up,
    diagnose,
    quiet_bootstrap_errors,
)
from service.kafka.options import (
    consumer_options,
    isolation_level,
    producer_options,
    security,
)
from service.kafka.subscriber import (
    GRACEFUL_TIMEOUT_S,
    committed_metadata,
    consumer_broker,
    declare_subscriber,
    new_broker,
    retry_consumer,
    started_producer,
)

__all__ = [
    "CONNECTION_ERRORS",
    "GRACEFUL_TIMEOUT_S",
    "KafkaBroker",
    "KafkaProducer",
    "KafkaUnavailable",
    "OutageLog",
    "committed_metadata",
    "connect_until_up",
    "consumer_broker",
    "consumer_options",
    "declare_subscriber",
    "diagnose",
    "isolation_level",
    "new_broker",
    "producer_options",
    "quiet_bootstrap_errors",
    "retry_consumer",
    "security",
    "started_producer",
]
