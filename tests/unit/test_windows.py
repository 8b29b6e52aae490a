"""Session KPIs and hourly usage in keyed state with TestStream: early and final rows, a session that pauses
longer than the gap, duplicates, out-of-order and late data, dead letters for data beyond the lateness."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from events.dead_letters import Tags
from tests.unit.streaming import streaming_pipeline, zero_clock
from transforms.keyed_totals import LATE_DATA, _id_digest, _KeyState, row_version
from transforms.windows import Activity, HourlyUsagePerAccount, SessionizeActivity, Usage

pytestmark = pytest.mark.unit
T0 = 1_795_000_000  # seconds; hour-aligned below
H0 = (T0 // 3600) * 3600


def _turn(item, session, ts_s, tokens_in=10, tokens_out=5, latency=100.0, account="acct-1", cost=0.01, src=None):
    a = Activity("turn", item, session, account, "u1", "web_chat", int(ts_s * 1000), tokens_in, tokens_out,
                 latency, cost, src)
    return TimestampedValue(a, ts_s)


def _tool(item, session, ts_s, account="acct-1"):
    return TimestampedValue(Activity("tool", item, session, account, "u1", None, int(ts_s * 1000)), ts_s)




def _kpi(r):
    return (r["session_id"], r["turns"], r["tokens_in"], r["tool_calls"], r["latency_sum_ms"], r["is_final"],
            r["started_at"].timestamp(), r["ended_at"].timestamp())


def test_a_session_that_pauses_longer_than_the_gap_is_one_row_with_its_whole_totals():
    # gap 60 s, lateness 600 s: the session pauses 5 min (> gap) while its state is open, gets a duplicate,
    # an out-of-order turn, a late turn within the lateness; the row is its whole totals, final once the
    # session has been inactive for gap + lateness. A turn beyond the lateness is a dead letter.
    stream = (TestStream()
              .advance_watermark_to(T0)
              .add_elements([_turn("t1", "s1", T0), _turn("t2", "s1", T0 + 10, latency=300.0),
                             _turn("t2", "s1", T0 + 10, latency=300.0),  # duplicate
                             _tool("i1", "s1", T0 + 12), _turn("x1", "s2", T0 + 1, tokens_in=7)])
              .advance_processing_time(10)  # early rows
              .advance_watermark_to(T0 + 200)
              .add_elements([_turn("t3", "s1", T0 + 300, tokens_in=20),  # after a 288 s pause (> gap)
                             _turn("t0", "s1", T0 + 150, tokens_in=1)])  # out of order, 50 s behind: counted
              .advance_processing_time(10)
              .advance_watermark_to(T0 + 700)
              .add_elements([_turn("t0", "s1", T0 + 150, tokens_in=1)])  # a duplicate 550 s behind: not counted
              .add_elements([_turn("tx", "s1", T0 + 50, src=("turns", 3, 42))])  # 650 s behind: late
              .advance_processing_time(10)
              .advance_watermark_to(T0 + 300 + 660 + 1)  # s1 inactive for gap + lateness: final
              .advance_watermark_to_infinity())
    with streaming_pipeline() as p:
        out = p | stream | SessionizeActivity(gap_s=60, allowed_lateness_s=600, early_firing_s=5, clock=zero_clock)
        rows = out.rows | beam.Map(_kpi)
        assert_that(rows, equal_to([
            ("s1", 2, 20, 1, 400.0, False, T0, T0 + 12),  # early
            ("s2", 1, 7, 0, 100.0, False, T0 + 1, T0 + 1),
            ("s1", 4, 41, 1, 600.0, False, T0, T0 + 300),  # early, after the pause
            ("s2", 1, 7, 0, 100.0, True, T0 + 1, T0 + 1),  # s2 final (inactive since T0 + 1)
            ("s1", 4, 41, 1, 600.0, True, T0, T0 + 300),  # final: the whole session
        ]), label="rows")
        late = out[Tags.DEAD_LETTER.value] | beam.Map(
            lambda d: (d.error_class, d.source_topic, d.source_partition, d.source_offset, d.event_time_ms, d.step))
        assert_that(late, equal_to([(LATE_DATA, "turns", 3, 42, (T0 + 50) * 1000, "SessionKpis")]), label="late")


def test_session_rows_versions_grow_and_the_state_is_small():
    assert row_version(2_000, 1, False) > row_version(1_999, 9_999, True)  # later activity wins
    assert row_version(2_000, 5, False) > row_version(2_000, 4, True)  # a late item inside the session
    assert row_version(2_000, 5, True) > row_version(2_000, 5, False)  # final after early
    import pickle

    s = _KeyState(Usage())
    for i in range(20):
        s.totals.add(Activity("turn", f"s/t{i:04d}", "s", "acct", "user-0000", "web_chat", T0 * 1000 + i, 10, 5,
                              100.0, 0.01))
        s.seen[_id_digest(f"turn/s/t{i:04d}")] = T0 * 1000 + i
        s.items += 1
    per_id = (len(pickle.dumps(s)) - len(pickle.dumps(_KeyState(Usage())))) / 20
    assert len(pickle.dumps(_KeyState(Usage()))) < 300 and per_id < 25


def test_hourly_usage_is_exact_after_late_data_and_revisions_grow():
    stream = (TestStream()
              .advance_watermark_to(H0)
              .add_elements([_turn("t1", "s1", H0 + 5, tokens_in=100, tokens_out=10, cost=0.5),
                             _turn("t1", "s1", H0 + 5, tokens_in=100, tokens_out=10, cost=0.5),  # duplicate
                             _tool("i1", "s1", H0 + 6),
                             _turn("t2", "s2", H0 + 3599, tokens_in=1, tokens_out=1, cost=0.25),
                             _turn("t3", "s3", H0 + 3600, tokens_in=7, tokens_out=7, cost=1.0),  # next hour
                             _turn("x1", "s9", H0 + 10, account="acct-2", cost=0.0)])
              .advance_watermark_to(H0 + 2 * 3600 + 1)  # both hours final
              .add_elements([_turn("t4", "s1", H0 + 3000, tokens_in=9, tokens_out=1, cost=0.25)])  # late
              .advance_processing_time(20)
              .advance_watermark_to(H0 + 9 * 3600)  # the hour is released at H0 + 7 h
              .add_elements([_turn("t5", "s1", H0 + 200)])  # beyond the lateness (6 h): a dead letter
              .advance_watermark_to_infinity())
    with streaming_pipeline() as p:
        out = p | stream | HourlyUsagePerAccount(early_firing_s=60, clock=zero_clock)
        rows = out.rows | beam.Map(
            lambda r: (r["account_id"], r["hour_start_ms"] // 1000 - H0, r["turns"], r["tokens_in"],
                       r["tokens_out"], r["tool_invocations"], r["estimated_cost_usd"], r["revision"],
                       r["is_final"]))
        assert_that(rows, equal_to([
            ("acct-1", 0, 2, 101, 11, 1, 0.75, 3, True),
            ("acct-1", 3600, 1, 7, 7, 0, 1.0, 1, True),
            ("acct-2", 0, 1, 10, 5, 0, 0.0, 1, True),
            ("acct-1", 0, 3, 110, 12, 1, 1.0, 4, True),  # late correction: a larger revision
        ]), label="rows")
        assert_that(out[Tags.DEAD_LETTER.value] | beam.Map(lambda d: d.error_class), equal_to([LATE_DATA]),
                    label="late")
