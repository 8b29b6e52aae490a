"""The raw record every pipeline starts from: a Kafka message's bytes and where it came from."""

from typing import NamedTuple, Optional


class KafkaRecord(NamedTuple):
    topic: str
    partition: int
    offset: int
    key: Optional[bytes]
    value: bytes
    timestamp_ms: int  # the Kafka record timestamp (CreateTime: set by the producer to the event time)
