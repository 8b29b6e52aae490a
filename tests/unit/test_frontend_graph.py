"""The frontend graph on the DirectRunner: session engagement with TestStream (early, final and late panes,
lateness beyond the limit, duplicates), the pure summary, and the frontend pipeline graph as built."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from transforms.engagement import (EngagementEvent, SessionEngagement, engagement_event, engagement_version,
                                   summarize)
from transforms.contracts import FrontendUserInteraction, FrontendWidgetPerformance
from transforms.scoring import Scored, enrich_frontend

pytestmark = pytest.mark.unit
T0 = 1_795_000_000  # seconds


def _ev(event_id, ts_s, stage="page_view", session="s1", user="u1"):
    return TimestampedValue(EngagementEvent(event_id, session, user, int(ts_s * 1000), stage), ts_s)


def _pipeline():
    opts = PipelineOptions(["--runner=DirectRunner"])
    opts.view_as(StandardOptions).streaming = True
    return TestPipeline(options=opts)


def _summary(r):
    return (r["session_id"], r["events"], r["duration_ms"], r["furthest_stage"], r["is_final"], r["pane_version"])


def test_engagement_early_final_and_late_panes_with_duplicates():
    stream = (TestStream()
              .advance_watermark_to(T0)
              .add_elements([_ev("e1", T0, user=None), _ev("e2", T0 + 10, "widget_open"),
                             _ev("e2", T0 + 10, "widget_open"),  # duplicate
                             _ev("e3", T0 + 20, None),  # widget performance: no stage
                             _ev("x1", T0 + 5, "conversion", session="s2", user="u2")])
              .advance_processing_time(10)  # early panes
              .advance_watermark_to(T0 + 20 + 60 + 1)  # gap 60 s after each session's last event: on time
              # late but inside the closed s1 session (it does not extend it), within lateness: a late pane
              .add_elements([_ev("e4", T0 + 15, "user_message")])
              .add_elements([_ev("e4", T0 + 15, "user_message")])  # late duplicate: same data, same version
              .advance_watermark_to(T0 + 10_000)
              .add_elements([_ev("e5", T0 + 12, "conversion")])  # beyond allowed lateness: dropped
              .advance_watermark_to_infinity())
    with _pipeline() as p:
        rows = p | stream | SessionEngagement(gap_s=60, allowed_lateness_s=600, early_firing_s=5)
        s1_last, s2_last = (T0 + 20) * 1000, (T0 + 5) * 1000
        assert_that(rows | beam.Map(_summary), equal_to([
            ("s1", 3, 20_000, "widget_open", False, engagement_version(s1_last, 3)),  # early
            ("s2", 1, 0, "conversion", False, engagement_version(s2_last, 1)),
            ("s1", 3, 20_000, "widget_open", True, engagement_version(s1_last, 3)),  # on time
            ("s2", 1, 0, "conversion", True, engagement_version(s2_last, 1)),
            ("s1", 4, 20_000, "user_message", True, engagement_version(s1_last, 4)),  # late correction
            ("s1", 4, 20_000, "user_message", True, engagement_version(s1_last, 4)),  # late duplicate
        ]), label="panes")
        # the first non-null user, and event times as timestamps
        assert_that(rows | "Users" >> beam.Map(lambda r: (r["session_id"], r["user_id"],
                                                         int(r["started_at"].timestamp()) - T0,
                                                         int(r["ended_at"].timestamp()) - T0)),
                    equal_to([("s1", "u1", 0, 20)] * 4 + [("s2", "u2", 5, 5)] * 2), label="users")


def test_engagement_versions_only_grow_within_a_session():
    stream = (TestStream()
              .advance_watermark_to(T0)
              .add_elements([_ev("e1", T0)])
              .advance_processing_time(10)
              .add_elements([_ev("e1", T0)])  # duplicate: the next early pane has the same version
              .advance_processing_time(10)
              .add_elements([_ev("e2", T0 + 30, "conversion")])
              .advance_processing_time(10)
              .advance_watermark_to_infinity())
    with _pipeline() as p:
        rows = p | stream | SessionEngagement(gap_s=60, allowed_lateness_s=0, early_firing_s=5)
        v1, v2 = engagement_version(T0 * 1000, 1), engagement_version((T0 + 30) * 1000, 2)
        assert v2 > v1
        assert_that(rows | beam.Map(lambda r: (r["pane_version"], r["events"], r["is_final"])), equal_to([
            (v1, 1, False), (v1, 1, False),  # the duplicate fires a pane with the same data and version
            (v2, 2, False), (v2, 2, True)]))


def test_summary_of_distinct_events_and_version_order():
    evs = [EngagementEvent("a", "s", None, 1_000, "page_view"), EngagementEvent("b", "s", "u9", 4_000, None),
           EngagementEvent("c", "s", "u1", 3_000, "product_interest"), EngagementEvent("d", "s", None, 2_000, None)]
    assert summarize(evs) == {"user_id": "u1", "events": 4, "duration_ms": 3_000,
                              "furthest_stage": "product_interest", "first_ms": 1_000, "last_ms": 4_000}
    assert summarize([EngagementEvent("w", "s", None, 5, None)])["furthest_stage"] is None
    assert engagement_version(4_000, 5) > engagement_version(4_000, 4)  # a late event inside the session
    assert engagement_version(4_001, 1) > engagement_version(4_000, 9_999)  # later activity


def test_engagement_event_of_scored_interaction_and_widget():
    ts = T0 * 1000
    click = FrontendUserInteraction(session_id="s1", event_type="widget_open", event_id="fe1", user_id="u",
                                    page_url="https://x.io/", timestamp=ts)
    widget = FrontendWidgetPerformance(session_id="s1", widget_id="w", load_time_ms=10.0, timestamp=ts + 1)
    assert engagement_event(Scored(click, enrich_frontend(click))) == EngagementEvent("fe1", "s1", "u", ts,
                                                                                      "widget_open")
    w = engagement_event(Scored(widget, enrich_frontend(widget)))
    assert w.event_id.startswith("fe_") and w.stage is None and w.ts_ms == ts + 1


def test_frontend_pipeline_graph_builds_with_readable_steps(monkeypatch):
    """The whole graph is built (not run): one redact/enrich/write step per topic, engagement, DLQ writer."""
    from beam_pipelines import frontend

    monkeypatch.setenv("PII_HMAC_KEY", "k" * 32)
    opts = PipelineOptions(["--runner=DirectRunner", "--streaming", "--expansion_service=localhost:1"])
    p = beam.Pipeline(options=opts)
    built = []

    def fake_read(_p, _opts, topics):
        from transforms.contracts import CONTRACTS
        from transforms.validation import ValidateEvents, validated

        records = _p | "Records" >> beam.Create([])
        valid, dead = {}, []
        for t in topics:
            v, d = validated(records | f"V[{t}]" >> ValidateEvents(CONTRACTS[t]))
            valid[t] = v
            dead.append(d)
        return valid, tuple(dead) | "MergeDead" >> beam.Flatten()

    monkeypatch.setattr(frontend, "read_and_validate", fake_read)
    monkeypatch.setattr(frontend, "write_dead_letters", lambda _o, dls, topics: built.append((len(dls), topics)))
    frontend.build(p, opts)
    labels = {t.full_label for t in p.transforms_stack[0].parts}
    for name in ("Interactions", "SessionAnalytics", "WidgetPerformance"):
        assert {f"Redact{name}", f"Enrich{name}", f"Write{name}"} <= labels
    assert {"MergeFrontendEvents", "ToEngagementEvent", "SessionEngagement", "UpsertSessionEngagement"} <= labels
    assert built == [(11, frontend.TOPICS)]  # validation + 3 x (redaction, enrichment, sink) + engagement sink
