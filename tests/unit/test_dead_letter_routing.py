"""Where dead letters go (RouteDeadLetters, the Kafka-free half of WriteDeadLetters), and the KPI pipeline's
dead letters of every topic it reads: validation, redaction and scoring failures each land in their own
topic's DLQ with their record's partition and offset and the step that refused them."""

from __future__ import annotations

import json

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to

from beam_pipelines import frontend, kpi
from events import topics
from io_connectors.kafka import (MAX_DLQ_PAYLOAD_BYTES, OTHER_KNOWN, DeadLetterOptions, RouteDeadLetters,
                                 WriteDeadLetters)
from transforms import pii, scoring
from events.topics import CONTRACTS
from events.dead_letters import MAX_ENVELOPE_OVERHEAD_BYTES, DeadLetter
from transforms.pii import PiiPolicy, RedactPii
from events.records import KafkaRecord
from transforms.routing import ValidateByTopic
from transforms.scoring import ScoreAgentTurns, Scored
from events.dead_letters import split_dead_letters

pytestmark = pytest.mark.unit
TS = 1_795_000_000_000
OPTS = ["--runner=DirectRunner"]


def _dl(topic, offset, raw=b"{}"):
    return DeadLetter.of(raw, step="S", error_class="e", error_message="m", topic=topic, partition=1, offset=offset)


def _where(tag):
    def where(kv):
        key, value = kv[-2], kv[-1]
        d = DeadLetter.from_json(value)
        return (tag, kv[0] if len(kv) == 3 else None, key.decode(), d.source_topic, d.source_offset, d.unrouted,
                d.payload_truncated)
    return where


def test_each_dead_letter_goes_to_its_own_topics_dlq():
    dead = [_dl(topics.TURNS, 1), _dl(topics.TOOLS, 2), _dl(topics.SESSIONS, 3),
            _dl(topics.LEADS, 4),  # a known topic this pipeline does not read: its own DLQ still
            _dl("no.such.topic", 5), _dl(None, 6),  # no DLQ exists: the fallback, marked
            _dl(topics.TOOLS, 7, b"x" * 600_000)]  # too large: by reference
    with TestPipeline(options=PipelineOptions(OPTS)) as p:
        routed = p | beam.Create(dead) | RouteDeadLetters(kpi.TOPICS)
        got = [routed[t] | f"Where[{t}]" >> beam.Map(_where(t)) for t in (*kpi.TOPICS, OTHER_KNOWN)]
        assert_that(tuple(got) | beam.Flatten(), equal_to([
            (topics.TURNS, None, f"{topics.TURNS}:1:1", topics.TURNS, 1, False, False),
            (topics.TOOLS, None, f"{topics.TOOLS}:1:2", topics.TOOLS, 2, False, False),
            (topics.SESSIONS, None, f"{topics.SESSIONS}:1:3", topics.SESSIONS, 3, False, False),
            (OTHER_KNOWN, topics.dlq_topic(topics.LEADS), f"{topics.LEADS}:1:4", topics.LEADS, 4, False, False),
            (topics.TURNS, None, "no.such.topic:1:5", "no.such.topic", 5, True, False),
            (topics.TURNS, None, "None:1:6", None, 6, True, False),
            (topics.TOOLS, None, f"{topics.TOOLS}:1:7", topics.TOOLS, 7, False, True),
        ]))


def test_the_dlq_payload_limit_is_an_option_and_is_checked():
    opts = PipelineOptions(["--dlq_max_payload_bytes=4096"])
    assert opts.view_as(DeadLetterOptions).dlq_max_payload_bytes == 4096
    assert PipelineOptions([]).view_as(DeadLetterOptions).dlq_max_payload_bytes == 256 * 1024
    for bad in (0, MAX_DLQ_PAYLOAD_BYTES + 1):
        with pytest.raises(ValueError, match="dlq_max_payload_bytes"):
            WriteDeadLetters(kpi.TOPICS, {}, None, max_payload_bytes=bad)
    with TestPipeline(options=PipelineOptions(OPTS)) as p:
        routed = p | beam.Create([_dl(topics.TURNS, 1, b"y" * 10_000)]) | RouteDeadLetters(kpi.TOPICS, 4096)
        assert_that(routed[topics.TURNS] | beam.Map(lambda kv: (len(kv[1]) <= 4096 + MAX_ENVELOPE_OVERHEAD_BYTES,
                                                                DeadLetter.from_json(kv[1]).payload_truncated)),
                    equal_to([(True, True)]))


