"""Validation rules and the ValidateEvents composite (dead letters asserted apart, counters per kind)."""

from __future__ import annotations

import json

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from events import topics
from events.contracts import AgentTurnCompleted, FrontendUserInteraction
from events.dead_letters import DeadLetter, ErrorKind
from events.records import KafkaRecord
from transforms.validation import EventError, ValidateEvents, parse_event
from events.dead_letters import split_dead_letters

pytestmark = pytest.mark.unit
TS = 1_795_000_000_000
NOW = TS + 60_000
OPTS = ["--runner=DirectRunner"]


def _turn(**over) -> bytes:
    t = {"session_id": "s1", "turn_id": "t1", "model_name": "gpt-4o", "tokens_in": 10, "tokens_out": 5,
         "latency_ms": 100.0, "timestamp": TS}
    t.update(over)
    return json.dumps(t).encode()


def _kind(raw, **kw) -> ErrorKind:
    with pytest.raises(EventError) as e:
        parse_event(raw, AgentTurnCompleted, now_ms=NOW, **kw)
    return e.value.kind


def test_error_kinds():
    assert _kind(b"\xff\xfe{}") is ErrorKind.NOT_UTF8
    assert _kind(b"{nope") is ErrorKind.NOT_JSON
    assert _kind(b"[1, 2]") is ErrorKind.NOT_OBJECT
    assert _kind(json.dumps({"session_id": "s"}).encode()) is ErrorKind.SCHEMA
    assert _kind(_turn(tokens_in="10")) is ErrorKind.SCHEMA
    assert _kind(_turn(timestamp=TS // 1000)) is ErrorKind.TIMESTAMP  # seconds, not millis
    assert _kind(_turn(timestamp=NOW + 2 * 86_400_000)) is ErrorKind.TIMESTAMP
    assert _kind(_turn(timestamp=NOW - 500 * 86_400_000)) is ErrorKind.TIMESTAMP


def test_payload_size_limit_defaults_to_1_mb_and_is_configurable():
    big = _turn(response_text="x" * (1024 * 1024))
    assert _kind(big) is ErrorKind.TOO_LARGE
    assert _kind(_turn(response_text="x" * 200), max_payload_bytes=100) is ErrorKind.TOO_LARGE
    assert parse_event(_turn(response_text="x" * 1000), AgentTurnCompleted, now_ms=NOW).tokens_in == 10


def test_extra_fields_are_kept_and_listed_in_metadata():
    ev = parse_event(_turn(experiment="B", zone="eu"), AgentTurnCompleted, now_ms=NOW)
    assert ev.extra_fields() == {"experiment": "B", "zone": "eu"}
    assert ev.transformation_metadata() == {"schema_version": 1, "extra_fields": ["experiment", "zone"]}


def _rec(offset, value, topic=topics.TURNS):
    return KafkaRecord(topic, 1, offset, b"k", value, TS)


def test_validate_events_by_topic_with_dead_letters_and_counters():
    fe = json.dumps({"event_type": "click", "session_id": "f1", "timestamp": TS}).encode()
    records = [_rec(0, _turn()), _rec(1, fe, topics.FRONTEND_INTERACTION), _rec(2, b"\xff"),
               _rec(3, _turn(tokens_out=-1)), _rec(4, _turn(), "unknown.topic"),
               _rec(5, _turn(turn_id="t2", extra_field=1))]
    p = TestPipeline(options=PipelineOptions(OPTS))
    valid, dead = split_dead_letters(p | beam.Create(records) | "Validate" >> ValidateEvents(max_future_ms=10 ** 12))
    assert_that(valid | beam.Map(lambda e: (type(e).__name__, e.session_id, e.transformation_metadata())),
                equal_to([("AgentTurnCompleted", "s1", {"schema_version": 1}),
                          ("FrontendUserInteraction", "f1", {"schema_version": 1}),
                          ("AgentTurnCompleted", "s1", {"schema_version": 1, "extra_fields": ["extra_field"]})]),
                label="valid")
    assert_that(dead | beam.Map(lambda d: (d.source_offset, d.source_topic, d.error_class, d.step,
                                           d.payload_encoding)),
                equal_to([(2, topics.TURNS, "not_utf8", "Validate", "base64"),
                          (3, topics.TURNS, "schema_violation", "Validate", "utf-8"),
                          (4, "unknown.topic", "unknown_topic", "Validate", "utf-8")]), label="dead")
    result = p.run()
    result.wait_until_finish()
    counters = {c.key.metric.name: c.committed for c in result.metrics().query(MetricsFilter())["counters"]}
    assert counters["events_valid"] == 3
    assert counters["dead_letters_not_utf8"] == counters["dead_letters_schema_violation"] == 1
    assert counters["events_with_extra_fields"] == 1


def test_dead_letter_round_trips_and_keeps_the_original_bytes():
    d = DeadLetter.of(b"\xff\x00", step="s", error_class="not_utf8", error_message="m", topic="t", offset=3)
    back = DeadLetter.from_json(d.to_json())
    assert back.raw_payload() == b"\xff\x00" and back.source_offset == 3


def test_model_choice_is_explicit_when_given():
    fe = json.dumps({"event_type": "click", "session_id": "f1", "timestamp": TS}).encode()
    assert isinstance(parse_event(fe, FrontendUserInteraction, now_ms=NOW), FrontendUserInteraction)
