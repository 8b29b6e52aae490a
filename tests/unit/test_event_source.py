"""An event's source position (topic, partition, offset): set by validation, kept by every copy and by
pickling, never part of the payload or of transformation_metadata()."""

from __future__ import annotations

import json
import pickle

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from events.contracts import AgentTurnCompleted, FrontendUserInteraction
from transforms.pii import PiiPolicy, Redactor
from events.records import KafkaRecord
from transforms.routing import ValidateByTopic
from transforms.scoring import PriceTable, score_turn
from transforms.turns import turn_to_row
from transforms.validation import parse_event, parse_record

pytestmark = pytest.mark.unit
TS = 1_795_000_000_000
NOW = TS + 60_000
TOPIC = "text.agent.turn.completed"


def _turn(**over) -> bytes:
    t = {"session_id": "s1", "turn_id": "t1", "model_name": "gpt-4o", "tokens_in": 10, "tokens_out": 5,
         "latency_ms": 100.0, "timestamp": TS, "user_id": "u1", "response_text": "mail a@b.io"}
    t.update(over)
    return json.dumps(t).encode()


@pytest.mark.parametrize("extra", [{}, {"experiment": "B"}])
def test_validation_attaches_the_source_and_copies_keep_it(extra):
    ev = parse_record(KafkaRecord(TOPIC, 5, 77, b"k", _turn(**extra), TS), now_ms=NOW)
    assert ev.source() == (TOPIC, 5, 77)
    assert "_src" not in json.dumps(ev.transformation_metadata()) and "77" not in ev.model_dump_json()
    copy = ev.with_metadata({"pii": {"redacted": {}}}, response_text="x")
    assert copy.source() == (TOPIC, 5, 77) and copy.transformation_metadata()["pii"] == {"redacted": {}}
    assert pickle.loads(pickle.dumps(copy)).source() == (TOPIC, 5, 77)
    assert ev.model_copy().source() == (TOPIC, 5, 77)
    redacted, _ = Redactor(PiiPolicy.load(), b"unit-test-key-0123456789abcdef").event(ev)
    assert redacted.source() == (TOPIC, 5, 77) and redacted.response_text == "mail <EMAIL>"
    assert set(turn_to_row(redacted)["transformation_metadata"]) >= {"schema_version", "pii"}
    assert "_src" not in turn_to_row(redacted)["transformation_metadata"]
    score_turn(redacted, PriceTable.load())  # scoring reads fields only


def test_events_not_from_a_record_have_no_source():
    assert parse_event(_turn(), AgentTurnCompleted, now_ms=NOW).source() is None
    ev = AgentTurnCompleted.model_validate_json(_turn())
    assert ev.source() is None and ev.with_metadata({"a": 1}).source() is None
    moved = ev.with_source("x", 1, 2)
    assert moved.source() == ("x", 1, 2) and ev.source() is None


def test_the_source_survives_the_beam_coder_between_steps():
    records = [KafkaRecord(TOPIC, 2, 10, None, _turn(), TS),
               KafkaRecord("frontend.user.interaction", 7, 3, None,
                           json.dumps({"event_type": "click", "session_id": "s", "timestamp": TS}).encode(), TS)]
    models = {TOPIC: AgentTurnCompleted, "frontend.user.interaction": FrontendUserInteraction}
    with TestPipeline(options=PipelineOptions(["--runner=DirectRunner"])) as p:
        valid, _ = p | beam.Create(records) | ValidateByTopic(models)
        out = ((valid[TOPIC], valid["frontend.user.interaction"]) | beam.Flatten()
               | beam.Reshuffle()  # forces encoding and decoding
               | beam.Map(lambda e: e.source()))
        assert_that(out, equal_to([(TOPIC, 2, 10), ("frontend.user.interaction", 7, 3)]))


def test_a_record_of_an_unexpected_topic_is_a_dead_letter_of_its_own_topic():
    records = [KafkaRecord("some.other.topic", 4, 9, None, _turn(), TS), KafkaRecord(TOPIC, 0, 1, None, _turn(), TS)]
    with TestPipeline(options=PipelineOptions(["--runner=DirectRunner"])) as p:
        valid, dead = p | beam.Create(records) | ValidateByTopic({TOPIC: AgentTurnCompleted})
        assert_that(valid[TOPIC] | beam.Map(lambda e: e.source()), equal_to([(TOPIC, 0, 1)]), label="valid")
        assert_that(dead | beam.Map(lambda d: (d.source_topic, d.source_partition, d.source_offset, d.step,
                                               d.error_class)),
                    equal_to([("some.other.topic", 4, 9, "UnexpectedTopic", "unknown_topic")]), label="dead")
