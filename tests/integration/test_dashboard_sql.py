"""The business KPI dashboard's SQL (observability/dashboards.py) on the real Postgres, read-only.

    .venv/bin/pytest tests/integration/test_dashboard_sql.py

The stack is shared, so nothing here writes: every session is READ ONLY. First each panel query runs on the
real tables (the schema of sql/*.sql, migrated by `./run test`), which fails on a renamed table or column.
Then each runs with its tables shadowed by CTEs of known rows, typed by the real tables' row types
(jsonb_populate_record), and the figures Grafana would show are asserted.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Dict, List

import psycopg2
import pytest

from io_connectors.settings import PostgresSettings
from observability import dashboards

pytestmark = pytest.mark.integration

NOW = datetime.now(timezone.utc)
TIMESTAMPTZ = 1184  # pg_type oid


@pytest.fixture(scope="module")
def ro_conn():
    try:
        conn = psycopg2.connect(**PostgresSettings.from_env().connect_kwargs())
    except psycopg2.OperationalError as e:
        pytest.fail(f"the local stack's Postgres does not answer (`./run test` starts it): {e}")
    conn.set_session(readonly=True)
    yield conn
    conn.rollback()
    conn.close()


def queries() -> Dict[str, str]:
    """Panel title -> its SQL with the time range set to the last 24 hours."""
    return {q.panel: q.expr for q in dashboards.sql_queries(hours=24)}


def run(conn, sql: str, params=None):
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return [(d.name, d.type_code) for d in cur.description], cur.fetchall()
    finally:
        conn.rollback()


def shadowed(sql: str, tables: Dict[str, List[dict]]):
    """`sql` with each table replaced by a CTE of the given rows (of the real table's row type)."""
    ctes = ", ".join(f"{t} AS (SELECT (jsonb_populate_record(NULL::public.{t}, r)).* "
                     f"FROM jsonb_array_elements(%({t})s::jsonb) AS r)" for t in tables)
    body = sql.replace("%", "%%").lstrip()
    body = f"WITH {ctes}, {body[5:]}" if body.upper().startswith("WITH ") else f"WITH {ctes}\n{body}"
    return body, {t: json.dumps(rows, default=str) for t, rows in tables.items()}


def test_the_session_is_read_only(ro_conn):
    assert run(ro_conn, "SHOW transaction_read_only")[1] == [("on",)]
    with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
        run(ro_conn, "CREATE TEMP TABLE t (x int)")


@pytest.mark.parametrize("query", dashboards.sql_queries(), ids=lambda q: q.panel)
def test_every_sql_panel_runs_on_the_schema(ro_conn, query):
    cols, _ = run(ro_conn, query.expr)
    assert cols, query.panel
    if query.format == "time_series":  # Grafana's time series format: a `time` column, then values
        assert cols[0] == ("time", TIMESTAMPTZ), f"{query.panel}: {cols}"
    else:
        assert all(name != "?column?" for name, _ in cols), f"{query.panel}: name every column"


def _turn(session, turn, hours_ago, channel, quality=80):
    ts = NOW - timedelta(hours=hours_ago)
    return {"session_id": session, "turn_id": turn, "channel": channel, "quality_score": quality,
            "efficiency_score": 50, "business_value_score": 20, "ts_ms": int(ts.timestamp() * 1000),
            "timestamp": ts.isoformat()}


def test_turn_panels(ro_conn):
    turns = [_turn("s1", "1", 2, "web_chat", 90), _turn("s1", "2", 2, "web_chat", 70), _turn("s2", "1", 2, "sms", 50),
             _turn("s3", "1", 30, "sms")]  # outside the 24 h range
    hour = (NOW - timedelta(hours=2)).replace(minute=0, second=0, microsecond=0)
    _, rows = run(ro_conn, *shadowed(queries()["Turns per hour by channel"], {"agent_turns": turns}))
    assert sorted(rows) == [(hour, "sms", 1), (hour, "web_chat", 2)]
    _, rows = run(ro_conn, *shadowed(queries()["Average turn scores per hour"], {"agent_turns": turns}))
    assert rows == [(hour, Decimal(70), Decimal(50), Decimal(20))]


def test_session_panels(ro_conn):
    start = (NOW - timedelta(hours=3)).isoformat()
    sessions = [{"session_id": "a", "turns": 4, "tool_calls": 1, "avg_latency_ms": 100.0, "is_final": True,
                 "started_at": start},
                {"session_id": "b", "turns": 2, "tool_calls": 3, "avg_latency_ms": 300.0, "is_final": False,
                 "started_at": start},
                {"session_id": "old", "turns": 9, "tool_calls": 9, "avg_latency_ms": 1.0, "is_final": True,
                 "started_at": (NOW - timedelta(days=3)).isoformat()}]
    _, rows = run(ro_conn, *shadowed(queries()["Sessions"], {"session_kpis": sessions}))
    assert rows == [(2, 1, Decimal(3), 200.0)]
    _, rows = run(ro_conn, *shadowed(queries()["Sessions started per hour"], {"session_kpis": sessions}))
    assert [r[1:] for r in rows] == [(2, 4)]


def test_usage_and_cost_panels(ro_conn):
    h1 = (NOW - timedelta(hours=5)).replace(minute=0, second=0, microsecond=0)
    h2 = h1 + timedelta(hours=1)

    def usage(account, hour, turns, cost):
        return {"account_id": account, "hour_start": hour.isoformat(), "turns": turns, "tokens_in": 100 * turns,
                "tokens_out": 10 * turns, "tool_invocations": 1, "estimated_cost_usd": cost}

    rows_in = [usage("acct-a", h1, 2, "0.5"), usage("acct-a", h2, 3, "0.25"), usage("acct-b", h1, 10, "1.5"),
               usage("acct-b", NOW - timedelta(days=2), 99, "9")]  # outside the range
    _, rows = run(ro_conn, *shadowed(queries()["Tokens and cost per account"], {"billing_usage": rows_in}))
    assert rows == [("acct-b", 10, 1000, 100, 1, Decimal("1.5")), ("acct-a", 5, 500, 50, 2, Decimal("0.75"))]
    _, rows = run(ro_conn, *shadowed(queries()["Cost and tokens per hour"], {"billing_usage": rows_in}))
    assert rows == [(h1, Decimal("2.0"), 1320), (h2, Decimal("0.25"), 330)]


def test_funnel_and_engagement_panels(ro_conn):
    start = (NOW - timedelta(hours=1)).isoformat()
    stages = ["page_view", "page_view", "widget_open", "conversion"]
    rows_in = [{"session_id": f"s{i}", "events": 2 * (i + 1), "duration_ms": 1000 * (i + 1), "furthest_stage": s,
                "started_at": start} for i, s in enumerate(stages)]
    rows_in.append({"session_id": "old", "events": 1, "duration_ms": 1, "furthest_stage": "conversion",
                    "started_at": (NOW - timedelta(days=2)).isoformat()})
    tables = {"frontend_session_engagement": rows_in}
    _, rows = run(ro_conn, *shadowed(queries()["Funnel: sessions reaching each stage"], tables))
    assert rows == [("page_view", 4), ("widget_open", 2), ("user_message", 1), ("product_interest", 1),
                    ("conversion", 1)]
    _, rows = run(ro_conn, *shadowed(queries()["Engagement"], tables))
    assert rows == [(4, Decimal(5), Decimal("2.5"), 0.25)]


def test_lead_panels(ro_conn):
    leads = [{"lead_id": i, "email": f"l{i}@example.com", "lead_quality_score": s, "recommended_action": a,
              "engagement_level": "high", "conversion_probability": 0.5}
             for i, (s, a) in enumerate([(5, "call"), (15, "call"), (99, "call"), (100, "nurture"), (None, None)])]
    _, rows = run(ro_conn, *shadowed(queries()["Lead quality score distribution"], {"marketo_leads": leads}))
    assert rows == [("0-9", 1), ("10-19", 1), ("90-100", 2)]
    _, rows = run(ro_conn, *shadowed(queries()["Leads by recommended action"], {"marketo_leads": leads}))
    assert rows == [("call", "high", 3, Decimal(40), Decimal("0.500")),
                    ("none", "high", 1, None, Decimal("0.500")),
                    ("nurture", "high", 1, Decimal(100), Decimal("0.500"))]


def test_every_sql_panel_is_asserted_on_known_rows():
    asserted = {"Turns per hour by channel", "Average turn scores per hour", "Sessions", "Sessions started per hour",
                "Tokens and cost per account", "Cost and tokens per hour", "Funnel: sessions reaching each stage",
                "Engagement", "Lead quality score distribution", "Leads by recommended action"}
    assert set(queries()) == asserted
