"""The HTTP collector (python -m iheardai_analytics.collector) against the local stack's Kafka, and the browser
tracker in headless Chromium: single and batch posts land in their frontend topics (202 after Kafka's ack with
--ack kafka); bad payloads get 400 with every reason and nothing is produced; oversize bodies and batches get
413; a client over its rate gets 429; CORS answers only configured origins; a real page's clicks and its close
(the page-hide beacon) arrive on the frontend topics."""

from __future__ import annotations

import json
import time
import uuid

import pytest
import requests

from events import topics
from tests.producer_helpers import (Chromium, collector_process, end_offsets, read_to_end, static_server, wait_for,
                                    write_test_page)

pytestmark = pytest.mark.integration
FRONTEND = (topics.FRONTEND_INTERACTION, topics.FRONTEND_SESSION, topics.FRONTEND_WIDGET)
ORIGIN = "http://allowed.example"


@pytest.fixture(scope="module")
def collector(stack, tmp_path_factory):
    spill = tmp_path_factory.mktemp("collector") / "spill"
    with collector_process(spill, "--ack", "kafka", "--allowed-origins", ORIGIN, "--max-body-bytes", "16384",
                           "--max-batch-events", "50", "--rate-limit-per-s", "5", "--rate-limit-burst", "10",
                           "--forwarded-allow-ips", "127.0.0.1") as url:
        yield url


