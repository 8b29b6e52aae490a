"""Kafka wiring: Beam's ReadFromKafka as KafkaRecords, and the dead-letter writer (WriteToKafka).

Both are Beam cross-language transforms: their Java part is expanded by the Kafka expansion service
(`--expansion_service`, the local stack runs one on localhost:8097 with an EMBEDDED Java environment and
`use_deprecated_read`, so Flink checkpoints the Kafka source and commits offsets on completed checkpoints).
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.io.kafka import ReadFromKafka, WriteToKafka
from apache_beam.metrics import Metrics
from apache_beam.pvalue import PDone

from io_connectors.topics import dlq_topic
from transforms.dead_letters import DeadLetter
from transforms.records import KafkaRecord


def _to_record(row) -> KafkaRecord:
    return KafkaRecord(topic=row.topic, partition=int(row.partition), offset=int(row.offset), key=row.key,
                       value=row.value, timestamp_ms=int(row.timestamp))


class ReadKafkaRecords(beam.PTransform):
    """Read topics as KafkaRecord (payload + topic/partition/offset), timestamped with the record's CreateTime.

    `start_read_time_ms` starts from a timestamp (backfills); otherwise the group's committed offsets are
    used, falling back to `auto.offset.reset` (`earliest` or `latest`).
    """

    def __init__(self, topics: Sequence[str], consumer_config: Dict[str, str], expansion_service: Optional[str],
                 start_read_time_ms: Optional[int] = None, commit_offsets: bool = True,
                 max_num_records: Optional[int] = None, label: Optional[str] = None):
        super().__init__(label)
        if commit_offsets and not consumer_config.get("group.id"):
            raise ValueError("committing offsets needs a consumer group: set group.id")
        self._topics = list(topics)
        self._config = dict(consumer_config)
        self._expansion_service = expansion_service
        self._start = start_read_time_ms
        self._commit = commit_offsets
        self._max = max_num_records

    def expand(self, pbegin):
        read = ReadFromKafka(
            consumer_config=self._config, topics=self._topics, with_metadata=True,
            timestamp_policy=ReadFromKafka.create_time_policy, commit_offset_in_finalize=self._commit,
            start_read_time=self._start, max_num_records=self._max, expansion_service=self._expansion_service)
        return pbegin | "ReadFromKafka" >> read | "ToKafkaRecord" >> beam.Map(_to_record)


class _KeyDeadLetterFn(beam.DoFn):
    def __init__(self):
        self._count = Metrics.counter(self.__class__, "dead_letters_written")

    def process(self, dl: DeadLetter) -> Iterable[Tuple[bytes, bytes]]:
        self._count.inc()
        key = f"{dl.source_topic}:{dl.source_partition}:{dl.source_offset}".encode()
        yield key, dl.to_json()


class WriteDeadLetters(beam.PTransform):
    """Send DeadLetter envelopes to `<source topic>.dlq` (one WriteToKafka per source topic).

    Dead letters whose source topic is not among `source_topics` go to the first topic's DLQ, so nothing is
    dropped. Keys are `topic:partition:offset`, so a replay writes the same key again (consumers can dedupe).
    """

    def __init__(self, source_topics: Sequence[str], producer_config: Dict[str, str],
                 expansion_service: Optional[str], label: Optional[str] = None):
        super().__init__(label)
        if not source_topics:
            raise ValueError("WriteDeadLetters needs at least one source topic")
        self._topics: List[str] = list(source_topics)
        self._config = dict(producer_config)
        self._expansion_service = expansion_service

    def expand(self, dead_letters):
        index = {t: i for i, t in enumerate(self._topics)}
        parts = dead_letters | "ByTopic" >> beam.Partition(
            lambda dl, n: index.get(dl.source_topic, 0), len(self._topics))
        for i, topic in enumerate(self._topics):
            dlq = dlq_topic(topic)
            (parts[i]
             | f"Key[{dlq}]" >> beam.ParDo(_KeyDeadLetterFn()).with_output_types(Tuple[bytes, bytes])
             | f"Write[{dlq}]" >> WriteToKafka(
                 producer_config={**self._config, "acks": "all", "enable.idempotence": "true"}, topic=dlq,
                 key_serializer="org.apache.kafka.common.serialization.ByteArraySerializer",
                 value_serializer="org.apache.kafka.common.serialization.ByteArraySerializer",
                 expansion_service=self._expansion_service))
        return PDone(dead_letters.pipeline)


def position_consumer_group(group: str, topics: Sequence[str], librdkafka_config: Dict[str, str],
                            start_from: str = "committed", start_time_ms: Optional[int] = None) -> Dict[str, int]:
    """Commit the group's start offsets before a job starts (backfills, replays, a fresh start).

    `start_time_ms`: the first offset at/after that time in every partition, or the end of a partition that
    has no such record. `start_from` "earliest"/"latest": the partition's start/end. "committed" without a
    time leaves the group as it is. Beam's legacy Kafka reader fails a partition whose records are all older
    than `start_read_time` (KafkaUnboundedReader: "no messages has a timestamp that is greater than or equals
    to the target time"), so the pipelines position the group here instead and read from committed offsets.
    Returns {"topic:partition": offset} as committed.
    """
    from confluent_kafka import Consumer, TopicPartition

    if start_time_ms is None and start_from == "committed":
        return {}
    c = Consumer({**librdkafka_config, "group.id": group, "enable.auto.commit": False})
    try:
        wanted: List[TopicPartition] = []
        for topic in topics:
            meta = c.list_topics(topic, timeout=15).topics[topic]
            if meta.error is not None:
                raise RuntimeError(f"topic {topic}: {meta.error}")
            for p in sorted(meta.partitions):
                low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=15)
                if start_time_ms is not None:
                    found = c.offsets_for_times([TopicPartition(topic, p, start_time_ms)], timeout=15)[0].offset
                    offset = found if found >= 0 else high
                else:
                    offset = low if start_from == "earliest" else high
                wanted.append(TopicPartition(topic, p, offset))
        c.commit(offsets=wanted, asynchronous=False)
        return {f"{tp.topic}:{tp.partition}": tp.offset for tp in wanted}
    finally:
        c.close()
