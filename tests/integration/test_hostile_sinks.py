"""The hostile corpus' valid rows through the real sinks: PostgresUpserter (COPY and VALUES) and SessionStateWriter
against the local Postgres and Redis, read back intact, then deleted.

    .venv/bin/python -m pytest tests/integration/test_hostile_sinks.py -m integration

Every row the corpus labels valid is written (NUL in text and JSON as U+FFFD, the Postgres sink's rule; every
other character exactly, emoji, right-to-left marks, injection strings and COPY metacharacters included),
and exactly the rows it labels as a sink's dead letter are refused; Redis keeps every text exactly, NUL
included. Data lives under a `hostile-<run id>` prefix (leads: the run's own lead_id range).
"""

from __future__ import annotations

import json
import time

import pytest

from events import topics
from events.dead_letters import ErrorKind
from events.topics import CONTRACTS
from io_connectors.postgres import PostgresUpserter, pg_json, pg_text
from io_connectors.redis_state import SessionStateWriter, connect
from transforms import field_crypto as fc
from transforms.pii import PiiPolicy, Redactor
from transforms.rows import (FRONTEND_COLUMNS, FRONTEND_JSON, FRONTEND_KEYS, LEAD_COLUMNS, LEAD_JSON, LEAD_KEYS,
                             frontend_to_row, lead_to_row)
from transforms.scoring import PriceTable, Scored, enrich_frontend, score_lead, score_turn
from transforms.turns import AGENT_TURN_JSON, AGENT_TURN_KEYS, AGENT_TURN_SCORED_COLUMNS, session_state_event, turn_to_row
from workloads.hostile import VALID, hostile_corpus, lead_id_base

pytestmark = pytest.mark.integration
HMAC = b"integration-hostile-key-0123456789"
SINK = ErrorKind.SINK_PERMANENT.value

TABLES = {
    "agent_turns": ((topics.TURNS,), turn_to_row, AGENT_TURN_KEYS, AGENT_TURN_SCORED_COLUMNS, "ts_ms", AGENT_TURN_JSON),
    "frontend_analytics": (tuple(t for t in (topics.FRONTEND_INTERACTION, topics.FRONTEND_SESSION,
                                             topics.FRONTEND_WIDGET)), frontend_to_row, FRONTEND_KEYS,
                           FRONTEND_COLUMNS, "ts_ms", FRONTEND_JSON),
    "marketo_leads": ((topics.LEADS,), lead_to_row, LEAD_KEYS, LEAD_COLUMNS, "source_ts_ms", LEAD_JSON),
}


@pytest.fixture(scope="module")
def hostile(stack):
    """(prefix, corpus, rows per table as [(record, row)])."""
    import uuid

    prefix = f"hostile-{uuid.uuid4().hex[:8]}"
    corpus = hostile_corpus(prefix, int(time.time() * 1000) - 3_600_000, per_topic_random=200, per_topic_hypothesis=100)
    redactor = Redactor(PiiPolicy.load(), HMAC, fc.new_ring("k1"))
    prices = PriceTable.load()
    rows = {t: [] for t in TABLES}
    first_lead = lead_id_base(prefix)
    for r in corpus:
        if not (r.expect == VALID or r.error_class == SINK):
            continue
        event, _ = redactor.event(CONTRACTS[r.topic].model_validate(r.doc))
        for table, (tops, to_row, *_rest) in TABLES.items():
            if r.topic in tops:
                scores = (score_turn(event, prices) if table == "agent_turns" else
                          score_lead(event) if table == "marketo_leads" else enrich_frontend(event))
                row = to_row(Scored(event, scores))
                if table == "marketo_leads" and not first_lead <= row["lead_id"] < first_lead + 2000:
                    continue  # the lead_id bound cases (1, 2**31-1) would touch other runs' leads
                rows[table].append((r, row))
    return prefix, corpus, rows


def _newest(rows, keys, version):
    """The row per key the upsert keeps: the largest version, the last of equal ones."""
    best = {}
    for r, row in rows:
        k = tuple(row[c] for c in keys)
        if k not in best or row[version] >= best[k][1][version]:
            best[k] = (r, row)
    return best


def _pg_value(v, is_json):
    if v is None:
        return None
    if is_json:
        return json.loads(pg_json(v))
    return pg_text(v) if isinstance(v, str) else v


