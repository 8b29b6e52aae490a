"""Kafka wiring: Beam's ReadFromKafka as KafkaRecords, and the dead-letter writer (WriteDeadLetters).

Both are Beam cross-language transforms: their Java part is expanded by the Kafka expansion service
(`--expansion_service`, the local stack runs one on localhost:8097 with a PROCESS Java environment (a Java SDK
harness process per job, devstack/java_harness) and `use_deprecated_read`, so Flink checkpoints the Kafka source
and commits offsets on completed checkpoints).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

import apache_beam as beam
from apache_beam.io.kafka import ReadFromKafka, ReadFromKafkaSchema, WriteToKafka
from apache_beam.transforms.external import ExternalTransform, NamedTupleBasedPayloadBuilder
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.pvalue import PDone

from events import topics
from events.topics import dlq_topic
from events.dead_letters import (DEFAULT_MAX_PAYLOAD_BYTES, MAX_ENVELOPE_OVERHEAD_BYTES, MIN_MAX_PAYLOAD_BYTES,
                                     DeadLetter)
from events.metrics import step_namespace
from io_connectors.settings import current_principal
from events.records import KafkaRecord

log = logging.getLogger(__name__)


def _to_record(row) -> KafkaRecord:
    return KafkaRecord(topic=row.topic, partition=int(row.partition), offset=int(row.offset), key=row.key,
                       value=row.value, timestamp_ms=int(row.timestamp))


# Our Kafka read (devstack/maven/beam-services/src: ai.iheard.beam.kafka.IdleAwareKafkaRead): ReadFromKafka's
# payload plus idle_partition_timeout_ms, expanded by the expansion service we assemble. Beam's CreateTime
# policy holds a partition that has delivered no record since the job started at the minimum watermark, and
# the job's watermark with it (one quiet partition of any topic: no session or hour ever closes); ours lets it
# go idle once caught up for the timeout.
IDLE_AWARE_READ_URN = "beam:transform:ai.iheard:kafka_read_with_metadata_idle_partitions:v1"
IdleAwareReadSchema = NamedTuple("IdleAwareReadFromKafkaSchema", [
    *ReadFromKafkaSchema.__annotations__.items(), ("idle_partition_timeout_ms", Optional[int])])


def idle_aware_payload(consumer_config: Dict[str, str], topics: Sequence[str], idle_partition_timeout_ms: int,
                       commit_offset_in_finalize: bool, start_read_time: Optional[int],
                       max_num_records: Optional[int]) -> "IdleAwareReadSchema":
    """ReadFromKafka(with_metadata=True, CreateTime)'s payload, with ReadFromKafka's defaults, plus the timeout."""
    if idle_partition_timeout_ms < 0:
        raise ValueError("idle_partition_timeout_ms must be >= 0")
    return IdleAwareReadSchema(
        consumer_config=consumer_config, topics=list(topics),
        key_deserializer=ReadFromKafka.byte_array_deserializer,
        value_deserializer=ReadFromKafka.byte_array_deserializer,
        start_read_time=start_read_time, max_num_records=max_num_records, max_read_time=None,
        commit_offset_in_finalize=commit_offset_in_finalize, timestamp_policy=ReadFromKafka.create_time_policy,
        consumer_polling_timeout=2, redistribute=False, redistribute_num_keys=np.int32(0), allow_duplicates=False,
        idle_partition_timeout_ms=int(idle_partition_timeout_ms))


def idle_aware_read(payload: "IdleAwareReadSchema", expansion_service: Optional[str]) -> ExternalTransform:
    return ExternalTransform(IDLE_AWARE_READ_URN, NamedTupleBasedPayloadBuilder(payload), expansion_service)


class ReadKafkaRecords(beam.PTransform):
    """Read topics as KafkaRecord (payload + topic/partition/offset), timestamped with the record's CreateTime.

    `start_read_time_ms` starts from a timestamp (backfills); otherwise the group's committed offsets are
    used, falling back to `auto.offset.reset` (`earliest` or `latest`). `idle_partition_timeout_s`: a
    partition with no record since the job started goes idle (event time follows the clock) once caught up
    for this long; None reads with Beam's own ReadFromKafka (held at the minimum until its first record).
    """

    def __init__(self, topics: Sequence[str], consumer_config: Dict[str, str], expansion_service: Optional[str],
                 start_read_time_ms: Optional[int] = None, commit_offsets: bool = True,
                 max_num_records: Optional[int] = None, label: Optional[str] = None,
                 idle_partition_timeout_s: Optional[float] = 60.0):
        super().__init__(label)
        if commit_offsets and not consumer_config.get("group.id"):
            raise ValueError("committing offsets needs a consumer group: set group.id")
        if idle_partition_timeout_s is not None and idle_partition_timeout_s < 0:
            idle_partition_timeout_s = None  # --idle_partition_timeout_seconds=-1: Beam's own read
        self._topics = list(topics)
        self._config = dict(consumer_config)
        self._expansion_service = expansion_service
        self._start = start_read_time_ms
        self._commit = commit_offsets
        self._max = max_num_records
        self._idle_s = idle_partition_timeout_s

    def expand(self, pbegin):
        if self._idle_s is None:
            read = ReadFromKafka(
                consumer_config=self._config, topics=self._topics, with_metadata=True,
                timestamp_policy=ReadFromKafka.create_time_policy, commit_offset_in_finalize=self._commit,
                start_read_time=self._start, max_num_records=self._max, expansion_service=self._expansion_service)
        else:
            read = idle_aware_read(idle_aware_payload(self._config, self._topics, round(self._idle_s * 1000),
                                                      self._commit, self._start, self._max),
                                   self._expansion_service)
        return pbegin | "ReadFromKafka" >> read | "ToKafkaRecord" >> beam.Map(_to_record)


# Kafka's producer default max.request.size (the largest record the producer sends) and the broker default
# message.max.bytes (1048588, the largest record batch it accepts): the local stack keeps both defaults, as do
# DigitalOcean Managed Kafka and flink-deploy/kafka-topics.yaml (no max.message.bytes override on any topic).
DLQ_MAX_REQUEST_BYTES = 1024 * 1024
RECORD_OVERHEAD_BYTES = 1024  # record batch header (61 B), record header, the `topic:partition:offset` key
MAX_DLQ_PAYLOAD_BYTES = DLQ_MAX_REQUEST_BYTES - MAX_ENVELOPE_OVERHEAD_BYTES - RECORD_OVERHEAD_BYTES
FALLBACK_NOTE = "the first source topic's DLQ, envelope marked unrouted=true"


class DeadLetterOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--dlq_max_payload_bytes", type=int, default=DEFAULT_MAX_PAYLOAD_BYTES,
                            help="A dead letter keeps payloads up to this size (bytes of its JSON string) inline; "
                                 "a larger payload is stored by reference: source topic/partition/offset, size, "
                                 "SHA-256 and a prefix of this size, payload_truncated=true. At most "
                                 f"{MAX_DLQ_PAYLOAD_BYTES} (the DLQ producer's max.request.size "
                                 f"{DLQ_MAX_REQUEST_BYTES} minus the envelope's bounded other fields). "
                                 f"Default {DEFAULT_MAX_PAYLOAD_BYTES}.")


def check_dlq_max_payload_bytes(n: int) -> int:
    if not MIN_MAX_PAYLOAD_BYTES <= n <= MAX_DLQ_PAYLOAD_BYTES:
        raise ValueError(f"--dlq_max_payload_bytes must be between {MIN_MAX_PAYLOAD_BYTES} and "
                         f"{MAX_DLQ_PAYLOAD_BYTES} (DLQ max.request.size {DLQ_MAX_REQUEST_BYTES} minus "
                         f"{MAX_ENVELOPE_OVERHEAD_BYTES + RECORD_OVERHEAD_BYTES} bytes of envelope), got {n}")
    return n


OTHER_KNOWN = "other_known_topic"  # tag of dead letters from a known topic the pipeline does not read


class _RouteDeadLetterFn(beam.DoFn):
    """DeadLetter -> (key, bounded JSON envelope), tagged with the DLQ it goes to (see WriteDeadLetters)."""

    def __init__(self, source_topics: Sequence[str], known_topics: Sequence[str], max_payload_bytes: int):
        self._own = frozenset(source_topics)
        self._known = frozenset(known_topics) - self._own
        self._fallback = source_topics[0]
        self._max = max_payload_bytes
        ns = step_namespace("RouteDeadLetters")
        self._count = Metrics.counter(ns, "dead_letters_written")
        self._by_reference = Metrics.counter(ns, "dead_letters_payload_by_reference")
        self._other = Metrics.counter(ns, "dead_letters_of_other_topics")
        self._unrouted = Metrics.counter(ns, "dead_letters_unrouted")
        self._warned: set = set()

    def process(self, dl: DeadLetter):
        self._count.inc()
        topic = dl.source_topic
        if topic in self._own:
            tag = topic
        elif topic in self._known:
            tag = OTHER_KNOWN
            self._other.inc()
        else:
            tag = self._fallback
            dl = dataclasses.replace(dl, unrouted=True)
            self._unrouted.inc()
            if topic not in self._warned and len(self._warned) < 100:
                self._warned.add(topic)
                log.warning("dead letter of step %s has source topic %r, which has no DLQ: sent to %s "
                            "(unrouted=true)", dl.step, topic, dlq_topic(self._fallback))
        bounded = dl.bounded(self._max)
        if bounded.payload_truncated:
            self._by_reference.inc()
        key, value = bounded.kafka_key(), bounded.to_json(self._max)
        yield beam.pvalue.TaggedOutput(tag, (dlq_topic(topic), key, value) if tag == OTHER_KNOWN else (key, value))


@beam.typehints.with_input_types(DeadLetter)
class RouteDeadLetters(beam.PTransform):
    """PCollection[DeadLetter] -> tagged (key, envelope) outputs: one tag per source topic, plus OTHER_KNOWN
    with (dlq topic, key, envelope) for dead letters of other known topics. Kafka-free, so tests can check
    where every dead letter goes."""

    def __init__(self, source_topics: Sequence[str], max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
                 known_topics: Optional[Sequence[str]] = None, label: Optional[str] = None):
        super().__init__(label)
        if not source_topics:
            raise ValueError("RouteDeadLetters needs at least one source topic")
        self._topics: List[str] = list(dict.fromkeys(source_topics))
        self._known = list(known_topics) if known_topics is not None else [t.name for t in topics.TOPICS]
        self._max = check_dlq_max_payload_bytes(max_payload_bytes)

    def expand(self, dead_letters):
        return dead_letters | "Route" >> beam.ParDo(
            _RouteDeadLetterFn(self._topics, self._known, self._max)).with_outputs(OTHER_KNOWN, *self._topics)


class _ProduceDeadLettersFn(beam.DoFn):
    """(dlq topic, key, envelope) -> Kafka with a librdkafka producer, for the rare dead letter of a known
    topic the pipeline does not read (it has no WriteToKafka of its own). The producer is made on the first
    such element; each bundle waits for its acks (at least once, like WriteToKafka), and a delivery error
    fails the bundle so that it is retried."""

    def __init__(self, librdkafka_config: Optional[Dict[str, str]] = None, flush_timeout_s: float = 120.0,
                 principal: Optional[str] = None):
        self._config = librdkafka_config  # None: from the worker's environment (KafkaSettings) as `principal`
        self._principal = principal
        self._flush_timeout_s = flush_timeout_s
        self._written = Metrics.counter(step_namespace("ProduceDeadLetters"), "dead_letters_written_to_other_dlqs")
        self._producer = None

    def _get_producer(self):
        if self._producer is None:
            from confluent_kafka import Producer

            from io_connectors.settings import KafkaSettings

            conf = self._config if self._config is not None else KafkaSettings.from_env(
                self._principal).librdkafka_config()
            self._producer = Producer({**conf, "acks": "all", "enable.idempotence": True,
                                       "message.max.bytes": DLQ_MAX_REQUEST_BYTES, "linger.ms": 20})
        return self._producer

    def start_bundle(self):
        self._errors: List[str] = []

    def _delivered(self, err, msg):
        if err is not None:
            self._errors.append(f"{msg.topic()}: {err}")

    def process(self, item: Tuple[str, bytes, bytes]):
        topic, key, value = item
        producer = self._get_producer()
        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=self._delivered)
                break
            except BufferError:  # local queue full: let deliveries drain
                producer.poll(0.5)
        producer.poll(0)
        self._written.inc()
        return ()  # a sink: nothing downstream

    def finish_bundle(self):
        if self._producer is None:
            return
        left = self._producer.flush(self._flush_timeout_s)
        if left or self._errors:
            errors, self._errors = self._errors, []
            raise RuntimeError(f"dead letters not acknowledged by Kafka: {left} pending, errors: {errors[:5]}")

    def teardown(self):
        if self._producer is not None:
            self._producer.flush(10)
            self._producer = None


@beam.typehints.with_input_types(DeadLetter)
class WriteDeadLetters(beam.PTransform):
    """Send DeadLetter envelopes to `<source topic>.dlq`; every envelope fits the DLQ.

    Routing: a dead letter of one of `source_topics` goes to that topic's DLQ (one WriteToKafka each); one of
    another topic of events.topics (which has its `.dlq` twin) goes to that DLQ through a small
    librdkafka producer; one whose source topic is unknown or missing goes to the fallback, the first source
    topic's DLQ, with `unrouted: true` in the envelope, the `dead_letters_unrouted` counter and a warning
    (a dedicated unrouted topic would need creating everywhere; every step names its source, so this is
    a bug's safety net, not a route). Keys are `topic:partition:offset`, so a replay writes the same key
    again (consumers can dedupe).

    Size: payloads larger than `max_payload_bytes` (default: the pipeline's --dlq_max_payload_bytes) are
    stored by reference (DeadLetter.bounded); the envelope is then at most max_payload_bytes +
    MAX_ENVELOPE_OVERHEAD_BYTES, below the producers' max.request.size (DLQ_MAX_REQUEST_BYTES, Kafka's
    default, which the broker's message.max.bytes accepts), so no record of any size fails the writer.
    """

    def __init__(self, source_topics: Sequence[str], producer_config: Dict[str, str],
                 expansion_service: Optional[str], max_payload_bytes: Optional[int] = None,
                 librdkafka_config: Optional[Dict[str, str]] = None, label: Optional[str] = None):
        super().__init__(label)
        if not source_topics:
            raise ValueError("WriteDeadLetters needs at least one source topic")
        self._topics: List[str] = list(dict.fromkeys(source_topics))
        self._config = dict(producer_config)
        self._expansion_service = expansion_service
        self._max = None if max_payload_bytes is None else check_dlq_max_payload_bytes(max_payload_bytes)
        self._librdkafka_config = librdkafka_config

    def expand(self, dead_letters):
        limit = self._max
        if limit is None:
            opts = dead_letters.pipeline.options
            limit = (opts.view_as(DeadLetterOptions).dlq_max_payload_bytes if opts is not None
                     else DEFAULT_MAX_PAYLOAD_BYTES)
        routed = dead_letters | "Route" >> RouteDeadLetters(self._topics, limit)
        producer_config = {**self._config, "acks": "all", "enable.idempotence": "true",
                           "max.request.size": str(DLQ_MAX_REQUEST_BYTES)}
        for topic in self._topics:
            dlq = dlq_topic(topic)
            (routed[topic]
             | f"Key[{dlq}]" >> beam.Map(lambda kv: kv).with_output_types(Tuple[bytes, bytes])
             | f"Write[{dlq}]" >> WriteToKafka(
                 producer_config=producer_config, topic=dlq,
                 key_serializer="org.apache.kafka.common.serialization.ByteArraySerializer",
                 value_serializer="org.apache.kafka.common.serialization.ByteArraySerializer",
                 expansion_service=self._expansion_service))
        routed[OTHER_KNOWN] | "WriteOtherTopicsDlq" >> beam.ParDo(_ProduceDeadLettersFn(
            self._librdkafka_config, principal=current_principal()))
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
