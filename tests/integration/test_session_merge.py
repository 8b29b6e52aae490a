"""The session tables' merge on the real Postgres: a row is the whole session_id over every generation of its
keyed state (a pause longer than gap + lateness), replays and older rows change nothing, and several rows
of one session in one batch are all applied in order."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from io_connectors.postgres import PostgresUpserter
from transforms.engagement import ENGAGEMENT_COLUMNS, ENGAGEMENT_KEYS, ENGAGEMENT_MERGE, Engagement, EngagementEvent
from transforms.engagement import SessionEngagementAggregate
from transforms.keyed_totals import row_version
from transforms.windows import SESSION_KPI_COLUMNS, SESSION_KPI_MERGE, Activity, SessionUsage, Usage

pytestmark = pytest.mark.integration
T0 = 1_795_000_000_000  # ms
AGG = SessionUsage(gap_s=60, allowed_lateness_s=600)


def _turn(sid, i, ts, tokens_in=10, latency=100.0):
    return Activity("turn", f"{sid}/t{i}", sid, "acct", "u1", "web_chat", ts, tokens_in, 5, latency, 0.01)


def _rows(sid, generation, final):
    """The rows keyed state emits for one generation: an early row after each item, then the final row."""
    u, out = Usage(), []
    for n, a in enumerate(generation, 1):
        u.add(a)
        out.append(AGG.row(sid, u, False, row_version(u.last_ms, n, False)))
    out.append(AGG.row(sid, u, final, row_version(u.last_ms, len(generation), final)))
    return out


def _kpi(conn, sid):
    with conn.cursor() as cur:
        cur.execute("SELECT turns, tokens_in, tool_calls, avg_latency_ms, started_at, ended_at, is_final, "
                    "generations FROM session_kpis WHERE session_id = %s", (sid,))
        return cur.fetchone()


@pytest.fixture
def cleanup(pg_conn, run_id):
    yield
    with pg_conn.cursor() as cur:
        cur.execute("DELETE FROM session_kpis WHERE session_id LIKE %s", (run_id + "-%",))
        cur.execute("DELETE FROM frontend_session_engagement WHERE session_id LIKE %s", (run_id + "-%",))


@pytest.mark.parametrize("method", ["copy", "values"])
def test_a_session_paused_two_hours_adds_up_its_generations_and_replays_change_nothing(pg_conn, run_id, cleanup,
                                                                                      method):
    sid = f"{run_id}-{method}"
    gen1 = [_turn(sid, 1, T0, 10, 100.0), _turn(sid, 2, T0 + 60_000, 20, 300.0)]
    gen2 = [_turn(sid, 3, T0 + 7_200_000, 30, 200.0)]  # two hours later: the first generation was released
    up = PostgresUpserter("session_kpis", ("session_id",), SESSION_KPI_COLUMNS, "pane_version",
                          merge_sql=SESSION_KPI_MERGE, method=method)
    up.connect()
    try:
        r1, r2 = _rows(sid, gen1, True), _rows(sid, gen2, True)
        assert up.write(r1) == []  # three rows of one session in one batch: all applied, in order
        assert _kpi(pg_conn, sid)[:3] == (2, 30, 0)
        assert up.write(r2) == []
        want = (3, 60, 0, 200.0, datetime.fromtimestamp(T0 / 1000, tz=timezone.utc),
                datetime.fromtimestamp((T0 + 7_200_000) / 1000, tz=timezone.utc), True, 2)
        assert _kpi(pg_conn, sid) == want
        # Flink replays after a restore: both generations again, in any order, in one batch or alone
        assert up.write(r1 + r2) == [] and _kpi(pg_conn, sid) == want
        assert up.write(r2[:1]) == [] and _kpi(pg_conn, sid) == want
        assert up.write(r1) == [] and _kpi(pg_conn, sid) == want
    finally:
        up.close()


def test_engagement_generations_keep_the_furthest_stage_and_the_whole_duration(pg_conn, run_id, cleanup):
    sid = f"{run_id}-fe"
    agg = SessionEngagementAggregate(gap_s=60, allowed_lateness_s=600)

    def rows(events, final=True):
        g = Engagement()
        for e in events:
            g.add(e)
        return [agg.row(sid, g, final, row_version(g.last_ms, g.events, final))]

    gen1 = [EngagementEvent("e1", sid, None, T0, "page_view"), EngagementEvent("e2", sid, "u1", T0 + 1_000,
                                                                                 "product_interest")]
    gen2 = [EngagementEvent("e3", sid, "u1", T0 + 7_200_000, "widget_open")]
    up = PostgresUpserter("frontend_session_engagement", ENGAGEMENT_KEYS, ENGAGEMENT_COLUMNS, "pane_version",
                          merge_sql=ENGAGEMENT_MERGE)
    up.connect()
    try:
        for batch in (rows(gen1), rows(gen2), rows(gen1), rows(gen2)):
            assert up.write(batch) == []
        with pg_conn.cursor() as cur:
            cur.execute("SELECT user_id, events, duration_ms, furthest_stage, generations, is_final "
                        "FROM frontend_session_engagement WHERE session_id = %s", (sid,))
            assert cur.fetchone() == ("u1", 3, 7_200_000, "product_interest", 2, True)
    finally:
        up.close()


def test_a_replay_in_another_order_is_the_same_generation(pg_conn, run_id, cleanup):
    """A TaskManager killed early (fault matrix): the stored row was an early row of the session's first turn;
    the restored job read the session's topics in another interleaving, so its first row was a tool call with
    a later event time. That row starts after the stored (not final) row ends, but it is the same generation:
    before `stored.is_final` in NEW_GENERATION the first turn was kept as a generation below it and counted
    twice."""
    sid = f"{run_id}-reorder"
    turn = _turn(sid, 1, T0, 10, 100.0)
    tool = Activity("tool", f"{sid}/inv1", sid, "acct", "u1", "web_chat", T0 + 30_000, 0, 0, 0.0, 0.0)
    up = PostgresUpserter("session_kpis", ("session_id",), SESSION_KPI_COLUMNS, "pane_version",
                          merge_sql=SESSION_KPI_MERGE)
    up.connect()
    try:
        first_run = _rows(sid, [turn], False)[:1]  # written, then the TaskManager died
        replay = _rows(sid, [tool, turn], True)  # the restored job: the tool call first, then the turn
        assert up.write(first_run) == [] and up.write(replay) == []
        got = _kpi(pg_conn, sid)
        assert got[:3] == (1, 10, 1) and got[6:] == (True, 1), got
    finally:
        up.close()
