"""WriteToPostgres against the real local Postgres: replay, version guard, restart mid-stream, dead letters.

    .venv/bin/python -m pytest tests/integration/test_postgres_sink.py -m integration
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import FixedWindows, TimestampedValue

from io_connectors.postgres import PostgresUpserter, WriteToPostgres
from transforms.turns import AGENT_TURN_COLUMNS, AGENT_TURN_JSON, AGENT_TURN_KEYS

pytestmark = pytest.mark.integration
T0 = 1767258000000  # 2026-01-01T09:00:00Z


def turn(run_id, i, version=0, **over):
    ts = T0 + i * 1000 + version
    row = dict(session_id=f"{run_id}-s{i // 5}", turn_id=f"t{i}", user_id="u1", account_id="acct",
               channel="web_chat", model="gpt-x", tokens_in=10 + i, tokens_out=20, total_tokens=30 + i,
               latency_ms=100.0 + version, response_text=f"answer {i} v{version}\twith tab", tools_used=["search"],
               ts_ms=ts, timestamp=datetime.fromtimestamp(ts / 1000, tz=timezone.utc),
               transformation_metadata={"schema_version": 1, "v": version})
    row.update(over)
    return row


def upserter(**kw):
    return PostgresUpserter("agent_turns", AGENT_TURN_KEYS, AGENT_TURN_COLUMNS, "ts_ms", AGENT_TURN_JSON, **kw)


def snapshot(conn, run_id):
    with conn.cursor() as cur:
        cur.execute("SELECT session_id, turn_id, ts_ms, latency_ms, response_text, tools_used::text, "
                    "transformation_metadata::text FROM agent_turns WHERE session_id LIKE %s "
                    "ORDER BY session_id, turn_id", (run_id + "-%",))
        return cur.fetchall()


@pytest.fixture
def cleanup(pg_conn, run_id):
    yield
    with pg_conn.cursor() as cur:
        cur.execute("DELETE FROM agent_turns WHERE session_id LIKE %s", (run_id + "-%",))


def _dead_summary(d):
    return (d.error_message.split(":")[0], d.step, d.source_topic, d.error_class, '"tokens_in": "many"' in d.payload,
            d.source_partition, d.source_offset, "_source" in d.payload)


def run_write(rows, expected_dead=(), window_s=None, expected_windows=None, **kw):
    """Rows -> WriteToPostgres on the DirectRunner; asserts the dead letters (as `_dead_summary` tuples) and,
    with `window_s`, that each dead letter keeps its row's event time and window."""
    with beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"])) as p:
        rows_pc = p | beam.Create(rows)
        if window_s:
            rows_pc = (rows_pc | beam.Map(lambda r: TimestampedValue(r, r["ts_ms"] / 1000))
                       | beam.WindowInto(FixedWindows(window_s)))
        dead = rows_pc | WriteToPostgres(
            "agent_turns", AGENT_TURN_KEYS, AGENT_TURN_COLUMNS, version_column="ts_ms",
            json_columns=AGENT_TURN_JSON, source_topic="text.agent.turn.completed", **kw)
        assert_that(dead | beam.Map(_dead_summary), equal_to(list(expected_dead)))
        if expected_windows is not None:
            assert_that(dead | "WhereAndWhen" >> beam.Map(
                lambda d, w=beam.DoFn.WindowParam: (d.event_time_ms - T0, int(w.start) * 1000 - T0)),
                equal_to(expected_windows), label="DeadLettersKeepTheirWindow")


def test_write_twice_gives_the_same_state(pg_conn, run_id, cleanup):
    rows = [turn(run_id, i) for i in range(120)]
    run_write(rows, batch_size=50)
    first = snapshot(pg_conn, run_id)
    assert len(first) == 120
    run_write(rows, batch_size=50)  # the replay after a failure
    assert snapshot(pg_conn, run_id) == first
    assert first[0][4] == "answer 0 v0\twith tab"  # COPY escaping round-trips


