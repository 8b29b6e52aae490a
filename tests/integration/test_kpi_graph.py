"""The KPI pipeline's own graph (`kpi.build`, every step as `python -m beam_pipelines.kpi` builds it), run on
the DirectRunner against the real Postgres and Redis; only the Kafka source and the DLQ writer are swapped
for in-memory records (the Flink e2e test covers those)."""

from __future__ import annotations

import json

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

from beam_pipelines import kpi
from events import topics
from events.records import KafkaRecord
from events.topics import CONTRACTS
from io_connectors.redis_state import connect
from transforms.routing import ValidateByTopic

pytestmark = pytest.mark.integration
T0 = 1_795_000_000_000


def _turn(run_id, s, i, **over):
    t = {"session_id": f"{run_id}-s{s}", "turn_id": f"t{i}", "model_name": "claude-3-haiku", "tokens_in": 10 * i,
         "tokens_out": 5, "latency_ms": 100.0, "response_text": f"reply {i}, mail me at ann{i}@example.com",
         "timestamp": T0 + i * 1000, "account_id": f"{run_id}-acct"}
    t.update(over)
    return json.dumps(t).encode()


def test_kpi_graph_writes_turns_session_state_and_kpis_and_dead_letters_the_rest(
        monkeypatch, pg_conn, redis_settings, run_id):
    monkeypatch.setenv("PII_HMAC_KEY", "k" * 32)
    records = [KafkaRecord(topics.TURNS, 0, i, b"k", _turn(run_id, i % 2, i), T0 + i * 1000) for i in range(1, 7)]
    records += [KafkaRecord(topics.TURNS, 0, 7, b"k", _turn(run_id, 1, 1), T0 + 1000),  # a replayed turn
                KafkaRecord(topics.TURNS, 0, 8, b"k", b"{not json", T0),
                KafkaRecord(topics.TOOLS, 1, 0, b"k", json.dumps({
                    "invocation_id": f"{run_id}-inv1", "session_id": f"{run_id}-s0", "tool_name": "crm_lookup",
                    "success": True, "latency_ms": 12.5, "timestamp": T0 + 2500}).encode(), T0 + 2500),
                KafkaRecord(topics.SESSIONS, 2, 0, b"k", json.dumps({"session_id": f"{run_id}-s0"}).encode(), T0)]

    def read(p, _opts, names):
        return p | "Records" >> beam.Create(records) | "Validate" >> ValidateByTopic(
            {t: CONTRACTS[t] for t in names})

    dead_letters = []
    monkeypatch.setattr(kpi, "read_and_validate", read)
    monkeypatch.setattr(kpi, "write_dead_letters", lambda _o, dls, names: dead_letters.extend(dls))
    opts = PipelineOptions(["--runner=DirectRunner", "--early_firing_seconds=1"])
    with beam.Pipeline(options=opts) as p:
        kpi.build(p, opts)
        where = (tuple(dead_letters) | "AllDead" >> beam.Flatten()
                 | beam.Map(lambda d: (d.source_topic, d.source_offset, d.error_class)))
        assert_that(where, equal_to([(topics.TURNS, 8, "invalid_json"),
                                     (topics.SESSIONS, 0, "schema_violation")]))

    with pg_conn.cursor() as cur:
        cur.execute("SELECT session_id, turn_id, response_text FROM agent_turns WHERE session_id LIKE %s "
                    "ORDER BY session_id, turn_id", (f"{run_id}-%",))
        turns = cur.fetchall()
        cur.execute("SELECT session_id, turns, tool_calls, tokens_in, is_final FROM session_kpis "
                    "WHERE session_id LIKE %s ORDER BY session_id", (f"{run_id}-%",))
        kpis = cur.fetchall()
    assert [(s[-2:], t) for s, t, _ in turns] == [("s0", "t2"), ("s0", "t4"), ("s0", "t6"),
                                                  ("s1", "t1"), ("s1", "t3"), ("s1", "t5")]
    assert all("@example.com" not in text and "<EMAIL>" in text for _, _, text in turns)  # redacted
    assert kpis == [(f"{run_id}-s0", 3, 1, 120, True), (f"{run_id}-s1", 3, 0, 90, True)]
    r = connect(redis_settings)
    try:
        metrics = r.hgetall(f"session:{run_id}-s1:metrics")
        state = r.hgetall(f"session:{run_id}-s1:state")
    finally:
        r.delete(*r.keys(f"session:{run_id}-*"))
        r.close()
    assert metrics[b"total_turns" if b"total_turns" in metrics else "total_turns"] in (b"3", "3")
    assert (state.get(b"last_turn_id") or state.get("last_turn_id")) in (b"t5", "t5")
