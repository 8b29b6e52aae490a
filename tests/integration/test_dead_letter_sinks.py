"""Dead letters against the real services: sink dead letters name their record, the broker accepts the largest
envelope, and the producer for other topics' DLQs delivers (to a throw-away topic).

    .venv/bin/python -m pytest tests/integration/test_dead_letter_sinks.py -m integration
"""

from __future__ import annotations

import json
import random
import uuid

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

from io_connectors.kafka import DLQ_MAX_REQUEST_BYTES, RECORD_OVERHEAD_BYTES, _ProduceDeadLettersFn
from io_connectors.redis_state import WriteSessionState
from events.dead_letters import (DEFAULT_MAX_PAYLOAD_BYTES, MAX_ENVELOPE_OVERHEAD_BYTES, SOURCE_KEY,
                                     DeadLetter, ErrorKind)

pytestmark = pytest.mark.integration
TURNS = "text.agent.turn.completed"


@pytest.fixture
def kafka_settings(stack):
    """The stack's admin: these tests create, write and delete scratch topics of their own."""
    from io_connectors.settings import KafkaSettings

    return KafkaSettings.from_env("admin")


@pytest.fixture
def scratch_topic(kafka_settings):
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(kafka_settings.librdkafka_config())
    name = f"iheardai.test.{uuid.uuid4().hex[:10]}.dlq"
    admin.create_topics([NewTopic(name, 1, 1)])[name].result(30)
    yield name
    admin.delete_topics([name])[name].result(30)


def _read_all(settings, topic, n, timeout_s=30):
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({**settings.librdkafka_config(), "group.id": f"t-{uuid.uuid4().hex}", "enable.auto.commit": False})
    c.assign([TopicPartition(topic, 0, 0)])
    out = []
    try:
        import time

        deadline = time.monotonic() + timeout_s
        while len(out) < n and time.monotonic() < deadline:
            m = c.poll(1.0)
            if m is not None and m.error() is None:
                out.append((m.key(), m.value()))
    finally:
        c.close()
    return out


def test_the_broker_accepts_what_the_dlq_producer_may_send(kafka_settings, scratch_topic):
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, ConfigResource

    admin = AdminClient(kafka_settings.librdkafka_config())
    broker = ConfigResource(ConfigResource.Type.BROKER, "1")
    limit = int(admin.describe_configs([broker])[broker].result(30)["message.max.bytes"].value)
    assert DLQ_MAX_REQUEST_BYTES <= limit  # max.request.size of the DLQ producers fits the broker
    # the largest envelope: a payload just at the limit, every other field at its clamp
    worst = DeadLetter.of(b"x" * 5_000_000, step="s" * 10_000, error_class=ErrorKind.TOO_LARGE.value,
                          error_message="\x01" * 10_000, topic=TURNS, partition=1, offset=2 ** 62)
    value = worst.to_json()
    assert len(value) <= DEFAULT_MAX_PAYLOAD_BYTES + MAX_ENVELOPE_OVERHEAD_BYTES
    assert len(value) + RECORD_OVERHEAD_BYTES <= DLQ_MAX_REQUEST_BYTES
    p = Producer({**kafka_settings.librdkafka_config(), "message.max.bytes": DLQ_MAX_REQUEST_BYTES, "acks": "all"})
    errors = []
    p.produce(scratch_topic, value=value, key=worst.kafka_key(), on_delivery=lambda e, m: errors.append(e))
    assert p.flush(30) == 0 and errors == [None]


def test_dead_letters_of_other_topics_are_produced_to_their_dlq(kafka_settings, scratch_topic):
    big = random.Random(3).randbytes(1_500_000)
    letters = [DeadLetter.of(b'{"a": 1}', step="RedactLeads", error_class="transform_error", error_message="m",
                             topic="marketo.leads.delta", partition=0, offset=5),
               DeadLetter.of(big, step="Validate", error_class="not_utf8", error_message="m",
                             topic="marketo.leads.delta", partition=1, offset=6)]
    items = [(scratch_topic, d.kafka_key(), d.to_json()) for d in letters]
    with beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"])) as p:
        p | beam.Create(items) | beam.ParDo(_ProduceDeadLettersFn(principal="admin"))  # a scratch topic
    got = sorted(_read_all(kafka_settings, scratch_topic, 2))
    assert [k for k, _ in got] == [b"marketo.leads.delta:0:5", b"marketo.leads.delta:1:6"]
    first, second = (DeadLetter.from_json(v) for _, v in got)
    assert first.raw_payload() == b'{"a": 1}'
    assert second.payload_truncated and second.payload_bytes == len(big) and big.startswith(second.prefix_bytes())


def test_redis_dead_letters_name_their_record(redis_settings, run_id):
    refused = {"session_id": f"{run_id}-a", "turn_id": "x", SOURCE_KEY: (TURNS, 4, 812)}  # no seq: refused
    with beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"])) as p:
        dead = p | beam.Create([refused]) | WriteSessionState(source_topic=TURNS, settings=redis_settings)
        assert_that(dead | beam.Map(lambda d: (d.source_topic, d.source_partition, d.source_offset, d.step,
                                               SOURCE_KEY in json.loads(d.raw_payload()))),
                    equal_to([(TURNS, 4, 812, "WriteSessionState", False)]))