@pytest.mark.parametrize("method", ["copy", "values"])
def test_an_older_event_never_overwrites_a_newer_one(pg_conn, run_id, cleanup, method):
    w = upserter(method=method)
    w.connect()
    try:
        assert w.write([turn(run_id, 1, version=5), turn(run_id, 2, version=0)]) == []
        # late (older) version of turn 1, newer of turn 2, and two versions of turn 3 in one batch
        assert w.write([turn(run_id, 1, version=1), turn(run_id, 2, version=7),
                        turn(run_id, 3, version=9), turn(run_id, 3, version=2)]) == []
    finally:
        w.close()
    got = {r[1]: r[2] for r in snapshot(pg_conn, run_id)}
    assert got == {"t1": T0 + 1000 + 5, "t2": T0 + 2000 + 7, "t3": T0 + 3000 + 9}


def test_permanent_errors_become_dead_letters_and_the_rest_is_written(pg_conn, run_id, cleanup):
    rows = [turn(run_id, i) for i in range(30)]
    rows[7] = turn(run_id, 7, session_id=f"{run_id}-" + "x" * 120)   # varchar(100): 22001
    rows[19] = turn(run_id, 19, tokens_in="many")                      # not an integer: 22P02
    rows[19]["_source"] = ("text.agent.turn.completed", 4, 1234)       # as KeepSource adds it: the position
    step, topic, kind = "WriteToPostgres[agent_turns]", "text.agent.turn.completed", "sink_permanent_error"
    run_write(rows, batch_size=500, window_s=10, expected_windows=[(7000, 0), (19000, 10000)], expected_dead=[
        ("InvalidTextRepresentation [22P02]", step, topic, kind, True, 4, 1234, False),
        ("StringDataRightTruncation [22001]", step, topic, kind, False, None, None, False)])
    assert len(snapshot(pg_conn, run_id)) == 28


def test_configuration_errors_fail_loudly(stack):
    w = PostgresUpserter("no_such_table", ("k",), ("k", "v"), method="values")
    with pytest.raises(Exception, match="no_such_table"):
        w.write([{"k": 1, "v": 2}])
    w.close()


def _restart_postgres():
    """Fast shutdown (sessions get admin_shutdown 57P01), then start again with the devstack functions."""
    from devstack.process import wait_until
    from devstack.services import postgres

    postgres.pg_stop(30)
    proc = postgres.pg_start()
    wait_until("postgres", postgres.pg_healthy, 60, proc)


def test_postgres_restart_mid_stream_loses_and_duplicates_nothing(pg_settings, run_id):
    batches, per_batch = 30, 200
    w = upserter(max_attempts=8)
    w.connect()
    errors, progress = [], []

    def stream():
        try:
            for b in range(batches):
                rows = [turn(run_id, b * per_batch + i) for i in range(per_batch)]
                if b:  # each batch also re-sends part of the previous one, as a replay would
                    rows += [turn(run_id, (b - 1) * per_batch + i) for i in range(20)]
                assert w.write(rows) == []
                progress.append(b)
                time.sleep(0.03)
        except Exception as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    t = threading.Thread(target=stream)
    t.start()
    while len(progress) < 5 and t.is_alive():
        time.sleep(0.01)
    _restart_postgres()
    t.join(120)
    w.close()
    assert not errors, errors
    assert len(progress) == batches
    assert w.retries >= 1, "the restart should have been seen and retried"
    import psycopg2

    conn = psycopg2.connect(**pg_settings.connect_kwargs())
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*), count(DISTINCT (session_id, turn_id)), min(tokens_in), max(tokens_in) "
                        "FROM agent_turns WHERE session_id LIKE %s", (run_id + "-%",))
            assert cur.fetchone() == (batches * per_batch, batches * per_batch, 10, 10 + batches * per_batch - 1)
            cur.execute("DELETE FROM agent_turns WHERE session_id LIKE %s", (run_id + "-%",))
        conn.commit()
    finally:
        conn.close()
