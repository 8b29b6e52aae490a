"""Session and hourly windows with TestStream: early and final panes, late data inside and beyond the
allowed lateness, duplicates counted once."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from transforms.windows import Activity, HourlyUsagePerAccount, SessionizeActivity, session_version

pytestmark = pytest.mark.unit
T0 = 1_795_000_000  # seconds; hour-aligned below
H0 = (T0 // 3600) * 3600


def _turn(item, session, ts_s, tokens_in=10, tokens_out=5, latency=100.0, account="acct-1", cost=0.01):
    a = Activity("turn", item, session, account, "u1", "web_chat", int(ts_s * 1000), tokens_in, tokens_out,
                 latency, cost)
    return TimestampedValue(a, ts_s)


def _tool(item, session, ts_s, account="acct-1"):
    return TimestampedValue(Activity("tool", item, session, account, "u1", None, int(ts_s * 1000)), ts_s)


def _pipeline():
    opts = PipelineOptions(["--runner=DirectRunner"])
    opts.view_as(StandardOptions).streaming = True
    return TestPipeline(options=opts)


def test_session_kpis_early_final_and_late_panes():
    stream = (TestStream()
              .advance_watermark_to(T0)
              .add_elements([_turn("t1", "s1", T0), _turn("t2", "s1", T0 + 10, latency=300.0),
                             _turn("t2", "s1", T0 + 10, latency=300.0),  # duplicate
                             _tool("i1", "s1", T0 + 12)])
              .advance_processing_time(10)  # early pane
              .advance_watermark_to(T0 + 12 + 60 + 1)  # gap 60s after the last event: on-time pane
              # late (inside the closed session, so it does not extend it), within lateness: a late pane
              .add_elements([_turn("t3", "s1", T0 + 5, tokens_in=1)])
              .advance_watermark_to(T0 + 10_000)
              .add_elements([_turn("t4", "s1", T0 + 30)])  # beyond allowed lateness: dropped
              .advance_watermark_to_infinity())
    with _pipeline() as p:
        rows = (p | stream | SessionizeActivity(gap_s=60, allowed_lateness_s=600, early_firing_s=5)
                | beam.Map(lambda r: (r["turns"], r["tokens_in"], r["tool_calls"], r["avg_latency_ms"],
                                      r["is_final"], r["pane_version"])))
        last_ms = (T0 + 12) * 1000
        assert_that(rows, equal_to([
            (2, 20, 1, 200.0, False, session_version((T0 + 12) * 1000, 2, 1)),  # early
            (2, 20, 1, 200.0, True, session_version((T0 + 12) * 1000, 2, 1)),   # on time
            (3, 21, 1, 166.667, True, session_version(last_ms, 3, 1)),  # late: avg (100+300+100)/3
        ]))


def test_hourly_usage_is_exact_after_late_data_and_revisions_grow():
    stream = (TestStream()
              .advance_watermark_to(H0)
              .add_elements([_turn("t1", "s1", H0 + 5, tokens_in=100, tokens_out=10, cost=0.5),
                             _turn("t1", "s1", H0 + 5, tokens_in=100, tokens_out=10, cost=0.5),  # duplicate
                             _tool("i1", "s1", H0 + 6),
                             _turn("t2", "s2", H0 + 3599, tokens_in=1, tokens_out=1, cost=0.25),
                             _turn("t3", "s3", H0 + 3600, tokens_in=7, tokens_out=7, cost=1.0),  # next hour
                             _turn("x1", "s9", H0 + 10, account="acct-2", cost=0.0)])
              .advance_watermark_to(H0 + 2 * 3600 + 1)  # both hours on time
              .add_elements([_turn("t4", "s1", H0 + 100, tokens_in=9, tokens_out=1, cost=0.25)])  # late
              .advance_watermark_to(H0 + 20 * 3600)
              .add_elements([_turn("t5", "s1", H0 + 200)])  # beyond lateness (6h): dropped
              .advance_watermark_to_infinity())
    with _pipeline() as p:
        rows = (p | stream | HourlyUsagePerAccount(early_firing_s=60)
                | beam.Map(lambda r: (r["account_id"], r["hour_start_ms"] // 1000 - H0, r["turns"], r["tokens_in"],
                                      r["tokens_out"], r["tool_invocations"], r["estimated_cost_usd"], r["revision"],
                                      r["is_final"])))
        assert_that(rows, equal_to([
            ("acct-1", 0, 2, 101, 11, 1, 0.75, 3, True),
            ("acct-1", 3600, 1, 7, 7, 0, 1.0, 1, True),
            ("acct-2", 0, 1, 10, 5, 0, 0.0, 1, True),
            ("acct-1", 0, 3, 110, 12, 1, 1.0, 4, True),  # late correction: a larger revision
        ]))
