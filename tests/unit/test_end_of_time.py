"""A stopping job's end-of-time watermark changes no key's state (transforms/keyed_totals.py, module doc).

Beam's Flink source wrapper for the Kafka read emits the maximum watermark whenever its reader loop ends, also on
stop-with-savepoint without drain, ahead of the savepoint's barrier; every watermark timer of the session step
then fires. These tests drive the DoFn's methods as the runner would, with its state and timers in memory."""

from __future__ import annotations

import time
from typing import Optional

import pytest

from transforms.keyed_totals import END_OF_TIME_SLACK_S, _KeyedTotalsFn, _KeyState
from transforms.windows import Activity, SessionUsage

pytestmark = pytest.mark.unit
GAP_S, LATE_S = 600, 14_400


class _State:
    def __init__(self):
        self.value: Optional[_KeyState] = None

    def read(self):
        return self.value

    def write(self, v):
        self.value = v

    def clear(self):
        self.value = None


class _Timer:
    def __init__(self):
        self.at = None  # micros of the pending firing, None: not set

    def set(self, ts):
        self.at = ts.micros

    def clear(self):
        self.at = None


class _Fired:
    def __init__(self, ms):
        self.micros = ms * 1000


def _fn(now_s: float) -> _KeyedTotalsFn:
    fn = _KeyedTotalsFn(SessionUsage(GAP_S, LATE_S), LATE_S, 2, "SessionKpis", "turns",
                        clock=lambda: now_s, wall_clock=lambda: now_s)
    fn.setup()
    return fn


def _turn(i: int, ts_ms: int) -> Activity:
    return Activity("turn", f"t{i}", "s1", "acct-1", "u1", "web_chat", ts_ms, 10, 5, 100.0, 0.01, None)


def _session(fn, now_ms: int, n: int):
    state, early, close, prune = _State(), _Timer(), _Timer(), _Timer()
    for i in range(n):  # a live session: its last turn a minute ago
        assert list(fn.process(("s1", _turn(i, now_ms - 3_600_000 + i * 60_000)), state, early, close, prune)) == []
    return state, early, close, prune


def test_an_end_of_time_firing_leaves_the_session_open_and_its_timers_set_again():
    now_s = time.time()
    now_ms = int(now_s * 1000)
    fn = _fn(now_s)
    state, early, close, prune = _session(fn, now_ms, 60)
    before = (state.value.items, dict(state.value.seen), state.value.final, state.value.wm_ms)
    close_at, prune_at = close.at // 1000, prune.at // 1000
    assert close_at > now_ms + END_OF_TIME_SLACK_S * 1000 and prune_at > now_ms + END_OF_TIME_SLACK_S * 1000

    # the maximum watermark: both watermark timers fire (Flink has removed them from its queue)
    close.at = prune.at = None
    assert fn.on_prune(_Fired(prune_at), state, prune, early) is None  # not a generator: emits nothing
    assert list(fn.on_close("s1", _Fired(close_at), state, early, close, prune)) == []
    s = state.value
    assert (s.items, s.seen, s.final, s.wm_ms) == before, "an end-of-time firing changed the session"
    assert s.totals is not None and s.rearm and early.at is not None and close.at is None
    assert fn._wm_ms < now_ms, "the instance's watermark bound moved past the clock"

    # the early timer (processing time; in a restored job it fires right after the restore) sets both again
    rows = list(fn.on_early("s1", state, close, prune))
    assert close.at // 1000 == close_at and prune.at // 1000 == prune_at and not state.value.rearm
    assert [r["is_final"] for r in rows] == [False] and rows[0]["turns"] == 60

    # the next turn, an hour old, is counted: not late
    late = list(fn.process(("s1", _turn(99, now_ms - 3_600_000)), state, early, close, prune))
    assert late == [] and state.value.items == 61


def test_a_timer_due_by_the_clock_still_closes_the_session():
    # A session inactive for longer than gap + lateness: its close timer is due by the clock and fires as always.
    now_s = time.time()
    now_ms = int(now_s * 1000)
    fn = _fn(now_s)
    state, early, close, prune = _State(), _Timer(), _Timer(), _Timer()
    old = now_ms - (GAP_S + LATE_S + 3_600) * 1000
    list(fn.process(("s1", _turn(1, old)), state, early, close, prune))
    rows = list(fn.on_close("s1", _Fired(close.at // 1000), state, early, close, prune))
    assert [r["is_final"] for r in rows] == [True]
    assert state.value.totals is None  # released: a tombstone until the lateness has passed once more