# --- the KPI pipeline's dead letters --------------------------------------------------------------------------

def _turn(session, offset):
    return json.dumps({"session_id": session, "turn_id": f"t{offset}", "model_name": "claude-3-haiku",
                       "tokens_in": 10, "tokens_out": 5, "latency_ms": 100.0, "response_text": "ok",
                       "user_id": "u1", "timestamp": TS + offset}).encode()


def _tool(session, offset):
    return json.dumps({"invocation_id": f"i{offset}", "session_id": session, "tool_name": "crm_lookup",
                       "success": True, "latency_ms": 3.0, "timestamp": TS + offset}).encode()


def _update(session, offset):
    return json.dumps({"session_id": session, "seq": offset, "timestamp": TS + offset,
                       "last_message": "hi"}).encode()


RECORDS = [
    KafkaRecord(topics.TURNS, 0, 10, None, _turn("ok", 10), TS),
    KafkaRecord(topics.TURNS, 3, 11, None, _turn("boom-redact", 11), TS),
    KafkaRecord(topics.TURNS, 5, 12, None, _turn("boom-score", 12), TS),
    KafkaRecord(topics.TURNS, 4, 13, None, b"{not json", TS),
    KafkaRecord(topics.TOOLS, 0, 20, None, _tool("ok", 20), TS),
    KafkaRecord(topics.TOOLS, 2, 21, None, _tool("boom-redact", 21), TS),
    KafkaRecord(topics.TOOLS, 1, 22, None, b"\xff\xfe", TS),
    KafkaRecord(topics.SESSIONS, 0, 30, None, _update("ok", 30), TS),
    KafkaRecord(topics.SESSIONS, 1, 31, None, _update("boom-redact", 31), TS),
    KafkaRecord(topics.SESSIONS, 2, 32, None, json.dumps({"session_id": "x", "timestamp": TS}).encode(), TS),
]
EXPECTED = [  # (DLQ it lands in, source topic, partition, offset, step, error class)
    (topics.TURNS, topics.TURNS, 3, 11, "RedactTurns", "transform_error"),
    (topics.TURNS, topics.TURNS, 5, 12, "ScoreTurns", "transform_error"),
    (topics.TURNS, topics.TURNS, 4, 13, f"Validate[{topics.TURNS}]", "invalid_json"),
    (topics.TOOLS, topics.TOOLS, 2, 21, "RedactTools", "transform_error"),
    (topics.TOOLS, topics.TOOLS, 1, 22, f"Validate[{topics.TOOLS}]", "not_utf8"),
    (topics.SESSIONS, topics.SESSIONS, 1, 31, "RedactSessionUpdates", "transform_error"),
    (topics.SESSIONS, topics.SESSIONS, 2, 32, f"Validate[{topics.SESSIONS}]", "schema_violation"),
]


@pytest.fixture
def failing_steps(monkeypatch):
    """Redaction fails for session 'boom-redact' and scoring for 'boom-score' (a detector or scorer bug)."""
    monkeypatch.setenv("PII_HMAC_KEY", "unit-test-key-0123456789abcdef")
    real_event, real_score = pii.Redactor.event, scoring.score_turn

    def event(self, ev):
        if ev.session_id == "boom-redact":
            raise RuntimeError("detector bug")
        return real_event(self, ev)

    def score(turn, prices):
        if turn.session_id == "boom-score":
            raise ZeroDivisionError("scorer bug")
        return real_score(turn, prices)

    monkeypatch.setattr(pii.Redactor, "event", event)
    monkeypatch.setattr(scoring, "score_turn", score)


