"""The Kafka read the pipelines use: ReadFromKafka's payload under our URN plus the idle timeout, expanded by
our Java registrar (devstack/maven/beam-services/src). The behaviour itself (a quiet partition goes idle) is
checked on the real stack: tests/e2e/test_kpi_flink.py::test_kpi_sessions_go_final_although_two_of_its_three_topics_stay_quiet."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.io.kafka import ReadFromKafka, ReadFromKafkaSchema

from beam_pipelines.options import KafkaSourceOptions
from devstack.config import REPO
from io_connectors.kafka import IDLE_AWARE_READ_URN, IdleAwareReadSchema, ReadKafkaRecords, idle_aware_payload

JAVA = REPO / "devstack/maven/beam-services/src/main"


def test_payload_is_read_from_kafkas_with_the_idle_timeout_last():
    assert IdleAwareReadSchema._fields == (*ReadFromKafkaSchema._fields, "idle_partition_timeout_ms")


def test_the_java_side_registers_the_same_urn_and_a_setter_for_every_field():
    registrar = (JAVA / "java/ai/iheard/beam/kafka/IdleAwareKafkaRead.java").read_text()
    assert f'"{IDLE_AWARE_READ_URN}"' in registrar
    assert "setIdlePartitionTimeoutMs(Long" in registrar  # the expansion service maps snake_case to setters
    services = (JAVA / "resources/META-INF/services/org.apache.beam.sdk.expansion.ExternalTransformRegistrar")
    assert services.read_text().split() == ["ai.iheard.beam.kafka.IdleAwareKafkaRead"]


def test_idle_aware_read_carries_readfromkafkas_defaults():
    row = idle_aware_payload({"bootstrap.servers": "b:9092", "group.id": "g"}, ["a", "b"], 60_000, True, None, None)
    assert row.idle_partition_timeout_ms == 60_000 and row.timestamp_policy == ReadFromKafka.create_time_policy
    assert row.key_deserializer == row.value_deserializer == ReadFromKafka.byte_array_deserializer
    assert row.topics == ["a", "b"] and row.commit_offset_in_finalize is True and row.consumer_polling_timeout == 2
    with pytest.raises(ValueError):
        idle_aware_payload({}, ["a"], -1, True, None, None)


def _read_transform(idle_s):
    p = beam.Pipeline()
    pcoll = p | ReadKafkaRecords(["a"], {"bootstrap.servers": "b:9092", "group.id": "g"}, "localhost:1",
                                 idle_partition_timeout_s=idle_s)
    return pcoll.producer.inputs[0].producer.transform  # ReadFromKafka step, before ToKafkaRecord


@pytest.mark.parametrize("idle_s, urn", [(60.0, IDLE_AWARE_READ_URN), (0, IDLE_AWARE_READ_URN),
                                         (-1, ReadFromKafka.URN_WITH_METADATA), (None, ReadFromKafka.URN_WITH_METADATA)])
def test_minus_one_reads_with_beams_own_readfromkafka(idle_s, urn, monkeypatch):
    # expansion is contacted when the transform is applied: stub only the gRPC call, keep our transform's choice
    from apache_beam.transforms import external

    seen = []
    monkeypatch.setattr(external.ExternalTransform, "expand", lambda self, pbegin: seen.append(self._urn) or
                        pbegin | beam.Create([]))
    _read_transform(idle_s)
    assert seen == [urn]


def test_the_option_defaults_to_a_minute():
    assert KafkaSourceOptions([]).idle_partition_timeout_seconds == 60.0
    assert KafkaSourceOptions(["--idle_partition_timeout_seconds=-1"]).idle_partition_timeout_seconds == -1
