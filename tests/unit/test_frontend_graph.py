"""The frontend graph on the DirectRunner: session engagement with TestStream (early, final and late panes,
lateness beyond the limit, duplicates), the pure summary, and the frontend pipeline graph as built."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from events.dead_letters import Tags
from tests.unit.streaming import streaming_pipeline, zero_clock
from transforms.engagement import EngagementEvent, SessionEngagement, engagement_event, summarize
from transforms.keyed_totals import LATE_DATA, row_version
from events.contracts import FrontendUserInteraction, FrontendWidgetPerformance
from transforms.scoring import Scored, enrich_frontend

pytestmark = pytest.mark.unit
T0 = 1_795_000_000  # seconds


def _ev(event_id, ts_s, stage="page_view", session="s1", user="u1", src=None):
    return TimestampedValue(EngagementEvent(event_id, session, user, int(ts_s * 1000), stage, src), ts_s)




def _summary(r):
    return (r["session_id"], r["events"], r["duration_ms"], r["furthest_stage"], r["is_final"], r["pane_version"])


def test_engagement_of_a_session_that_pauses_with_duplicates_late_and_too_late_events():
    stream = (TestStream()
              .advance_watermark_to(T0)
              .add_elements([_ev("e1", T0, user=None), _ev("e2", T0 + 10, "widget_open"),
                             _ev("e2", T0 + 10, "widget_open"),  # duplicate
                             _ev("e3", T0 + 20, None),  # widget performance: no stage
                             _ev("x1", T0 + 5, "conversion", session="s2", user="u2")])
              .advance_processing_time(10)  # early rows
              .advance_watermark_to(T0 + 200)
              # out of order and 185 s behind the watermark (within the lateness), and its duplicate
              .add_elements([_ev("e4", T0 + 15, "user_message"), _ev("e4", T0 + 15, "user_message")])
              .advance_processing_time(10)
              .add_elements([_ev("e6", T0 + 400, None)])  # after a 380 s pause (> gap): the same session
              .advance_watermark_to(T0 + 1_100)  # inactive for gap + lateness: final rows
              .advance_watermark_to(T0 + 1_300)
              .add_elements([_ev("e5", T0 + 12, "conversion", src=("frontend.user.interaction", 4, 9))])  # too late
              .advance_watermark_to_infinity())
    with streaming_pipeline() as p:
        out = p | stream | SessionEngagement(gap_s=60, allowed_lateness_s=600, early_firing_s=5, clock=zero_clock)
        assert_that(out.rows | beam.Map(_summary), equal_to([
            ("s1", 3, 20_000, "widget_open", False, row_version((T0 + 20) * 1000, 3, False)),  # early
            ("s2", 1, 0, "conversion", False, row_version((T0 + 5) * 1000, 1, False)),
            ("s1", 4, 20_000, "user_message", False, row_version((T0 + 20) * 1000, 4, False)),  # out of order
            ("s1", 5, 400_000, "user_message", False, row_version((T0 + 400) * 1000, 5, False)),  # resumed
            ("s2", 1, 0, "conversion", True, row_version((T0 + 5) * 1000, 1, True)),  # final
            ("s1", 5, 400_000, "user_message", True, row_version((T0 + 400) * 1000, 5, True)),  # whole session
        ]), label="rows")
        # the first non-null user in event time, and event times as timestamps
        assert_that(out.rows | "Users" >> beam.Map(lambda r: (r["session_id"], r["user_id"],
                                                             int(r["started_at"].timestamp()) - T0,
                                                             int(r["ended_at"].timestamp()) - T0)),
                    equal_to([("s1", "u1", 0, 20)] * 2 + [("s1", "u1", 0, 400)] * 2 + [("s2", "u2", 5, 5)] * 2),
                    label="users")
        assert_that(out[Tags.DEAD_LETTER.value] | beam.Map(
            lambda d: (d.error_class, d.source_topic, d.source_partition, d.source_offset)),
            equal_to([(LATE_DATA, "frontend.user.interaction", 4, 9)]), label="late")


def test_summary_of_distinct_events():
    evs = [EngagementEvent("a", "s", None, 1_000, "page_view"), EngagementEvent("b", "s", "u9", 4_000, None),
           EngagementEvent("c", "s", "u1", 3_000, "product_interest"), EngagementEvent("d", "s", None, 2_000, None)]
    assert summarize(evs) == {"user_id": "u1", "events": 4, "duration_ms": 3_000,
                              "furthest_stage": "product_interest", "first_ms": 1_000, "last_ms": 4_000}
    assert summarize([EngagementEvent("w", "s", None, 5, None)])["furthest_stage"] is None


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
        from events.topics import CONTRACTS
        from transforms.validation import ValidateEvents
        from events.dead_letters import split_dead_letters

        records = _p | "Records" >> beam.Create([])
        valid, dead = {}, []
        for t in topics:
            v, d = split_dead_letters(records | f"V[{t}]" >> ValidateEvents(CONTRACTS[t]))
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
    # validation + 3 x (redaction, enrichment, sink) + engagement late data and sink
    assert built == [(12, frontend.TOPICS)]
