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
