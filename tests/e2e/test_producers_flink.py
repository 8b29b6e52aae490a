"""End to end on the real Flink cluster: a real browser (headless Chromium) loads a page with the tracker, clicks
and closes it; the collector produces its events (including the page-hide beacon's session summary) and the
frontend pipeline writes them to `frontend_analytics`, once each, enriched."""

from __future__ import annotations

import time

import pytest

from tests.e2e.flink_helpers import poll, readme_pipeline
from tests.integration.test_collector import run_browser_session
from tests.producer_helpers import collector_process

pytestmark = pytest.mark.e2e


def test_browser_events_reach_frontend_analytics_through_the_pipeline(stack, pg_conn, run_id, tmp_path):
    start_ms = int(time.time() * 1000) - 1000
    with collector_process(tmp_path / "spill", "--allowed-origins", "*", "--ack", "kafka") as url:
        sid = run_browser_session(url, tmp_path, f"user-{run_id}")
    with readme_pipeline("frontend", run_id, start_ms):
        def rows():
            with pg_conn.cursor() as cur:
                cur.execute("SELECT event_type, event_id, device_type, browser, engagement_score, user_id "
                            "FROM frontend_analytics WHERE session_id = %s", (sid,))
                got = cur.fetchall()
            return got if len(got) >= 4 else None

        got = poll(rows, 180, f"the browser session's 4 events in frontend_analytics (session {sid})")
    assert sorted(r[0] for r in got) == ["frontend.session_analytics", "message_sent", "page_view", "widget_open"]
    assert len({r[1] for r in got}) == 4
    assert all(r[2] for r in got), "enriched with the device type from the user agent"
    assert all(r[5] != f"user-{run_id}" for r in got), "user_id pseudonymized"