def _client(run_id: str) -> dict:
    """Each test is its own client (the rate limit is per client IP, from X-Forwarded-For behind a trusted proxy)."""
    return {"X-Forwarded-For": f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"}


def _interaction(sid: str, n: int, **extra) -> dict:
    return {"event_type": "click", "event_id": f"{sid}-e{n}", "session_id": sid, "page_url": "https://www.iheard.ai/",
            "interaction_type": "click", "element_id": "chat-button", "timestamp": int(time.time() * 1000), **extra}


def _starts(bootstrap):
    return {t: end_offsets(t, bootstrap) for t in FRONTEND}


def _landed(bootstrap, start, sid_prefix):
    """{topic: [(key, event)]} of the events of sessions starting with `sid_prefix`, produced since `start`."""
    return {t: [(k, v) for _, _, k, v in read_to_end(t, bootstrap, start[t])
                if str(v.get("session_id", "")).startswith(sid_prefix)] for t in FRONTEND}


def test_single_and_batch_posts_land_in_their_topics(collector, kafka_settings, run_id):
    bootstrap = kafka_settings.bootstrap_servers
    start = _starts(bootstrap)
    sid = f"{run_id}-single"
    r = requests.post(f"{collector}/api/analytics", json=_interaction(sid, 0), headers={
        **_client(run_id), "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) TestBrowser/1.0"}, timeout=10)
    assert r.status_code == 202 and r.json() == {"accepted": 1, "durability": "kafka"}, r.text
    now = int(time.time() * 1000)
    batch = [_interaction(f"{run_id}-batch", i) for i in range(18)] + [
        {"event_type": "frontend.session_analytics", "session_id": f"{run_id}-batch", "started_at_ms": now - 5000,
         "ended_at_ms": now, "duration_ms": 5000, "page_views": 1, "timestamp": now},
        {"event_type": "frontend.widget_performance", "session_id": f"{run_id}-batch", "widget_id": "sales-assistant",
         "load_time_ms": 412.5, "timestamp": now}]
    r = requests.post(f"{collector}/api/analytics", data=json.dumps(batch), timeout=10,
                      headers={**_client(run_id), "Content-Type": "text/plain;charset=UTF-8"})  # as a beacon sends
    assert r.status_code == 202 and r.json()["accepted"] == 20, r.text
    got = _landed(bootstrap, start, run_id)
    single = [v for k, v in got[topics.FRONTEND_INTERACTION] if v["session_id"] == sid]
    assert len(single) == 1 and single[0]["event_id"] == f"{sid}-e0"
    assert single[0]["user_agent"].endswith("TestBrowser/1.0"), "the request's User-Agent fills user_agent"
    batch_clicks = [(k, v) for k, v in got[topics.FRONTEND_INTERACTION] if v["session_id"] == f"{run_id}-batch"]
    assert sorted(v["event_id"] for _, v in batch_clicks) == sorted(f"{run_id}-batch-e{i}" for i in range(18))
    assert {k for k, _ in batch_clicks} == {f"{run_id}-batch".encode()}, "keyed by session_id"
    assert len(got[topics.FRONTEND_SESSION]) == 1 and got[topics.FRONTEND_SESSION][0][1]["duration_ms"] == 5000
    assert len(got[topics.FRONTEND_WIDGET]) == 1 and got[topics.FRONTEND_WIDGET][0][1]["load_time_ms"] == 412.5


def test_bad_payloads_get_400_with_reasons_and_nothing_is_produced(collector, kafka_settings, run_id):
    bootstrap = kafka_settings.bootstrap_servers
    start = _starts(bootstrap)
    sid = f"{run_id}-bad"
    batch = [_interaction(sid, 0), _interaction(sid, 1, time_on_page="12"),
             {"event_type": "frontend.widget_performance", "session_id": sid, "timestamp": int(time.time() * 1000)},
             _interaction(sid, 3, timestamp=1_000)]
    r = requests.post(f"{collector}/api/analytics", json=batch, headers=_client(run_id), timeout=10)
    assert r.status_code == 400
    errors = {e["index"]: e for e in r.json()["errors"]}
    assert set(errors) == {1, 2, 3}
    assert errors[1]["kind"] == "schema_violation" and "time_on_page" in errors[1]["reason"]
    assert "widget_id" in errors[2]["reason"] and "load_time_ms" in errors[2]["reason"]
    assert errors[3]["kind"] == "implausible_timestamp"
    for body in (b"{not json", b"[]", b'"a string"'):
        r = requests.post(f"{collector}/api/analytics", data=body, headers=_client(run_id), timeout=10)
        assert r.status_code == 400 and r.json()["errors"][0]["reason"], body
    # a marker acknowledged by Kafka after the bad requests: once it is there, nothing of them is
    marker = requests.post(f"{collector}/api/analytics", json=_interaction(f"{run_id}-marker", 0),
                           headers=_client(run_id), timeout=10)
    assert marker.status_code == 202 and marker.json()["durability"] == "kafka"
    got = _landed(bootstrap, start, run_id)
    assert [v["session_id"] for _, v in got[topics.FRONTEND_INTERACTION]] == [f"{run_id}-marker"]
    assert not got[topics.FRONTEND_WIDGET]


def test_oversize_and_rate_limited_requests_get_413_and_429(collector, run_id):
    big = _interaction(f"{run_id}-big", 0, element_text="x" * 20_000)
    r = requests.post(f"{collector}/api/analytics", json=big, headers=_client(run_id), timeout=10)
    assert r.status_code == 413 and "16384" in r.json()["error"]
    many = [_interaction(f"{run_id}-many", i) for i in range(51)]
    r = requests.post(f"{collector}/api/analytics", json=many, headers=_client(run_id), timeout=10)
    assert r.status_code == 413 and "51 events" in r.json()["error"]
    client = _client(run_id)
    codes = [requests.post(f"{collector}/api/analytics", json=_interaction(f"{run_id}-rate", i), headers=client,
                           timeout=10) for i in range(14)]
    statuses = [c.status_code for c in codes]
    assert statuses[:10] == [202] * 10, statuses  # the burst
    limited = [c for c in codes if c.status_code == 429]
    assert limited and limited[0].headers["Retry-After"] == "1"
    other = requests.post(f"{collector}/api/analytics", json=_interaction(f"{run_id}-other", 0),
                          headers=_client(run_id), timeout=10)
    assert other.status_code == 202, "another client is not limited"


def test_cors_answers_configured_origins_only(collector):
    pre = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    ok = requests.options(f"{collector}/api/analytics", headers={"Origin": ORIGIN, **pre}, timeout=10)
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == ORIGIN
    bad = requests.options(f"{collector}/api/analytics", headers={"Origin": "http://evil.example", **pre}, timeout=10)
    assert bad.status_code == 400 and "access-control-allow-origin" not in bad.headers
    health = requests.get(f"{collector}/health", timeout=10).json()
    assert health["status"] == "ok" and health["kafka_connected"]
    metrics = requests.get(f"{collector}/metrics", timeout=10).text
    assert 'iheardai_producer_events_sent_total{client="collector"}' in metrics
    assert 'iheardai_collector_requests_total{status="202"}' in metrics


def run_browser_session(collector_url: str, root, user_id: str) -> str:
    """Load the test page (another origin than the collector's) in headless Chromium, click the chat button and
    close the tab; returns the page's session id. The clicks are still queued when the tab closes, so they
    leave with the page-hide beacon, together with the session summary."""
    write_test_page(root / "site", collector_url, user_id)
    with static_server(root / "site") as site:
        browser = Chromium(root / "profile")
        try:
            page = browser.new_page(f"{site}/index.html")
            sid = wait_for(lambda: page.evaluate("window.__sid"), 30, "the tracker to load")
            page.click("#chat-button")
            wait_for(lambda: page.evaluate("document.readyState") == "complete", 10, "the page")
            page.close()
            time.sleep(2)  # the beacon leaves from the browser process after the tab is gone
        finally:
            browser.quit()
    return sid


def test_a_real_browser_clicks_and_closes_and_its_events_arrive(stack, kafka_settings, run_id, tmp_path):
    bootstrap = kafka_settings.bootstrap_servers
    start = _starts(bootstrap)
    with collector_process(tmp_path / "spill", "--allowed-origins", "*") as url:
        sid = run_browser_session(url, tmp_path, f"user-{run_id}")

        def landed():
            got = _landed(bootstrap, start, sid)
            types = sorted(v["event_type"] for t in FRONTEND for _, v in got[t])
            return got if types == ["frontend.session_analytics", "message_sent", "page_view", "widget_open"] else None

        got = wait_for(landed, 60, "page_view, widget_open, message_sent and the page-hide session summary")
    clicks = {v["event_type"]: v for _, v in got[topics.FRONTEND_INTERACTION]}
    w = clicks["widget_open"]
    assert w["element_id"] == "chat-button" and w["element_class"] == "widget-trigger"
    assert w["click_coordinates"] == {"x": 180, "y": 140} and w["user_id"] == f"user-{run_id}"
    assert w["page_title"] == "iheardAI tracker test" and "HeadlessChrome" in w["user_agent"]
    assert clicks["message_sent"]["message_length"] == 45
    summary = got[topics.FRONTEND_SESSION][0][1]
    assert summary["page_views"] == 1 and summary["interactions"] == 2 and summary["widget_opens"] == 1
    assert len({v["event_id"] for t in FRONTEND for _, v in got[t]}) == 4