@pytest.mark.parametrize("method", ["copy", "values"])
@pytest.mark.parametrize("table", list(TABLES))
def test_valid_hostile_rows_land_intact_and_only_the_labelled_ones_are_refused(hostile, pg_conn, pg_settings,
                                                                                  table, method):
    prefix, _corpus, rows = hostile
    _tops, _f, keys, columns, version, json_cols = TABLES[table]
    written = rows[table]
    assert written, table
    up = PostgresUpserter(table, keys, columns, version_column=version, json_columns=json_cols,
                          settings=pg_settings, method=method)
    up.connect()
    try:
        refused = up.write([row for _, row in written])
        want_refused = {id(row) for r, row in written if r.error_class == SINK}
        assert {id(row) for row, _ in refused} == want_refused, [
            (reason[:120], next(r.case for r, w in written if w is row)) for row, reason in refused][:5]
        kept = {k: v for k, v in _newest([(r, row) for r, row in written if r.error_class != SINK], keys,
                                         version).items()}
        with pg_conn.cursor() as cur:
            cur.execute(f"SELECT {', '.join(columns)} FROM {table} WHERE ({', '.join(keys)}) IN %s",
                        (tuple(tuple(pg_text(x) if isinstance(x, str) else x for x in k) for k in kept),))
            got = {tuple(rec[columns.index(c)] for c in keys): dict(zip(columns, rec)) for rec in cur.fetchall()}
        assert len(got) == len(kept), f"{len(kept) - len(got)} rows missing from {table}"
        wrong = []
        for k, (r, row) in kept.items():
            stored = got[tuple(pg_text(x) if isinstance(x, str) else x for x in k)]
            for c in columns:
                want, have = _pg_value(row.get(c), c in json_cols), stored[c]
                if c in ("timestamp", "created_at", "updated_at") and want is not None:
                    ok = have == want
                elif isinstance(want, float):
                    ok = have is not None and float(have) == pytest.approx(want)
                else:
                    ok = have == want
                if not ok:
                    wrong.append((r.case, c, repr(want)[:60], repr(have)[:60]))
        assert not wrong, f"{len(wrong)} values differ, e.g. {wrong[:6]}"
    finally:
        up.close()
        with pg_conn.cursor() as cur:
            if table == "marketo_leads":
                first = lead_id_base(prefix)
                cur.execute("DELETE FROM marketo_leads WHERE lead_id >= %s AND lead_id < %s", (first, first + 2000))
            else:
                ids = [tuple(pg_text(x) if isinstance(x, str) else x for x in (row[c] for c in keys))
                       for _, row in written]
                cur.execute(f"DELETE FROM {table} WHERE ({', '.join(keys)}) IN %s", (tuple(ids),))


def test_valid_hostile_turns_land_intact_in_redis(hostile, redis_settings):
    prefix, _corpus, rows = hostile
    # one session per turn, so that each state hash is exactly one hostile turn's
    events = [{**session_state_event(Scored(_event_of(r), {})), "session_id": f"{prefix}-r{i}"}
              for i, (r, _) in enumerate(rows["agent_turns"])]
    writer = SessionStateWriter(ttl_seconds=600, settings=redis_settings)
    writer.connect()
    client = connect(redis_settings)
    try:
        assert writer.write(events) == []
        latest, counts = {}, {}
        for e in events:
            counts[e["session_id"]] = counts.get(e["session_id"], 0) + 1
            if e["session_id"] not in latest or e["seq"] > latest[e["session_id"]]["seq"]:
                latest[e["session_id"]] = e
        wrong = []
        for sid, e in latest.items():
            state = client.hgetall(f"session:{sid}:state")
            metrics = client.hgetall(f"session:{sid}:metrics")
            if state.get(b"last_message", b"").decode("utf-8") != e["message"] \
                    or state.get(b"last_turn_id", b"").decode("utf-8") != e["turn_id"] \
                    or int(metrics.get(b"total_turns", 0)) != counts[sid]:
                wrong.append((sid[:40], e["message"][:40], state.get(b"last_message", b"")[:40]))
        assert not wrong, f"{len(wrong)} sessions differ, e.g. {wrong[:5]}"
        assert any("\x00" in e["message"] for e in latest.values()), "the corpus must put a NUL into Redis"
        assert any("\U0001F600" in e["message"] for e in latest.values())
    finally:
        writer.close()
        keys = list(client.scan_iter(match=f"session:{prefix}-*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


_REDACTOR = None


def _event_of(r):
    global _REDACTOR
    if _REDACTOR is None:
        _REDACTOR = Redactor(PiiPolicy.load(), HMAC)
    return _REDACTOR.event(CONTRACTS[r.topic].model_validate(r.doc))[0]