def _kpi_dead_letters(records):
    """kpi.build's validation, redaction and scoring steps (same transforms and step names), its dead letters
    merged as write_dead_letters does, routed as WriteDeadLetters routes them."""
    policy = PiiPolicy.load()
    events, dead = records | "Validate" >> ValidateByTopic({t: CONTRACTS[t] for t in kpi.TOPICS})
    dead_letters = [dead]
    turns, d = split_dead_letters(events[topics.TURNS] | "RedactTurns" >> RedactPii(policy, topics.TURNS))
    dead_letters.append(d)
    scored, d = split_dead_letters(turns | "ScoreTurns" >> ScoreAgentTurns())
    dead_letters.append(d)
    tools, d = split_dead_letters(events[topics.TOOLS] | "RedactTools" >> RedactPii(policy, topics.TOOLS))
    dead_letters.append(d)
    updates, d = split_dead_letters(events[topics.SESSIONS] | "RedactSessionUpdates" >> RedactPii(policy, topics.SESSIONS))
    dead_letters.append(d)
    routed = (tuple(dead_letters) | "MergeDeadLetters" >> beam.Flatten()
              | "WriteDeadLetters" >> RouteDeadLetters(kpi.TOPICS))
    landed = tuple(routed[t] | f"Landed[{t}]" >> beam.Map(
        lambda kv, t=t: (t, *(lambda d: (d.source_topic, d.source_partition, d.source_offset, d.step,
                                         d.error_class))(DeadLetter.from_json(kv[1]))))
        for t in kpi.TOPICS)
    good = ((scored | "ScoredIds" >> beam.Map(lambda s: s.event.source()),
             tools | "ToolIds" >> beam.Map(lambda e: e.source()),
             updates | "UpdateIds" >> beam.Map(lambda e: e.source()))
            | "Good" >> beam.Flatten())
    return landed | "Landed" >> beam.Flatten(), routed[OTHER_KNOWN], good


def test_kpi_dead_letters_of_every_topic_land_in_their_own_dlq(failing_steps):
    with TestPipeline(options=PipelineOptions(OPTS)) as p:
        landed, other, good = _kpi_dead_letters(p | beam.Create(RECORDS))
        assert_that(landed, equal_to(EXPECTED), label="dead_letters")
        assert_that(other, equal_to([]), label="nothing_elsewhere")
        assert_that(good, equal_to([(topics.TURNS, 0, 10), (topics.TOOLS, 0, 20), (topics.SESSIONS, 0, 30)]),
                    label="good")


def test_kpi_dead_letters_streaming(failing_steps):
    opts = PipelineOptions(OPTS)
    opts.view_as(StandardOptions).streaming = True
    stream = (TestStream().advance_watermark_to(TS / 1000)
              .add_elements(RECORDS[:5]).advance_processing_time(5)
              .add_elements(RECORDS[5:]).advance_watermark_to_infinity())
    with TestPipeline(options=opts) as p:
        landed, _, _ = _kpi_dead_letters(p | stream)
        assert_that(landed, equal_to(EXPECTED))


def test_frontend_no_longer_patches_dead_letters():
    assert not hasattr(frontend, "from_topic")


def test_scored_events_keep_the_source_for_sinks():
    from events.dead_letters import KeepSource, source_of
    from transforms.turns import session_state_event, turn_to_row

    ev = CONTRACTS[topics.TURNS].model_validate_json(_turn("s", 1)).with_source(topics.TURNS, 2, 3)
    row = KeepSource(turn_to_row)(Scored(ev, {"scorer_version": "1"}))
    assert source_of(row) == (topics.TURNS, 2, 3)
    state = KeepSource(session_state_event)(Scored(ev, {}))
    assert source_of(state) == (topics.TURNS, 2, 3) and state["turn_id"] == "t1"
