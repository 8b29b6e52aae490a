"""Produce generated records to a real Kafka broker (the demo, the end-to-end tests, the benchmarks)."""

from __future__ import annotations

from typing import List, Optional, Tuple

from workloads.generator import ProducedRecord
from io_connectors.settings import librdkafka_for


def produce(records: List[ProducedRecord], topic: str, bootstrap_servers: str,
            extra_config: Optional[dict] = None) -> List[Tuple[int, int]]:
    """Produce records with their event time as the Kafka timestamp (idempotent producer, acks=all).

    Returns the (partition, offset) of each record, in order, so tests can find them again (e.g. in a DLQ)."""
    from confluent_kafka import Producer

    errors: List[str] = []
    positions: List[Optional[Tuple[int, int]]] = [None] * len(records)
    p = Producer({**librdkafka_for(bootstrap_servers), "enable.idempotence": True, "acks": "all",
                  "linger.ms": 20, **(extra_config or {})})

    for i, r in enumerate(records):
        def on_delivery(err, msg, i=i):
            if err is not None:
                errors.append(str(err))
            else:
                positions[i] = (msg.partition(), msg.offset())

        while True:
            try:
                p.produce(topic, key=r.key, value=r.value, timestamp=r.timestamp_ms, on_delivery=on_delivery)
                break
            except BufferError:
                p.poll(0.1)
        p.poll(0)
    p.flush(60)
    if errors:
        raise RuntimeError(f"{len(errors)} records not delivered: {errors[:3]}")
    return positions  # type: ignore[return-value]
