"""Turn validation and row building on the DirectRunner (the whole KPI graph: tests/integration/test_kpi_graph.py)."""

from __future__ import annotations

import json

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from events.contracts import AgentTurnCompleted
from events.records import KafkaRecord
from transforms.turns import turn_to_row
from transforms.validation import ValidateEvents
from events.dead_letters import split_dead_letters

pytestmark = pytest.mark.unit
TS = 1_795_000_000_000


def _turn(i, **over):
    t = {"session_id": "s1", "turn_id": f"t{i}", "model_name": "claude-3-haiku", "tokens_in": 10 * i,
         "tokens_out": 5, "latency_ms": 100.0, "response_text": "ok", "timestamp": TS + i, "account_id": "a"}
    t.update(over)
    return json.dumps(t).encode()


def _rec(offset, value):
    return KafkaRecord("text.agent.turn.completed", 0, offset, b"k", value, TS)


def test_valid_turns_become_rows_and_bad_records_become_dead_letters():
    records = [_rec(0, _turn(1)), _rec(1, b"{nope"), _rec(2, _turn(2, tokens_in=-1)), _rec(3, _turn(3)),
               _rec(4, b"\xff\xfe"), _rec(5, _turn(4, timestamp=TS * 10))]
    with TestPipeline(options=beam.options.pipeline_options.PipelineOptions(["--runner=DirectRunner"])) as p:
        turns, dead = split_dead_letters(p | beam.Create(records) | "Validate" >> ValidateEvents(AgentTurnCompleted))
        rows = turns | beam.Map(turn_to_row) | beam.Map(lambda r: (r["turn_id"], r["total_tokens"], r["ts_ms"]))
        assert_that(rows, equal_to([("t1", 15, TS + 1), ("t3", 35, TS + 3)]), label="rows")
        reasons = dead | beam.Map(lambda d: (d.source_offset, d.error_class, d.payload_encoding))
        assert_that(reasons, equal_to([(1, "invalid_json", "utf-8"), (2, "schema_violation", "utf-8"),
                                       (4, "not_utf8", "base64"), (5, "implausible_timestamp", "utf-8")]),
                    label="dead_letters")
